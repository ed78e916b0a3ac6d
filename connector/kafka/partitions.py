"""The partitions the group gave this member: which they are, whether they are paused, and the
share of the brand's budget they carry (this member's partitions over the topic's)."""

from __future__ import annotations

import time

import structlog

from connector.core.clock import Clock
from connector.core.errors import Retriable
from connector.kafka.source import TP, Source
from connector.metrics import Metrics

log = structlog.get_logger("connector.pipeline")

# The topic's partition count could not be read (a broker away): ask again after this long.
SHARE_RETRY_S = 1.0


class Partitions:
    def __init__(self, source: Source, topic: str, metrics: Metrics, clock: Clock) -> None:
        self._source = source
        self._topic = topic
        self._metrics = metrics
        self._clock = clock
        self.assigned: list[TP] = []
        self.paused = False
        # The first assignment came (an empty one counts: a standby is ready).
        self.seen = False
        self.first_at: float | None = None  # monotonic time of the first non-empty one
        self._share_due = False  # an assignment's budget share is still to be worked out
        self._share_retry_at = 0.0

    def assign(self, partitions: list[TP]) -> None:
        """The group's assignment (called from inside `Source.poll`)."""
        self.seen = True
        self.assigned = list(partitions)
        if self.first_at is None and partitions:
            self.first_at = time.monotonic()
        self.paused = False  # new partitions arrive unpaused
        # The budget share needs the topic's partition count: asked after `poll` returns, not
        # in here. A blocking consumer call inside a callback ends confluent-kafka's call state
        # for this thread, and the next callback of the same `consume` then aborts the process
        # (its `CallState_get` assertion), e.g. when a broker comes back.
        self._share_due = True

    def forget(self) -> None:
        self.assigned = []
        self.paused = False
        self._metrics.paused_partitions.set(0)  # new partitions arrive unpaused

    def positions(self) -> dict[TP, int]:
        """Where the consumer stands in each (see `Source.positions`)."""
        return self._source.positions(self.assigned)

    def pause(self, paused: bool) -> None:
        (self._source.pause if paused else self._source.resume)(self.assigned)
        self.paused = paused
        self._metrics.paused_partitions.set(len(self.assigned) if paused else 0)

    def share(self) -> float | None:
        """This member's share of the brand budget once an assignment changed it (None: it did
        not, or the broker cannot say how many partitions the topic has just now, in which case
        the old share holds and it is asked again at a later turn)."""
        if not self._share_due:
            return None
        now = self._clock.now()
        if now < self._share_retry_at:
            return None
        try:
            total = self._source.partition_count(self._topic)
        except Retriable as exc:
            self._share_retry_at = now + SHARE_RETRY_S
            log.debug("budget_share_unknown", error=str(exc))
            return None
        self._share_due = False
        share = len(self.assigned) / total if total else 1.0
        log.info("budget_share", topic_partitions=total, budget_share=round(share, 3))
        return share
