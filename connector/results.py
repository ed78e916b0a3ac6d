"""The results topic (`KAFKA_RESULTS_TOPIC`): one JSON record per consumed record, saying what
became of it — the audit trail behind "was this person synced, and when?".

A record's offset is committed only once its result is delivered, as with a dead letter. A
result the broker refuses stops the connector (exit 5): the records behind it could never be
committed. The email is never written, only its keyed hash (`EMAIL_HASH_KEY`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from connector.errors import Fatal
from connector.events import RawRecord, SegmentChange

DONE, SKIPPED, DEAD_LETTERED = "done", "skipped", "dead_lettered"
# A value longer than this is cut (and the result says `truncated`): a result must fit the
# producer's `message.max.bytes` whatever the source record carried.
MAX_TEXT_CHARS = 1000
# How long `send` waits for a full producer queue to drain, per attempt.
_QUEUE_FULL_WAIT_S = 0.1

Released = Callable[[RawRecord], None]


@dataclass(slots=True)
class About:
    """What the pipeline learnt of a record on its way, for its result."""

    event: SegmentChange | None = None
    exports: tuple[str, ...] = ()
    email: str = ""
    contact_id: str | None = None


def result_value(
    record: RawRecord,
    outcome: str,
    reason: str | None,
    about: About | None,
    email_hash: Callable[[str], str] | None,
    now_s: float,
) -> dict[str, Any]:
    """The result of one record, as the JSON object written to the topic."""
    about = about or About()
    event = about.event
    position = record.position
    value: dict[str, Any] = {
        "outcome": outcome,
        "reason": reason,
        "at": datetime.fromtimestamp(now_s, UTC).isoformat(timespec="milliseconds"),
        "profile_id": None if event is None else event.profile_id,
        "event_id": None if event is None else event.event_id,
        "segment_id": None if event is None else event.segment_id,
        "segment_name": None if event is None else event.segment_name,
        "change": None if event is None else ("ENTERED" if event.entered else "EXITED"),
        "occurred_at": None
        if event is None
        else datetime.fromtimestamp(event.occurred_at_ms / 1000, UTC).isoformat(
            timespec="milliseconds"
        ),
        "exports": list(about.exports),
        "email_hash": email_hash(about.email) if about.email and email_hash else None,
        "contact_id": about.contact_id,
        "source": {
            "topic": position.topic,
            "partition": position.partition,
            "offset": position.offset,
            "timestamp_ms": record.timestamp_ms,
        },
    }
    return _bounded(value)


def _bounded(value: dict[str, Any]) -> dict[str, Any]:
    long = [k for k, v in value.items() if isinstance(v, str) and len(v) > MAX_TEXT_CHARS]
    for key in long:
        value[key] = value[key][:MAX_TEXT_CHARS]
    if long:
        value["truncated"] = sorted(long)
    return value


class Results:
    """Produces results and releases each record once its result is delivered (from `poll`,
    on the caller's thread)."""

    def __init__(self, producer: Any, topic: str, on_delivered: Released) -> None:
        self._producer = producer
        self.topic = topic
        self._on_delivered = on_delivered
        self.pending = 0
        self.failure: Fatal | None = None

    def send(self, record: RawRecord, value: dict[str, Any]) -> None:
        profile_id = value.get("profile_id")
        message = {
            "key": profile_id.encode() if isinstance(profile_id, str) else None,
            "value": json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(),
        }
        if self.failure is not None:
            return  # stopping: the record stays unfinished, so uncommitted
        self.pending += 1
        while self.failure is None:
            try:
                self._producer.produce(self.topic, **message, on_delivery=self._report(record))
            except BufferError:
                # The producer's queue is full: what it holds must reach the broker first.
                self._producer.poll(_QUEUE_FULL_WAIT_S)
            except KafkaException as exc:
                self._fail(exc.args[0])
            else:
                return

    def _report(self, record: RawRecord) -> Callable[[KafkaError | None, Any], None]:
        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is None:
                self.pending -= 1
                self._on_delivered(record)
            else:
                self._fail(err)

        return delivered

    def _fail(self, err: KafkaError) -> None:
        self.pending -= 1
        if self.failure is None:
            self.failure = Fatal(f"cannot write to the results topic {self.topic}: {err.str()}")

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> bool:
        """Wait for every result to be confirmed; False if some were not in time."""
        deadline = time.monotonic() + timeout_s
        left = self._producer.flush(timeout_s)
        # Results produced from a dead letter's delivery, during that flush, go too.
        while self.pending > 0 and self.failure is None and time.monotonic() < deadline:
            left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        return bool(left == 0) and self.pending <= 0
