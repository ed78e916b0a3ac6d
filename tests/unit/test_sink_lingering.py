"""How full tag calls are when their intents become sendable one after another: a part-full
call lingers from the moment its oldest intent could go, not from when it started waiting."""

from __future__ import annotations

import time

from connector.core.clock import ManualClock
from connector.core.intents import Outcome
from connector.omnisend.sink import OmnisendSink
from tests.omnisend_fakes import Scripted, change, fast_sink, simulator

TAGS = "/contacts/tags"


def pump(
    clock: ManualClock, sink: OmnisendSink, done: list[Outcome], want: int, step: float
) -> None:
    """Move the clock in small steps, letting the sink's loop act on each, until `want`
    outcomes are in `done`."""
    deadline = time.monotonic() + 20
    while len(done) < want:
        assert time.monotonic() < deadline, f"{len(done)} of {want} outcomes"
        assert sink.fatal is None
        clock.advance(step)
        time.sleep(0.005)
        done += sink.take_outcomes()


def test_removals_settling_in_cohorts_go_together_after_the_linger() -> None:
    """Six cohorts of adds accepted 0.1 s apart: their removals may go 2 s (the settle) after
    each. The group holds 300 removals, more than a call takes, yet only 50 are sendable when
    the first cohort settles: a call per cohort would carry a sixth of what it could."""
    clock = ManualClock()
    omnisend = Scripted(simulator(clock))
    sink = fast_sink(omnisend, clock=clock, settle_s=2.0, tag_linger_s=0.5)
    done: list[Outcome] = []
    try:
        sink.flush(True)  # each cohort's adds go at once
        for cohort in range(6):
            first = cohort * 50
            sink.submit([change(i, f"c{i}@example.com") for i in range(first, first + 50)])
            pump(clock, sink, done, first + 50, 0.002)
            clock.advance(0.1)
        sink.flush(False)
        assert omnisend.count("POST", TAGS) == 6
        sink.submit([change(300 + i, f"c{i}@example.com", entered=False) for i in range(300)])
        pump(clock, sink, done, 600, 0.005)
        assert all(o.reason is None for o in done)
        # The first cohort lingers 0.5 s once sendable; by then all six are.
        assert omnisend.count("DELETE", TAGS) <= 2
    finally:
        sink.stop()


def test_a_full_call_of_settled_removals_goes_without_lingering() -> None:
    clock = ManualClock()
    omnisend = Scripted(simulator(clock))
    sink = fast_sink(omnisend, clock=clock, settle_s=2.0, tag_linger_s=30.0)
    done: list[Outcome] = []
    try:
        sink.flush(True)
        sink.submit([change(i, f"c{i}@example.com") for i in range(250)])
        pump(clock, sink, done, 250, 0.002)
        sink.flush(False)
        exits_at = clock.now()
        sink.submit([change(250 + i, f"c{i}@example.com", entered=False) for i in range(250)])
        # Well before the 30 s linger: the settle is all a full call waits for.
        pump(clock, sink, done, 500, 0.005)
        assert omnisend.count("DELETE", TAGS) == 1
        assert clock.now() < exits_at + 10
    finally:
        sink.stop()
