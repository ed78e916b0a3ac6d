"""Compact memory for millions of small facts: which contacts Omnisend holds with which fields,
which membership change was applied last, which event ids were seen.

A `RecentMap` maps a key to a fixed number of 64-bit integers, held in arrays rather than Python
objects: a key is kept as its 64-bit hash (Python's own, salted per process: the map lives in
one process), so an entry costs 8 bytes plus 8 per value, at a load of at most one half,
instead of the ~280 bytes of a dict entry with its key string and value tuple. Two distinct keys
with the same hash would share an entry; with 64 bits and a million entries the chance is about
one in 10^13 per lookup, far below any other failure the connector plans for.

It is bounded, approximately least-recently-used: entries go into a young generation; when it
holds half the maximum, it becomes the old one and the previous old one is dropped. A key found
in the old generation is copied into the young one. So between `max_entries / 2` and
`max_entries` of the most recently used keys are remembered.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterator

_EMPTY = 0
_FIRST_CAPACITY = 1024


def fingerprint(key: Hashable) -> int:
    """The 64-bit fingerprint a key is kept as (Python's hash, salted per process; never 0)."""
    return _fingerprint(key)


def _fingerprint(key: Hashable) -> int:
    fingerprint = hash(key)
    return fingerprint if fingerprint != _EMPTY else 1


class IntTable:
    """64-bit fingerprints (never 0) → `width` 64-bit integers, by open addressing with linear
    probing over arrays; grows to keep the load at most one half, never shrinks."""

    __slots__ = ("count", "keys", "mask", "values", "width")

    def __init__(self, width: int, capacity: int = _FIRST_CAPACITY) -> None:
        self.width = width
        self.count = 0
        self.mask = capacity - 1
        self.keys = array("q", bytes(8 * capacity))
        self.values = array("q", bytes(8 * capacity * width))

    def find(self, fingerprint: int) -> int:
        """The slot of `fingerprint`, or of the empty slot where it would go."""
        keys, mask = self.keys, self.mask
        slot = fingerprint & mask
        while True:
            found = keys[slot]
            if found in (fingerprint, _EMPTY):
                return slot
            slot = (slot + 1) & mask

    def get(self, fingerprint: int) -> tuple[int, ...] | None:
        slot = self.find(fingerprint)
        if self.keys[slot] == _EMPTY:
            return None
        start = slot * self.width
        return tuple(self.values[start : start + self.width])

    def put(self, fingerprint: int, values: tuple[int, ...]) -> None:
        slot = self.find(fingerprint)
        if self.keys[slot] == _EMPTY:
            self.keys[slot] = fingerprint
            self.count += 1
        start = slot * self.width
        self.values[start : start + self.width] = array("q", values)
        if 2 * self.count > self.mask + 1:
            self._grow()

    def _grow(self) -> None:
        width = self.width
        bigger = IntTable(width, 2 * (self.mask + 1))
        for slot, fingerprint in enumerate(self.keys):
            if fingerprint != _EMPTY:
                bigger.put(fingerprint, tuple(self.values[slot * width : (slot + 1) * width]))
        self.keys, self.values, self.mask = bigger.keys, bigger.values, bigger.mask

    def items(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(fingerprint, values) of every entry, in no particular order."""
        width, values = self.width, self.values
        for slot, fingerprint in enumerate(self.keys):
            if fingerprint != _EMPTY:
                yield fingerprint, tuple(values[slot * width : (slot + 1) * width])

    def __contains__(self, fingerprint: int) -> bool:
        return self.keys[self.find(fingerprint)] != _EMPTY

    def __len__(self) -> int:
        return self.count

    @property
    def bytes(self) -> int:
        return self.keys.itemsize * len(self.keys) + self.values.itemsize * len(self.values)


class RecentMap:
    """Key → `width` 64-bit integers, for the most recently used `max_entries / 2` to
    `max_entries` keys (see the module's docstring). `max_entries` 0 remembers nothing."""

    def __init__(self, max_entries: int, width: int = 1) -> None:
        if width < 0 or max_entries < 0:
            raise ValueError("width and max_entries must not be negative")
        self.max_entries = max_entries
        self.width = width
        self._young = IntTable(width)
        self._old: IntTable | None = None

    def get(self, key: Hashable) -> tuple[int, ...] | None:
        fingerprint = _fingerprint(key)
        found = self._young.get(fingerprint)
        if found is not None or self._old is None:
            return found
        found = self._old.get(fingerprint)
        if found is not None:
            self._put(fingerprint, found)  # used again: keep it with the young
        return found

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key) is not None

    def put(self, key: Hashable, *values: int) -> None:
        if len(values) != self.width:
            raise ValueError(f"{len(values)} values for a width of {self.width}")
        self._put(_fingerprint(key), values)

    def _put(self, fingerprint: int, values: tuple[int, ...]) -> None:
        if self.max_entries == 0:
            return
        self._young.put(fingerprint, values)
        if 2 * self._young.count >= self.max_entries:
            self._old, self._young = self._young, IntTable(self.width)

    def __len__(self) -> int:
        """An upper bound: a key in both generations counts twice."""
        return self._young.count + (0 if self._old is None else self._old.count)

    @property
    def bytes(self) -> int:
        """The memory the arrays hold."""
        return self._young.bytes + (0 if self._old is None else self._old.bytes)

    @staticmethod
    def full_bytes(max_entries: int, width: int) -> int:
        """The memory of a full map: two generations of `max_entries / 2` keys, each table a
        power of two at least twice that, 8 bytes a key and 8 a value."""
        slots = 1 << max(10, (max_entries - 1).bit_length())
        return 2 * slots * 8 * (1 + width)
