"""The tag operations of every (email, tag) with unfinished changes: waiting, ready by group (an
add or a remove of one tag, the calls Omnisend takes in bulk), in flight; the last change
applied per key; and the wait of an opposite call after an earlier one was accepted. The
coalescer says which adds must wait for their contact to exist (`blocked`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator

from connector.core.events import ContactChange
from connector.core.intents import Group, Key, TagIntent, Ticket, Tickets, attach
from connector.core.recent import RecentMap


class TagQueue:
    def __init__(
        self,
        settle_s: float,
        applied_size: int,
        blocked: Callable[[str], bool],
        tickets: Tickets,
    ) -> None:
        self.settle_s = settle_s
        self._blocked = blocked  # email -> its adds wait: the contact does not exist yet
        self._tickets = tickets
        self.tags: dict[Key, TagIntent] = {}  # waiting: not yet sent
        self._tags_of: dict[str, set[str]] = {}  # email -> tags with a waiting intent
        self.in_flight: dict[Key, TagIntent] = {}
        self.ready: dict[Group, OrderedDict[str, TagIntent]] = {}
        # The occurred_at of the last change applied per (email, tag): a late event is stale.
        self.applied = RecentMap(applied_size, width=1)
        # Tag calls accepted (or whose answer was lost) within the last `settle_s`, oldest
        # first: key -> (add, when). An opposite call for the same key waits until the earlier
        # one has settled, whether it was already waiting or arrives later.
        self._accepted: OrderedDict[Key, tuple[bool, float]] = OrderedDict()

    # ---- intake and readiness ------------------------------------------------------------------

    def latest(self, key: Key) -> int:
        """The occurred_at of the newest change of `key` applied, waiting or in flight."""
        applied = self.applied.get(key)
        latest = -1 if applied is None else applied[0]
        waiting = self.tags.get(key)
        if waiting is not None and waiting.occurred_at_ms > latest:
            latest = waiting.occurred_at_ms
        if self.in_flight:
            sent = self.in_flight.get(key)
            if sent is not None and sent.occurred_at_ms > latest:
                latest = sent.occurred_at_ms
        return latest

    def want(self, change: ContactChange, ticket: Ticket, now: float) -> None:
        key = (change.email, change.tag)
        intent = self.tags.get(key)
        if intent is None:
            intent = TagIntent(change.email, change.tag, change.entered, change.occurred_at_ms, now)
            self._put(intent)
        else:
            if intent.add != change.entered:
                self._unready(intent)  # it changes group; the same direction keeps its place
            intent.add, intent.occurred_at_ms = change.entered, change.occurred_at_ms
        attach(intent.tickets, ticket)
        self._maybe_ready(intent, now)

    def _maybe_ready(self, intent: TagIntent, now: float) -> None:
        if intent.key in self.in_flight:
            return  # released when the call in flight completes
        if intent.add and self._blocked(intent.email):
            self._unready(intent)
            return  # the contact does not exist yet: released when the upsert finishes
        last = self._accepted.get(intent.key)
        opposite = last is not None and last[0] != intent.add
        intent.not_before = last[1] + self.settle_s if last is not None and opposite else 0.0
        group = self.ready.get(intent.group)
        if group is None:  # not `setdefault`: it would make an OrderedDict every time
            group = self.ready[intent.group] = OrderedDict()
        group[intent.email] = intent

    def release_adds(self, email: str, now: float) -> None:
        """The contact exists now: its adds may go, even while newer fields are on their way."""
        for intent in self._waiting_adds(email):
            self._maybe_ready(intent, now)

    def fail_adds(self, email: str, reason: str, detail: str) -> None:
        """The contact will not exist: the adds that waited for it fail."""
        for intent in self._waiting_adds(email):
            self._pop(intent.key)
            self._unready(intent)
            self._tickets.fail(intent.tickets, reason, detail)

    def _put(self, intent: TagIntent) -> None:
        self.tags[intent.key] = intent
        tags = self._tags_of.get(intent.email)
        if tags is None:
            tags = self._tags_of[intent.email] = set()
        tags.add(intent.tag)

    def _pop(self, key: Key) -> TagIntent:
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

    # ---- calls ---------------------------------------------------------------------------------

    def sendable(self, group: Group, limit: int, now: float) -> tuple[int, float]:
        """How many intents `take(group, limit, now)` would take now (at most `limit`), and
        since when the first of them could go: it started waiting, or its opposite call settled
        (whichever came later). A part-full call lingers from then, not from when the group's
        oldest intent arrived: intents that settle one after another go together."""
        ready, since = 0, math.inf
        for intent in self.ready.get(group, {}).values():
            if intent.not_before <= now:
                ready += 1
                since = min(since, max(intent.since, intent.not_before))
                if ready == limit:
                    break
        return ready, since

    def settled_at(self, group: Group) -> float:
        """When the first intent of `group` held back by `settle_s` may go."""
        return min((i.not_before for i in self.ready.get(group, {}).values()), default=0.0)

    def ready_groups(self) -> Iterator[tuple[Group, int, float]]:
        """(group, emails ready, when the first of them started waiting) of every group. Cheap,
        so it may over-count intents held back by `not_before`; `take` skips those."""
        for group, intents in self.ready.items():
            first = next(iter(intents.values()))
            yield group, len(intents), first.since

    def take(self, group: Group, limit: int, now: float) -> list[TagIntent]:
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
            self._pop(intent.key)
            self.in_flight[intent.key] = intent
        if not intents:
            del self.ready[group]
        return taken

    def accepted(self, intents: list[TagIntent], now: float) -> None:
        for intent in intents:
            del self.in_flight[intent.key]
            self.applied.put(intent.key, intent.occurred_at_ms)
            self._tickets.settle(intent.tickets)
            self._hold_opposite(intent, now)
            waiting = self.tags.get(intent.key)
            if waiting is not None:
                self._maybe_ready(waiting, now)
        while self._accepted:  # forget calls that have settled
            key, (_, when) = next(iter(self._accepted.items()))
            if when + self.settle_s > now:
                break
            del self._accepted[key]

    def _hold_opposite(self, intent: TagIntent, now: float) -> None:
        """From `now`, an opposite call for the same key waits `settle_s`."""
        if self.settle_s > 0:
            self._accepted.pop(intent.key, None)
            self._accepted[intent.key] = (intent.add, now)

    def holds(self, now: float) -> dict[Key, tuple[bool, float]]:
        """The waits an opposite call owes, to carry into a new queue (a rebalance): each call
        accepted within `settle_s`, and each in flight, as if accepted `now` (its request is
        cancelled, but Omnisend may have taken it). Oldest first."""
        if self.settle_s <= 0:
            return {}
        held = {k: v for k, v in self._accepted.items() if v[1] + self.settle_s > now}
        for key, intent in self.in_flight.items():
            held.pop(key, None)
            held[key] = (intent.add, now)
        return held

    def carry_holds(self, holds: dict[Key, tuple[bool, float]]) -> None:
        """Owe the waits of an earlier queue (`holds`), before any call of this one."""
        self._accepted.update(holds)

    def take_newer(self, key: Key) -> TagIntent | None:
        """The waiting intent of a key whose older one is in flight, in the same direction,
        taken in its place with the older one's records; None if none waits (or it is the
        opposite call: that one goes in line, after the settle wait)."""
        newer, older = self.tags.get(key), self.in_flight[key]
        if newer is None or newer.add != older.add:
            return None
        self._pop(key)
        self._unready(newer)
        newer.tickets.extend(older.tickets)
        self.in_flight[key] = newer
        return newer

    def maybe_applied(self, intents: list[TagIntent], now: float) -> None:
        """A call of these whose answer was lost (they stay in flight, to go again): Omnisend
        may have accepted it, so an opposite call waits as if it had, from `now`."""
        for intent in intents:
            self._hold_opposite(intent, now)

    def retry(self, intents: list[TagIntent], now: float, maybe_applied: bool = False) -> None:
        """A tag call failed transiently: its intents wait again (a newer one absorbs them).
        `maybe_applied`: its answer was lost, so Omnisend may have accepted it; counted as
        accepted now for the opposite call's wait."""
        for intent in intents:
            del self.in_flight[intent.key]
            if maybe_applied:
                self._hold_opposite(intent, now)
            newer = self.tags.get(intent.key)
            if newer is None:
                self._put(intent)
                self._maybe_ready(intent, now)
            else:
                newer.tickets.extend(intent.tickets)
                self._maybe_ready(newer, now)  # it waited for this call; nothing is in flight now

    def failed(self, intents: list[TagIntent], reason: str, detail: str) -> None:
        """Omnisend refused a tag call: its records fail; what waited behind it may go."""
        for intent in intents:
            del self.in_flight[intent.key]
            self._tickets.fail(intent.tickets, reason, detail)
            waiting = self.tags.get(intent.key)
            if waiting is not None:
                self._maybe_ready(waiting, 0.0)

    @property
    def ready_count(self) -> int:
        return sum(len(group) for group in list(self.ready.values()))

    @property
    def idle(self) -> bool:
        return not (self.tags or self.in_flight)
