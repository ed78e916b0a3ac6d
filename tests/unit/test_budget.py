"""The client-side budget: Omnisend's accounting, headroom, shares, pacing, 429 back-off."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.omnisend.budget import READ_RESERVE, Budget, BudgetConfig


def drive(
    budget: Budget, seconds: float, step: float = 0.01, reads: bool = False
) -> tuple[list[float], list[float]]:
    """Ask for a tag call and a batch (and a read) every `step`; return when each was granted."""
    tags: list[float] = []
    others: list[float] = []
    for i in range(int(seconds / step)):
        now = i * step
        if budget.try_acquire(now, tag_call=True) == 0:
            tags.append(now)
        if budget.try_acquire(now, tag_call=False) == 0:
            others.append(now)
        if reads and budget.try_acquire(now, tag_call=False, read=True) == 0:
            others.append(now)  # the reads' reserve is used too
    return tags, sorted(others)


def max_in_window(times: list[float], window: float) -> int:
    """The most of `times` in any window (t - window, t]."""
    times, most, first = sorted(times), 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_headroom_and_tag_reservation() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    assert budget.limits() == (360, 54)


def test_sliding_window_is_never_exceeded_and_nearly_filled() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    tags, others = drive(budget, 180.0, reads=True)
    assert max_in_window(tags, 60.0) <= 54
    assert max_in_window(sorted(tags + others), 60.0) <= 360
    # Steady state: the budget is used, not wasted (the first window starts full).
    assert len([t for t in tags if t >= 60]) >= 2 * 54 * 0.97
    assert len([t for t in others if t >= 60]) >= 2 * 306 * 0.97


def test_requests_are_paced_not_burst() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    tags, others = drive(budget, 0.003, step=0.0001)
    assert (len(tags), len(others)) == (1, 1)  # no burst at the start
    after_idle = [budget.try_acquire(100.0, tag_call=True) for _ in range(10)]
    assert after_idle.count(0.0) == 5  # saved while idle: 8 % of 54, rounded up
    budget = Budget(BudgetConfig(headroom=0.9))
    tags, _ = drive(budget, 10.0)
    gaps = [b - a for a, b in itertools.pairwise(tags)]
    assert min(gaps[5:]) >= 60 / 54 * 0.95


def test_share_of_the_brand() -> None:
    budget = Budget(BudgetConfig(headroom=0.9), share=1 / 3)
    assert budget.limits() == (120, 18)


def test_429_blocks_until_retry_after_and_slows_down_then_recovers() -> None:
    budget = Budget(BudgetConfig(headroom=1.0))
    budget.rate_limited(10.0, 7.0)
    assert budget.try_acquire(12.0, tag_call=False) == 5.0
    assert budget.limits() == (280, 42)
    assert budget.try_acquire(17.0, tag_call=False) == 0
    budget.try_acquire(10.0 + 61, tag_call=False)
    assert budget.limits() == (320, 48)


def test_a_retry_after_of_zero_is_honoured_and_an_absent_one_waits_a_tenth_of_the_window() -> None:
    now_ok = Budget(BudgetConfig(headroom=1.0))
    now_ok.rate_limited(10.0, 0.0)  # "retry now": no wait, the rate is still cut
    assert now_ok.try_acquire(10.0, tag_call=False) == 0
    assert now_ok.limits() == (280, 42)
    absent = Budget(BudgetConfig(headroom=1.0))
    absent.rate_limited(10.0, None)
    assert absent.try_acquire(10.0, tag_call=False) == 6.0


def test_a_tag_limit_as_large_as_the_shared_one_leaves_room_for_other_requests() -> None:
    budget = Budget(
        BudgetConfig(requests_per_window=1000, tag_requests_per_window=1000, headroom=1.0)
    )
    assert budget.limits() == (1000, 500)
    _tags, others = drive(budget, 60.0, step=0.01, reads=True)
    assert len(others) >= 450


def test_a_slot_answered_early_frees_on_time_behind_one_answered_late() -> None:
    # Two tag calls a window: A is sent first but answered late, B answered early. B's place
    # in the window frees 10 s after its answer, however long A still counts.
    budget = Budget(BudgetConfig(tag_requests_per_window=2, window_s=10.0, headroom=1.0))
    assert budget.try_acquire(0.0, tag_call=True) == 0
    a = budget.last_slot
    assert budget.try_acquire(5.0, tag_call=True) == 0
    b = budget.last_slot
    Budget.answered(b, 5.2)
    Budget.answered(a, 6.0)
    assert budget.used(15.1) == (2, 2)
    assert budget.try_acquire(15.1, tag_call=True) > 0
    assert budget.used(15.3) == (1, 1)
    assert budget.try_acquire(15.3, tag_call=True) == 0
    assert budget.used(15.9) == (2, 2)
    assert budget.used(16.1) == (1, 1)  # A went at 16


def test_a_retry_after_counts_as_waiting_for_the_budget() -> None:
    # The sink's `omnisend_rate_limit_wait_seconds` counts time after a wait was reported.
    budget = Budget(BudgetConfig())
    budget.rate_limited(10.0, 5.0)
    assert budget.wait(12.0, tag_call=False) == 3.0
    assert budget.waits == 1
    assert budget.wait(15.0, tag_call=False) == 0
    assert budget.waits == 1


# ---- the sliding window spent by full requests; shares that change -----------------------------


def grant(budget: Budget, now: float, n: int, **kind: bool) -> int:
    """How many of `n` requests of `kind` the budget lets go at `now`."""
    return sum(1 for _ in range(n) if budget.try_acquire(now, **kind) == 0)


def test_full_tag_calls_go_whenever_the_window_has_room() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    assert grant(budget, 0.0, 100, tag_call=True, full=True) == 54  # the whole window at once
    assert grant(budget, 30.0, 10, tag_call=True, full=True) == 0
    assert grant(budget, 59.9, 10, tag_call=True, full=True) == 0
    assert grant(budget, 60.1, 100, tag_call=True, full=True) == 54
    # Part-full calls are still paced: a few at once after a quiet window, not a burst.
    assert grant(budget, 130.0, 20, tag_call=True) == 1
    assert grant(budget, 200.0, 20, tag_call=True) == 5


def test_full_batches_leave_room_for_the_reads_that_release_tag_calls() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    batches = grant(budget, 0.0, 400, tag_call=False, full=True)
    assert batches == 306 - math.ceil(306 * READ_RESERVE)
    assert grant(budget, 0.5, 400, tag_call=False, read=True) == 306 - batches
    assert grant(budget, 1.0, 10, tag_call=False, read=True) == 0  # the window is full now


def test_a_grown_share_waits_one_window_for_the_old_owners_requests() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    budget.reassign(1.0)  # alone in the group: starts at once
    assert grant(budget, 0.0, 100, tag_call=True, full=True) == 54
    budget.reassign(0.5)  # a member joined
    assert grant(budget, 61.0, 100, tag_call=True, full=True) == 27
    budget.reassign(1.0)  # it left: its calls may still be in Omnisend's window
    assert grant(budget, 62.0, 100, tag_call=True, full=True) == 0
    assert grant(budget, 121.5, 100, tag_call=True, full=True) == 27  # its half, freed at 121
    assert grant(budget, 122.5, 100, tag_call=True, full=True) == 27  # the grown half, at 122


def test_a_member_joining_a_busy_group_waits_one_window() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    budget.reassign(0.5)
    for now in (0.0, 59.9):
        for kind in ({"tag_call": True, "full": True}, {"tag_call": False, "read": True}):
            assert budget.wait(now, **kind) > 0
    assert grant(budget, 60.5, 100, tag_call=True, full=True) == 27


def range_shares(members: int, partitions: int) -> list[float]:
    """The range assignor's split of `partitions` among `members`, as shares."""
    return [
        (partitions // members + (1 if i < partitions % members else 0)) / partitions
        for i in range(members)
    ]


requests_st = st.sampled_from(
    [
        {"tag_call": True, "full": True},
        {"tag_call": True},
        {"tag_call": False, "full": True},
        {"tag_call": False},
        {"tag_call": False, "read": True},
    ]
)


@settings(max_examples=100, deadline=None)
@given(
    changes=st.lists(st.tuples(st.floats(1.0, 300.0), st.booleans()), max_size=6),
    demand=st.lists(requests_st, min_size=1, max_size=5),
    partitions=st.integers(1, 12),
)
def test_replicas_joining_and_leaving_never_exceed_the_brand_window(
    changes: list[tuple[float, bool]], demand: list[dict[str, bool]], partitions: int
) -> None:
    """Members join (a new process) and leave at random; every live member asks for requests
    all the time. In every 60 s window the group together stays within the brand's limits."""
    config = BudgetConfig(headroom=0.9)
    members = [Budget(config)]
    members[0].reassign(1.0)
    sent: list[tuple[float, bool]] = []
    events = sorted(changes)
    step = 0.5
    for i in range(int(360 / step)):
        now = i * step
        while events and events[0][0] <= now:
            _, join = events.pop(0)
            if join:
                members.append(Budget(config))
            elif len(members) > 1:
                members.pop(0)  # the oldest leaves; its requests stay in Omnisend's window
            live = min(len(members), partitions)  # members beyond the partitions get none
            shares = range_shares(live, partitions) + [0.0] * (len(members) - live)
            for budget, share in zip(members, shares, strict=True):
                budget.reassign(share)
        for budget in members[: min(len(members), partitions)]:
            for kind in demand:
                if budget.try_acquire(now, **kind) == 0:
                    sent.append((now, kind["tag_call"]))
    tags = [t for t, tag_call in sent if tag_call]
    assert max_in_window(tags, 60.0) <= 54
    assert max_in_window([t for t, _ in sent], 60.0) <= 360


def test_a_share_change_counts_from_when_the_loop_took_it_in_not_from_the_next_request() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    budget.reassign(0.5)  # joined a busy group at 0 ...
    budget.apply(0.0)  # ... which the loop takes in at its next turn
    assert grant(budget, 60.5, 100, tag_call=True, full=True) == 27  # not blocked until 120
