"""The loop: poll → decode → validate → de-duplicate → hand to the sink → collect fates →
dead-letter or mark done → commit; pause partitions when too much is in flight.

Runs on one thread (the consumer's). The sink works on its own thread; everything crossing over
goes through its thread-safe `submit` / `take_outcomes` / `drain`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter

from connector.core.admission import Admission
from connector.core.clock import Clock
from connector.core.coalesce import Outcome
from connector.core.codec import Decoder
from connector.core.errors import Crashed, ExitCode, Fatal, InvalidRecord, Retriable
from connector.core.events import ContactChange, Position, RawRecord
from connector.core.ledger import Failed, Ledger, Skipped
from connector.core.routing import Router, TagCollision
from connector.kafka.dlq import DeadLetterSink
from connector.kafka.results import (
    DEAD_LETTERED,
    DONE,
    SKIPPED,
    About,
    Released,
    Results,
    result_value,
)
from connector.kafka.source import TP, Source
from connector.metrics import Metrics
from connector.omnisend.sinks import Sinks

log = structlog.get_logger("connector.pipeline")

# The topic's partition count could not be read (a broker away): ask again after this long.
SHARE_RETRY_S = 1.0
# While no partitions were assigned yet, say so this often.
WAITING_EVERY_S = 10.0

CONSUME_BATCH = 500
# Poll briefly while work is in flight so fates are collected promptly; longer when idle.
BUSY_POLL_S = 0.02
IDLE_POLL_S = 0.2
# Resume consuming once in-flight work fell to this share of its cap: a gap between the two
# marks keeps partitions from flapping between paused and resumed.
RESUME_AT = 0.5


class InvalidShare:
    """The share of invalid records among the last `window` consumed."""

    # Judging fewer records than this would stop the connector on a handful of bad ones.
    MIN_RECORDS = 100

    def __init__(self, window: int) -> None:
        self._window: deque[bool] = deque(maxlen=max(window, 1))
        self._invalid = 0

    def add(self, invalid: bool) -> None:
        if len(self._window) == self._window.maxlen:
            self._invalid -= self._window[0]
        self._window.append(invalid)
        self._invalid += invalid

    def share(self) -> float:
        return self._invalid / len(self._window) if self._window else 0.0

    def exceeds(self, limit: float) -> bool:
        enough = min(self.MIN_RECORDS, self._window.maxlen or 1)
        return len(self._window) >= enough and self.share() > limit

    def __len__(self) -> int:
        return len(self._window)


@dataclass(frozen=True)
class PipelineConfig:
    topic: str
    connection: str = "default"
    max_in_flight_records: int = 50_000
    max_in_flight_bytes: int = 64 * 1024 * 1024
    max_value_bytes: int = 1024 * 1024
    commit_interval_s: float = 1.0
    shutdown_timeout_s: float = 30.0
    revoke_timeout_s: float = 15.0
    dedupe_cache_size: int = 200_000
    registry_retry_s: float = 1.0
    dlq_max_invalid_share: float = 0.5
    progress_every_s: float = 60.0  # the `progress` log line
    log_dead_letters: bool = True  # a `dead_lettering` line each (not in a dry run)
    dlq_window_records: int = 1000
    commit: bool = True  # False in a dry run: offsets are tracked, never committed
    # Tools (backfill, replay): read these partitions from these offsets, without joining the
    # consumer group: {(topic, partition): first offset}.
    assignment: dict[tuple[str, int], int] | None = None
    # Tools: records this rejects are skipped as `not_selected` (e.g. replay of one reason).
    select: Callable[[RawRecord], bool] | None = None


class Pipeline:
    def __init__(
        self,
        config: PipelineConfig,
        source: Source,
        decoder: Decoder,
        router: Router,
        sinks: Sinks,
        dead_letters: Callable[[Callable[[RawRecord, str], None]], DeadLetterSink],
        metrics: Metrics,
        clock: Clock,
        email_hash: Callable[[str], str] | None = None,
        results: Callable[[Released], Results] | None = None,
    ) -> None:
        self.config = config
        # Logs name a contact by a keyed hash of its email, never by the address.
        self._email_hash = email_hash
        self._source = source
        self._admission = Admission(
            decoder, router, config.max_value_bytes, config.dedupe_cache_size, config.select
        )
        self._sink = sinks
        self._dlq = dead_letters(self._dead_lettered)
        # The results topic, if any: a record is released (its offset may pass) once its
        # result is delivered; `_about` holds what its result says until then.
        self._results = None if results is None else results(self._release)
        self._about: dict[Position, About] = {}
        self._metrics = metrics
        self._clock = clock
        self._ledger = Ledger()
        self._held: list[RawRecord] = []  # records waiting for an unreachable Schema Registry
        self._held_until = 0.0
        self._assigned: list[TP] = []
        self._paused = False
        self._last_commit = clock.now()
        self._closing = False
        self.fatal: Fatal | None = None
        self.exit_code = ExitCode.OK
        self.broker_down = False  # set by the Kafka error callback, cleared by any answer
        self.last_step_at = time.monotonic()
        self.assigned_at: float | None = None  # monotonic time of the first assignment
        # The first assignment callback ran (an empty assignment counts: a standby is ready).
        self.assignment_seen = False
        self._share_due = False  # an assignment's budget share is still to be worked out
        self._share_retry_at = 0.0
        # Extra fields of the minutely progress line (lag, budget use, 429s), from the app.
        self.progress_fields: Callable[[], dict[str, Any]] = dict
        self._started_at = clock.now()
        self._said_waiting_at = clock.now()
        self._progress_at = clock.now() + config.progress_every_s
        self.stats = {"consumed": 0, "dead_lettered": 0, "skipped": 0, "done": 0}
        self._recent = InvalidShare(config.dlq_window_records)
        self._consumed: dict[str, Counter] = {}  # topic -> its counter: no label look-up per event

    # ---- lifecycle -----------------------------------------------------------------------------

    def run(self, stop: threading.Event, until: Callable[[Pipeline], bool] | None = None) -> int:
        """Consume until `stop` is set, `until(self)` holds, or something fatal happens."""
        if self.config.assignment is not None:
            self._source.assign(self.config.assignment)
            self.on_assign(list(self.config.assignment))
        else:
            self._source.subscribe(self.config.topic, self)
            log.info("waiting_for_assignment", topic=self.config.topic)
        try:
            while not stop.is_set() and self.fatal is None:
                self.step()
                if until is not None and until(self):
                    break
        finally:
            self._shutdown()
        return self.exit_code

    def step(self) -> None:
        """One turn of the loop. Blocks at most `IDLE_POLL_S`."""
        self.last_step_at = time.monotonic()
        self._check_fatal()
        busy = bool(self._ledger)
        records = self._source.poll(CONSUME_BATCH, BUSY_POLL_S if busy else IDLE_POLL_S)
        if self._share_due:
            self._apply_share()
        if records:
            self.broker_down = False
        if self._held:
            self._held.extend(records)
            records = self._retry_held()
        changes: list[tuple[str, ContactChange]] = []
        for raw in records:
            if self.fatal is not None:
                break  # stop at once: what follows is not processed, so not committed
            changes.extend(self._accept(raw))
        self._sink.submit(changes)
        self._collect()
        self._poll_producers()
        self._backpressure()
        now = self._clock.now()
        if now - self._last_commit >= self.config.commit_interval_s:
            self._commit()
        self._report(now)

    def _poll_producers(self) -> None:
        """Delivery reports of dead letters and results (the one producer serves both)."""
        self._dlq.poll()
        if self._results is not None:
            self._results.poll()

    def _report(self, now: float) -> None:
        """A line while the group has not assigned anything yet, and a summary every minute."""
        if not self.assignment_seen and now - self._said_waiting_at >= WAITING_EVERY_S:
            self._said_waiting_at = now
            waited = round(now - self._started_at)
            log.info("waiting_for_assignment", topic=self.config.topic, waited_s=waited)
        if now >= self._progress_at:
            self._progress_at = now + self.config.progress_every_s
            log.info(
                "progress",
                **self.stats,
                in_flight=len(self._ledger),
                partitions=len(self._assigned),
                paused=self._paused,
                **self.progress_fields(),
            )

    def _shutdown(self) -> None:
        if self.fatal is None:
            self._settle(self._clock.now() + self.config.shutdown_timeout_s)
            self._check_fatal()  # a dead letter or result that could not be written meanwhile
        else:
            self._collect()
            self._poll_producers()
            self._commit()  # what is done is done; unfinished work is not committed
        self._closing = True
        self._source.close()
        self._sink.stop()
        log.info("stopped", exit_code=self.exit_code, **self.stats)

    def _check_fatal(self) -> None:
        results = None if self._results is None else self._results.failure
        fatal = self._sink.fatal or self._dlq.failure or results
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
            if isinstance(fatal, Crashed):
                self.exit_code = ExitCode.FAILED
            elif fatal is self._dlq.failure or fatal is results:
                self.exit_code = ExitCode.KAFKA_FATAL
            else:
                self.exit_code = ExitCode.OMNISEND_FATAL
            log.error("fatal", error=str(fatal), exit_code=self.exit_code)

    # ---- one record ----------------------------------------------------------------------------

    def _accept(self, raw: RawRecord) -> list[tuple[str, ContactChange]]:
        position = raw.position
        self._ledger.admit(raw)
        self.stats["consumed"] += 1
        consumed = self._consumed.get(position.topic)
        if consumed is None:
            consumed = self._consumed[position.topic] = self._metrics.events_consumed.labels(
                position.topic
            )
        consumed.inc()
        changes = self._prepare(raw)
        self._recent.add(invalid=self._ledger.is_dead_lettering(position))
        if self._recent.exceeds(self.config.dlq_max_invalid_share) and self.fatal is None:
            self.fatal = Fatal(
                f"{self._recent.share():.0%} of the last {len(self._recent)} records were invalid "
                f"(limit DLQ_MAX_INVALID_SHARE={self.config.dlq_max_invalid_share}): stopping rather "
                "than moving the topic into the dead-letter queue; check the producer upstream"
            )
            self.exit_code = ExitCode.DLQ_LIMIT
            log.error(
                "dlq_limit_reached", share=round(self._recent.share(), 3), window=len(self._recent)
            )
        return changes

    def _prepare(self, raw: RawRecord) -> list[tuple[str, ContactChange]]:
        try:
            return self._validated(raw)
        except InvalidRecord as exc:
            self._metrics.invalid_records.labels(exc.stage, exc.reason).inc()
            self._dead_letter(
                raw, exc.reason, exc.stage, exc.detail, type(exc.__cause__ or exc).__name__
            )
        except Retriable as exc:
            log.warning("schema_registry_unavailable", error=str(exc))
            self._held.append(raw)
            self._held_until = self._clock.now() + self.config.registry_retry_s
            self._pause(True)
        return []

    def _validated(self, raw: RawRecord) -> list[tuple[str, ContactChange]]:
        event = self._admission.decode(raw)
        if isinstance(event, str):
            self._skip(raw.position, event)
            return []
        about = None
        if self._results is not None:  # even if routing finds it invalid: it says whose it was
            about = self._about[raw.position] = About.of(event)
        verdict = self._admission.route(event, raw.position, int(self._clock.now() * 1000))
        for collision in verdict.collisions:
            self._report_collision(collision)
        routed = verdict.changes
        if about is not None and routed:
            if self._email_hash is not None:
                about.email_hash = self._email_hash(routed[0][1].email)
            exports = self._admission.router.exports
            about.exports = tuple(exports[c.export].name for _, c in routed)
        if verdict.skipped is not None:
            self._skip(raw.position, verdict.skipped)
        else:
            self._ledger.fan_out(raw.position, len(routed))
        return routed

    def _report_collision(self, collision: TagCollision) -> None:
        self._metrics.tag_collisions.labels(collision.connection).inc()
        log.warning(
            "tag_collision",
            connection=collision.connection,
            tag=collision.tag,
            segments=[collision.first_segment, collision.segment_id],
            remedy="use {segment_id} in the tag template, so each segment has its own tag",
        )

    def _retry_held(self) -> list[RawRecord]:
        """Decode held records again once the registry may be back; all of them or none."""
        if self._clock.now() < self._held_until:
            return []
        held, self._held = self._held, []
        ready: list[RawRecord] = []
        for index, raw in enumerate(held):
            if self._ledger.get(raw.position) is not raw:  # consumed after the registry went
                ready.append(raw)
                continue
            try:
                changes = self._validated(raw)
            except InvalidRecord as exc:
                self._metrics.invalid_records.labels(exc.stage, exc.reason).inc()
                self._dead_letter(
                    raw, exc.reason, exc.stage, exc.detail, type(exc.__cause__ or exc).__name__
                )
                continue
            except Retriable:
                self._held = held[index:]
                self._held_until = self._clock.now() + self.config.registry_retry_s
                return ready
            self._sink.submit(changes)
        log.info("schema_registry_recovered")
        return ready

    # ---- fates ---------------------------------------------------------------------------------

    def _collect(self) -> None:
        for outcome in self._sink.take_outcomes():
            self._apply(outcome)

    def _apply(self, outcome: Outcome) -> None:
        settled = self._ledger.settle(outcome)
        if settled is None:
            return  # other exports still owe theirs, or its fate is known already
        raw, fate = settled
        about = self._about.get(raw.position)
        if about is not None and not isinstance(fate, Skipped):
            about.contact_id = fate.contact_id
        if isinstance(fate, Failed):
            self._dead_letter(raw, fate.reason, "omnisend", fate.detail, "Rejected", fate.email)
        elif isinstance(fate, Skipped):
            self._skip(raw.position, fate.reason)
        else:
            self.stats["done"] += 1
            self._finish(raw, DONE)

    def _skip(self, position: Position, why: str) -> None:
        self._metrics.events_skipped.labels(self.config.connection, why).inc()
        self.stats["skipped"] += 1
        raw = self._ledger.get(position)
        if raw is not None:
            self._finish(raw, SKIPPED, why)

    def _finish(self, raw: RawRecord, outcome: str, reason: str | None = None) -> None:
        """The record's fate is known: its result goes to the results topic, if there is one,
        and the record is released once that is delivered; at once otherwise."""
        if self._results is None:
            self._release(raw)
            return
        about = self._about.pop(raw.position, None)
        self._ledger.decided(raw.position)
        self._results.send(raw, result_value(raw, outcome, reason, about, self._clock.now()))

    def _release(self, raw: RawRecord) -> None:
        """Done with the record: its offset may be committed (unless it was revoked meanwhile,
        and perhaps consumed again since)."""
        self._ledger.release(raw)

    def _dead_letter(
        self,
        raw: RawRecord,
        reason: str,
        stage: str,
        detail: str,
        error_class: str,
        email: str = "",
    ) -> None:
        self._ledger.dead_lettering(raw.position)
        contact: dict[str, str] = {}
        if email and self._email_hash is not None:
            contact["email_hash"] = self._email_hash(email)
        if self.config.log_dead_letters:  # a dry run counts them in its report instead
            log.info(
                "dead_lettering",
                reason=reason,
                stage=stage,
                topic=raw.position.topic,
                partition=raw.position.partition,
                offset=raw.position.offset,
                **contact,
            )
        self._dlq.send(raw, reason, stage, detail, error_class)

    def _dead_lettered(self, raw: RawRecord, reason: str) -> None:
        if not self._ledger.dead_lettered(raw):
            return  # revoked meanwhile (and perhaps consumed again since)
        self._metrics.dlq_records.labels(self.config.connection, reason).inc()
        self.stats["dead_lettered"] += 1
        self._finish(raw, DEAD_LETTERED, reason)

    # ---- flow control and offsets --------------------------------------------------------------

    def _backpressure(self) -> None:
        """Pause when in-flight records or bytes reach their cap, or the sink has all the unsent
        work it can use; resume once below `RESUME_AT` of each."""
        records, size = len(self._ledger), self._ledger.bytes
        cfg = self.config
        full = records >= cfg.max_in_flight_records or size >= cfg.max_in_flight_bytes
        drained = (
            records <= cfg.max_in_flight_records * RESUME_AT
            and size <= cfg.max_in_flight_bytes * RESUME_AT
        )
        if (full or self._sink.saturated()) and not self._paused:
            self._pause(True)
            log.debug("backpressure_on", in_flight_records=records, in_flight_bytes=size)
        elif self._paused and drained and not self._held and not self._sink.saturated(RESUME_AT):
            self._pause(False)
            log.debug("backpressure_off", in_flight_records=records, in_flight_bytes=size)
        self._metrics.in_flight_records.set(records)
        self._metrics.in_flight_bytes.set(size)

    def _pause(self, paused: bool) -> None:
        partitions = self._assigned
        (self._source.pause if paused else self._source.resume)(partitions)
        self._paused = paused
        self._metrics.paused_partitions.set(len(partitions) if paused else 0)

    def _commit(self) -> None:
        self._last_commit = self._clock.now()
        positions = self._ledger.offsets.to_commit()
        if not positions or not self.config.commit:
            return
        try:
            self._source.commit(positions)
        except Retriable as exc:
            log.warning("commit_failed", error=str(exc))
            return
        self._ledger.offsets.committed(positions)
        self.broker_down = False
        self._metrics.offsets_committed.inc()
        self._metrics.last_commit.set(self._clock.now())

    def _settle(self, deadline: float) -> None:
        """Finish what can be finished before `deadline`, and commit it."""
        self._sink.drain(max(0.0, deadline - self._clock.now()))
        self._collect()
        self._flush_producers(deadline)
        self._collect()
        self._commit()

    def _flush_producers(self, deadline: float) -> None:
        """Dead letters and results confirmed, before `deadline`: a dead letter's result goes
        once the dead letter is delivered, and a dead letter refused for its size goes again."""
        until = time.monotonic() + max(0.0, deadline - self._clock.now())
        while True:
            self._dlq.flush(max(0.0, until - time.monotonic()))
            if self._results is None:
                return
            self._results.flush(max(0.0, until - time.monotonic()))
            waiting = self._dlq.pending > 0 or self._results.pending > 0
            failed = self._dlq.failure or self._results.failure
            if not waiting or failed or time.monotonic() >= until:
                return

    # ---- rebalancing (called from inside poll) -------------------------------------------------

    def on_assign(self, partitions: list[TP]) -> None:
        self.assignment_seen = True
        self._assigned = list(partitions)
        if self.assigned_at is None and partitions:
            self.assigned_at = time.monotonic()
        self._paused = False  # new partitions arrive unpaused
        # The budget share needs the topic's partition count: asked after `consume` returns,
        # not in here. A blocking consumer call inside a callback ends confluent-kafka's call
        # state for this thread, and the next callback of the same `consume` then aborts the
        # process (its `CallState_get` assertion), e.g. when a broker comes back.
        self._share_due = True
        log.info("assigned", partitions=len(partitions))

    def _apply_share(self) -> None:
        """This replica's share of the brand budget, from its partitions of the topic. If the
        broker cannot say how many the topic has just now, the old share holds and it is asked
        again at a later turn."""
        now = self._clock.now()
        if now < self._share_retry_at:
            return
        try:
            total = self._source.partition_count(self.config.topic)
        except Retriable as exc:
            self._share_retry_at = now + SHARE_RETRY_S
            log.debug("budget_share_unknown", error=str(exc))
            return
        self._share_due = False
        share = len(self._assigned) / total if total else 1.0
        if self.config.assignment is None:  # a tool's share is set by the tool
            self._sink.reassign_budget(share)
        log.info("budget_share", topic_partitions=total, budget_share=round(share, 3))

    def on_revoke(self, partitions: list[TP]) -> None:
        if not self._closing and self.fatal is None:
            self._settle(self._clock.now() + self.config.revoke_timeout_s)
        self._forget()
        log.info("revoked", partitions=len(partitions))

    def on_lost(self, partitions: list[TP]) -> None:
        self._forget()  # the partitions belong to someone else already: commit nothing
        log.warning("partitions_lost", partitions=len(partitions))

    def _forget(self) -> None:
        self._sink.reset()
        self._ledger.forget()
        self._about.clear()
        self._held.clear()
        self._admission.forget()
        self._assigned = []
        self._paused = False

    @property
    def assigned(self) -> list[tuple[str, int]]:
        return list(self._assigned)

    @property
    def in_flight(self) -> int:
        return len(self._ledger)

    def done_positions(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset before which every record is done (committed or not)."""
        return self._ledger.offsets.done_positions()

    def committed(self) -> dict[tuple[str, int], int]:
        """Committed position per assigned partition."""
        return self._ledger.offsets.committed_positions()
