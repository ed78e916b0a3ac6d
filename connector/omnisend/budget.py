"""The brand's request budget, counted the way Omnisend counts: a sliding window per brand for
every request, and a stricter one for `/contacts/tags` (tag calls count in both).

The budget belongs to the brand, not the process: each replica of a consumer group uses `share`
of it (the share of partitions it owns), and `headroom` leaves room for the brand's other
integrations. After a 429 the effective rate drops and recovers window by window.

A backlog drains at the window's limit: a *full* request (250 emails in a tag call, 100 contacts
in a batch) goes whenever the window has room. Part-full requests are paced, so a trickle never
spends the window in a burst of half-empty calls. Status reads, which release tag calls, have a
reserve in the window that batch requests may not use.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

# Omnisend's published limits per brand and minute.
REQUESTS_PER_MINUTE = 400
TAG_REQUESTS_PER_MINUTE = 60
# After a 429 the rate is cut to this fraction and grows back by RECOVERY_STEP each clean window:
# a multiplicative decrease, additive increase, like TCP, so replicas that overshoot converge.
BACKOFF_FACTOR = 0.7
RECOVERY_STEP = 0.1
MIN_FACTOR = 0.2
# Requests are also paced: at most this share of a window's limit may go out back to back.
# Without it a sliding window lets the whole minute's budget leave in one burst and then
# nothing for the rest of the minute, which is what makes latency spiky.
BURST_SHARE = 0.08
# The share of the window (after tag calls) that batch requests leave to status reads: a burst of
# full batches never holds back the reads that release tag calls.
READ_RESERVE = 0.2


@dataclass(frozen=True)
class BudgetConfig:
    requests_per_window: int = REQUESTS_PER_MINUTE
    tag_requests_per_window: int = TAG_REQUESTS_PER_MINUTE
    window_s: float = 60.0
    headroom: float = 0.9  # use at most this share of the brand's limits

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")


class Request(NamedTuple):
    """What the budget needs to know of a request: its lane, and whether it is paced."""

    tag_call: bool = False
    full: bool = False  # as many contacts or emails as the request can carry
    read: bool = False  # a batch status or item read


class Slot:
    """One request's place in the window. It is counted from when it is sent; once its answer
    came it is moved to that moment: Omnisend counted it somewhere in between, and only the later
    bound keeps our count from falling behind Omnisend's when requests are slow to arrive."""

    __slots__ = ("answered", "sent", "t")

    def __init__(self, t: float) -> None:
        self.sent = self.t = t
        self.answered = False


class _Window:
    """The requests still inside the window, and a token bucket that paces them."""

    def __init__(self) -> None:
        self.times: deque[Slot] = deque()
        # One token to start with, not a full bucket: a burst now would fill the sliding window
        # early and stall the same stretch of the next window. Tokens saved while idle let a
        # stream catch up later.
        self.tokens: float | None = None
        self.refilled_at = 0.0

    def pace(self, now: float, limit: int, window_s: float) -> float:
        """Seconds until the bucket holds a token (0: take it now)."""
        rate = limit / window_s
        burst = max(1.0, math.ceil(limit * BURST_SHARE))
        if self.tokens is None:
            self.tokens, self.refilled_at = 1.0, now
        tokens = self.tokens
        self.tokens = min(burst, tokens + (now - self.refilled_at) * rate)
        self.refilled_at = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / rate

    def count(self, now: float, window_s: float) -> int:
        horizon = now - window_s
        times = self.times
        while times and times[0].t <= horizon:
            times.popleft()
        # Slots are stored in the order they were granted, but answers come in any order: a
        # slot that left the window may stand behind one answered later. Only slots sent
        # before the horizon can have left, a short run at the front; look there. (Expiring
        # from the front only held each freed slot behind a slower answer, ~0.1 s a window
        # cycle, a few per cent of a sync.)
        gone = [
            s for s in itertools.takewhile(lambda s: s.sent <= horizon, times) if s.t <= horizon
        ]
        for slot in gone:
            times.remove(slot)
        return len(times)

    def wait(self, now: float, window_s: float, limit: int) -> float:
        count = self.count(now, window_s)
        if count < limit:
            return 0.0
        frees = sorted(slot.t for slot in self.times)[count - limit]
        return max(frees + window_s - now, 1e-3)


class Budget:
    """Not thread-safe, except `reassign`: the sink's event loop owns it."""

    def __init__(self, config: BudgetConfig, share: float = 1.0) -> None:
        self.config = config
        self.share = share
        # The group's assignments, in order, from the Kafka thread (a deque is safe for that).
        self._assigned: deque[float] = deque()
        self._owned: float | None = None  # the share the window was last set up for
        self._others, self._tags = _Window(), _Window()
        self._factor = 1.0
        self._blocked_until = 0.0
        self._last_429 = -math.inf
        self._last_recovery = 0.0
        self.waits = 0  # times a request had to wait for the budget
        self.last_slot: Slot | None = None  # the slot of the last request granted

    # Omnisend counts a request when it arrives. Slots are counted from sending until the
    # answer and then from the answer on (see `Slot`), so the window needs no margin.
    @property
    def _window(self) -> float:
        return self.config.window_s

    def reassign(self, share: float) -> None:
        """The consumer group gave this replica `share` of the brand (any thread may say so; the
        loop applies it at its next request). Whatever the share grew by counts as used for one
        window: the previous owner's requests may still be in Omnisend's window. A process's
        first assignment counts as growth from nothing, unless it owns every partition (a lone
        replica starts at once); a member with no partitions owns nothing (0)."""
        self._assigned.append(share)

    def apply(self, now: float) -> None:
        """Take in the group's assignments since the last call; the loop calls it every turn,
        so the window's phantom slots start when the share changed (within a tick)."""
        while self._assigned:
            self._apply_assignment(self._assigned.popleft(), now)

    def _apply_assignment(self, target: float, now: float) -> None:
        if target == self._owned:
            return
        before = self._owned
        if before is None:
            before = target if target >= 1.0 else 0.0
        self._owned = target
        old_all, old_tags = self._limits_at(before) if before > 0 else (0, 0)
        self.share = target  # 0 (a standby) still allows one request a window, never needed
        new_all, new_tags = self.limits()
        for window, grown in (
            (self._tags, new_tags - old_tags),
            (self._others, (new_all - new_tags) - (old_all - old_tags)),
        ):
            for _ in range(max(0, grown)):
                phantom = Slot(now)
                phantom.answered = True
                window.times.append(phantom)

    def limits(self) -> tuple[int, int]:
        """(every request, tag calls) allowed per window now."""
        return self._limits_at(self.share)

    def _limits_at(self, share: float) -> tuple[int, int]:
        scale = self.config.headroom * share * self._factor
        all_limit = max(1, math.floor(self.config.requests_per_window * scale))
        tag_limit = max(1, math.floor(self.config.tag_requests_per_window * scale))
        # Tag calls have their share reserved inside the shared window; it may not take more
        # than half of it, so other requests always have room too.
        return all_limit, max(1, min(tag_limit, all_limit // 2))

    def wait(self, now: float, tag_call: bool, *, full: bool = False, read: bool = False) -> float:
        """Seconds until a request may go (0: now); counts nothing. Ask before preparing a
        request that is costly to prepare and to put back.

        Tag calls, which bound a sync, have their window reserved: other requests may use only
        `all - tags` of it. Both together then never exceed `all`. Of the rest, batch requests
        leave `READ_RESERVE` to reads (`read`). A `full` request or a read goes whenever the
        window has room; others are paced as well."""
        self.apply(now)
        self._recover(now)
        if now < self._blocked_until:
            self.waits += 1
            return self._blocked_until - now
        window, limit = self._lane(tag_call)
        room = limit if tag_call or read else max(1, limit - math.ceil(limit * READ_RESERVE))
        wait = window.wait(now, self._window, room)
        if not (full or read):
            wait = max(wait, window.pace(now, limit, self._window))
        if wait > 0:
            self.waits += 1
        return wait

    def try_acquire(
        self, now: float, tag_call: bool, *, full: bool = False, read: bool = False
    ) -> float:
        """Count one request and return 0, or return the seconds to wait (nothing counted)."""
        wait = self.wait(now, tag_call, full=full, read=read)
        if wait > 0:
            return wait
        self.take(now, tag_call, full=full, read=read)
        return 0.0

    def take(self, now: float, tag_call: bool, *, full: bool = False, read: bool = False) -> Slot:
        """Count one request that `wait` just allowed, and return its slot. Only paced
        requests spend the pacing's tokens."""
        window, _ = self._lane(tag_call)
        self.last_slot = Slot(now)
        window.times.append(self.last_slot)
        if not (full or read):
            window.tokens = (window.tokens or 0.0) - 1.0
        return self.last_slot

    def _lane(self, tag_call: bool) -> tuple[_Window, int]:
        all_limit, tag_limit = self.limits()
        if tag_call:
            return self._tags, tag_limit
        return self._others, max(1, all_limit - tag_limit)

    @staticmethod
    def answered(slot: Slot | None, now: float) -> None:
        """The request of `slot` got its answer (or failed) at `now`; later calls change
        nothing, so the caller may also say it when it is done with the answer."""
        if slot is not None and not slot.answered:
            slot.t = max(slot.t, now)
            slot.answered = True

    def rate_limited(self, now: float, retry_after_s: float | None) -> None:
        """A 429: stop until `retryAfter` (a tenth of the window when it said none; 0 is
        "now") and slow down."""
        wait_s = self.config.window_s / 10 if retry_after_s is None else retry_after_s
        self._blocked_until = max(self._blocked_until, now + wait_s)
        if now - self._last_429 > 1.0:  # one cut per burst of 429s
            self._factor = round(max(MIN_FACTOR, self._factor * BACKOFF_FACTOR), 6)
        self._last_429 = now
        self._last_recovery = now

    def _recover(self, now: float) -> None:
        if self._factor < 1.0 and now - self._last_recovery >= self.config.window_s:
            self._factor = round(min(1.0, self._factor + RECOVERY_STEP), 6)
            self._last_recovery = now

    def used(self, now: float) -> tuple[int, int]:
        """(every request, tag calls) counted in the window now."""
        tags = self._tags.count(now, self._window)
        return self._others.count(now, self._window) + tags, tags
