"""The loop: poll → decode → validate → de-duplicate → hand to the sink → collect fates →
dead-letter or mark done → commit; pause partitions when too much is in flight.

Runs on one thread (the consumer's). The sink works on its own thread; everything crossing over
goes through its thread-safe `submit` / `take_outcomes` / `drain`. What becomes of each record
(the ledger, dead letters, results) is `connector.fates`; the partitions and their budget share
are `connector.kafka.partitions`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from connector.core.admission import Admission
from connector.core.clock import Clock
from connector.core.codec import Decoder
from connector.core.errors import Crashed, ExitCode, Fatal, OffsetsWentBack, Retriable
from connector.core.events import RawRecord
from connector.core.routing import Router
from connector.fates import Fates, FatesConfig
from connector.intake import Intake, IntakeConfig
from connector.kafka.dlq import DeadLetterSink
from connector.kafka.partitions import Partitions
from connector.kafka.results import Results
from connector.kafka.source import TP, Source
from connector.metrics import Metrics
from connector.omnisend.sinks import Sinks

if TYPE_CHECKING:
    from connector.settings import Settings

log = structlog.get_logger("connector.pipeline")

# While no partitions were assigned yet, say so this often.
WAITING_EVERY_S = 10.0

CONSUME_BATCH = 500
# Poll briefly while work is in flight so fates are collected promptly; longer when idle.
BUSY_POLL_S = 0.02
IDLE_POLL_S = 0.2
# Resume consuming once in-flight work fell to this share of its cap: a gap between the two
# marks keeps partitions from flapping between paused and resumed.
RESUME_AT = 0.5


@dataclass(frozen=True)
class PipelineConfig:
    topic: str
    # From the settings (`from_settings`), which hold their defaults and meaning.
    max_in_flight_records: int
    max_in_flight_bytes: int
    max_value_bytes: int
    commit_interval_s: float
    shutdown_timeout_s: float
    revoke_timeout_s: float
    dedupe_cache_size: int
    dlq_max_invalid_share: float
    dlq_window_records: int
    # How the service, a dry run or a job runs the loop.
    connection: str = "default"  # the `connection` label of its metrics
    registry_retry_s: float = 1.0
    progress_every_s: float = 60.0  # the `progress` log line
    log_dead_letters: bool = True  # a `dead_lettering` line each (not in a dry run)
    commit: bool = True  # False in a dry run: offsets are tracked, never committed
    # Tools (backfill, replay): read these partitions from these offsets, without joining the
    # consumer group: {(topic, partition): first offset}.
    assignment: dict[tuple[str, int], int] | None = None
    # Tools: records this rejects are skipped as `not_selected` (e.g. replay of one reason).
    select: Callable[[RawRecord], bool] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, topic: str) -> PipelineConfig:
        return cls(
            topic=topic,
            max_in_flight_records=settings.max_in_flight_records,
            max_in_flight_bytes=settings.max_in_flight_bytes,
            max_value_bytes=settings.max_value_bytes,
            commit_interval_s=settings.commit_interval_s,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            revoke_timeout_s=settings.revoke_timeout_s,
            dedupe_cache_size=settings.dedupe_cache_size,
            dlq_max_invalid_share=settings.dlq_max_invalid_share,
            dlq_window_records=settings.dlq_window_records,
        )


class Pipeline:
    def __init__(
        self,
        config: PipelineConfig,
        source: Source,
        decoder: Decoder,
        router: Router,
        sinks: Sinks,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        clock: Clock,
        email_hash: Callable[[str], str] | None = None,
        results: Results | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self._sink = sinks
        self.fates = Fates(
            FatesConfig(
                config.connection,
                config.dlq_window_records,
                config.log_dead_letters,
                tuple(export.name for export in router.exports),
            ),
            dead_letters,
            results,
            metrics,
            clock,
            email_hash,
        )
        self._ledger = self.fates.ledger
        self._partitions = Partitions(source, config.topic, metrics, clock)
        self.intake = Intake(
            IntakeConfig(config.registry_retry_s, config.dlq_max_invalid_share),
            Admission(
                decoder, router, config.max_value_bytes, config.dedupe_cache_size, config.select
            ),
            self.fates,
            self._partitions,
            metrics,
            clock,
        )
        self._metrics = metrics
        self._clock = clock
        self._last_commit = clock.now()
        self._closing = False
        self.fatal: Fatal | None = None
        self.exit_code = ExitCode.OK
        self.broker_down = False  # set by the Kafka error callback, cleared by any answer
        self.last_step_at = time.monotonic()
        # Extra fields of the minutely progress line (lag, budget use, 429s), from the app.
        self.progress_fields: Callable[[], dict[str, Any]] = dict
        self._started_at = self._said_waiting_at = clock.now()
        self._progress_at = clock.now() + config.progress_every_s

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
        share = self._partitions.share()
        if share is not None and self.config.assignment is None:  # a job's is set by the job
            self._sink.reassign_budget(share)
        if records:
            self.broker_down = False
        if self.fatal is None:  # else stop at once: what is not processed is not committed
            try:
                self._sink.submit(self.intake.take(records))
            except OffsetsWentBack as exc:
                self.stop_for(exc, ExitCode.FAILED)
            self._check_limit()
        self._collect()
        self.fates.poll()
        self._backpressure()
        now = self._clock.now()
        if now - self._last_commit >= self.config.commit_interval_s:
            self._commit()
            self._partitions.show_blocked(self._ledger.offsets.heads(), now)
        self._report(now)

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
                partitions=len(self._partitions.assigned),
                paused=self._partitions.paused,
                **self.progress_fields(),
            )

    def _shutdown(self) -> None:
        if self.fatal is None:
            self._settle(self._clock.now() + self.config.shutdown_timeout_s)
            self._check_fatal()  # a dead letter or result that could not be written meanwhile
        else:
            self._collect()
            self.fates.poll()
            self._commit()  # what is done is done; unfinished work is not committed
        self._closing = True
        self._source.close()
        self._sink.stop()
        log.info("stopped", exit_code=self.exit_code, **self.stats)

    def stop_for(self, fatal: Fatal, exit_code: ExitCode) -> None:
        """Something cannot go on (a sink's fatal error, the dead-letter limit, a Kafka
        client's fatal error): the loop stops, committing only finished work."""
        if self.fatal is None:
            self.fatal, self.exit_code = fatal, exit_code
            log.error("fatal", error=str(fatal), exit_code=exit_code)

    def _check_limit(self) -> None:
        if self.intake.limit_reached is not None:
            self.stop_for(self.intake.limit_reached, ExitCode.DLQ_LIMIT)

    def _check_fatal(self) -> None:
        written = self.fates.failure
        fatal = self._sink.fatal or written
        if fatal is not None:
            code = ExitCode.FAILED if isinstance(fatal, Crashed) else ExitCode.OMNISEND_FATAL
            self.stop_for(fatal, ExitCode.KAFKA_FATAL if fatal is written else code)

    # ---- fates and flow control ----------------------------------------------------------------

    def _collect(self) -> None:
        for outcome in self._sink.take_outcomes():
            self.fates.settle(outcome)

    def _backpressure(self) -> None:
        """Pause when in-flight records or bytes reach their cap, or the sink has all the unsent
        work it can use; resume once below `RESUME_AT` of each."""
        records, size = len(self._ledger), self._ledger.bytes
        cfg, paused = self.config, self._partitions.paused
        full = records >= cfg.max_in_flight_records or size >= cfg.max_in_flight_bytes
        drained = (
            records <= cfg.max_in_flight_records * RESUME_AT
            and size <= cfg.max_in_flight_bytes * RESUME_AT
        )
        if (full or self._sink.saturated()) and not paused:
            self._partitions.pause(True)
            log.debug("backpressure_on", in_flight_records=records, in_flight_bytes=size)
        elif paused and drained and not self.intake.held and not self._sink.saturated(RESUME_AT):
            self._partitions.pause(False)
            log.debug("backpressure_off", in_flight_records=records, in_flight_bytes=size)
        self._partitions.hold_back(self._ledger.offsets.heads(), cfg.max_in_flight_records)
        self._metrics.in_flight_records.set(records)
        self._metrics.in_flight_bytes.set(size)

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
        for _ in range(2):  # outcomes that came during the first flush: their letters too
            self._collect()
            self.fates.flush(deadline)
        self._commit()

    # ---- rebalancing (called from inside poll) -------------------------------------------------

    def on_assign(self, partitions: list[TP]) -> None:
        self._partitions.assign(partitions)
        log.info("assigned", partitions=len(partitions))

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
        self.fates.forget()
        self.intake.forget()
        self._partitions.forget()

    # ---- what the app, probes and tests read ---------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        return self.fates.stats

    @property
    def assigned(self) -> list[tuple[str, int]]:
        return list(self._partitions.assigned)

    @property
    def assignment_seen(self) -> bool:
        """The first assignment callback ran (an empty assignment counts: a standby is ready)."""
        return self._partitions.seen

    @property
    def assigned_at(self) -> float | None:
        """Monotonic time of the first assignment."""
        return self._partitions.first_at

    @property
    def in_flight(self) -> int:
        return len(self._ledger)

    def done_positions(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset before which every record is done (committed or not)."""
        return self._ledger.offsets.done_positions()

    def committed(self) -> dict[tuple[str, int], int]:
        """Committed position per assigned partition."""
        return self._ledger.offsets.committed_positions()
