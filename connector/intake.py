"""Consumed records → the contact changes they make. Each record is admitted to the ledger and
decided on: invalid ones go to the dead-letter topic (and count towards DLQ_MAX_INVALID_SHARE),
skipped ones are said why, and those that wait for an unreachable Schema Registry are held,
with the partitions paused, and decoded again later, all of them in order or none. Once all
delivered records are admitted, the ledger learns where the consumer stands."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from connector.core.admission import Admission
from connector.core.clock import Clock
from connector.core.errors import Fatal, InvalidRecord, Retriable
from connector.core.events import ContactChange, RawRecord
from connector.core.routing import TagCollision
from connector.fates import Fates
from connector.kafka.partitions import Partitions
from connector.metrics import Metrics

log = structlog.get_logger("connector.pipeline")

Changes = list[tuple[str, ContactChange]]


@dataclass(frozen=True)
class IntakeConfig:
    registry_retry_s: float
    dlq_max_invalid_share: float


class Intake:
    def __init__(
        self,
        config: IntakeConfig,
        admission: Admission,
        fates: Fates,
        partitions: Partitions,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.config = config
        self._admission = admission
        self._fates = fates
        self._partitions = partitions
        self._metrics = metrics
        self._clock = clock
        self.held: list[RawRecord] = []  # records waiting for an unreachable Schema Registry
        self._held_until = 0.0
        # What the registry answered last while records wait for it (for `/readyz`).
        self.registry_error: str | None = None
        # Too large a share of the records were invalid: the loop must stop.
        self.limit_reached: Fatal | None = None

    def take(self, records: list[RawRecord]) -> Changes:
        """The changes of `records` (after those of held records that now decode). Stops at
        the record that passes the dead-letter limit: what follows is not processed, so not
        committed."""
        changes: Changes = []
        if self.held:
            self.held.extend(records)
            changes, records = self._retry_held()
        now_ms = int(self._clock.now() * 1000)  # once per poll: it bounds occurred_at
        for raw in records:
            if self.limit_reached is not None:
                break
            if self.held:
                # The registry is away: what follows waits behind the held records, in order
                # and undecoded (each ask of an unreachable registry waits for its timeout).
                self.held.append(raw)
                continue
            changes.extend(self._accept(raw, now_ms))
        if not self.held and self.limit_reached is None:
            # Every record delivered is admitted: the consumer's positions may carry the commit
            # past a transaction's markers. (Not from a rebalance callback: there, a poll's
            # records may be delivered and not yet admitted.)
            self._fates.ledger.offsets.reached(self._partitions.positions())
        return changes

    def forget(self) -> None:
        """A rebalance: held records are no longer ours; redelivered ones are not duplicates."""
        self.held.clear()
        self.registry_error = None
        self._admission.forget()

    def _accept(self, raw: RawRecord, now_ms: int) -> Changes:
        self._fates.admit(raw)
        try:
            changes = self._validated(raw, now_ms)
        except InvalidRecord as exc:
            self._invalid(raw, exc)
            changes = []
        except Retriable as exc:
            self.held.append(raw)
            self._hold(exc)
            self._partitions.pause(True)
            return []  # judged once decided
        self._judge(raw)
        return changes

    def _judge(self, raw: RawRecord) -> None:
        """The record was decided on: count it in the share of invalid ones, and stop at the
        limit."""
        self._fates.judged(raw)
        invalid, limit = self._fates.invalid, self.config.dlq_max_invalid_share
        if invalid.exceeds(limit) and self.limit_reached is None:
            self.limit_reached = Fatal(
                f"{invalid.share():.0%} of the last {len(invalid)} records were invalid "
                f"(limit DLQ_MAX_INVALID_SHARE={limit}): stopping rather than moving the topic "
                "into the dead-letter queue; check the producer upstream"
            )
            log.error("dlq_limit_reached", share=round(invalid.share(), 3), window=len(invalid))

    def _hold(self, exc: Retriable) -> None:
        """The registry gave no usable answer: the held records wait `registry_retry_s`."""
        self.registry_error = str(exc)
        self._held_until = self._clock.now() + self.config.registry_retry_s
        log.warning(
            "schema_registry_unavailable",
            error=self.registry_error,
            records_held=len(self.held),
            retry_in_s=self.config.registry_retry_s,
        )

    def _invalid(self, raw: RawRecord, exc: InvalidRecord) -> None:
        self._metrics.invalid_records.labels(exc.stage, exc.reason).inc()
        error_class = type(exc.__cause__ or exc).__name__
        self._fates.dead_letter(raw, exc.reason, exc.stage, exc.detail, error_class)

    def _validated(self, raw: RawRecord, now_ms: int) -> Changes:
        event = self._admission.decode(raw)
        if isinstance(event, str):
            self._fates.skip(raw.position, event)
            return []
        self._fates.decoded(raw, event)
        verdict = self._admission.route(event, raw.position, now_ms)
        for collision in verdict.collisions:
            self._report_collision(collision)
        if verdict.skipped is not None:  # a duplicate, or no export wants it: no changes
            self._fates.skip(raw.position, verdict.skipped)
            return []
        self._fates.routed(raw, verdict.changes)
        return verdict.changes

    def _report_collision(self, collision: TagCollision) -> None:
        self._metrics.tag_collisions.labels(collision.connection).inc()
        log.warning(
            "tag_collision",
            connection=collision.connection,
            tag=collision.tag,
            segments=[collision.first_segment, collision.segment_id],
            remedy="use {segment_id} in the tag template, so each segment has its own tag",
        )

    def _retry_held(self) -> tuple[Changes, list[RawRecord]]:
        """Decode held records again once the registry may be back, all of them or none: the
        changes of those that decode now, and the records still to be admitted (consumed while
        the others were held)."""
        if self._clock.now() < self._held_until:
            return [], []
        held, self.held = self.held, []
        now_ms = int(self._clock.now() * 1000)
        changes: Changes = []
        ready: list[RawRecord] = []
        for index, raw in enumerate(held):
            if self._fates.ledger.get(raw.position) is not raw:  # consumed after it went
                ready.append(raw)
                continue
            if self.limit_reached is not None:
                self.held = held[index:]  # not decided: the loop stops, nothing is committed
                return changes, ready
            try:
                changes.extend(self._validated(raw, now_ms))
            except InvalidRecord as exc:
                self._invalid(raw, exc)
            except Retriable as exc:
                self.held = held[index:]
                self._hold(exc)
                return changes, ready
            self._judge(raw)
        self.registry_error = None
        log.info("schema_registry_recovered")
        return changes, ready
