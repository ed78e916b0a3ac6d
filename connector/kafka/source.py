"""The pipeline's view of Kafka: records in, partitions paused and resumed, positions committed,
and what the group assigns. `Source` is what the loop and `reconcile` read through;
`KafkaSource` implements it over a confluent-kafka consumer: it turns messages into
`RawRecord`s and partitions into `(topic, partition)` pairs, and a commit or metadata request
the broker did not answer into `Retriable` (what the loop retries), so the loop is typed and
runs without a broker in tests. Errors of `poll`, `pause` and `resume` are confluent-kafka's
own (`KafkaException`: the process stops). `Producer` is what the dead-letter and results
topics write with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from connector.core.errors import Retriable
from connector.core.events import RawRecord, records_of

log = structlog.get_logger("connector.kafka")

TP = tuple[str, int]


class Rebalance(Protocol):
    """What the group's rebalances tell the loop. Called from inside `Source.poll`."""

    def on_assign(self, partitions: list[TP]) -> None: ...

    def on_revoke(self, partitions: list[TP]) -> None: ...

    def on_lost(self, partitions: list[TP]) -> None: ...


class Source(Protocol):
    def subscribe(self, topic: str, listener: Rebalance) -> None:
        """Join the consumer group for `topic`; assignments come through `listener`."""

    def assign(self, starts: Mapping[TP, int]) -> None:
        """Read these partitions from these offsets, outside any group (the jobs)."""

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to `max_records` records, waiting at most `timeout_s` for the first."""

    def pause(self, partitions: Sequence[TP]) -> None: ...

    def resume(self, partitions: Sequence[TP]) -> None: ...

    def positions(self, partitions: Sequence[TP]) -> dict[TP, int]:
        """Where the consumer stands in each partition: the offset of the next record it would
        deliver, past a transaction's markers and aborted records, which it never delivers.
        Absent where it does not know yet."""

    def commit(self, positions: Mapping[TP, int]) -> None:
        """Commit synchronously; `Retriable` when the broker did not take it."""

    def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has; `Retriable` if the broker cannot say just now."""

    def close(self) -> None:
        """Leave the group; a failure is logged, never raised (there is nothing left to do)."""


# A delivery report: the error, if the broker did not take the message.
DeliveryReport = Callable[[KafkaError | None, Message | None], None]


class Producer(Protocol):
    """What the dead-letter and results topics write with (confluent-kafka's `Producer`, or an
    in-memory one in the tests). Messages are given by keyword; `flush` and `poll` return how
    many messages are still queued and how many reports were served."""

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None = ...,
        key: bytes | None = ...,
        headers: list[tuple[str, str | bytes | None]] | None = ...,
        on_delivery: DeliveryReport | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


def _tps(partitions: Sequence[TP]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def _pairs(partitions: list[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


class KafkaSource:
    """`Source` over a confluent-kafka `Consumer`."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        # Partitions where an error event (a fetch that failed: too large, corrupt, not
        # authorised) stood at an offset no record has been delivered from since: librdkafka
        # moves the position past such an event, so it is not where the consumer stands.
        self._unsure: dict[TP, int] = {}

    def subscribe(self, topic: str, listener: Rebalance) -> None:
        def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            if partitions:  # new partitions arrive unpaused; said explicitly all the same
                consumer.resume(partitions)
            listener.on_assign(_pairs(partitions))

        def revoked(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            listener.on_revoke(_pairs(partitions))

        def lost(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            listener.on_lost(_pairs(partitions))

        self._consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)

    def assign(self, starts: Mapping[TP, int]) -> None:
        self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        records, errors = records_of(self._consumer.consume(max_records, timeout_s))
        for message in errors:  # before the records: a record follows its partition's error
            self._error(message)
        if self._unsure and records:
            for raw in records:
                tp = (raw.position.topic, raw.position.partition)
                if raw.position.offset >= self._unsure.get(tp, raw.position.offset + 1):
                    del self._unsure[tp]
        return records

    def _error(self, message: Message) -> None:
        """An error event: logged, except the end of a partition (not an error); where it names
        an offset, its partition's position is not trusted until a record from there comes."""
        error = message.error()
        if error is None or error.code() == KafkaError._PARTITION_EOF:
            return
        log.warning("consume_error", error=error.str())
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is not None and partition is not None and offset is not None and offset >= 0:
            tp = (topic, partition)
            self._unsure[tp] = min(offset, self._unsure.get(tp, offset))

    def pause(self, partitions: Sequence[TP]) -> None:
        if partitions:
            self._consumer.pause(_tps(partitions))

    def resume(self, partitions: Sequence[TP]) -> None:
        if partitions:
            self._consumer.resume(_tps(partitions))

    def positions(self, partitions: Sequence[TP]) -> dict[TP, int]:
        if not partitions:
            return {}
        try:
            found = self._consumer.position(_tps(partitions))
        except KafkaException as exc:
            log.warning("position_failed", error=str(exc))
            return {}
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in found
            if tp.offset >= 0 and (tp.topic, tp.partition) not in self._unsure
        }

    def commit(self, positions: Mapping[TP, int]) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise Retriable(f"commit: {exc}") from None

    def partition_count(self, topic: str, timeout_s: float = 10.0) -> int:
        try:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise Retriable(f"metadata of {topic}: {exc}") from None
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            # Not known now (a leader being elected, a broker starting): taken for zero, this
            # member would take the whole budget until the next rebalance.
            why = "absent" if info is None else info.error
            raise Retriable(f"metadata of {topic}: {why}")
        return len(info.partitions)

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaException as exc:
            log.warning("consumer_close_failed", error=str(exc))
