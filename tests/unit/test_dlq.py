"""The dead-letter producer: every record reaches the topic, however large; what the producer or
the broker refuses for its size goes again without its value (then its headers, then its key),
with a header that says so. A producer that is merely full waits; any other failure is fatal."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core.events import Position, RawRecord
from connector.kafka.dlq import DLQ_HEADER_ROOM, DeadLetters, record_size

Report = Callable[[KafkaError | None, Any], None]


class FakeProducer:
    """librdkafka's producer as seen from Python: `produce` refuses a message over
    `max_bytes` at once (MSG_SIZE_TOO_LARGE) or when its queue is full (BufferError); the
    broker may refuse one over `broker_max_bytes` in the delivery report."""

    def __init__(self, max_bytes: int, broker_max_bytes: int | None = None, full: int = 0) -> None:
        self.max_bytes = max_bytes
        self.broker_max_bytes = broker_max_bytes
        self.full = full  # the next `full` produce calls find the queue full
        self.queued: list[tuple[dict[str, Any], Report]] = []
        self.delivered: list[dict[str, Any]] = []
        self.fail_with: KafkaError | None = None

    def produce(self, topic: str, **message: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        size = record_size(message["key"], message["value"], message["headers"])
        if size > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queued.append((message, message["on_delivery"]))

    def poll(self, timeout: float = 0) -> int:
        """Everything queued travels in one message batch: the broker refuses the batch when
        all of it together is over its limit."""
        queued, self.queued = self.queued, []
        together = sum(record_size(m["key"], m["value"], m["headers"]) for m, _ in queued)
        for message, report in queued:
            if self.fail_with is not None:
                report(self.fail_with, None)
            elif self.broker_max_bytes is not None and together > self.broker_max_bytes:
                report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                self.delivered.append(message)
                report(None, None)
        return len(queued)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return len(self.queued)


def raw(value: bytes | None, key: bytes | None = b"p-1", headers: int = 0) -> RawRecord:
    extra = [(f"h{i}", b"v" * 1000) for i in range(headers)]
    return RawRecord(Position("t", 2, 40), key, value, [("trace", b"abc"), *extra], 1_700)


def send_one(producer: FakeProducer, record: RawRecord) -> tuple[DeadLetters, list[str]]:
    delivered: list[str] = []
    letters = DeadLetters(producer, "t.dlq")
    letters.send(record, "oversized_value", "decode", "too big", "InvalidRecord")
    for _ in range(5):
        letters.poll()
        delivered += [reason for _, reason in letters.delivered()]
    return letters, delivered


def headers_of(message: dict[str, Any]) -> dict[str, bytes | None]:
    return dict(message["headers"])


def test_a_record_that_fits_goes_whole() -> None:
    producer = FakeProducer(max_bytes=10_000)
    letters, delivered = send_one(producer, raw(b"v" * 5000))
    (message,) = producer.delivered
    assert message["value"] == b"v" * 5000
    assert "omnisend.dlq.dropped" not in headers_of(message)
    assert delivered == ["oversized_value"]
    assert letters.failure is None


def test_a_value_too_large_for_the_producer_is_dropped_and_the_header_says_so() -> None:
    producer = FakeProducer(max_bytes=10_000)
    letters, delivered = send_one(producer, raw(b"v" * 20_000))
    (message,) = producer.delivered
    assert message["value"] is None
    assert message["key"] == b"p-1"
    headers = headers_of(message)
    assert headers["trace"] == b"abc"  # the record's own headers stay
    assert headers["omnisend.dlq.dropped"] == b"value"
    assert headers["omnisend.dlq.original.value.bytes"] == b"20000"
    assert headers["omnisend.dlq.reason"] == b"oversized_value"
    assert headers["omnisend.dlq.original.offset"] == b"40"
    assert delivered == ["oversized_value"]
    assert letters.failure is None


def test_a_detail_no_utf_8_holds_is_written_as_its_escape() -> None:
    producer = FakeProducer(max_bytes=10_000)
    letters = DeadLetters(producer, "t.dlq")
    letters.send(raw(b"v"), "rejected_by_omnisend", "omnisend", "bad \ud83d name", "Rejected")
    letters.poll()
    (message,) = producer.delivered
    assert headers_of(message)["omnisend.dlq.detail"] == b"bad \\ud83d name"
    assert [reason for _, reason in letters.delivered()] == ["rejected_by_omnisend"]


def test_huge_headers_are_dropped_after_the_value() -> None:
    producer = FakeProducer(max_bytes=10_000)
    _, delivered = send_one(producer, raw(b"v" * 100, headers=30))
    (message,) = producer.delivered
    headers = headers_of(message)
    assert headers["omnisend.dlq.dropped"] == b"value,headers"
    assert "trace" not in headers
    assert headers["omnisend.dlq.original.partition"] == b"2"
    assert delivered == ["oversized_value"]


def test_a_record_the_broker_refuses_for_its_size_goes_again_without_its_value() -> None:
    producer = FakeProducer(max_bytes=100_000, broker_max_bytes=10_000)
    letters, delivered = send_one(producer, raw(b"v" * 50_000))
    (message,) = producer.delivered
    assert message["value"] is None
    assert headers_of(message)["omnisend.dlq.dropped"] == b"value"
    assert delivered == ["oversized_value"]  # once, not once per attempt
    assert letters.failure is None
    assert letters.pending == 0


def test_records_refused_together_go_again_whole_and_alone() -> None:
    """The broker refused the message batch both travelled in, not either record."""
    producer = FakeProducer(max_bytes=100_000, broker_max_bytes=10_000)
    letters = DeadLetters(producer, "t.dlq")
    for _ in range(2):
        letters.send(raw(b"v" * 6_000), "oversized_value", "decode", "", "InvalidRecord")
    letters.poll()
    assert len(producer.delivered) == 2
    assert all(m["value"] == b"v" * 6_000 for m in producer.delivered)
    assert [reason for _, reason in letters.delivered()] == ["oversized_value"] * 2
    assert letters.delivered() == []  # each taken once
    assert letters.pending == 0


def test_a_full_producer_queue_waits_instead_of_failing() -> None:
    producer = FakeProducer(max_bytes=100_000, full=3)
    letters, delivered = send_one(producer, raw(b"v" * 10))
    assert delivered == ["oversized_value"]
    assert letters.failure is None


def test_other_delivery_errors_stop_the_connector() -> None:
    producer = FakeProducer(max_bytes=100_000)
    producer.fail_with = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    letters, delivered = send_one(producer, raw(b"v" * 10))
    assert delivered == []
    assert letters.failure is not None
    assert "t.dlq" in str(letters.failure)


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(st.none(), st.integers(0, 30_000).map(lambda n: b"v" * n)),
    key=st.one_of(st.none(), st.integers(0, 30_000).map(lambda n: b"k" * n)),
    headers=st.integers(0, 30),
    producer_max=st.integers(DLQ_HEADER_ROOM // 8, 40_000),
    broker_max=st.one_of(st.none(), st.integers(DLQ_HEADER_ROOM // 8, 40_000)),
)
def test_every_record_reaches_the_dead_letter_topic_exactly_once(
    value: bytes | None,
    key: bytes | None,
    headers: int,
    producer_max: int,
    broker_max: int | None,
) -> None:
    producer = FakeProducer(producer_max, broker_max)
    letters, delivered = send_one(producer, raw(value, key, headers))
    assert letters.failure is None
    assert delivered == ["oversized_value"]
    (message,) = producer.delivered
    assert headers_of(message)["omnisend.dlq.reason"] == b"oversized_value"


class Unwritable:
    """A producer whose queue stays full: the broker takes nothing (the topic unreachable), so
    nothing leaves the queue until librdkafka's message timeout, minutes later."""

    def __init__(self) -> None:
        self.polls = 0

    def produce(self, topic: str, **message: Any) -> None:
        raise BufferError("Local: Queue full")

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        time.sleep(min(timeout, 0.01))
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 1


def test_a_queue_that_stays_full_is_a_failure_not_a_loop_that_blocks_the_pipeline() -> None:
    """The loop thread waited in `produce` for as long as the queue stayed full (up to
    `message.timeout.ms`, five minutes): `/healthz` failed after one and the pod was killed
    instead of stopping with exit 5 and a message."""
    letters = DeadLetters(Unwritable(), "t.dlq", queue_full_timeout_s=0.2)
    started = time.monotonic()
    letters.send(raw(b"v"), "malformed_avro", "decode", "bad", "ValueError")
    assert time.monotonic() - started < 5
    assert letters.failure is not None
    assert "queue" in str(letters.failure)
    assert letters.pending == 0
