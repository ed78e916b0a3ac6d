"""The pure side of `reconcile`: what the topic says each segment's members are (`Membership`:
fingerprints, not strings), how that differs from what Omnisend holds (`Drift`), and the
records that hold what is missing (`Finder`). No I/O: reading the topic and listing contacts
are in `connector.jobs.reconcile`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from connector.core.errors import InvalidRecord
from connector.core.events import ContactChange, Position, SegmentChange
from connector.core.mapping import Mapper
from connector.core.recent import IntTable, fingerprint
from connector.core.routing import Export
from connector.jobs.dryrun import mask

SAMPLES = 5
# A record's place in the topic as one integer: offsets below 2^44, partitions below 2^19.
_OFFSET_BITS = 44


def _place(partition: int, offset: int) -> int:
    return (partition << _OFFSET_BITS) | offset


@dataclass
class _Segment:
    name: str = ""
    name_at: int = -1
    # profile -> (email, occurred_at * 2 + entered), all fingerprints and integers
    members: IntTable = field(default_factory=lambda: IntTable(2))


class Membership:
    """The latest state of every (export, segment, profile), from events in any order."""

    def __init__(self, exports: Iterable[Export]) -> None:
        self._mappers = [(e, Mapper(e.mapping)) for e in exports]
        self._segments: dict[tuple[str, str], _Segment] = {}  # (export, segment id)
        self._tags_seen: dict[str, set[str]] = {}  # export -> every tag the topic produced
        # export -> email -> (occurred_at, place) of the contact's latest entry
        self._latest = {e.name: IntTable(2) for e, _ in self._mappers}
        self.invalid = 0

    def add(self, event: SegmentChange, now_ms: int, partition: int = 0, offset: int = 0) -> None:
        for export, mapper in self._mappers:
            if not export.wants(event):
                continue
            try:
                change = mapper.map(event, now_ms)
            except InvalidRecord:
                self.invalid += 1
                continue
            # Per event: look up first, make only what is missing (a segment's table is 24 kB).
            tags = self._tags_seen.get(export.name)
            if tags is None:
                tags = self._tags_seen[export.name] = set()
            tags.add(change.tag)
            segment = self._segments.get((export.name, event.segment_id))
            if segment is None:
                segment = self._segments[(export.name, event.segment_id)] = _Segment()
            at = event.occurred_at_ms
            if at >= segment.name_at:
                segment.name, segment.name_at = event.segment_name, at
            email, profile = fingerprint(change.email), fingerprint(event.profile_id)
            current = segment.members.get(profile)
            if current is None or at >= current[1] >> 1:
                segment.members.put(profile, (email, 2 * at + event.entered))
            if event.entered:
                latest = self._latest[export.name]
                known = latest.get(email)
                if known is None or at >= known[0]:
                    latest.put(email, (at, _place(partition, offset)))

    def expected(self, export: Export) -> dict[str, IntTable]:
        """tag → fingerprints of the export's current members' emails, for every tag the topic
        ever produced for it (a tag nobody should hold maps to no one)."""
        mapper = Mapper(export.mapping)
        out = {tag: IntTable(1) for tag in self._tags_seen.get(export.name, ())}
        for (name, segment_id), segment in self._segments.items():
            if name != export.name:
                continue
            tag = mapper.tag_of(segment_id, segment.name)
            members = out.get(tag)
            if members is None:
                members = out[tag] = IntTable(1)
            for _, (email, at_entered) in segment.members.items():
                if at_entered & 1:
                    members.put(email, (0,))
        return out

    def latest_entry(self, export: str, email: str) -> int | None:
        """The place of the contact's latest entry in the topic (see `_place`)."""
        found = self._latest[export].get(fingerprint(email))
        return None if found is None else found[1]


def shared_members(
    membership: Membership,
    export: Export,
    expected: dict[str, IntTable],
    siblings: Iterable[Export],
) -> dict[str, list[IntTable]]:
    """tag → the members the other exports of `export`'s connection (`siblings`) give each of
    its tags (`expected`, its own): two exports of one brand may make the same tag (one
    segment by two email attributes), and each tags only its own members."""
    shared: dict[str, list[IntTable]] = {}
    for other in siblings:
        if other.connection != export.connection or other.name == export.name:
            continue
        for tag, members in membership.expected(other).items():
            if tag in expected:
                shared.setdefault(tag, []).append(members)
    return shared


class Samples:
    """The few smallest of many strings (for a report), in bounded memory."""

    def __init__(self, most: int = SAMPLES) -> None:
        self.most = most
        self._kept: set[str] = set()

    def add(self, value: str) -> None:
        self._kept.add(value)
        if len(self._kept) > self.most:
            self._kept.remove(max(self._kept))

    def masked(self) -> list[str]:
        return [mask(e) for e in sorted(self._kept)]

    def __len__(self) -> int:
        return len(self._kept)


@dataclass
class Drift:
    """One tag: who should hold it (email fingerprint → seen in Omnisend), how many hold it
    without being members (stale, each handed to `on_stale` as found), and samples of both."""

    tag: str
    expected: IntTable
    held: int = 0
    stale: int = 0
    stale_samples: Samples = field(default_factory=Samples)
    missing_samples: Samples = field(default_factory=Samples)
    on_stale: Callable[[str, str], None] | None = None  # (tag, email)
    # Members other exports of the same connection give the tag: held, they are not stale.
    others: list[IntTable] = field(default_factory=list)

    def hold(self, emails: Iterable[str]) -> None:
        """A page of the contacts Omnisend holds under the tag."""
        for email in emails:
            self.held += 1
            email_fp = fingerprint(email)
            if email_fp in self.expected:
                self.expected.put(email_fp, (1,))
                continue
            if any(email_fp in members for members in self.others):
                continue
            self.stale += 1
            self.stale_samples.add(email)
            if self.on_stale is not None:
                self.on_stale(self.tag, email)

    def is_missing(self, email: str) -> bool:
        return self.expected.get(fingerprint(email)) == (0,)

    @property
    def missing(self) -> int:
        return sum(1 for _, (seen,) in self.expected.items() if not seen)

    def report(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "members": len(self.expected),
            "inOmnisend": self.held,
            "missing": self.missing,
            "stale": self.stale,
            "missingSamples": self.missing_samples.masked(),
            "staleSamples": self.stale_samples.masked(),
        }


def drift(tag: str, expected: IntTable, held: Iterable[str]) -> Drift:
    found = Drift(tag, expected)
    found.hold(held)
    return found


class Finder:
    """The second read: at the record of each missing contact's latest entry, the repair of
    every tag it misses, with that record's fields (the contact's latest)."""

    def __init__(self, export: Export, membership: Membership, drifts: list[Drift]) -> None:
        self.export = export
        self._mapper = Mapper(export.mapping)
        self._membership = membership
        self._drifts = [d for d in drifts if d.missing]
        self._missing = {id(d): d.missing for d in self._drifts}  # counted once: it is a scan
        self.found = 0

    def visit(self, partition: int, offset: int, event: SegmentChange) -> list[ContactChange]:
        if not self.export.wants(event) or not event.entered:
            return []
        try:
            change = self._mapper.map(event, event.occurred_at_ms)
        except InvalidRecord:
            return []
        place = self._membership.latest_entry(self.export.name, change.email)
        if place != _place(partition, offset):
            return []  # not this contact's latest entry
        repairs = []
        for d in self._drifts:
            if d.is_missing(change.email):
                d.missing_samples.add(change.email)
                self.found += 1
                position = Position("reconcile", 0, self.found)
                repairs.append(
                    ContactChange(
                        position,
                        f"reconcile-{self.found}",
                        event.occurred_at_ms,
                        change.email,
                        d.tag,
                        True,
                        change.fields,
                    )
                )
        return repairs

    @property
    def not_found(self) -> int:
        """Missing tags whose member's latest entry the read did not meet (retention removed
        it since the first read): not repaired."""
        return sum(self._missing.values()) - self.found

    def sampled(self) -> bool:
        """Whether every drift has all the samples the report shows."""
        return all(
            len(d.missing_samples) >= min(SAMPLES, self._missing[id(d)]) for d in self._drifts
        )
