"""Requests that keep failing as a whole, set apart so they stop holding back the others.

A batch or tag call that fails as a whole (a 5xx, a reset, a firewall's page: not a 429,
which is the brand's budget) may be failing for one contact's values: sent again at the front
of the line, it would stop every request behind it, and contacts arriving meanwhile would
ride along and fail with it. So a request of the line that fails as a whole is set apart as a
group: the same items, sent again on their own. A group that failed `WHOLE_FAILURES` times in
a row goes in halves, and a half that fails once more is halved again, down to the item it
fails for. That one is retried alone every `retry_s` (isolated), never dead-lettered, since
nothing proves it wrong: in a brownout every request fails now and then. At most
`MAX_SPLIT_GROUPS` groups (waiting or sent) and `MAX_ISOLATED` items are apart at a time, so a
brownout leaves few small requests behind; past that, failed requests go back to the line.

Pure bookkeeping: what a group needs besides its items (`H`: nothing for a batch; add or
remove, and the tag, for a tag call), its items (`T`) and their keys (`K`). The items set apart
stay in flight in the coalescer until their request goes through.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

WHOLE_FAILURES = 3  # whole failures in a row of a group before it is halved the first time
MAX_SPLIT_GROUPS = 8  # groups apart at a time, per kind of request
MAX_ISOLATED = 10  # items retried alone, each every `retry_s`

H = TypeVar("H")
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(eq=False)
class Group(Generic[H, T]):
    head: H
    items: list[T]
    failures: int  # whole failures in a row


class Apart(Generic[H, T, K]):
    def __init__(self, key: Callable[[T], K]) -> None:
        self._key = key
        self.waiting: deque[Group[H, T]] = deque()  # sent before the line's requests
        self.sent = 0  # groups whose request is on its way
        self.isolated: dict[K, tuple[H, T, float]] = {}  # retried alone, when next (inf: sent)

    def take(self) -> Group[H, T]:
        self.sent += 1
        return self.waiting.popleft()

    def answered(self) -> None:
        """A group's request has its answer (or failed): it no longer counts as sent."""
        self.sent -= 1

    def through(self, items: list[T]) -> bool:
        """Their request went through: True if one of them was isolated (it is not any more)."""
        freed = False
        if self.isolated:
            for item in items:
                freed = self.isolated.pop(self._key(item), None) is not None or freed
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

    def failed(self, head: H, items: list[T], group: Group[H, T] | None, retry_at: float) -> str:
        """A whole failure of the request of `items` (`group`: the group it was, None: the
        line's). What became of them: "apart" (a new group, or the same again), "split",
        "isolated" (until `retry_at`), or "back" (no room: the caller puts them back)."""
        room = MAX_SPLIT_GROUPS - len(self.waiting) - self.sent
        if group is None:
            if room < 1:
                return "back"
            self.waiting.append(Group(head, items, 1))
            return "apart"
        group.failures += 1
        if group.failures < WHOLE_FAILURES:
            self.waiting.append(group)
            return "apart"
        if len(items) == 1 and len(self.isolated) < MAX_ISOLATED:
            self.isolated[self._key(items[0])] = (head, items[0], retry_at)
            return "isolated"
        if len(items) == 1 or room < 2:
            self.waiting.append(group)  # stays apart, whole, until there is room
            return "apart"
        half = len(items) // 2
        # A half fails for the same reason as the whole did: halved again at its next failure.
        again = WHOLE_FAILURES - 1
        self.waiting.extend((Group(head, items[:half], again), Group(head, items[half:], again)))
        return "split"

    def due(self, now: float) -> Iterator[tuple[K, H, T]]:
        """The isolated items whose next try has come; the caller sends each it takes
        (`sending`) or leaves it for a later look."""
        for key, (head, item, at) in list(self.isolated.items()):
            if at <= now:
                yield key, head, item

    def sending(self, key: K, head: H, item: T) -> None:
        """Its request goes now (with `item`, possibly a newer change of the same key)."""
        self.isolated[key] = (head, item, math.inf)  # its answer says when next

    def release(self, key: K) -> T:
        """Give an isolated item back to the line (a newer change of it goes instead)."""
        return self.isolated.pop(key)[1]

    def wake(self, now: float) -> None:
        """Omnisend answers again after failures of every kind of request (an outage, not
        a firewall's rule): the isolated items may have failed for that, try them now."""
        for key, (head, item, at) in list(self.isolated.items()):
            if now < at < math.inf:
                self.isolated[key] = (head, item, now)

    def next_try(self) -> float:
        return min((at for _, _, at in self.isolated.values()), default=math.inf)
