"""The partitions the group gave this member: which they are, whether they are paused (all of
them for backpressure, or one whose commit a record holds back), how long each one's commit
has stood at the same record, and the share of the brand's budget they carry (this member's
partitions over the topic's)."""

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
# A partition held back behind an unfinished record is resumed once the offsets kept behind it
# fall below this share of the limit (they do when it finishes).
HELD_RESUME_AT = 0.5


class Partitions:
    def __init__(self, source: Source, topic: str, metrics: Metrics, clock: Clock) -> None:
        self._source = source
        self._topic = topic
        self._metrics = metrics
        self._clock = clock
        self.assigned: list[TP] = []
        self.paused = False  # all of them, for backpressure
        # Paused alone: so many records finished behind the first unfinished one that their
        # offsets, kept until it finishes, reached the limit.
        self.held: set[TP] = set()
        self._paused_at_source: set[TP] = set()
        self._heads: dict[TP, tuple[int, float]] = {}  # first unfinished offset, since when
        self._shown: set[TP] = set()  # partitions with a `partition_blocked` series
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
        self._unpaused()  # new partitions arrive unpaused
        # The budget share needs the topic's partition count: asked after `poll` returns, not
        # in here. A blocking consumer call inside a callback ends confluent-kafka's call state
        # for this thread, and the next callback of the same `consume` then aborts the process
        # (its `CallState_get` assertion), e.g. when a broker comes back.
        self._share_due = True

    def forget(self) -> None:
        for topic, partition in self._shown:
            self._metrics.partition_blocked.remove(topic, str(partition))
        self._shown.clear()
        self._heads.clear()
        self.assigned = []
        self._unpaused()  # new partitions arrive unpaused

    def _unpaused(self) -> None:
        self.paused = False
        self.held.clear()
        self._paused_at_source.clear()
        self._metrics.paused_partitions.set(0)

    def positions(self) -> dict[TP, int]:
        """Where the consumer stands in each (see `Source.positions`)."""
        return self._source.positions(self.assigned)

    def pause(self, paused: bool) -> None:
        """Pause all of them (backpressure), or resume all but those held back."""
        self.paused = paused
        self._apply()

    def hold_back(self, heads: dict[TP, tuple[int | None, int]], limit: int) -> None:
        """Pause a partition alone once `limit` records finished behind its first unfinished
        one (they cannot be committed before it, so their offsets wait with it: without this
        they would pile up for as long as it stands); resume it below `HELD_RESUME_AT` of
        that. Records still unfinished do not count: the loop's backpressure bounds those."""
        held = {
            tp
            for tp in self.assigned
            if (behind := heads.get(tp, (None, 0))[1]) >= limit
            or (tp in self.held and behind > limit * HELD_RESUME_AT)
        }
        if held != self.held:
            for tp in held - self.held:
                head, behind = heads[tp]
                log.warning(
                    "partition_held_back",
                    topic=tp[0],
                    partition=tp[1],
                    offset=head,
                    finished_behind=behind,
                )
            self.held = held
            self._apply()

    def _apply(self) -> None:
        wanted = set(self.assigned) if self.paused else self.held & set(self.assigned)
        if wanted - self._paused_at_source:
            self._source.pause(sorted(wanted - self._paused_at_source))
        if self._paused_at_source - wanted:
            self._source.resume(sorted(self._paused_at_source - wanted))
        self._paused_at_source = wanted
        self._metrics.paused_partitions.set(len(wanted))

    def show_blocked(self, heads: dict[TP, tuple[int | None, int]], now: float) -> None:
        """Per assigned partition, how long its commit has stood at the same unfinished record
        (0: none is unfinished, or the first unfinished one changed since the last look)."""
        for tp in self.assigned:
            head = heads.get(tp, (None, 0))[0]
            since = self._heads.get(tp)
            if head is None:
                self._heads.pop(tp, None)
            elif since is None or since[0] != head:
                self._heads[tp] = since = (head, now)
            blocked = 0.0 if head is None or since is None else now - since[1]
            self._metrics.partition_blocked.labels(tp[0], str(tp[1])).set(blocked)
            self._shown.add(tp)

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
