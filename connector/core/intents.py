"""What the coalescer keeps per contact: the intents (an upsert of its fields, a tag operation)
waiting or in flight, the parts of fields each export maps, and the tickets that tie them to the
records they came from. Plain data and the few rules that belong to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from connector.core.events import Position

Key = tuple[str, str]  # (email, tag)
Group = tuple[bool, str]  # (add?, tag)


# Made per event: each class writes its own `__init__` (see `connector.core.events`).


@dataclass(eq=False, slots=True, init=False)
class Ticket:
    """The fate of one record: done when all its intents are done, failed if any failed."""

    position: Position
    email: str
    remaining: int
    failure: tuple[str, str] | None  # (reason, detail)
    contact_id: str | None

    def __init__(self, position: Position, email: str) -> None:
        self.position = position
        self.email = email
        self.remaining = 0
        self.failure = None
        self.contact_id = None


@dataclass(slots=True, init=False)
class Outcome:
    """A record whose fate is known: `reason` None means done (accepted or skipped)."""

    position: Final[Position]
    reason: Final[str | None]
    detail: Final[str]
    skipped: Final[str | None]  # why it needed no call: "superseded"
    email: Final[str]  # of a failed record, for its log line's keyed hash
    contact_id: Final[str | None]  # Omnisend's id of the contact, where its answer named it
    # The connection whose sink decided it, named by the sinks of several ("": the only one).
    connection: str

    def __init__(
        self,
        position: Position,
        reason: str | None = None,
        detail: str = "",
        skipped: str | None = None,
        email: str = "",
        contact_id: str | None = None,
    ) -> None:
        self.position = position
        self.reason = reason
        self.detail = detail
        self.skipped = skipped
        self.email = email
        self.contact_id = contact_id
        self.connection = ""


@dataclass(slots=True, init=False)
class Part:
    """The contact fields one export maps, as of `occurred_at_ms`."""

    fields: Final[dict[str, Any]]
    occurred_at_ms: Final[int]

    def __init__(self, fields: dict[str, Any], occurred_at_ms: int) -> None:
        self.fields = fields
        self.occurred_at_ms = occurred_at_ms


@dataclass(eq=False, slots=True, init=False)
class UpsertIntent:
    email: str
    parts: dict[int, Part]  # export -> its newest fields
    since: float  # when it started waiting, for the flush age
    tickets: list[Ticket]
    attempts: int

    def __init__(self, email: str, parts: dict[int, Part], since: float) -> None:
        self.email = email
        self.parts = parts
        self.since = since
        self.tickets = []
        self.attempts = 0

    @property
    def fields(self) -> dict[str, Any]:
        """The fields to send: every export's part (exports map disjoint fields)."""
        if len(self.parts) == 1:
            return next(iter(self.parts.values())).fields
        merged: dict[str, Any] = {}
        for export in sorted(self.parts):
            merged.update(self.parts[export].fields)
        return merged

    def absorb(self, older: UpsertIntent) -> None:
        """Take `older`'s parts where they are newer than this one's, and its records."""
        merge_parts(self.parts, older.parts)
        self.tickets.extend(older.tickets)


@dataclass(eq=False, slots=True, init=False)
class TagIntent:
    email: Final[str]
    tag: Final[str]
    key: Final[Key]  # (email, tag): made once, asked for at every step of the intent
    add: bool
    occurred_at_ms: int
    since: float
    tickets: list[Ticket]
    not_before: float

    def __init__(self, email: str, tag: str, add: bool, occurred_at_ms: int, since: float) -> None:
        self.email = email
        self.tag = tag
        self.key = (email, tag)
        self.add = add
        self.occurred_at_ms = occurred_at_ms
        self.since = since
        self.tickets = []
        self.not_before = 0.0

    @property
    def group(self) -> Group:
        return (self.add, self.tag)


# Stands for fields Omnisend may or may not hold: equal to no fields' hash (but by a chance of one
# in 2^64).
UNKNOWN_FIELDS = -0x5A5A_5A5A_5A5A_5A5B


def fields_hash(fields: dict[str, Any]) -> int:
    """A fingerprint of the fields, for this process's cache only (str hashes are salted).
    Values compare by equality: they are stripped strings, or dicts (custom properties, the
    channel status), which take the slower path through their `repr`."""
    try:
        return hash(frozenset(fields.items()))  # the common case: every value a string
    except TypeError:  # a dict value (custom properties, the channel status)
        return hash(
            tuple(sorted((k, v if isinstance(v, str) else repr(v)) for k, v in fields.items()))
        )


def merge_parts(into: dict[int, Part], parts: dict[int, Part], later: bool = False) -> None:
    """Keep the newest part of each export; on a tie, `parts` wins if it came `later`."""
    for export, part in parts.items():
        current = into.get(export)
        if (
            current is None
            or part.occurred_at_ms > current.occurred_at_ms
            or (later and part.occurred_at_ms == current.occurred_at_ms)
        ):
            into[export] = part


def attach(tickets: list[Ticket], ticket: Ticket) -> None:
    ticket.remaining += 1
    tickets.append(ticket)


def outcome_of(ticket: Ticket) -> Outcome:
    if ticket.failure is None:
        return Outcome(ticket.position, contact_id=ticket.contact_id)
    reason, detail = ticket.failure
    return Outcome(ticket.position, reason, detail, email=ticket.email)


class Tickets:
    """The outcomes of records whose every intent is done, in the order they were done."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def settle(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            ticket.remaining -= 1
            if ticket.remaining == 0:
                self.outcomes.append(outcome_of(ticket))

    def fail(self, tickets: list[Ticket], reason: str, detail: str) -> None:
        for ticket in tickets:
            if ticket.failure is None:
                ticket.failure = (reason, detail)
        self.settle(tickets)

    def drain(self) -> list[Outcome]:
        out, self.outcomes = self.outcomes, []
        return out
