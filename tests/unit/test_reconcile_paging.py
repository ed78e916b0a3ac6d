"""`reconcile`'s listing of a tag against paging answers the contract says cannot come: it ends,
with a message, instead of looping forever or ending with a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from connector.core.errors import Fatal
from connector.core.recent import IntTable
from connector.jobs.drift import Drift
from connector.jobs.reconcile import _hold, shares
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.client import OmnisendClient
from tests.omnisend_fakes import BASE_URL


def page(emails: list[str], after: str | None, more: bool | None = None) -> dict[str, Any]:
    paging: dict[str, Any] = {"cursors": {"after": after}}
    if more is not None:
        paging["hasMore"] = more
    return {"contacts": [{"email": e} for e in emails], "paging": paging}


def listed(answers: list[tuple[int, dict[str, Any]]], cycle: bool = False) -> tuple[Drift, int]:
    """The tag listed against these answers (repeated when `cycle`); the drift and how many
    requests it took."""
    asked = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        index = asked[0] % len(answers) if cycle else min(asked[0], len(answers) - 1)
        asked[0] += 1
        status, body = answers[index]
        return httpx.Response(status, json=body)

    client = OmnisendClient(httpx.MockTransport(handler), "key", BASE_URL)
    budget = Budget(BudgetConfig(1_000_000, 1_000_000, headroom=1.0))
    found = Drift("vip", IntTable(1))
    asyncio.run(asyncio.wait_for(_hold(client, budget, found), 10))
    return found, asked[0]


def test_pages_that_come_back_to_a_cursor_already_read_end_the_listing() -> None:
    answers = [(200, page(["a@x.io"], "A")), (200, page(["b@x.io"], "B"))]
    with pytest.raises(Fatal, match="came back"):
        listed(answers, cycle=True)


def test_endless_empty_pages_with_new_cursors_end_the_listing() -> None:
    counter = iter(range(10**6))

    def fresh(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=page([], f"c{next(counter)}"))

    client = OmnisendClient(httpx.MockTransport(fresh), "key", BASE_URL)
    budget = Budget(BudgetConfig(1_000_000, 1_000_000, headroom=1.0))
    with pytest.raises(Fatal, match="empty"):
        asyncio.run(asyncio.wait_for(_hold(client, budget, Drift("vip", IntTable(1))), 10))


def test_has_more_false_ends_the_listing_whatever_the_cursor_says() -> None:
    found, asked = listed([(200, page(["a@x.io"], "A", more=False))])
    assert (found.held, asked) == (1, 1)


def test_has_more_without_a_cursor_is_not_taken_for_the_end() -> None:
    with pytest.raises(Fatal, match="no cursor"):
        listed([(200, page(["a@x.io"], None, more=True))])


def test_a_refused_cursor_ends_the_listing_with_a_message_not_a_traceback() -> None:
    refused = {"title": "Bad Request", "status": 400, "detail": "Unknown cursor"}
    with pytest.raises(Fatal, match="Unknown cursor"):
        listed([(200, page(["a@x.io"], "A")), (400, refused)])


def test_listing_and_repairing_at_once_stay_within_the_share_together() -> None:
    """The listing and the repairs have a budget each and run at once: each a half."""
    listing, repairs = shares(0.5, apply=True)
    assert listing + repairs == 0.5
    assert shares(0.5, apply=False) == (0.5, 0.5)  # only the listing runs


def test_a_429_storm_while_listing_is_said_not_waited_out_in_silence() -> None:
    """Another integration spending the brand's budget held the nightly job for ever without a
    line in its log."""
    answers = [(429, {"status": 429})] * 12 + [(200, page(["a@x.io"], None, more=False))]
    asked = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[min(asked[0], len(answers) - 1)]
        asked[0] += 1
        return httpx.Response(status, json=body)

    client = OmnisendClient(httpx.MockTransport(handler), "key", BASE_URL)
    # A 429 without `retryAfter` waits a tenth of the window: 10 ms here.
    budget = Budget(BudgetConfig(1_000_000, 1_000_000, window_s=0.1, headroom=1.0))
    found = Drift("vip", IntTable(1))
    with capture_logs() as logs:
        asyncio.run(asyncio.wait_for(_hold(client, budget, found), 10))
    said = [e["answers_429"] for e in logs if e["event"] == "listing_rate_limited"]
    assert said == [1, 10]
    assert found.held == 1
