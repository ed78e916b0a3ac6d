"""Which consumed records become contact changes, and why the others do not.

A record is admitted when a job's selection (if any) takes it, it has a value, the value is not
oversized, its key (if any) is UTF-8, and it decodes; its event is then new (de-duplication by
event id, over the last `dedupe_cache_size` events) and routed to every export that wants it.
A record that can never be processed raises `InvalidRecord` (to the dead-letter topic); a
Schema Registry out of reach raises `Retriable` (the record is held and decoded again later).
Pure: the loop acts on the verdict (skips, fan-out, collisions to report).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from connector.core.codec import Decoder
from connector.core.errors import InvalidRecord
from connector.core.events import ContactChange, Position, RawRecord, SegmentChange
from connector.core.recent import RecentMap
from connector.core.routing import Router, TagCollision


@dataclass(slots=True, init=False)
class Verdict:
    """`changes`: one per export that wants the event, with its connection. `skipped`: why none
    does (`not_selected`, `tombstone`, `duplicate`, `no_export`). `event`: the decoded event,
    once decoding got that far (a duplicate has one too). Made per event: it writes its own
    `__init__` (see `connector.core.events`)."""

    changes: Final[list[tuple[str, ContactChange]]]
    skipped: Final[str | None]
    event: Final[SegmentChange | None]
    collisions: Final[Sequence[TagCollision]]

    def __init__(
        self,
        changes: list[tuple[str, ContactChange]],
        skipped: str | None = None,
        event: SegmentChange | None = None,
        collisions: Sequence[TagCollision] = (),
    ) -> None:
        self.changes = changes
        self.skipped = skipped
        self.event = event
        self.collisions = collisions


class Admission:
    def __init__(
        self,
        decoder: Decoder,
        router: Router,
        max_value_bytes: int,
        dedupe_cache_size: int,
        select: Callable[[RawRecord], bool] | None = None,
    ) -> None:
        self.router = router
        self._decoder = decoder
        self._max_value_bytes = max_value_bytes
        self._dedupe_cache_size = dedupe_cache_size
        self._select = select
        self._seen = RecentMap(dedupe_cache_size, width=0)

    def decode(self, raw: RawRecord) -> SegmentChange | str:
        """The record's event, or why it has none to route (`not_selected`, `tombstone`).
        Raises `InvalidRecord` (never processable) or `Retriable` (the registry is away)."""
        if self._select is not None and not self._select(raw):
            return "not_selected"
        if raw.value is None:
            return "tombstone"
        if len(raw.value) > self._max_value_bytes:
            raise InvalidRecord(
                "oversized_value", "decode", f"{len(raw.value)} bytes > {self._max_value_bytes}"
            )
        if raw.key is not None:
            try:
                raw.key.decode()
            except UnicodeDecodeError as exc:
                raise InvalidRecord("invalid_key", "decode", "the key is not UTF-8") from exc
        return self._decoder.decode(raw.value)

    def route(self, event: SegmentChange, position: Position, now_ms: int) -> Verdict:
        """The changes of a decoded event, unless it is a duplicate or no export wants it.
        Raises `InvalidRecord` when an export that wants it cannot take it (it is then not
        remembered: the same event again is invalid again, not a duplicate)."""
        if event.event_id in self._seen:
            return Verdict([], "duplicate", event)
        routed = self.router.route(event, position, now_ms)
        collisions = self.router.take_collisions()
        self._seen.put(event.event_id)
        return Verdict(routed, None if routed else "no_export", event, collisions)

    def forget(self) -> None:
        """After a rebalance: redelivered records must not look like duplicates of themselves."""
        self._seen = RecentMap(self._dedupe_cache_size, width=0)
