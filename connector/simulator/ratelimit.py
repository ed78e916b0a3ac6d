"""Omnisend's per-brand sliding-window rate limits, as the simulator enforces them."""

from __future__ import annotations

import math
from collections import deque


class SlidingWindow:
    """Counts admitted requests over the last `window_s` seconds.

    A request at time t is inside the window at `now` while `t > now - window_s`, so after waiting
    the `retry_after` this class reports, the oldest request has left the window.
    """

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._times and self._times[0] <= horizon:
            self._times.popleft()

    def used(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def wait_s(self, now: float) -> float:
        """Seconds until one more request fits; 0 when it fits now."""
        self._expire(now)
        if len(self._times) < self.limit:
            return 0.0
        # The request that frees a slot is the one `limit` places back from the end.
        return self._times[-self.limit] + self.window_s - now

    def admit(self, now: float) -> None:
        self._times.append(now)


class BrandLimits:
    """The two windows of one brand: every request, and the stricter `/contacts/tags` one."""

    def __init__(self, limit: int, tag_limit: int, window_s: float) -> None:
        self.all = SlidingWindow(limit, window_s)
        self.tags = SlidingWindow(tag_limit, window_s)

    def try_admit(self, now: float, is_tag_call: bool) -> int | None:
        """Admit the request and return None, or return `retryAfter` in whole seconds (rounded
        up, never 0) without counting it: Omnisend does not count requests it answers 429."""
        wait = self.all.wait_s(now)
        if is_tag_call:
            wait = max(wait, self.tags.wait_s(now))
        if wait > 0:
            return max(1, math.ceil(wait))
        self.all.admit(now)
        if is_tag_call:
            self.tags.admit(now)
        return None
