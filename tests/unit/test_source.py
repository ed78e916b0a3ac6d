"""`KafkaSource`, the one adapter over confluent-kafka's consumer the loop reads through: what it
makes of messages, metadata and errors (with a stand-in consumer; the integration tests run it
against the real broker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException

from connector.core.errors import Retriable
from connector.kafka.source import KafkaSource


class Metadata:
    """A consumer that answers `list_topics` with what it is given, or raises it."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def source(answer: Any) -> KafkaSource:
    return KafkaSource(cast(Consumer, Metadata(answer)))


def topics(**topics: Any) -> Any:
    return SimpleNamespace(topics=topics)


def test_the_partition_count_of_a_topic() -> None:
    partitions = {p: SimpleNamespace(id=p) for p in range(6)}
    answer = topics(segments=SimpleNamespace(partitions=partitions, error=None))
    assert source(answer).partition_count("segments") == 6


@pytest.mark.parametrize(
    "answer",
    [
        KafkaException(KafkaError(KafkaError._TRANSPORT)),
        # A leader being elected, a broker starting: the topic is there, its metadata not yet.
        topics(segments=SimpleNamespace(partitions={}, error=KafkaError(5))),
        topics(),  # not in the answer (yet)
    ],
)
def test_metadata_not_known_now_is_asked_again_not_taken_for_zero(answer: Any) -> None:
    """Taken for zero, the member's share of the budget would be the whole budget until the
    next rebalance (1.0 when the topic's count is unknown); `Retriable` keeps the old share
    and the loop asks again."""
    with pytest.raises(Retriable):
        source(answer).partition_count("segments")


class Message:
    """A consumed message or an error event, as confluent-kafka hands them out."""

    def __init__(self, offset: int, partition: int = 0, error: KafkaError | None = None) -> None:
        self._offset, self._partition, self._error = offset, partition, error

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return "segments"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_790_000_000_000)


class Consuming:
    """Hands out the given batches; stands where librdkafka would: one past the last message
    of each partition it handed out, error events included."""

    def __init__(self, *batches: list[Message]) -> None:
        self.batches = list(batches)
        self.at: dict[int, int] = {}

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        batch = self.batches.pop(0) if self.batches else []
        for message in batch:
            self.at[message.partition()] = message.offset() + 1
        return batch

    def position(self, partitions: list[Any]) -> list[Any]:
        return [
            SimpleNamespace(
                topic=tp.topic, partition=tp.partition, offset=self.at.get(tp.partition, -1001)
            )
            for tp in partitions
        ]


@pytest.mark.parametrize(
    "error",
    [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)],
    ids=["too large", "not authorised"],
)
def test_a_position_past_a_failed_fetch_is_not_where_the_consumer_stands(error: KafkaError) -> None:
    """librdkafka moves the position past an error event at the offset it could not fetch:
    taken for the consumer's position, it would carry the commit past a record never read."""
    consumer = Consuming(
        [Message(0), Message(1, partition=1)],
        [Message(2, error=error)],  # offset 2 of partition 0 could not be fetched
        [Message(2)],  # read after all
    )
    kafka = KafkaSource(cast(Consumer, consumer))
    tps = [("segments", 0), ("segments", 1)]
    assert len(kafka.poll(500, 0)) == 2
    assert kafka.positions(tps) == {("segments", 0): 1, ("segments", 1): 2}
    assert kafka.poll(500, 0) == []
    assert kafka.positions(tps) == {("segments", 1): 2}  # not 3: offset 2 was never read
    assert [r.position.offset for r in kafka.poll(500, 0)] == [2]
    assert kafka.positions(tps) == {("segments", 0): 3, ("segments", 1): 2}


def test_the_end_of_a_partition_is_where_the_consumer_stands() -> None:
    consumer = Consuming([Message(0)], [Message(1, error=KafkaError(KafkaError._PARTITION_EOF))])
    kafka = KafkaSource(cast(Consumer, consumer))
    kafka.poll(500, 0)
    kafka.poll(500, 0)
    consumer.at[0] = 1  # librdkafka leaves the position at the end, not past the event
    assert kafka.positions([("segments", 0)]) == {("segments", 0): 1}


def test_a_record_read_after_its_partition_s_failed_fetch_in_one_batch_clears_it() -> None:
    consumer = Consuming([Message(0, error=KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), Message(0)])
    kafka = KafkaSource(cast(Consumer, consumer))
    assert [r.position.offset for r in kafka.poll(500, 0)] == [0]
    assert kafka.positions([("segments", 0)]) == {("segments", 0): 1}
