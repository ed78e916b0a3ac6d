"""The dead-letter topic: the original key, value and headers, plus provenance and reason headers.

A DLQ'd record counts as done only once the broker confirmed the DLQ copy; until then its offset
is not committed.

Every record gets there, whatever its size. One that the producer (`message.max.bytes`) or the
broker (the topic's `max.message.bytes`) refuses as too large goes again without its value, then
without its own headers, then without its key, each time with `omnisend.dlq.dropped` naming what
was left out and `omnisend.dlq.original.value.bytes` its size: the provenance headers always say
where the original is. A full producer queue is waited out; any other failure to write is fatal
(exit 5), since the records behind it could never be committed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict

from confluent_kafka import KafkaError, KafkaException, Message

from connector.core.errors import Fatal
from connector.core.events import RawRecord
from connector.core.reasons import REASONS
from connector.kafka.source import DeliveryReport, Producer

HEADER_PREFIX = "omnisend.dlq."
MAX_DETAIL_CHARS = 1000
# Room for the headers of a dead-letter record beside a value of MAX_VALUE_BYTES: the record's
# own headers and the connector's (the detail alone may take 4 KB of UTF-8). The DLQ producer's
# `message.max.bytes` is MAX_VALUE_BYTES plus this unless set explicitly.
DLQ_HEADER_ROOM = 64 * 1024
# What a refused record leaves out, in order, until it fits.
_DROP_ORDER = ("value", "headers", "key")
# How long `send` waits for a full producer queue to drain, per attempt.
_QUEUE_FULL_WAIT_S = 0.1
# How long a letter waits for room in a full queue before the topic counts as unwritable.
QUEUE_FULL_TIMEOUT_S = 30.0
# How long a record sent again on its own may take to be confirmed before the next goes.
_ALONE_FLUSH_S = 10.0


class DeadLetterSink(Protocol):
    """Where invalid records go: the DLQ topic, or only a count in a dry run. The records it
    has written are taken from `delivered()` after a `poll` or a `flush`, as the sink's
    outcomes are."""

    pending: int
    failure: Fatal | None

    def send(
        self, record: RawRecord, reason: str, stage: str, detail: str, error_class: str
    ) -> None: ...

    def poll(self) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def delivered(self) -> list[tuple[RawRecord, str]]:
        """The records (with their reason) confirmed written since the last call."""


def _provenance(
    record: RawRecord, reason: str, stage: str, detail: str, error_class: str
) -> list[tuple[str, bytes]]:
    position = record.position
    ours = {
        "reason": reason,
        "stage": stage,
        "detail": detail[:MAX_DETAIL_CHARS],
        "error.class": error_class,
        "original.topic": position.topic,
        "original.partition": str(position.partition),
        "original.offset": str(position.offset),
        "original.timestamp": str(record.timestamp_ms),
    }
    # A detail may quote text no UTF-8 holds (an answer's lone surrogate): written as its
    # escape, never raised.
    return [(HEADER_PREFIX + k, v.encode("utf-8", "backslashreplace")) for k, v in ours.items()]


class Outgoing(TypedDict):
    """A record as the producer takes it (`produce(topic, **record)`)."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, str | bytes | None]]
) -> int:
    """An upper bound of what librdkafka counts against `message.max.bytes`: key, value and
    the serialized headers (name, value and their varint lengths)."""
    size = len(key or b"") + len(value or b"")
    return size + sum(len(name.encode()) + len(v or b"") + 10 for name, v in headers)


@dataclass
class _Letter:
    """One dead-letter record on its way, and what it left out so far."""

    record: RawRecord
    reason: str
    provenance: list[tuple[str, bytes]]
    dropped: int = 0  # how many of `_DROP_ORDER` are left out
    alone: bool = False  # sent again on its own: the broker refuses a whole message batch

    def message(self) -> Outgoing:
        left_out = _DROP_ORDER[: self.dropped]
        headers: list[tuple[str, str | bytes | None]] = []
        if "headers" not in left_out:
            headers += self.record.headers
        headers += self.provenance
        if left_out:
            value = self.record.value
            headers += [
                (HEADER_PREFIX + "dropped", ",".join(left_out).encode()),
                (HEADER_PREFIX + "original.value.bytes", str(len(value or b"")).encode()),
            ]
        return {
            "key": None if "key" in left_out else self.record.key,
            "value": None if left_out else self.record.value,
            "headers": headers,
        }

    def smaller(self) -> bool:
        """Leave out the next part; False when nothing is left to leave out."""
        if self.dropped == len(_DROP_ORDER):
            return False
        self.dropped += 1
        return True


class TopicWriter:
    """What the dead-letter and results producers share: their topic, how many records are on
    their way, and the first failure to write one, which is fatal (exit 5): the records behind
    it could never be committed."""

    WHAT = "topic"

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self.topic = topic
        self.pending = 0
        self.failure: Fatal | None = None

    def _fail(self, err: KafkaError) -> None:
        self.pending -= 1
        if self.failure is None:
            self.failure = Fatal(f"cannot write to the {self.WHAT} {self.topic}: {err.str()}")


class DeadLetters(TopicWriter):
    """Produces DLQ records; those the broker confirmed are taken from `delivered()`."""

    WHAT = "dead-letter topic"

    def __init__(
        self,
        producer: Producer,
        topic: str,
        max_message_bytes: int | None = None,
        queue_full_timeout_s: float = QUEUE_FULL_TIMEOUT_S,
    ) -> None:
        super().__init__(producer, topic)
        self._queue_full_timeout_s = queue_full_timeout_s
        self._delivered: list[tuple[RawRecord, str]] = []
        # Known ahead, a record too large is sent without its value at once; either way the
        # producer's and the broker's refusals are handled.
        self._max_bytes = max_message_bytes
        self._again: deque[_Letter] = deque()  # refused by the broker for their size

    def send(
        self, record: RawRecord, reason: str, stage: str, detail: str, error_class: str
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown DLQ reason {reason!r}")
        letter = _Letter(record, reason, _provenance(record, reason, stage, detail, error_class))
        self.pending += 1
        self._produce(letter)

    def _produce(self, letter: _Letter) -> None:
        give_up_at = time.monotonic() + self._queue_full_timeout_s
        while True:
            message = letter.message()
            fits = self._max_bytes is None or (
                record_size(message["key"], message["value"], message["headers"]) <= self._max_bytes
            )
            if not fits and letter.smaller():
                continue
            try:
                self._producer.produce(self.topic, **message, on_delivery=self._report(letter))
            except BufferError:
                # The producer's queue is full: what it holds must reach the broker first.
                self._producer.poll(_QUEUE_FULL_WAIT_S)
                if self.failure is not None or time.monotonic() > give_up_at:
                    # A refused letter, or a broker that takes nothing: the loop must not wait
                    # here until the messages time out (minutes; /healthz fails after one).
                    waited = (
                        f"the producer's queue stayed full for {self._queue_full_timeout_s:g} s"
                    )
                    self._fail(KafkaError(KafkaError._QUEUE_FULL, waited))
                    return
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or not letter.smaller():
                    self._fail(exc.args[0])
                    return
            else:
                return

    def _report(self, letter: _Letter) -> DeliveryReport:
        def delivered(err: KafkaError | None, msg: Message | None) -> None:
            if err is None:
                self.pending -= 1
                self._delivered.append((letter.record, letter.reason))
            elif err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                self._fail(err)
            elif not letter.alone or letter.smaller():
                # The broker may have refused the message batch it travelled in, not the
                # record: first whole and alone, then without its value, and so on.
                letter.alone = True
                self._again.append(letter)  # produced again after this poll, not inside it
            else:
                self._fail(err)

        return delivered

    def poll(self) -> None:
        self._producer.poll(0)
        self._resend()

    def delivered(self) -> list[tuple[RawRecord, str]]:
        taken, self._delivered = self._delivered, []
        return taken

    def _resend(self) -> None:
        """Each on its own: produced and flushed before the next, so no batch carries two."""
        while self._again and self.failure is None:
            self._produce(self._again.popleft())
            self._producer.flush(_ALONE_FLUSH_S)

    def flush(self, timeout_s: float) -> bool:
        """Wait for every DLQ record to be confirmed; False if some were not in time."""
        deadline = time.monotonic() + timeout_s
        left = self._producer.flush(timeout_s)
        while self._again and self.failure is None:
            self._resend()
            left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        return bool(left == 0) and not self._again
