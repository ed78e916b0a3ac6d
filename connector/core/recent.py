"""Compact memory for millions of small facts: which contacts Omnisend holds with which fields,
which membership change was applied last, which event ids were seen.

A `RecentMap` maps a key to a fixed number of 64-bit integers, held in arrays rather than Python
objects: a key is kept as its 64-bit hash (Python's own, salted per process: the map lives in
one process), so an entry costs 8 bytes plus 8 per value, at a load of at most two thirds,
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
# Open addressing with linear probing stays quick up to this load (a miss probes about five
# slots); past it the table grows.
_MAX_LOAD = 2 / 3


def fingerprint(key: Hashable) -> int:
    """The 64-bit fingerprint a key is kept as (Python's hash, salted per process; never 0)."""
    found = hash(key)
    return found if found != _EMPTY else 1


def capacity_for(entries: int) -> int:
    """The slots that hold `entries` at the highest load allowed."""
    return max(2, int(entries / _MAX_LOAD) + 1)


class IntTable:
    """64-bit fingerprints (never 0) → `width` 64-bit integers, by open addressing with linear
    probing over arrays. It doubles when the load passes two thirds, up to `max_capacity`
    (the caller keeps it from filling past that), and never shrinks."""

    __slots__ = ("capacity", "count", "keys", "limit", "max_capacity", "values", "width")

    def __init__(
        self, width: int, capacity: int = _FIRST_CAPACITY, max_capacity: int | None = None
    ) -> None:
        self.width = width
        self.count = 0
        self.max_capacity = max_capacity
        self.capacity = capacity if max_capacity is None else min(capacity, max_capacity)
        self.limit = int(self.capacity * _MAX_LOAD)
        self.keys = array("q", bytes(8 * self.capacity))
        self.values = array("q", bytes(8 * self.capacity * width))

    def find(self, fingerprint: int) -> int:
        """The slot of `fingerprint`, or of the empty slot where it would go."""
        keys, capacity = self.keys, self.capacity
        slot = fingerprint % capacity
        while True:
            found = keys[slot]
            if found in (fingerprint, _EMPTY):
                return slot
            slot += 1
            if slot == capacity:
                slot = 0

    # `get` and `put` probe inline rather than through `find`: they run several times for every
    # event, and a call costs as much as the probe.

    def get(self, fingerprint: int) -> tuple[int, ...] | None:
        keys, capacity = self.keys, self.capacity
        slot = fingerprint % capacity
        while True:
            found = keys[slot]
            if found == fingerprint:
                break
            if found == _EMPTY:
                return None
            slot += 1
            if slot == capacity:
                slot = 0
        width, values = self.width, self.values
        if width == 2:
            return (values[2 * slot], values[2 * slot + 1])
        if width == 1:
            return (values[slot],)
        start = slot * width
        return tuple(values[start : start + width])

    def put(self, fingerprint: int, values: tuple[int, ...]) -> None:
        keys, capacity = self.keys, self.capacity
        slot = fingerprint % capacity
        while True:
            found = keys[slot]
            if found == fingerprint:
                break
            if found == _EMPTY:
                keys[slot] = fingerprint
                self.count += 1
                break
            slot += 1
            if slot == capacity:
                slot = 0
        width = self.width
        if width == 1:
            self.values[slot] = values[0]
        elif width == 2:
            self.values[2 * slot], self.values[2 * slot + 1] = values
        elif width:
            start = slot * width
            for index, value in enumerate(values):
                self.values[start + index] = value
        if self.count > self.limit:
            self._grow()

    def _grow(self) -> None:
        # A bounded table quadruples (its bound caps what that costs): each growth moves every
        # entry, which was about half of the work while a table filled.
        if self.max_capacity is None:
            size = 2 * self.capacity
        else:
            size = min(4 * self.capacity, self.max_capacity)
        if size <= self.capacity:
            raise OverflowError(f"an IntTable of {self.capacity} slots is full")
        width, old_keys, old_values = self.width, self.keys, self.values
        keys, values = array("q", bytes(8 * size)), array("q", bytes(8 * size * width))
        # Element by element: a slice of an array is a new array, a cost per entry that made
        # growing half of all the time spent in the table while it filled.
        for old_slot in range(self.capacity):
            found = old_keys[old_slot]
            if found == _EMPTY:
                continue
            slot = found % size  # every key is new to the new arrays: no need to compare
            while keys[slot] != _EMPTY:
                slot += 1
                if slot == size:
                    slot = 0
            keys[slot] = found
            start, old_start = slot * width, old_slot * width
            for index in range(width):
                values[start + index] = old_values[old_start + index]
        self.keys, self.values = keys, values
        self.capacity, self.limit = size, int(size * _MAX_LOAD)

    def items(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(fingerprint, values) of every entry, in no particular order."""
        width, values = self.width, self.values
        for slot, found in enumerate(self.keys):
            if found != _EMPTY:
                yield found, tuple(values[slot * width : (slot + 1) * width])

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
        self._half = max(1, max_entries // 2)
        self._full = capacity_for(self._half)  # a generation's slots when it is full
        self._young = IntTable(width, _FIRST_CAPACITY, self._full)
        self._old: IntTable | None = None
        # The last answer: a change asks about its contact several times in a row. Two
        # attributes, not a pair: a tuple per look-up was a young object for the collector.
        self._last_fingerprint = _EMPTY
        self._last: tuple[int, ...] | None = None

    def get(self, key: Hashable) -> tuple[int, ...] | None:
        found_fingerprint = hash(key) or 1
        if found_fingerprint == self._last_fingerprint:
            return self._last
        found = self._young.get(found_fingerprint)
        if found is None and self._old is not None:
            found = self._old.get(found_fingerprint)
            if found is not None:
                self._put(found_fingerprint, found)  # used again: keep it with the young
        self._last_fingerprint, self._last = found_fingerprint, found
        return found

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key) is not None

    def put(self, key: Hashable, *values: int) -> None:
        if len(values) != self.width:
            raise ValueError(f"{len(values)} values for a width of {self.width}")
        self._put(hash(key) or 1, values)

    def _put(self, found_fingerprint: int, values: tuple[int, ...]) -> None:
        if self.max_entries == 0:
            return
        self._last_fingerprint, self._last = found_fingerprint, values
        self._young.put(found_fingerprint, values)
        if self._young.count >= self._half:
            # The oldest goes before the next is made, so three never coexist; the next is
            # made whole at once: it will fill, and growing would hold two copies a while.
            young, self._old = self._young, None
            self._young = IntTable(self.width, self._full, self._full)
            self._old = young

    def __len__(self) -> int:
        """An upper bound: a key in both generations counts twice."""
        return self._young.count + (0 if self._old is None else self._old.count)

    @property
    def bytes(self) -> int:
        """The memory the arrays hold."""
        return self._young.bytes + (0 if self._old is None else self._old.bytes)

    @staticmethod
    def full_bytes(max_entries: int, width: int) -> int:
        """The memory of a full map: two generations of `max_entries / 2` keys, each table
        large enough to hold them at a load of two thirds, 8 bytes a key and 8 a value."""
        return 2 * capacity_for(max(1, max_entries // 2)) * 8 * (1 + width)
