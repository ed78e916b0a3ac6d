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
