"""Per-contact coalescing and sequencing of changes on their way to Omnisend. Pure: no I/O, time
is passed in.

Every change becomes at most two *intents*: an upsert of the contact (ENTERED only) and a tag
operation (add for ENTERED, remove for EXITED). While an intent waits to be sent, newer changes
to the same contact or (contact, tag) replace it: the latest attributes of an email are sent once,
the latest membership per (email, tag) wins by `occurred_at` (ties: the later arrival). A replaced
change shares the fate of the one that replaced it.

Order rules that Omnisend's asynchronous API needs:
- a tag add waits until the contact's upsert finished (Omnisend drops tags for unknown emails);
- an email is in at most one in-flight batch, so two upserts of one contact never race;
- an operation on (email, tag) waits while another is in flight, and the opposite operation waits
  `settle_s` more after the earlier one was accepted (tag calls are applied asynchronously).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from connector.events import ContactChange, Position

Key = tuple[str, str]  # (email, tag)
Group = tuple[bool, str]  # (add?, tag)


@dataclass(eq=False, slots=True)
class Ticket:
    """The fate of one record: done when all its intents are done, failed if any failed."""

    position: Position
    size: int
    email: str
    remaining: int = 0
    failure: tuple[str, str] | None = None  # (reason, detail)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A record whose fate is known: `reason` None means done (accepted or skipped)."""

    position: Position
    size: int
    reason: str | None = None
    detail: str = ""
    skipped: str | None = None  # why it needed no call: "superseded"
    email: str = ""  # of a failed record, for its log line's keyed hash


@dataclass(eq=False, slots=True)
class UpsertIntent:
    email: str
    fields: dict[str, Any]
    occurred_at_ms: int
    since: float  # when it started waiting, for the flush age
    tickets: list[Ticket] = field(default_factory=list)
    attempts: int = 0


@dataclass(eq=False, slots=True)
class TagIntent:
    email: str
    tag: str
    add: bool
    occurred_at_ms: int
    since: float
    tickets: list[Ticket] = field(default_factory=list)
    not_before: float = 0.0

    @property
    def key(self) -> Key:
        return (self.email, self.tag)

    @property
    def group(self) -> Group:
        return (self.add, self.tag)


def fields_hash(fields: dict[str, Any]) -> int:
    """A fingerprint of the fields, for this process's cache only (str hashes are salted)."""
    return hash(tuple(sorted((k, v if isinstance(v, str) else repr(v)) for k, v in fields.items())))


class LRU(OrderedDict[Any, Any]):
    """A bounded mapping that forgets the least recently written entries."""

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.max_size:
            self.popitem(last=False)


class Coalescer:
    """The intents of every contact with unfinished changes."""

    def __init__(self, settle_s: float = 0.0, cache_size: int = 1_000_000) -> None:
        self.settle_s = settle_s
        self.upserts: OrderedDict[str, UpsertIntent] = OrderedDict()  # waiting to be sent
        self.upserts_in_flight: dict[str, UpsertIntent] = {}
        self.tags: dict[Key, TagIntent] = {}  # waiting: not yet sent
        self._tags_of: dict[str, set[str]] = {}  # email -> tags with a waiting intent
        self.tags_in_flight: dict[Key, TagIntent] = {}
        self.ready: dict[Group, OrderedDict[str, TagIntent]] = {}
        # Contacts known to exist in Omnisend: email -> (hash of the fields last sent, their
        # occurred_at). A known contact with unchanged fields needs no upsert.
        self.known = LRU(cache_size)
        # The occurred_at of the last change applied per (email, tag): a late event is stale.
        self.applied = LRU(cache_size)
        # Tag calls accepted within the last `settle_s`, oldest first: key -> (add, when). An
        # opposite call for the same key waits until the earlier one has settled, whether it was
        # already waiting when the earlier one was accepted or arrives later.
        self._accepted: OrderedDict[Key, tuple[bool, float]] = OrderedDict()
        self.outcomes: list[Outcome] = []

    # ---- intake --------------------------------------------------------------------------------

    def add(self, change: ContactChange, now: float) -> None:
        ticket = Ticket(change.position, change.size, change.email)
        key = (change.email, change.tag)
        if change.occurred_at_ms < self._latest(key):
            self.outcomes.append(Outcome(ticket.position, ticket.size, skipped="superseded"))
            return
        if change.entered:
            self._want_upsert(change, ticket, now)
        self._want_tag(change, ticket, now)

    def _latest(self, key: Key) -> int:
        latest: int = self.applied.get(key, -1)
        for intents in (self.tags, self.tags_in_flight):
            intent = intents.get(key)
            if intent is not None:
                latest = max(latest, intent.occurred_at_ms)
        return latest

    def _want_upsert(self, change: ContactChange, ticket: Ticket, now: float) -> None:
        """Profiles are snapshots: the fields of the latest ENTERED by `occurred_at` win."""
        email = change.email
        pending = self.upserts.get(email)
        if pending is not None:
            if change.occurred_at_ms >= pending.occurred_at_ms:
                pending.fields, pending.occurred_at_ms = change.fields, change.occurred_at_ms
            _attach(pending.tickets, ticket)
            return
        in_flight = self.upserts_in_flight.get(email)
        if in_flight is not None and change.occurred_at_ms < in_flight.occurred_at_ms:
            return  # newer fields are on their way; its tag add waits for that upsert
        known = self.known.get(email)
        if in_flight is None and known is not None:
            known_hash, known_at = known
            if change.occurred_at_ms < known_at:
                return  # exists with newer fields: only the tag call is needed
            if known_hash == fields_hash(change.fields):
                # Exists with these very fields, now known as of this later time.
                self.known.put(email, (known_hash, change.occurred_at_ms))
                return
        intent = UpsertIntent(email, change.fields, change.occurred_at_ms, now)
        _attach(intent.tickets, ticket)
        self.upserts[email] = intent

    def _want_tag(self, change: ContactChange, ticket: Ticket, now: float) -> None:
        key = (change.email, change.tag)
        intent = self.tags.get(key)
        if intent is None:
            intent = TagIntent(change.email, change.tag, change.entered, change.occurred_at_ms, now)
            self._put_tag(intent)
        else:
            if intent.add != change.entered:
                self._unready(intent)  # it changes group; the same direction keeps its place
            intent.add, intent.occurred_at_ms = change.entered, change.occurred_at_ms
        _attach(intent.tickets, ticket)
        self._maybe_ready(intent, now)

    # ---- readiness -----------------------------------------------------------------------------

    def _maybe_ready(self, intent: TagIntent, now: float) -> None:
        if intent.key in self.tags_in_flight:
            return  # released when the call in flight completes
        if intent.add and intent.email not in self.known and self._upserting(intent.email):
            self._unready(intent)
            return  # the contact does not exist yet: released when the upsert finishes
        last = self._accepted.get(intent.key)
        opposite = last is not None and last[0] != intent.add
        intent.not_before = last[1] + self.settle_s if last is not None and opposite else 0.0
        self.ready.setdefault(intent.group, OrderedDict())[intent.email] = intent

    def _upserting(self, email: str) -> bool:
        return email in self.upserts or email in self.upserts_in_flight

    def _put_tag(self, intent: TagIntent) -> None:
        self.tags[intent.key] = intent
        self._tags_of.setdefault(intent.email, set()).add(intent.tag)

    def _pop_tag(self, key: Key) -> TagIntent:
        intent = self.tags.pop(key)
        tags = self._tags_of[intent.email]
        tags.discard(intent.tag)
        if not tags:
            del self._tags_of[intent.email]
        return intent

    def _waiting_adds(self, email: str) -> list[TagIntent]:
        return [t for tag in self._tags_of.get(email, ()) if (t := self.tags[(email, tag)]).add]

    def _unready(self, intent: TagIntent) -> None:
        group = self.ready.get(intent.group)
        if group is not None:
            group.pop(intent.email, None)
            if not group:
                del self.ready[intent.group]

    # ---- upserts -------------------------------------------------------------------------------

    def take_upserts(self, limit: int) -> list[UpsertIntent]:
        """Up to `limit` waiting upserts, oldest first, skipping emails already in a batch."""
        taken: list[UpsertIntent] = []
        for email, intent in self.upserts.items():
            if len(taken) == limit:
                break
            if email not in self.upserts_in_flight:
                taken.append(intent)
        for intent in taken:
            del self.upserts[intent.email]
            self.upserts_in_flight[intent.email] = intent
        return taken

    def upsert_accepted(self, email: str, now: float) -> None:
        intent = self.upserts_in_flight.pop(email)
        self.known.put(email, (fields_hash(intent.fields), intent.occurred_at_ms))
        self._settle(intent.tickets)
        self._release_adds(email, now)

    def upsert_failed(self, email: str, reason: str, detail: str, now: float) -> None:
        """Omnisend refused the contact: its records and the adds waiting on it fail too."""
        intent = self.upserts_in_flight.pop(email)
        self._fail(intent.tickets, reason, detail)
        if email in self.upserts:
            return  # a newer upsert of this contact may still succeed; adds wait for it
        for tag_intent in self._waiting_adds(email):
            self._pop_tag(tag_intent.key)
            self._unready(tag_intent)
            self._fail(tag_intent.tickets, reason, detail)

    def upsert_retry(self, email: str) -> UpsertIntent:
        """Put an upsert back in line (a transient item failure); a newer waiting one absorbs it."""
        intent = self.upserts_in_flight.pop(email)
        intent.attempts += 1
        newer = self.upserts.get(email)
        if newer is None:
            self.upserts[email] = intent
            self.upserts.move_to_end(email, last=False)  # it has waited longest
            return intent
        for ticket in intent.tickets:
            newer.tickets.append(ticket)
        return newer

    def untake_upserts(self, intents: list[UpsertIntent]) -> None:
        """Put upserts back, unsent (their batch failed transiently), at the front of the line."""
        for intent in reversed(intents):
            self.upserts_in_flight.pop(intent.email)
            newer = self.upserts.get(intent.email)
            if newer is None:
                self.upserts[intent.email] = intent
                self.upserts.move_to_end(intent.email, last=False)
            else:
                newer.tickets.extend(intent.tickets)

    def _release_adds(self, email: str, now: float) -> None:
        # The contact exists now: its adds may go, even while newer fields are on their way.
        for intent in self._waiting_adds(email):
            self._maybe_ready(intent, now)

    # ---- tags ----------------------------------------------------------------------------------

    def ready_groups(self) -> Iterator[tuple[Group, int, float]]:
        """(group, emails ready, when the first of them started waiting) of every group. Cheap,
        so it may over-count intents held back by `not_before`; `take_tags` skips those."""
        for group, intents in self.ready.items():
            first = next(iter(intents.values()))
            yield group, len(intents), first.since

    def take_tags(self, group: Group, limit: int, now: float) -> list[TagIntent]:
        intents = self.ready.get(group)
        if not intents:
            return []
        taken: list[TagIntent] = []
        for intent in intents.values():  # stop at `limit`: a group may hold many thousands
            if intent.not_before <= now:
                taken.append(intent)
                if len(taken) == limit:
                    break
        for intent in taken:
            del intents[intent.email]
            self._pop_tag(intent.key)
            self.tags_in_flight[intent.key] = intent
        if not intents:
            del self.ready[group]
        return taken

    def tags_accepted(self, intents: list[TagIntent], now: float) -> None:
        for intent in intents:
            del self.tags_in_flight[intent.key]
            self.applied.put(intent.key, intent.occurred_at_ms)
            self._settle(intent.tickets)
            if self.settle_s > 0:
                self._accepted.pop(intent.key, None)
                self._accepted[intent.key] = (intent.add, now)
            waiting = self.tags.get(intent.key)
            if waiting is not None:
                self._maybe_ready(waiting, now)
        while self._accepted:  # forget calls that have settled
            key, (_, when) = next(iter(self._accepted.items()))
            if when + self.settle_s > now:
                break
            del self._accepted[key]

    def tags_retry(self, intents: list[TagIntent], now: float) -> None:
        """A tag call failed transiently: its intents wait again (a newer one absorbs them)."""
        for intent in intents:
            del self.tags_in_flight[intent.key]
            newer = self.tags.get(intent.key)
            if newer is None:
                self._put_tag(intent)
                self._maybe_ready(intent, now)
            else:
                newer.tickets.extend(intent.tickets)
                self._maybe_ready(newer, now)  # it waited for this call; nothing is in flight now

    def tags_failed(self, intents: list[TagIntent], reason: str, detail: str) -> None:
        """Omnisend refused a tag call: its records fail; what waited behind it may go."""
        for intent in intents:
            del self.tags_in_flight[intent.key]
            self._fail(intent.tickets, reason, detail)
            waiting = self.tags.get(intent.key)
            if waiting is not None:
                self._maybe_ready(waiting, 0.0)

    # ---- fates ---------------------------------------------------------------------------------

    def _settle(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            ticket.remaining -= 1
            if ticket.remaining == 0:
                self.outcomes.append(_outcome(ticket))

    def _fail(self, tickets: list[Ticket], reason: str, detail: str) -> None:
        for ticket in tickets:
            if ticket.failure is None:
                ticket.failure = (reason, detail)
        self._settle(tickets)

    def drain_outcomes(self) -> list[Outcome]:
        out, self.outcomes = self.outcomes, []
        return out

    @property
    def ready_count(self) -> int:
        return sum(len(group) for group in list(self.ready.values()))

    @property
    def idle(self) -> bool:
        return not (self.upserts or self.upserts_in_flight or self.tags or self.tags_in_flight)


def _attach(tickets: list[Ticket], ticket: Ticket) -> None:
    ticket.remaining += 1
    tickets.append(ticket)


def _outcome(ticket: Ticket) -> Outcome:
    if ticket.failure is None:
        return Outcome(ticket.position, ticket.size)
    reason, detail = ticket.failure
    return Outcome(ticket.position, ticket.size, reason, detail, email=ticket.email)
