"""The sink's requests in the budget: a slot counts from the request's answer, not from the
moment the sink is done with it; a request the budget held back goes when it allows."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry

from connector.core.clock import ManualClock, SystemClock
from connector.core.events import ContactChange, Position
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.sink import OmnisendSink
from tests.defaults import sink_config


def test_a_tag_call_counts_from_its_answer_not_from_the_work_after_it() -> None:
    clock = ManualClock(1_000.0)

    def omnisend(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("DELETE", "/api/contacts/tags")
        clock.advance(1.0)  # answered a second after it was sent
        return httpx.Response(204)

    budget = Budget(BudgetConfig(window_s=60.0))
    sink = OmnisendSink(
        api_key="test-key",
        base_url="https://omnisend.test/api",
        budget=budget,
        clock=clock,
        metrics=Metrics(CollectorRegistry()),
        config=sink_config(),
        transport=httpx.MockTransport(omnisend),
    )
    sink.on_accepted = lambda latencies: clock.advance(5.0)  # slow bookkeeping after the answer
    sink.start()
    try:
        exit_ = ContactChange(Position("t", 0, 0), "e0", 1_000, "a@example.com", "vip", False, {})
        sink.submit([exit_])
        assert sink.drain(10.0)
    finally:
        sink.stop()
    assert budget.used(1_060.9) == (1, 1)  # answered at 1,001: still in the window
    assert budget.used(1_061.1) == (0, 0)  # and out of it 60 s later, not 60 s after 1,006


def test_a_slot_keeps_its_first_answer() -> None:
    budget = Budget(BudgetConfig(window_s=60.0))
    assert budget.try_acquire(10.0, tag_call=False) == 0
    slot = budget.last_slot
    Budget.answered(slot, 11.0)
    Budget.answered(slot, 15.0)  # the caller finished with the answer later
    assert budget.used(70.9) == (1, 0)
    assert budget.used(71.1) == (0, 0)


def test_a_request_held_by_the_budget_goes_when_the_budget_allows_not_at_the_next_tick() -> None:
    sent: list[str] = []

    def omnisend(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(204)

    # Two tag calls a half-second window: the second waits a quarter second for its turn. The
    # loop's own tick is half a minute, so only a wake-up timed by the budget sends it in time.
    budget = Budget(BudgetConfig(tag_requests_per_window=2, window_s=0.5, headroom=1.0))
    sink = OmnisendSink(
        api_key="test-key",
        base_url="https://omnisend.test/api",
        budget=budget,
        clock=SystemClock(),
        metrics=Metrics(CollectorRegistry()),
        config=sink_config(tick_s=30.0),
        transport=httpx.MockTransport(omnisend),
    )
    sink.start()
    try:
        exits = [
            ContactChange(Position("t", 0, i), f"e{i}", 1_000, "a@example.com", tag, False, {})
            for i, tag in enumerate(("vip", "churned"))
        ]
        sink.submit(exits)
        assert sink.drain(10.0)
    finally:
        sink.stop()
    assert sent == ["/api/contacts/tags", "/api/contacts/tags"]
