"""The results topic (`KAFKA_RESULTS_TOPIC`): one JSON record per consumed record, saying what
became of it — the audit trail behind "was this person synced, and when?".

A record's offset is committed only once its result is delivered, as with a dead letter. A
result the broker refuses stops the connector (exit 5): the records behind it could never be
committed. The email is never written, only its keyed hash (`EMAIL_HASH_KEY`).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from connector.core.events import RawRecord, SegmentChange
from connector.kafka.dlq import TopicWriter
from connector.kafka.source import DeliveryReport, Producer

DONE, SKIPPED, DEAD_LETTERED = "done", "skipped", "dead_lettered"
# A value longer than this is cut (and the result says `truncated`): a result must fit the
# producer's `message.max.bytes` whatever the source record carried.
MAX_TEXT_CHARS = 1000


@dataclass(slots=True)
class About:
    """What the pipeline learnt of a record on its way, for its result: scalars only (not the
    decoded profile, which would outweigh the in-flight caps), the email already hashed."""

    profile_id: str | None = None
    event_id: str | None = None
    segment_id: str | None = None
    segment_name: str | None = None
    entered: bool | None = None
    occurred_at_ms: int | None = None
    exports: tuple[str, ...] = ()
    email_hash: str | None = None
    contact_id: str | None = None

    @classmethod
    def of(cls, event: SegmentChange) -> About:
        return cls(
            event.profile_id,
            event.event_id,
            event.segment_id,
            event.segment_name,
            event.entered,
            event.occurred_at_ms,
        )


def result_value(
    record: RawRecord, outcome: str, reason: str | None, about: About | None, now_s: float
) -> dict[str, Any]:
    """The result of one record, as the JSON object written to the topic. Never raises: a
    value it cannot render (a timestamp out of range) is null."""
    about = about or About()
    position = record.position
    change = None if about.entered is None else ("ENTERED" if about.entered else "EXITED")
    value: dict[str, Any] = {
        "outcome": outcome,
        "reason": reason,
        "at": _iso(now_s * 1000),
        "profile_id": about.profile_id,
        "event_id": about.event_id,
        "segment_id": about.segment_id,
        "segment_name": about.segment_name,
        "change": change,
        "occurred_at": None if about.occurred_at_ms is None else _iso(about.occurred_at_ms),
        "exports": list(about.exports),
        "email_hash": about.email_hash,
        "contact_id": about.contact_id,
        "source": {
            "topic": position.topic,
            "partition": position.partition,
            "offset": position.offset,
            "timestamp_ms": record.timestamp_ms,
        },
    }
    return _bounded(value)


def _iso(millis: float) -> str | None:
    try:
        return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return None  # beyond what a date can say (year 10000, or 2**62 ms)


def _bounded(value: dict[str, Any]) -> dict[str, Any]:
    long = [k for k, v in value.items() if isinstance(v, str) and len(v) > MAX_TEXT_CHARS]
    for key in long:
        value[key] = value[key][:MAX_TEXT_CHARS]
    if long:
        value["truncated"] = sorted(long)
    return value


class Results(TopicWriter):
    """Produces results; the records whose result the broker confirmed (which may then be
    released) are taken from `delivered()`.

    `send` only queues: it may be called from a dead letter's delivery report, inside the
    producer's `poll`, where producing into a full queue would mean polling again from inside
    a callback (which aborts confluent-kafka's next callback). `poll` and `flush` produce what
    waits, outside any callback."""

    WHAT = "results topic"

    def __init__(self, producer: Producer, topic: str) -> None:
        super().__init__(producer, topic)  # `pending` counts the waiting ones too
        self._delivered: list[RawRecord] = []
        self._waiting: deque[tuple[RawRecord, bytes | None, bytes]] = deque()  # key, value

    def send(self, record: RawRecord, value: dict[str, Any]) -> None:
        if self.failure is not None:
            return  # stopping: the record stays unfinished, so uncommitted
        profile_id = value.get("profile_id")
        # Text no UTF-8 holds (a lone surrogate an answer escaped) is written as its escape,
        # never raised: the same record would stop the loop again on every restart.
        # Never null (a compacted topic refuses it): the profile, else the record's own key (a
        # record never decoded), else its position.
        if isinstance(profile_id, str):
            key = profile_id.encode("utf-8", "backslashreplace")
        elif record.key is not None:
            key = record.key
        else:
            position = record.position
            key = f"{position.topic}/{position.partition}/{position.offset}".encode()
        rendered = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        text = rendered.encode("utf-8", "backslashreplace")
        self.pending += 1
        self._waiting.append((record, key, text))

    def _produce_waiting(self) -> None:
        while self._waiting and self.failure is None:
            record, key, text = self._waiting[0]
            try:
                self._producer.produce(
                    self.topic, key=key, value=text, on_delivery=self._report(record)
                )
            except BufferError:
                return  # the producer's queue is full: the next poll or flush goes on
            except KafkaException as exc:
                self._waiting.popleft()
                self._fail(exc.args[0])
                return
            self._waiting.popleft()

    def _report(self, record: RawRecord) -> DeliveryReport:
        def delivered(err: KafkaError | None, msg: Message | None) -> None:
            if err is None:
                self.pending -= 1
                self._delivered.append(record)
            else:
                self._fail(err)

        return delivered

    def poll(self) -> None:
        self._producer.poll(0)
        self._produce_waiting()

    def delivered(self) -> list[RawRecord]:
        """The records whose result was confirmed since the last call."""
        taken, self._delivered = self._delivered, []
        return taken

    def flush(self, timeout_s: float) -> bool:
        """Wait for every result to be confirmed; False if some were not in time."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._produce_waiting()
            # Results of dead letters delivered during this flush are sent once the fates
            # have taken those (`Fates.flush` turns again while any are pending).
            left = self._producer.flush(max(0.0, deadline - time.monotonic()))
            done = left == 0 and not self._waiting
            if done or self.failure is not None or time.monotonic() >= deadline:
                return done and self.pending <= 0
