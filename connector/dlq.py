"""The dead-letter topic: the original key, value and headers, plus provenance and reason headers.

A DLQ'd record counts as done only once the broker confirmed the DLQ copy; until then its offset
is not committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError

from connector.errors import Fatal
from connector.events import RawRecord
from connector.reasons import REASONS

HEADER_PREFIX = "omnisend.dlq."
MAX_DETAIL_CHARS = 1000

Delivered = Callable[[RawRecord, str], None]


class DeadLetterSink(Protocol):
    """Where invalid records go: the DLQ topic, or only a count in a dry run."""

    pending: int
    failure: Fatal | None

    def send(
        self, record: RawRecord, reason: str, stage: str, detail: str, error_class: str
    ) -> None: ...

    def poll(self) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...


def dlq_headers(
    record: RawRecord, reason: str, stage: str, detail: str, error_class: str
) -> list[tuple[str, bytes]]:
    """The record's own headers followed by the connector's; all UTF-8, numbers in decimal."""
    if reason not in REASONS:
        raise ValueError(f"unknown DLQ reason {reason!r}")
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
    headers: list[tuple[str, Any]] = list(record.headers)
    headers += [(HEADER_PREFIX + k, v.encode()) for k, v in ours.items()]
    return headers


class DeadLetters:
    """Produces DLQ records and reports each one once delivered (from `poll`, on the caller's
    thread)."""

    def __init__(self, producer: Any, topic: str, on_delivered: Delivered) -> None:
        self._producer = producer
        self.topic = topic
        self._on_delivered = on_delivered
        self.pending = 0
        self.failure: Fatal | None = None

    def send(
        self, record: RawRecord, reason: str, stage: str, detail: str, error_class: str
    ) -> None:
        headers = dlq_headers(record, reason, stage, detail, error_class)

        def delivered(err: KafkaError | None, msg: Any) -> None:
            self.pending -= 1
            if err is not None:
                self.failure = Fatal(
                    f"cannot write to the dead-letter topic {self.topic}: {err.str()}"
                )
                return
            self._on_delivered(record, reason)

        self._producer.produce(
            self.topic, value=record.value, key=record.key, headers=headers, on_delivery=delivered
        )
        self.pending += 1

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> bool:
        """Wait for every DLQ record to be confirmed; False if some were not in time."""
        return bool(self._producer.flush(timeout_s) == 0)
