"""The client-side budget: Omnisend's accounting, headroom, shares, pacing, 429 back-off."""

from __future__ import annotations

import itertools

from connector.omnisend.budget import Budget, BudgetConfig


def drive(budget: Budget, seconds: float, step: float = 0.01) -> tuple[list[float], list[float]]:
    """Ask for a tag call and another request every `step`; return when each was granted."""
    tags: list[float] = []
    others: list[float] = []
    for i in range(int(seconds / step)):
        now = i * step
        if budget.try_acquire(now, tag_call=True) == 0:
            tags.append(now)
        if budget.try_acquire(now, tag_call=False) == 0:
            others.append(now)
    return tags, others


def max_in_window(times: list[float], window: float) -> int:
    return max((sum(1 for u in times if t - window < u <= t) for t in times), default=0)


def test_headroom_and_tag_reservation() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    assert budget.limits() == (360, 54)


def test_sliding_window_is_never_exceeded_and_nearly_filled() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    tags, others = drive(budget, 180.0)
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


def test_a_tag_limit_as_large_as_the_shared_one_leaves_room_for_other_requests() -> None:
    budget = Budget(
        BudgetConfig(requests_per_window=1000, tag_requests_per_window=1000, headroom=1.0)
    )
    assert budget.limits() == (1000, 500)
    _tags, others = drive(budget, 60.0, step=0.01)
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
