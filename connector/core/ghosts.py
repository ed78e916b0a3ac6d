"""Upserts whose fate is unknown (their batch stuck, or the answer to its creation lost): they may
still land, over newer fields. What each carried, per contact, until it is known to have landed
or is given up on; then the newest fields it may have overwritten are sent once more, where they
differ from its own."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from connector.core.intents import UNKNOWN_FIELDS, Part, UpsertIntent, fields_hash, merge_parts
from connector.core.recent import RecentMap


@dataclass(slots=True)
class _Ghost:
    """Upserts whose fate is unknown: email -> export -> hash of the fields they carried."""

    parts: dict[str, dict[int, int]]
    until: float | None  # given up on at this time (None: until told)


class Ghosts:
    """`known`: the coalescer's fields known to be in Omnisend, which a ghost makes unknown."""

    def __init__(self, known: RecentMap) -> None:
        self._known = known
        self._ghosts: dict[int, _Ghost] = {}
        self._ids = itertools.count()
        self._haunted: dict[str, int] = {}  # email -> live ghosts carrying it
        self._redo: dict[str, dict[int, Part]] = {}  # parts accepted while haunted

    def haunt(self, intents: Iterable[UpsertIntent], until: float | None) -> int:
        """Remember what these upserts carried until `gone` (or `until`). Returns the id."""
        parts = {i.email: {e: fields_hash(p.fields) for e, p in i.parts.items()} for i in intents}
        ghost_id = next(self._ids)
        self._ghosts[ghost_id] = _Ghost(parts, until)
        for email, carried in parts.items():
            self._haunted[email] = self._haunted.get(email, 0) + 1
            for export in carried:
                # Omnisend may hold the ghost's fields or the ones known before: neither is
                # known now, so a change back to the old fields is sent, not skipped.
                known = self._known.get((email, export))
                if known is not None:
                    self._known.put((email, export), UNKNOWN_FIELDS, known[1])
        return ghost_id

    def accepted(self, email: str, parts: dict[int, Part]) -> None:
        """An upsert of `email` was accepted: if a ghost carries it, these parts may be
        overwritten when the ghost lands."""
        if email in self._haunted:
            merge_parts(self._redo.setdefault(email, {}), parts, later=True)

    def gone(
        self, ghost_id: int, in_flight: dict[str, UpsertIntent]
    ) -> list[tuple[str, dict[int, Part]]]:
        """The ghost landed (or will not): per contact, the newest parts it may have
        overwritten (accepted since, or sent and `in_flight`) that differ from its own."""
        ghost = self._ghosts.pop(ghost_id, None)
        if ghost is None:
            return []
        redos = []
        for email, carried in ghost.parts.items():
            newest = dict(self._redo.get(email, {}))
            sent = in_flight.get(email)
            if sent is not None:  # sent before the ghost was seen to land
                merge_parts(newest, sent.parts, later=True)
            redo = {
                e: p
                for e, p in newest.items()
                if e in carried and fields_hash(p.fields) != carried[e]
            }
            if redo:
                redos.append((email, redo))
            self._haunted[email] -= 1
            if not self._haunted[email]:
                del self._haunted[email]
                self._redo.pop(email, None)
        return redos

    def due(self, now: float) -> list[int]:
        """The ghosts given up on by `now`."""
        return [
            g for g, ghost in self._ghosts.items() if ghost.until is not None and ghost.until <= now
        ]

    def __len__(self) -> int:
        return len(self._ghosts)
