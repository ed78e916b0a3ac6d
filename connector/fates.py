"""What becomes of each consumed record, and what the outside world hears of it: done, skipped
or dead-lettered (with its reason), its result on the results topic where there is one, and its
offset released once all of that is delivered. The loop hands records in and the sink's outcomes
over; this owns the record ledger, the dead-letter and results producers, and the counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from connector.core.clock import Clock
from connector.core.errors import Fatal
from connector.core.events import ContactChange, Position, RawRecord, SegmentChange
from connector.core.intents import Outcome
from connector.core.ledger import Failed, InvalidShare, Ledger, Skipped
from connector.kafka.dlq import DeadLetterSink
from connector.kafka.results import (
    DEAD_LETTERED,
    DONE,
    SKIPPED,
    About,
    Results,
    result_value,
)
from connector.metrics import Metrics

log = structlog.get_logger("connector.pipeline")


@dataclass(frozen=True)
class FatesConfig:
    connection: str
    dlq_window_records: int
    log_dead_letters: bool  # a `dead_lettering` line each (not in a dry run)
    export_names: tuple[str, ...] = ()  # by export number, for the results topic


class Fates:
    def __init__(
        self,
        config: FatesConfig,
        dead_letters: DeadLetterSink,
        results: Results | None,
        metrics: Metrics,
        clock: Clock,
        email_hash: Callable[[str], str] | None,
    ) -> None:
        self.config = config
        self.ledger = Ledger()
        self._dlq = dead_letters
        # The results topic, if any: a record is released (its offset may pass) once its
        # result is delivered; `_about` holds what its result says until then.
        self._results = results
        self._about: dict[Position, About] = {}
        self._metrics = metrics
        self._clock = clock
        # Logs name a contact by a keyed hash of its email, never by the address.
        self._email_hash = email_hash
        self.stats = {"consumed": 0, "dead_lettered": 0, "skipped": 0, "done": 0}
        self.invalid = InvalidShare(config.dlq_window_records)  # for DLQ_MAX_INVALID_SHARE
        # Records consumed per topic, and skipped per reason, since the metrics were last told
        # (once per turn of the loop, not once per record: a label look-up costs more than the
        # rest of a skip).
        self._consumed: dict[str, int] = {}
        self._skipped: dict[tuple[str, str], int] = {}  # (connection, reason) -> records
        # The connection of each dead letter on its way, where a sink decided it (else the
        # metrics' default: decided before routing, it belongs to none).
        self._letter_connection: dict[Position, str] = {}
        # Told each record's fate (`done`, `skipped`, `dead_lettered`) as it is decided, before
        # its result is sent or its offset released: the tests check one fate per record here.
        self.observe: Callable[[RawRecord, str], None] | None = None

    # ---- records coming in ---------------------------------------------------------------------

    def admit(self, raw: RawRecord) -> None:
        self.ledger.admit(raw)
        self.stats["consumed"] += 1
        topic = raw.position.topic
        self._consumed[topic] = self._consumed.get(topic, 0) + 1

    def judged(self, raw: RawRecord) -> None:
        """The record was admitted and decided on: count it in the share of invalid ones."""
        self.invalid.add(invalid=self.ledger.is_dead_lettering(raw.position))

    def decoded(self, raw: RawRecord, event: SegmentChange) -> None:
        """Its result names the event, even if routing then finds it invalid."""
        if self._results is not None:
            self._about[raw.position] = About.of(event)

    def routed(self, raw: RawRecord, routed: list[tuple[str, ContactChange]]) -> None:
        """It goes to the exports of these changes."""
        about = self._about.get(raw.position)
        if about is not None and routed:
            if self._email_hash is not None:
                about.email_hash = self._email_hash(routed[0][1].email)
            names = self.config.export_names
            about.exports = tuple(names[change.export] for _, change in routed)
        self.ledger.fan_out(raw.position, len(routed))

    # ---- fates ---------------------------------------------------------------------------------

    def settle(self, outcome: Outcome) -> None:
        settled = self.ledger.settle(outcome)
        if settled is None:
            return  # other exports still owe theirs, or its fate is known already
        raw, fate = settled
        about = self._about.get(raw.position)
        if about is not None and not isinstance(fate, Skipped):
            about.contact_id = fate.contact_id
        if isinstance(fate, Failed):
            if outcome.connection:
                self._letter_connection[raw.position] = outcome.connection
            self.dead_letter(raw, fate.reason, "omnisend", fate.detail, "Rejected", fate.email)
        elif isinstance(fate, Skipped):
            self.skip(raw.position, fate.reason, outcome.connection)
        else:
            self.stats["done"] += 1
            self._finish(raw, DONE)

    def skip(self, position: Position, why: str, connection: str = "") -> None:
        key = (connection or self.config.connection, why)
        self._skipped[key] = self._skipped.get(key, 0) + 1
        self.stats["skipped"] += 1
        raw = self.ledger.get(position)
        if raw is not None:
            self._finish(raw, SKIPPED, why)

    def dead_letter(
        self,
        raw: RawRecord,
        reason: str,
        stage: str,
        detail: str,
        error_class: str,
        email: str = "",
    ) -> None:
        self.ledger.dead_lettering(raw.position)
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
        connection = self._letter_connection.pop(raw.position, self.config.connection)
        if not self.ledger.dead_lettered(raw):
            return  # revoked meanwhile (and perhaps consumed again since)
        self._metrics.dlq_records.labels(connection, reason).inc()
        self.stats["dead_lettered"] += 1
        self._finish(raw, DEAD_LETTERED, reason)

    def _finish(self, raw: RawRecord, outcome: str, reason: str | None = None) -> None:
        """The record's fate is known: its result goes to the results topic, if there is one,
        and the record is released once that is delivered; at once otherwise."""
        if self.observe is not None:
            self.observe(raw, outcome)
        if self._results is None:
            self._release(raw)
            return
        about = self._about.pop(raw.position, None)
        self.ledger.decided(raw.position)
        self._results.send(raw, result_value(raw, outcome, reason, about, self._clock.now()))

    def _release(self, raw: RawRecord) -> None:
        """Done with the record: its offset may be committed (unless it was revoked meanwhile,
        and perhaps consumed again since)."""
        self.ledger.release(raw)

    # ---- the producers -------------------------------------------------------------------------

    def poll(self) -> None:
        """Delivery reports of dead letters and results (the one producer serves both); the
        records consumed and skipped since the last call are counted in the metrics."""
        self._count()
        self._dlq.poll()
        self._take_delivered()  # a dead letter's result is sent by the results' poll below
        if self._results is not None:
            self._results.poll()
            self._take_delivered()

    def _count(self) -> None:
        if self._consumed:
            for topic, count in self._consumed.items():
                self._metrics.events_consumed.labels(topic).inc(count)
            self._consumed.clear()
        if self._skipped:
            skipped = self._metrics.events_skipped
            for (connection, why), count in self._skipped.items():
                skipped.labels(connection, why).inc(count)
            self._skipped.clear()

    def _take_delivered(self) -> None:
        """Dead letters written are done (their result goes now, if any); records whose
        result is written are released."""
        for raw, reason in self._dlq.delivered():
            self._dead_lettered(raw, reason)
        if self._results is not None:
            for raw in self._results.delivered():
                self._release(raw)

    def flush(self, deadline: float) -> None:
        """Dead letters and results confirmed, before `deadline` (of the clock): a dead letter's
        result goes once the dead letter is delivered, and a dead letter refused for its size
        goes again."""
        self._count()
        until = time.monotonic() + max(0.0, deadline - self._clock.now())
        while True:
            self._dlq.flush(max(0.0, until - time.monotonic()))
            self._take_delivered()
            if self._results is None:
                return
            self._results.flush(max(0.0, until - time.monotonic()))
            self._take_delivered()
            waiting = self._dlq.pending > 0 or self._results.pending > 0
            failed = self._dlq.failure or self._results.failure
            if not waiting or failed or time.monotonic() >= until:
                return

    @property
    def failure(self) -> Fatal | None:
        """A dead letter or result that cannot be written: the loop must stop."""
        return self._dlq.failure or (None if self._results is None else self._results.failure)

    def forget(self) -> None:
        """A rebalance: nothing in flight is ours any more."""
        self.ledger.forget()
        self._about.clear()
        self._letter_connection.clear()
