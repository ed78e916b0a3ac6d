"""An in-memory `Source` (the pipeline's view of a consumer) and a producer shaped like
confluent-kafka's as the dead-letter producer uses it, so the whole pipeline runs in a unit test
without a broker.
The integration tests against the real broker stay; these make random streams cheap."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from confluent_kafka import KafkaError, KafkaException

from connector.core.events import Position, RawRecord
from connector.kafka.dlq import record_size
from connector.kafka.source import TP, Rebalance


@dataclass
class MemorySource:
    """A topic's partitions in memory, as a `Source`. `subscribe` assigns every partition at the
    next `poll`; paused partitions return nothing; `commit` is checked by `on_commit` (which may
    raise) and remembered; committing backwards is an error, as it would be a bug."""

    topic: str
    partitions: dict[int, list[RawRecord]]
    on_commit: Callable[[TP, int], None] = lambda tp, offset: None
    committed: dict[TP, int] = field(default_factory=dict)
    reading_at: dict[TP, int] = field(default_factory=dict)  # the next offset to deliver
    paused: set[TP] = field(default_factory=set)
    # Offsets past a partition's last record that no record reaches (a transaction's commit
    # marker): the consumer's position moves over them once it has read the rest.
    markers: dict[int, int] = field(default_factory=dict)
    closed: bool = False
    _listener: Rebalance | None = None
    _assigned: list[TP] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        topic: str,
        records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    ) -> Self:
        """From (partition, key, value, headers) in the order produced."""
        partitions: dict[int, list[RawRecord]] = {}
        for partition, key, value, headers in records:
            log = partitions.setdefault(partition, [])
            position = Position(topic, partition, len(log))
            log.append(RawRecord(position, key, value, headers, 1_790_000_000_000))
        return cls(topic, partitions)

    def end(self, partition: int) -> int:
        return len(self.partitions.get(partition, []))

    def subscribe(self, topic: str, listener: Rebalance) -> None:
        assert topic == self.topic
        self._listener = listener

    def assign(self, starts: Mapping[TP, int]) -> None:
        self._assigned = list(starts)
        for tp, offset in starts.items():
            self.reading_at[tp] = max(offset, 0)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        if self.closed:
            raise RuntimeError("Consumer closed")
        if self._listener is not None and not self._assigned:
            tps = [(self.topic, p) for p in sorted(self.partitions)]
            self.assign({tp: self.committed.get(tp, 0) for tp in tps})
            self._listener.on_assign(tps)
        out: list[RawRecord] = []
        for tp in self._assigned:
            if tp in self.paused:
                continue
            log = self.partitions.get(tp[1], [])
            position = self.reading_at.get(tp, 0)
            take = log[position : position + max_records - len(out)]
            # A new object each time, as a consumer makes one per message it returns.
            out.extend(
                RawRecord(r.position, r.key, r.value, r.headers, r.timestamp_ms) for r in take
            )
            self.reading_at[tp] = position + len(take)
        if not out:
            time.sleep(min(timeout_s, 0.002))
        return out

    def pause(self, partitions: Sequence[TP]) -> None:
        self.paused |= set(partitions)

    def resume(self, partitions: Sequence[TP]) -> None:
        self.paused -= set(partitions)

    def positions(self, partitions: Sequence[TP]) -> dict[TP, int]:
        out = {}
        for tp in partitions:
            if tp in self.reading_at:
                at, end = self.reading_at[tp], self.end(tp[1])
                out[tp] = at + self.markers.get(tp[1], 0) if at >= end else at
        return out

    def commit(self, positions: Mapping[TP, int]) -> None:
        for tp, offset in positions.items():
            if offset < self.committed.get(tp, 0):
                raise AssertionError(f"{tp} committed backwards: {offset}")
            self.on_commit(tp, offset)
            self.committed[tp] = offset

    def partition_count(self, topic: str) -> int:
        return len(self.partitions) if topic == self.topic else 0

    def close(self) -> None:
        self.closed = True


class MemoryProducer:
    """The dead-letter producer: refuses a message over `max_bytes` in `produce` (as
    librdkafka does), delivers the rest at the next `poll` or `flush`."""

    def __init__(self, max_bytes: int, lag_polls: int = 0, capacity: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.lag_polls = lag_polls  # polls a message waits before its delivery report
        self.capacity = capacity  # queued messages before `produce` raises BufferError
        self.queued: list[tuple[dict[str, Any], Callable[..., None], int]] = []
        self.delivered: list[dict[str, Any]] = []
        self._reporting = False

    def produce(self, topic: str, **message: Any) -> None:
        headers = message.get("headers") or []
        if record_size(message["key"], message["value"], headers) > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        if self.capacity is not None and len(self.queued) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queued.append(({**message, "topic": topic}, message["on_delivery"], self.lag_polls))

    def poll(self, timeout: float = 0, everything: bool = False) -> int:
        # confluent-kafka aborts the process when a delivery report polls again.
        assert not self._reporting, "poll or flush called from inside a delivery report"
        due = [q for q in self.queued if everything or q[2] <= 0]
        self.queued = [(m, r, w - 1) for m, r, w in self.queued if not (everything or w <= 0)]
        # Reported one by one, each counted against the capacity until its report returned
        # (as librdkafka counts a message until it is destroyed, after its report).
        self.queued[:0] = due
        for entry in due:
            self.delivered.append(entry[0])
            self._reporting = True
            try:
                entry[1](None, None)
            finally:
                self._reporting = False
                self.queued.remove(entry)
        return len(due)

    def flush(self, timeout: float = 0) -> int:
        while self.queued:  # including what delivery reports produce meanwhile
            self.poll(everything=True)
        return 0
