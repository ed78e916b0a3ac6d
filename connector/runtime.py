"""Process-wide settings of the interpreter for the long-running service."""

from __future__ import annotations

import gc

# Python's cyclic garbage collector is tuned for small heaps. With tens of thousands of records
# in flight, each full collection stopped every thread for about 250 ms, 34 times in the
# 200,000-event rate-limit benchmark (11 s of its 100 went to collecting), and each stop held
# back the tag calls that bound a sync. Records are freed by reference counting and cycles are
# rare, so the collector may run far less often: with these thresholds 2.6 s, no full pass, the
# longest stop 76 ms. (A first generation of 50,000 collected less still, but let the peak
# memory of the stall benchmark vary by 17 % between runs.)
GC_THRESHOLDS = (10_000, 50, 1000)


def tune_gc() -> None:
    """Collect cycles rarely: the service's garbage is freed by reference counting."""
    gc.set_threshold(*GC_THRESHOLDS)
