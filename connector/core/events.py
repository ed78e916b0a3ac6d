"""Value types that flow through the pipeline. Plain data, no behaviour that touches I/O.

Made once or more per event, so they are built for speed: each dataclass writes its own
`__init__` (and `__hash__` where one is needed) instead of letting `dataclass` generate them.
The generated ones are slow in pure Python (a frozen dataclass sets each field through
`object.__setattr__`) and stay interpreted in the compiled build, where written ones become
native code (about 4x faster to build and hash there; see "The compiled build" in the README).
`dataclass` still gives them equality, `repr` and `fields()`; `Final` keeps the immutable ones
immutable for mypy, as `frozen` did at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(slots=True, init=False)
class Position:
    """Where a record came from."""

    topic: Final[str]
    partition: Final[int]
    offset: Final[int]
    # A record's position keys several tables on its way (the ledger, its result, its fate):
    # hashed once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self._hash = hash((topic, partition, offset))

    def __hash__(self) -> int:
        return self._hash


@dataclass(slots=True, init=False)
class RawRecord:
    """A consumed Kafka message as the pipeline keeps it until its fate is known: the DLQ needs
    the original key, value and headers. `size` (key and value bytes) is counted in and out of
    the records in flight: computed once."""

    position: Position
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    timestamp_ms: int
    size: int = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        position: Position,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        timestamp_ms: int,
    ) -> None:
        self.position = position
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp_ms = timestamp_ms
        self.size = (0 if value is None else len(value)) + (0 if key is None else len(key))


def records_of(messages: list[Any]) -> tuple[list[RawRecord], list[Any]]:
    """The records of a batch of consumed messages (confluent-kafka's `Message`), and the
    messages that are error events. Here rather than beside the consumer: it runs for every
    record, and this module is compiled in the image's build."""
    records: list[RawRecord] = []
    errors: list[Any] = []
    for message in messages:
        if message.error() is not None:
            errors.append(message)
            continue
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            continue  # only error events lack them
        records.append(
            RawRecord(
                Position(topic, partition, offset),
                message.key(),
                message.value(),
                # A new list of (name, bytes | None), or None (most records: then the shared
                # empty tuple, not an empty list per record).
                message.headers() or (),
                message.timestamp()[1],
            )
        )
    return records, errors


@dataclass(slots=True, init=False)
class SegmentChange:
    """A decoded `SegmentMembershipChange` event."""

    event_id: Final[str]
    occurred_at_ms: Final[int]
    segment_id: Final[str]
    segment_name: Final[str]
    entered: Final[bool]
    profile_id: Final[str]
    profile: Final[dict[str, str]]

    def __init__(
        self,
        event_id: str,
        occurred_at_ms: int,
        segment_id: str,
        segment_name: str,
        entered: bool,
        profile_id: str,
        profile: dict[str, str],
    ) -> None:
        self.event_id = event_id
        self.occurred_at_ms = occurred_at_ms
        self.segment_id = segment_id
        self.segment_name = segment_name
        self.entered = entered
        self.profile_id = profile_id
        self.profile = profile

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


@dataclass(slots=True, init=False)
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
    fields: dict[str, Any]
    export: int

    def __init__(
        self,
        position: Position,
        event_id: str,
        occurred_at_ms: int,
        email: str,
        tag: str,
        entered: bool,
        fields: dict[str, Any] | None = None,
        export: int = 0,
    ) -> None:
        self.position = position
        self.event_id = event_id
        self.occurred_at_ms = occurred_at_ms
        self.email = email
        self.tag = tag
        self.entered = entered
        self.fields = {} if fields is None else fields
        self.export = export
