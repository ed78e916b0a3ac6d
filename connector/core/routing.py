"""Which exports want an event, and the contact change each makes of it: the routing of a decoded
event to connections, with the tags two segments would share reported once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from connector.core.events import ContactChange, Position, SegmentChange
from connector.core.mapping import Mapper, Mapping


@dataclass(frozen=True)
class Export:
    """Which segments go to which connection, and how a profile becomes a contact."""

    name: str
    connection: str
    mapping: Mapping
    segments: frozenset[str] | None = None  # ids or names; None: every segment

    def wants(self, change: SegmentChange) -> bool:
        return (
            self.segments is None
            or change.segment_id in self.segments
            or change.segment_name in self.segments
        )


@dataclass(frozen=True)
class TagCollision:
    """Two segments make one tag on one connection: an exit of either removes the tag the
    other gave. The remedy is `{segment_id}` in the tag template."""

    connection: str
    tag: str
    first_segment: str
    segment_id: str


# Segments whose exports the router remembers (a look-up each, instead of asking every export).
MAX_KNOWN_SEGMENTS = 100_000


@dataclass
class Router:
    """A decoded event → the contact change of every export that wants it, with the
    connection it goes to. No export: an empty list (the record is skipped as `no_export`)."""

    exports: tuple[Export, ...]
    # Events per segment name, counted when given (a dry run's report; a live run does not pay
    # for it on every event).
    seen: Counter[str] | None = None
    _mappers: list[tuple[Export, Mapper]] = field(init=False)
    # (connection, tag) -> the segment id that first made it, and collisions not yet taken.
    _tag_owners: dict[tuple[str, str], str] = field(init=False, default_factory=dict)
    _collisions: list[TagCollision] = field(init=False, default_factory=list)
    _reported: set[tuple[str, str]] = field(init=False, default_factory=set)
    # (segment id, segment name) -> the exports that want it, in order: one look-up per event
    # instead of asking each of hundreds of exports.
    _wanting: dict[tuple[str, str], list[tuple[Export, Mapper]]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self._mappers = [
            (export, Mapper(export.mapping, index)) for index, export in enumerate(self.exports)
        ]

    def route(
        self, change: SegmentChange, position: Position, now_ms: int
    ) -> list[tuple[str, ContactChange]]:
        """Raises `InvalidRecord` when any export that wants the event cannot take it."""
        if self.seen is not None:
            self.seen[change.segment_name] += 1
        routed = [
            (export.connection, _contact_change(position, change, mapper, now_ms))
            for export, mapper in self._wanted_by(change)
        ]
        for connection, mapped in routed:
            owner = self._tag_owners.setdefault((connection, mapped.tag), change.segment_id)
            if owner != change.segment_id:
                self._collide(TagCollision(connection, mapped.tag, owner, change.segment_id))
        return routed

    def _wanted_by(self, change: SegmentChange) -> list[tuple[Export, Mapper]]:
        key = (change.segment_id, change.segment_name)
        wanted = self._wanting.get(key)
        if wanted is None:
            if len(self._wanting) >= MAX_KNOWN_SEGMENTS:
                self._wanting.clear()  # segments come and go: keep the recent ones
            wanted = self._wanting[key] = [(e, m) for e, m in self._mappers if e.wants(change)]
        return wanted

    def _collide(self, collision: TagCollision) -> None:
        # Reported once per tag: the second segment becomes its owner too, so the same two
        # segments alternating do not report it again and again.
        self._tag_owners[(collision.connection, collision.tag)] = collision.segment_id
        key = (collision.connection, collision.tag)
        if key not in self._reported:
            self._reported.add(key)
            self._collisions.append(collision)

    def take_collisions(self) -> Sequence[TagCollision]:
        """Tags two segments make, found since the last call (each reported once)."""
        if not self._collisions:
            return ()  # asked for every event: no new list each time
        found, self._collisions = self._collisions, []
        return found


def _contact_change(
    position: Position, change: SegmentChange, mapper: Mapper, now_ms: int
) -> ContactChange:
    mapped = mapper.map(change, now_ms)
    return ContactChange(
        position,
        change.event_id,
        change.occurred_at_ms,
        mapped.email,
        mapped.tag,
        change.entered,
        mapped.fields,
        mapper.export,
    )
