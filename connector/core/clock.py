"""Injected clocks: the system clock in production, a manual one in tests.

Everything that waits or measures time takes a `Clock`, so tests can drive time by hand instead
of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A source of time in seconds."""

    def now(self) -> float:
        """Seconds since the Unix epoch; never goes backwards."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds` of this clock's time."""


class SystemClock:
    """Wall-clock epoch seconds that advance with the monotonic clock (immune to NTP steps)."""

    def __init__(self) -> None:
        self._epoch0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._epoch0 + (time.monotonic() - self._mono0)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; `sleep` advances it instantly."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
