"""The record ledger: every consumed record from its admission until it is released (its fate
known and, with a results topic, its result delivered), and the offsets that may be committed.

Pure bookkeeping, no I/O: the loop (`connector.pipeline`) admits records, tells the ledger what
each export made of them, and acts on the fate the ledger returns (a dead letter, a skip, done).

- A record sent to several exports (fanned out) has its fate once every export answered: the
  first failure fails it at once; otherwise it is done when any export synced it, and skipped
  (for the last export's reason) when none needed to.
- A record on its way to the dead-letter topic, or whose result is being written, takes no
  further fate: late answers of other exports are ignored.
- Offsets advance past a record only once it is released (`OffsetTracker`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from connector.core.events import Position, RawRecord
from connector.core.intents import Outcome
from connector.core.offsets import OffsetTracker

# Made per record: each class writes its own `__init__` (see `connector.core.events`).


@dataclass(slots=True, init=False)
class Done:
    """Omnisend has the change. `contact_id`: Omnisend's id of the contact, where named."""

    contact_id: Final[str | None]

    def __init__(self, contact_id: str | None = None) -> None:
        self.contact_id = contact_id


@dataclass(slots=True, init=False)
class Skipped:
    """No call was needed (e.g. `superseded` by a newer change of the same contact)."""

    reason: Final[str]

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True, init=False)
class Failed:
    """Omnisend refused it: the record goes to the dead-letter topic with `reason`.
    `contact_id`: of a record another export synced first, the id that export's answer named."""

    reason: Final[str]
    detail: Final[str]
    email: Final[str]
    contact_id: Final[str | None]

    def __init__(
        self, reason: str, detail: str, email: str = "", contact_id: str | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.email = email
        self.contact_id = contact_id


Fate = Done | Skipped | Failed


def fate_of(outcome: Outcome) -> Fate:
    """One export's outcome as a fate."""
    if outcome.reason is not None:
        return Failed(outcome.reason, outcome.detail, outcome.email)
    if outcome.skipped is not None:
        return Skipped(outcome.skipped)
    return Done(outcome.contact_id)


class Ledger:
    def __init__(self) -> None:
        self.offsets = OffsetTracker()
        self._records: dict[Position, RawRecord] = {}
        self._bytes = 0
        # Fanned-out records: how many exports still owe their outcome, and whether one synced
        # it (with the contact id it named, if any).
        self._owed: dict[Position, int] = {}
        self._synced: dict[Position, str | None] = {}
        # Fate known, not released yet (its dead letter or result on the way): no other fate.
        self._decided: set[Position] = set()
        self._dead_lettering: set[Position] = set()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def bytes(self) -> int:
        """Keys and values of the records in flight."""
        return self._bytes

    def admit(self, raw: RawRecord) -> None:
        position = raw.position
        self.offsets.track((position.topic, position.partition), position.offset)
        self._records[position] = raw
        self._bytes += raw.size

    def get(self, position: Position) -> RawRecord | None:
        return self._records.get(position)

    def fan_out(self, position: Position, exports: int) -> None:
        """The record went to `exports` exports: its fate waits for all of them."""
        if exports > 1:
            self._owed[position] = exports

    def settle(self, outcome: Outcome) -> tuple[RawRecord, Fate] | None:
        """An export's outcome → the record and its fate, once known; None while other exports
        still owe theirs, or when the record takes no further fate (revoked meanwhile, or its
        fate is known already)."""
        position = outcome.position
        raw = self._records.get(position)
        if raw is None or position in self._decided:
            return None
        fate = fate_of(outcome)
        if self._owed:  # empty unless a record went to several exports: no look-ups then
            owed = self._fanned_out(position, fate)
            if owed is None:
                return None
            fate = owed
        self._decided.add(position)
        if isinstance(fate, Failed):
            self._dead_lettering.add(position)
        return raw, fate

    def _fanned_out(self, position: Position, fate: Fate) -> Fate | None:
        """One export's fate of a record that may have gone to several: None while others
        still owe theirs, else the record's fate (Done with the contact id one of them named)."""
        if isinstance(fate, Done) and position in self._owed:
            self._synced[position] = fate.contact_id or self._synced.get(position)
        if not isinstance(fate, Failed) and position in self._owed:
            left = self._owed[position] - 1
            if left:
                self._owed[position] = left
                return None
        self._owed.pop(position, None)
        if position in self._synced:
            synced = self._synced.pop(position)
            if isinstance(fate, Failed):
                return Failed(fate.reason, fate.detail, fate.email, synced)
            return Done(synced)
        return fate

    def decided(self, position: Position) -> None:
        """The record's fate is known (a skip before any export, or one `settle` returned):
        nothing else decides it."""
        self._decided.add(position)

    def dead_lettering(self, position: Position) -> None:
        """The record goes to the dead-letter topic: nothing else may decide its fate."""
        self._decided.add(position)
        self._dead_lettering.add(position)

    def is_dead_lettering(self, position: Position) -> bool:
        return bool(self._dead_lettering) and position in self._dead_lettering

    def dead_lettered(self, raw: RawRecord) -> bool:
        """Its dead letter is delivered; False if the record was forgotten meanwhile."""
        if not self.current(raw):
            return False
        self._dead_lettering.discard(raw.position)
        return True

    def current(self, raw: RawRecord) -> bool:
        """Whether `raw` is still the ledger's record at its position (not revoked, and not
        consumed again since)."""
        return self._records.get(raw.position) is raw

    def release(self, raw: RawRecord) -> bool:
        """Done with the record: its offset may be committed. False if it was forgotten."""
        position = raw.position
        if not self.current(raw):
            return False
        del self._records[position]
        self._decided.discard(position)
        if self._dead_lettering:
            self._dead_lettering.discard(position)
        self._bytes -= raw.size
        self.offsets.done((position.topic, position.partition), position.offset)
        return True

    def forget(self) -> None:
        """The partitions went elsewhere: nothing in flight is ours to finish or commit."""
        self.offsets.forget(self.offsets.partitions())
        self._records.clear()
        self._owed.clear()
        self._synced.clear()
        self._decided.clear()
        self._dead_lettering.clear()
        self._bytes = 0


class InvalidShare:
    """The share of invalid records among the last `window` consumed."""

    # Judging fewer records than this would stop the connector on a handful of bad ones.
    MIN_RECORDS = 100

    def __init__(self, window: int) -> None:
        self._window: deque[bool] = deque(maxlen=max(window, 1))
        self._invalid = 0

    def add(self, invalid: bool) -> None:
        if len(self._window) == self._window.maxlen:
            self._invalid -= self._window[0]
        self._window.append(invalid)
        self._invalid += invalid

    def share(self) -> float:
        return self._invalid / len(self._window) if self._window else 0.0

    def exceeds(self, limit: float) -> bool:
        enough = min(self.MIN_RECORDS, self._window.maxlen or 1)
        return len(self._window) >= enough and self.share() > limit

    def __len__(self) -> int:
        return len(self._window)
