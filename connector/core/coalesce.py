"""Per-contact coalescing and sequencing of changes on their way to Omnisend. Pure: no I/O, time
is passed in.

Every change becomes at most two *intents*: an upsert of the contact (ENTERED only) and a tag
operation (add for ENTERED, remove for EXITED). While an intent waits to be sent, newer changes
replace it. Two rules decide what is newer:
- membership per (email, tag) by `occurred_at` (ties: the later arrival);
- attributes per (email, export) by `occurred_at`, from entries only: each export owns the
  contact fields it maps, so an upsert carries one *part* per export, merged, never one export's
  fields instead of another's.
A late ENTERED whose membership is superseded may still carry the newest attributes (or be the
contact's only entry): its upsert goes, its tag call does not. A replaced change shares the fate
of the one that replaced it.

Order rules that Omnisend's asynchronous API needs:
- a tag add waits until the contact exists (Omnisend drops tags for unknown emails);
- an email is in at most one in-flight batch, so two upserts of one contact never race;
- an operation on (email, tag) waits while another is in flight, and the opposite operation waits
  `settle_s` more after the earlier one was accepted, or after its answer was lost (tag calls
  are applied asynchronously, and a lost answer may hide an accepted call);
- an upsert whose fate is unknown (its batch stuck, or its answer lost) is a *ghost*: it may
  still land, over newer fields. When it is known to have landed (or given up on), the newest
  fields of its contacts are sent once more where they differ from the ghost's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from connector.core.events import ContactChange
from connector.core.ghosts import Ghosts
from connector.core.intents import (
    Group,
    Key,
    Outcome,
    Part,
    TagIntent,
    Ticket,
    Tickets,
    UpsertIntent,
    attach,
    fields_hash,
    merge_parts,
)
from connector.core.recent import RecentMap
from connector.core.tagging import TagQueue


class Coalescer:
    """The intents of every contact with unfinished changes: its upserts here, its tag
    operations in `tagging`, the upserts of unknown fate in `Ghosts`. `exports` numbers the
    exports whose changes it receives (the parts an upsert may carry)."""

    def __init__(
        self,
        settle_s: float = 0.0,
        exports: Iterable[int] = (0,),
        known_size: int = 1_000_000,
        applied_size: int = 1_000_000,
    ) -> None:
        self.exports = tuple(exports)
        self.upserts: OrderedDict[str, UpsertIntent] = OrderedDict()  # waiting to be sent
        self.upserts_in_flight: dict[str, UpsertIntent] = {}
        # Fields known to be in Omnisend: (email, export) -> (hash of the part last accepted,
        # its occurred_at). A known contact whose part is unchanged needs no upsert.
        self.known = RecentMap(known_size, width=2)
        self._tickets = Tickets()
        # A tag add waits while its contact is being upserted and not known to exist.
        self.tagging = TagQueue(
            settle_s,
            applied_size,
            lambda email: self._upserting(email) and not self.exists(email),
            self._tickets,
        )
        self._ghosts = Ghosts(self.known)

    # ---- intake --------------------------------------------------------------------------------

    def add(self, change: ContactChange, now: float) -> None:
        ticket = Ticket(change.position, change.email)
        current = change.occurred_at_ms >= self.tagging.latest((change.email, change.tag))
        attached = change.entered and self._want_upsert(change, ticket, now)
        if current:
            self.tagging.want(change, ticket, now)
        elif not attached:
            self._tickets.outcomes.append(Outcome(ticket.position, skipped="superseded"))

    def _want_upsert(self, change: ContactChange, ticket: Ticket, now: float) -> bool:
        """Profiles are snapshots: per export, the fields of the latest ENTERED by `occurred_at`
        win. Whether the record waits for an upsert (False: none is needed for it)."""
        email, export = change.email, change.export
        part = Part(change.fields, change.occurred_at_ms)
        pending = self.upserts.get(email)
        waiting = None if pending is None else pending.parts.get(export)
        if waiting is None and not self._part_needed(email, export, part):
            return False
        if pending is None:
            pending = self.upserts[email] = UpsertIntent(email, {}, now)
        if waiting is None or part.occurred_at_ms >= waiting.occurred_at_ms:
            pending.parts[export] = part
        attach(pending.tickets, ticket)
        return True

    def _part_needed(self, email: str, export: int, part: Part) -> bool:
        in_flight = self.upserts_in_flight.get(email)
        sent = None if in_flight is None else in_flight.parts.get(export)
        if sent is not None:
            # Newer fields are on their way (its tag add waits for them), or older ones are
            # and these must follow.
            return part.occurred_at_ms >= sent.occurred_at_ms
        known = self.known.get((email, export))
        if known is None:
            return True
        known_hash, known_at = known
        if part.occurred_at_ms < known_at:
            return False  # Omnisend has newer fields of this export
        if known_hash == fields_hash(part.fields):
            self.known.put((email, export), known_hash, part.occurred_at_ms)
            return False  # it has these very fields, now known as of this later time
        return True

    def exists(self, email: str) -> bool:
        """Whether Omnisend is known to hold this contact (an upsert of it was accepted)."""
        if len(self.exports) == 1:  # the common case, asked for every tag change
            return (email, self.exports[0]) in self.known
        return any((email, export) in self.known for export in self.exports)

    def _upserting(self, email: str) -> bool:
        return email in self.upserts or email in self.upserts_in_flight

    # ---- upserts -------------------------------------------------------------------------------

    def upserts_ready(self, limit: int) -> int:
        """How many waiting upserts `take_upserts(limit)` would take now (at most `limit`)."""
        ready = 0
        for email in self.upserts:
            if email not in self.upserts_in_flight:
                ready += 1
                if ready == limit:
                    break
        return ready

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

    def upsert_accepted(self, email: str, now: float, contact_id: str | None = None) -> None:
        intent = self.upserts_in_flight.pop(email)
        if contact_id is not None:
            for ticket in intent.tickets:
                ticket.contact_id = contact_id
        for export, part in intent.parts.items():
            self.known.put((email, export), fields_hash(part.fields), part.occurred_at_ms)
        self._ghosts.accepted(email, intent.parts)
        self._tickets.settle(intent.tickets)
        self.tagging.release_adds(email, now)

    def upsert_failed(self, email: str, reason: str, detail: str, now: float) -> None:
        """Omnisend refused the contact: its records fail. Adds waiting for it fail too when
        the contact does not exist; when it does, they go (their own change was not refused)."""
        intent = self.upserts_in_flight.pop(email)
        self._tickets.fail(intent.tickets, reason, detail)
        if email in self.upserts:
            return  # a newer upsert of this contact may still succeed; adds wait for it
        if self.exists(email):
            self.tagging.release_adds(email, now)
            return
        self.tagging.fail_adds(email, reason, detail)

    def upsert_retry(self, email: str) -> UpsertIntent:
        """Put an upsert back in line (a transient item failure); a newer waiting one absorbs it."""
        intent = self.upserts_in_flight.pop(email)
        intent.attempts += 1
        return self._requeue(intent)

    def take_newer(self, email: str) -> UpsertIntent | None:
        """The waiting upsert of a contact whose older one is in flight, taken in its place
        (it absorbs the older one); None if none waits."""
        newer = self.upserts.pop(email, None)
        if newer is not None:
            newer.absorb(self.upserts_in_flight[email])
            self.upserts_in_flight[email] = newer
        return newer

    def untake_upserts(self, intents: list[UpsertIntent]) -> None:
        """Put upserts back, unsent (their batch failed transiently), at the front of the line."""
        for intent in reversed(intents):
            self.upserts_in_flight.pop(intent.email)
            self._requeue(intent)

    def _requeue(self, intent: UpsertIntent) -> UpsertIntent:
        newer = self.upserts.get(intent.email)
        if newer is None:
            self.upserts[intent.email] = intent
            self.upserts.move_to_end(intent.email, last=False)  # it has waited longest
            return intent
        newer.absorb(intent)
        return newer

    # ---- ghosts: upserts whose fate is unknown --------------------------------------------------

    def haunt(self, intents: Iterable[UpsertIntent], until: float | None = None) -> int:
        """These upserts may land later, over newer fields (a stuck batch, a lost answer):
        remember what they carried until `ghost_gone` (or `until`). Returns the ghost's id."""
        return self._ghosts.haunt(intents, until)

    def ghost_gone(self, ghost_id: int, now: float) -> None:
        """The ghost landed (or will not): send once more the newest fields it may have
        overwritten, those accepted or sent since, where they differ from its own."""
        for email, parts in self._ghosts.gone(ghost_id, self.upserts_in_flight):
            self._queue_redo(email, parts, now)

    def expire_ghosts(self, now: float) -> None:
        for ghost_id in self._ghosts.due(now):
            self.ghost_gone(ghost_id, now)

    def _queue_redo(self, email: str, parts: dict[int, Part], now: float) -> None:
        pending = self.upserts.get(email)
        if pending is None:
            self.upserts[email] = UpsertIntent(email, dict(parts), now)
        else:
            merge_parts(pending.parts, parts)

    @property
    def ghosts(self) -> int:
        return len(self._ghosts)

    # ---- tags (the tag queue's) ----------------------------------------------------------------

    def ready_groups(self) -> Iterator[tuple[Group, int, float]]:
        return self.tagging.ready_groups()

    def tags_sendable(self, group: Group, limit: int, now: float) -> tuple[int, float]:
        return self.tagging.sendable(group, limit, now)

    def settled_at(self, group: Group) -> float:
        return self.tagging.settled_at(group)

    def take_tags(self, group: Group, limit: int, now: float) -> list[TagIntent]:
        return self.tagging.take(group, limit, now)

    def tags_accepted(self, intents: list[TagIntent], now: float) -> None:
        self.tagging.accepted(intents, now)

    def holds(self, now: float) -> dict[Key, tuple[bool, float]]:
        """What a coalescer that replaces this one must still wait for (see `carry_holds`)."""
        return self.tagging.holds(now)

    def carry_holds(self, holds: dict[Key, tuple[bool, float]]) -> None:
        """Replacing a coalescer (a rebalance) forgets what it knew of Omnisend's contacts, but
        not the waits it owed: an opposite tag call still waits `settle_s` after an earlier call
        that was accepted, or in flight when it was cancelled."""
        self.tagging.carry_holds(holds)

    def tags_retry(self, intents: list[TagIntent], now: float, maybe_applied: bool = False) -> None:
        self.tagging.retry(intents, now, maybe_applied)

    def tags_take_newer(self, key: Key) -> TagIntent | None:
        return self.tagging.take_newer(key)

    def tags_maybe_applied(self, intents: list[TagIntent], now: float) -> None:
        self.tagging.maybe_applied(intents, now)

    def tags_failed(self, intents: list[TagIntent], reason: str, detail: str) -> None:
        self.tagging.failed(intents, reason, detail)

    @property
    def ready_count(self) -> int:
        return self.tagging.ready_count

    # ---- fates ---------------------------------------------------------------------------------

    def drain_outcomes(self) -> list[Outcome]:
        return self._tickets.drain()

    @property
    def idle(self) -> bool:
        return not (self.upserts or self.upserts_in_flight) and self.tagging.idle
