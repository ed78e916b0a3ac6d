"""An in-memory Kafka consumer and producer, shaped like confluent-kafka's as the pipeline and
the dead-letter producer use them, so the whole pipeline runs in a unit test without a broker.
The integration tests against the real broker stay; these make random streams cheap."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Self

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connector.kafka.dlq import record_size

TP = tuple[str, int]


@dataclass
class Message:
    """What `Consumer.consume` returns, as far as the pipeline reads it."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes | None]] | None = None
    _timestamp: int = 1_790_000_000_000

    def error(self) -> KafkaError | None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)


@dataclass
class MemoryConsumer:
    """A topic's partitions in memory. `subscribe` assigns every partition at the next
    `consume`; paused partitions return nothing; `commit` is checked by `on_commit` (which may
    raise) and remembered; committing backwards is an error, as it would be a bug."""

    topic: str
    partitions: dict[int, list[Message]]
    on_commit: Callable[[TP, int], None] = lambda tp, offset: None
    committed: dict[TP, int] = field(default_factory=dict)
    positions: dict[TP, int] = field(default_factory=dict)
    paused: set[TP] = field(default_factory=set)
    closed: bool = False
    _callbacks: dict[str, Any] = field(default_factory=dict)
    _assigned: list[TP] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        topic: str,
        records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    ) -> Self:
        """From (partition, key, value, headers) in the order produced."""
        partitions: dict[int, list[Message]] = {}
        for partition, key, value, headers in records:
            log = partitions.setdefault(partition, [])
            log.append(Message(topic, partition, len(log), key, value, headers))
        return cls(topic, partitions)

    def end(self, partition: int) -> int:
        return len(self.partitions.get(partition, []))

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        assert topics == [self.topic]
        self._callbacks = callbacks

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._assigned = [(p.topic, p.partition) for p in partitions]
        for p in partitions:
            self.positions[(p.topic, p.partition)] = max(p.offset, 0)

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        if self.closed:
            raise RuntimeError("Consumer closed")
        if self._callbacks and not self._assigned:
            tps = [TopicPartition(self.topic, p) for p in sorted(self.partitions)]
            self.assign(
                [
                    TopicPartition(self.topic, p, self.committed.get((self.topic, p), 0))
                    for p in sorted(self.partitions)
                ]
            )
            self._callbacks["on_assign"](self, tps)
        out: list[Message] = []
        for tp in self._assigned:
            if tp in self.paused:
                continue
            log = self.partitions.get(tp[1], [])
            position = self.positions.get(tp, 0)
            take = log[position : position + num_messages - len(out)]
            out.extend(take)
            self.positions[tp] = position + len(take)
        if not out:
            time.sleep(min(timeout, 0.002))
        return out

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(p.topic, p.partition) for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(p.topic, p.partition) for p in partitions}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        for p in offsets:
            tp = (p.topic, p.partition)
            if p.offset < self.committed.get(tp, 0):
                raise AssertionError(f"{tp} committed backwards: {p.offset}")
            self.on_commit(tp, p.offset)
            self.committed[tp] = p.offset

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        partitions = {p: SimpleNamespace(id=p) for p in self.partitions}
        meta = SimpleNamespace(partitions=partitions, error=None)
        return SimpleNamespace(topics={self.topic: meta})

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
