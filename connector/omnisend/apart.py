"""Requests that keep failing as a whole, set apart so they stop holding back the others.

A batch or tag call that fails as a whole `WHOLE_FAILURES` times in a row (a 5xx, a reset, a
firewall's page: not a 429, which is the brand's budget) may be failing for one contact's
values: sent again at the front of the line, it would stop every request behind it. Its items
then go in halves, each half failing as often before it is halved again, down to the item it
fails for. That one is retried on its own every `retry_s` (isolated), never dead-lettered,
since nothing proves it wrong: in a brownout every request fails now and then. At most
`MAX_SPLIT_GROUPS` groups and `MAX_ISOLATED` items are set apart at a time, so a brownout
leaves few small requests behind.

Pure bookkeeping: what a group needs besides its items (`H`: nothing for a batch; add or
remove, and the tag, for a tag call), its items (`T`) and their keys (`K`). The items set apart
stay in flight in the coalescer until their request goes through.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

WHOLE_FAILURES = 3  # whole failures in a row of a group's requests before it is halved
MAX_SPLIT_GROUPS = 8  # groups sent apart at a time, per kind of request
MAX_ISOLATED = 10  # items retried alone, each every `retry_s`

H = TypeVar("H")
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class Apart(Generic[H, T, K]):
    def __init__(self, key: Callable[[T], K]) -> None:
        self._key = key
        self.failing: deque[tuple[H, list[T]]] = deque()  # to send before the queue's requests
        self.strikes: dict[K, int] = {}  # whole failures in a row of each item's requests
        self.isolated: dict[K, tuple[H, T, float]] = {}  # retried alone, when next (inf: sent)

    def through(self, items: list[T]) -> bool:
        """Their request went through: no failures in a row any more. True if one of them was
        isolated (it is not any more)."""
        freed = False
        if self.strikes or self.isolated:
            for item in items:
                key = self._key(item)
                self.strikes.pop(key, None)
                freed = self.isolated.pop(key, None) is not None or freed
        return freed

    def again(self, items: list[T], retry_at: float) -> bool:
        """If `items` is an isolated item's own request, it failed again: next try at
        `retry_at`. True if it was."""
        if len(items) != 1 or not self.isolated:
            return False
        key = self._key(items[0])
        entry = self.isolated.get(key)
        if entry is None:
            return False
        self.isolated[key] = (entry[0], entry[1], retry_at)
        return True

    def narrow(self, head: H, items: list[T], retry_at: float) -> str | None:
        """Count a whole failure of `items`' request against each of them. Once every one has
        failed `WHOLE_FAILURES` times in a row, halve the group ("split") or isolate its lone
        item until `retry_at` ("isolated"), if there is room apart; None if it was neither."""
        keys = [self._key(item) for item in items]
        for key in keys:
            self.strikes[key] = self.strikes.get(key, 0) + 1
        if min(self.strikes[key] for key in keys) < WHOLE_FAILURES:
            return None
        if len(items) == 1:
            if len(self.isolated) >= MAX_ISOLATED:
                return None
            del self.strikes[keys[0]]
            self.isolated[keys[0]] = (head, items[0], retry_at)
            return "isolated"
        if len(self.failing) + 2 > MAX_SPLIT_GROUPS:
            return None
        for key in keys:  # each half earns its own failures
            del self.strikes[key]
        half = len(items) // 2
        self.failing.extend(((head, items[:half]), (head, items[half:])))
        return "split"

    def due(self, now: float) -> Iterator[tuple[K, H, T]]:
        """The isolated items whose next try has come; the caller sends each it takes
        (`sending`) or leaves it for a later look."""
        for key, (head, item, at) in list(self.isolated.items()):
            if at <= now:
                yield key, head, item

    def sending(self, key: K) -> None:
        head, item, _ = self.isolated[key]
        self.isolated[key] = (head, item, math.inf)  # its answer says when next

    def release(self, key: K) -> T:
        """Give an isolated item back (a newer change of it waits: that one goes instead)."""
        return self.isolated.pop(key)[1]

    def next_try(self) -> float:
        return min((at for _, _, at in self.isolated.values()), default=math.inf)
