"""Value types that flow through the pipeline. Plain data, no behaviour that touches I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class RawRecord:
    """A consumed Kafka message as the pipeline keeps it until its fate is known: the DLQ needs
    the original key, value and headers."""

    position: Position
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int

    @property
    def size(self) -> int:
        return len(self.value or b"") + len(self.key or b"")


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """A decoded `SegmentMembershipChange` event."""

    event_id: str
    occurred_at_ms: int
    segment_id: str
    segment_name: str
    entered: bool
    profile_id: str
    profile: dict[str, str]

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> SegmentChange:
        return cls(
            event_id=record["event_id"],
            occurred_at_ms=_millis(record["occurred_at"]),
            segment_id=record["segment_id"],
            segment_name=record["segment_name"],
            entered=record["change"] == "ENTERED",
            profile_id=record["profile_id"],
            profile=record.get("profile") or {},
        )


def _millis(value: Any) -> int:
    # fastavro is asked to return logical types raw, so this is an int; a datetime would mean the
    # caller decoded with logical types on.
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)


@dataclass(slots=True)
class ContactChange:
    """One validated change, ready for Omnisend: who (email), which tag, in or out, and the
    contact fields to upsert when entering. `export` numbers the export that made it: each
    export owns the contact fields it maps."""

    position: Position
    event_id: str
    occurred_at_ms: int
    email: str
    tag: str
    entered: bool
    fields: dict[str, Any] = field(default_factory=dict)
    export: int = 0
