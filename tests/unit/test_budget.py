"""The client-side budget: Omnisend's accounting, headroom, shares, 429 back-off and recovery."""

from __future__ import annotations

from connector.omnisend.budget import Budget, BudgetConfig


def fill(budget: Budget, now: float, tag_call: bool) -> int:
    n = 0
    while budget.try_acquire(now, tag_call) == 0:
        n += 1
    return n


def test_headroom_and_tag_reservation() -> None:
    budget = Budget(BudgetConfig(headroom=0.9))
    assert budget.limits() == (360, 54)
    assert fill(budget, 0.0, tag_call=True) == 54
    assert fill(budget, 0.0, tag_call=False) == 306
    assert budget.used(0.0) == (360, 54)


def test_window_slides() -> None:
    budget = Budget(BudgetConfig(requests_per_window=12, tag_requests_per_window=2, headroom=1.0))
    assert fill(budget, 0.0, tag_call=False) == 10
    wait = budget.try_acquire(30.0, tag_call=False)
    assert 30.0 < wait <= 30.0 * 1.01 + 0.7
    assert budget.try_acquire(30.0 + wait, tag_call=False) == 0


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
