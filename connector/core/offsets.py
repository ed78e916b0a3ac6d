"""Per-partition done-tracking: which offset may be committed.

A record is *done* when Omnisend accepted its change, it was skipped, or its DLQ copy was
delivered. The commit position of a partition is the lowest offset not yet done (or, when all
are done, one past the last tracked offset, or the consumer's own position if it went further:
past a transaction's commit marker, which no record reaches): committing it never skips an
unfinished record.
"""

from __future__ import annotations

from collections import deque

from connector.core.errors import OffsetsWentBack

TopicPartition = tuple[str, int]


class PartitionOffsets:
    """Offsets of one partition in the order consumed (increasing)."""

    __slots__ = ("_done", "_last", "_pending", "_reached")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._last: int | None = None
        self._reached: int | None = None

    def track(self, offset: int) -> None:
        if self._last is not None and offset <= self._last:
            raise OffsetsWentBack(
                f"a partition's offsets went back without a rebalance (offset {offset} after "
                f"{self._last}): log truncation, or the topic made again; stopping, to resume "
                "from the committed position"
            )
        self._pending.append(offset)
        self._last = offset

    def done(self, offset: int) -> None:
        self._done.add(offset)
        # Drop the done prefix now, so memory is bounded by unfinished work, not by history.
        while self._pending and self._pending[0] in self._done:
            self._done.discard(self._pending.popleft())

    def reached(self, position: int) -> None:
        """The consumer stands at `position`, and every record before it was tracked: what
        lies between the last record and it are markers or aborted records, done by nature."""
        if self._reached is None or position > self._reached:
            self._reached = position

    def position(self) -> int | None:
        """The offset to commit: the first unfinished one, else one past the last tracked or
        the position reached, whichever is further."""
        if self._pending:
            return self._pending[0]
        after = None if self._last is None else self._last + 1
        if self._reached is None or (after is not None and after >= self._reached):
            return after
        return self._reached

    @property
    def unfinished(self) -> int:
        """Offsets kept: the first unfinished one and every one after it, finished or not."""
        return len(self._pending)

    def head(self) -> int | None:
        """The first unfinished offset, where the commit stands (None: nothing unfinished)."""
        return self._pending[0] if self._pending else None

    @property
    def finished_behind(self) -> int:
        """Records finished after the first unfinished one, kept until it finishes."""
        return len(self._done)


class OffsetTracker:
    """Done-tracking for every assigned partition, and what has been committed."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._committed: dict[TopicPartition, int] = {}

    def track(self, tp: TopicPartition, offset: int) -> None:
        offsets = self._partitions.get(tp)  # per record: make one only for a new partition
        if offsets is None:
            offsets = self._partitions[tp] = PartitionOffsets()
        offsets.track(offset)

    def reached(self, positions: dict[TopicPartition, int]) -> None:
        """The consumer's positions, read when every record it delivered has been tracked."""
        for tp, position in positions.items():
            offsets = self._partitions.get(tp)
            if offsets is None:
                offsets = self._partitions[tp] = PartitionOffsets()
            offsets.reached(position)

    def done(self, tp: TopicPartition, offset: int) -> None:
        partition = self._partitions.get(tp)
        if partition is not None:  # a revoked partition's late completion is dropped
            partition.done(offset)

    def to_commit(self) -> dict[TopicPartition, int]:
        """Positions that moved forward since the last commit; never backwards."""
        out = {}
        for tp, partition in self._partitions.items():
            position = partition.position()
            if position is not None and position > self._committed.get(tp, -1):
                out[tp] = position
        return out

    def committed(self, positions: dict[TopicPartition, int]) -> None:
        for tp, position in positions.items():
            self._committed[tp] = max(position, self._committed.get(tp, -1))

    def committed_positions(self) -> dict[TopicPartition, int]:
        return dict(self._committed)

    def done_positions(self) -> dict[TopicPartition, int]:
        """Per partition, the offset before which every record is done, committed or not."""
        out = {}
        for tp, partition in self._partitions.items():
            position = partition.position()
            if position is not None:
                out[tp] = position
        return out

    def forget(self, tps: list[TopicPartition]) -> None:
        """Drop the state of revoked partitions."""
        for tp in tps:
            self._partitions.pop(tp, None)
            self._committed.pop(tp, None)

    def unfinished(self, tp: TopicPartition | None = None) -> int:
        if tp is not None:
            partition = self._partitions.get(tp)
            return 0 if partition is None else partition.unfinished
        return sum(p.unfinished for p in self._partitions.values())

    def heads(self) -> dict[TopicPartition, tuple[int | None, int]]:
        """Per partition, its first unfinished offset (None: none) and how many records
        finished behind it wait for it."""
        return {tp: (p.head(), p.finished_behind) for tp, p in self._partitions.items()}

    def partitions(self) -> list[TopicPartition]:
        return list(self._partitions)
