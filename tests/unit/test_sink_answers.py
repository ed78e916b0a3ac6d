"""The sink against Omnisend answers the contract says cannot come: every one is retried as a
failure of its request, no record is left unfinished, no task dies; lost answers count as maybe
carried out; a batch that never finishes is not waited for forever, and one refused as a whole
costs only its guilty item."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import httpx
import pytest

from connector.core.errors import Crashed, Retriable
from connector.omnisend.answers import MAX_RETRY_AFTER_S, retry_after
from connector.omnisend.budget import Budget, BudgetConfig, Slot
from connector.omnisend.client import OmnisendClient
from connector.omnisend.dispatch import READ
from connector.simulator.transport import SimulatorTransport
from tests.omnisend_fakes import (
    BASE_URL,
    Rule,
    Scripted,
    change,
    contacts,
    fast_sink,
    forward_then,
    instead,
    metric,
    simulator,
    wait_outcomes,
)


def html(response: httpx.Response) -> httpx.Response:
    body = b"<html><body>502 Bad Gateway</body></html>"
    return httpx.Response(200, content=body, headers={"Content-Type": "text/html"})


def truncated(response: httpx.Response) -> httpx.Response:
    return httpx.Response(
        response.status_code, content=response.content[: len(response.content) // 2]
    )


def without(*keys: str) -> Any:
    def spoil(response: httpx.Response) -> httpx.Response:
        body = {k: v for k, v in response.json().items() if k not in keys}
        return httpx.Response(response.status_code, json=body)

    return spoil


# Each odd answer, and how many contacts make the sink ask what it answers: a lone batch is
# read by its id, several are read with one list call.
ODD_ANSWERS: dict[str, tuple[Rule, int]] = {
    "batch created as HTML": (Rule("POST", "/batches", forward_then(html)), 1),
    "batch created without batchID": (
        Rule("POST", "/batches", forward_then(without("batchID"))),
        1,
    ),
    "an empty 200 for a batch": (Rule("POST", "/batches", instead(200, b"")), 1),
    "batch status truncated": (
        Rule("GET", "/batches/[0-9a-f]+", forward_then(truncated), times=3),
        1,
    ),
    "batch status a string": (
        Rule("GET", "/batches/[0-9a-f]+", instead(200, b'"finished"'), times=3),
        1,
    ),
    "batch list without batches": (
        Rule("GET", "/batches", forward_then(without("batches"))),
        500,
    ),
    "a redirect for a tag call": (
        Rule("POST", "/contacts/tags", instead(302, b"", "text/html"), times=2),
        1,
    ),
    "a firewall's 403 page for a batch": (
        Rule("POST", "/batches", instead(403, b"<html>Access denied</html>", "text/html"), 2),
        1,
    ),
    "a firewall's empty 403 for a tag call": (
        Rule("POST", "/contacts/tags", instead(403, b"", ""), times=2),
        1,
    ),
    "retryAfter an object": (
        Rule(
            "POST",
            "/batches",
            instead(429, b'{"status": 429, "retryAfter": {"seconds": 1}}'),
            times=2,
        ),
        1,
    ),
}


@pytest.mark.parametrize("name", list(ODD_ANSWERS))
def test_an_odd_answer_is_retried_and_every_record_finishes(name: str) -> None:
    sim = simulator()
    original, count = ODD_ANSWERS[name]
    rule = dataclasses.replace(original)
    # A 429 without a usable `retryAfter` waits a tenth of the window: 0.1 s here.
    budget = Budget(BudgetConfig(1_000_000, 500_000, window_s=1.0, headroom=1.0))
    sink = fast_sink(Scripted(sim, [rule]), budget=budget)
    try:
        emails = [f"c{i}@example.com" for i in range(count)]
        sink.submit([change(i, email, firstName="Ann") for i, email in enumerate(emails)])
        outcomes = wait_outcomes(sink, len(emails))
        assert sink.fatal is None
        assert sorted(o.position.offset for o in outcomes) == list(range(len(emails)))
        assert all(o.reason is None for o in outcomes)
        assert rule.times < original.times  # the odd answer was met
        state = contacts(sim)
        assert all(state[email]["tags"] == ["segment: VIP"] for email in emails)
    finally:
        sink.stop()


@pytest.mark.parametrize(
    "answer",
    [instead(500, b"<html>Internal error</html>", "text/html"), instead(404), instead(400)],
    ids=["a 500", "a 404 (a proxy)", "a 400 (a limit Omnisend caps lower)"],
)
def test_a_batch_list_that_always_fails_leaves_each_batch_read_by_its_id(answer: Any) -> None:
    """Several batches in flight are read with one list call; when that call keeps failing,
    each batch is read by its id instead of waiting for the deadline (ten minutes by default)
    and then being sent again into the same failing list."""
    sim = simulator()
    rule = Rule("GET", "/batches", answer, times=-1)
    transport = Scripted(sim, [rule])
    sink = fast_sink(transport, first_poll_s=0.05)
    try:
        emails = [f"c{i}@example.com" for i in range(500)]
        sink.submit([change(i, email, firstName="Ann") for i, email in enumerate(emails)])
        outcomes = wait_outcomes(sink, len(emails))
        assert sink.fatal is None
        assert sorted(o.position.offset for o in outcomes) == list(range(len(emails)))
        assert all(o.reason is None for o in outcomes)
        assert transport.count("POST", "/batches") == 5  # no contact went twice
        assert transport.count("GET", "/batches") >= 1  # the list was tried
    finally:
        sink.stop()


def test_a_rate_limited_batch_list_leaves_its_batches_listed() -> None:
    """A 429 says nothing of the list endpoint: its batches are not read one by one after it
    (one request each, while the brand is rate limited)."""
    limited = instead(429, b'{"status": 429, "title": "Too Many Requests", "retryAfter": 0}')
    transport = Scripted(simulator(), [Rule("GET", "/batches", limited, times=3)])
    sink = fast_sink(transport, first_poll_s=0.05)
    try:
        emails = [f"c{i}@example.com" for i in range(500)]
        sink.submit([change(i, email, firstName="Ann") for i, email in enumerate(emails)])
        outcomes = wait_outcomes(sink, len(emails))
        assert sorted(o.position.offset for o in outcomes) == list(range(len(emails)))
        assert transport.count("GET", "/batches") >= 4  # listed again after the 429s
        assert transport.count("GET", "/batches/[0-9a-f]+") == 0
    finally:
        sink.stop()


def test_odd_answers_are_counted_by_endpoint() -> None:
    sim = simulator()
    rule = Rule("GET", "/batches/[0-9a-f]+/items", forward_then(truncated), times=2)
    sink = fast_sink(Scripted(sim, [rule]), first_poll_s=0.01)
    try:
        sink.submit([change(0, "bad@example.com", birthdate=5)])  # refused: items are read
        (outcome,) = wait_outcomes(sink, 1)
        assert outcome.reason == "rejected_by_omnisend"
        assert metric(sink, "omnisend_unexpected_answers_total", endpoint="batches.items") == 2
    finally:
        sink.stop()


@pytest.mark.parametrize(
    ("given", "seconds", "clamped"),
    [
        (12, 12.0, False),
        ("7", 7.0, False),
        (86400, MAX_RETRY_AFTER_S, True),
        (1e308, MAX_RETRY_AFTER_S, True),
        ("Infinity", None, True),
        ({"seconds": 5}, None, True),
        (-3, None, True),
        (True, None, True),
    ],
)
def test_retry_after_is_clamped_to_a_documented_maximum(
    given: Any, seconds: float | None, clamped: bool
) -> None:
    answer = retry_after(httpx.Response(429, json={"status": 429, "retryAfter": given}))
    assert answer.seconds == seconds
    assert (answer.clamped_from is not None) == clamped


def test_a_day_long_retry_after_idles_the_connection_two_minutes_at_most() -> None:
    sim = simulator()
    transport = Scripted(sim, [Rule("POST", "/batches", instead(429, b'{"retryAfter": 86400}'))])
    sink = fast_sink(transport)
    try:
        sink.submit([change(0, "a@example.com")])
        deadline = time.monotonic() + 10
        while metric(sink, "omnisend_retry_after_clamped_total") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        now = sink.clock.now()
        assert 0 < sink.budget.wait(now, tag_call=False) <= MAX_RETRY_AFTER_S
    finally:
        sink.stop()


def test_a_failed_status_read_never_sends_the_batch_again() -> None:
    """The batch may still run: a second upsert of its contacts could race it."""
    sim = simulator(batch_latency_s=0.2)
    rules = [
        Rule("GET", "/batches/[0-9a-f]+", instead(500), times=3),
        Rule("GET", "/batches/[0-9a-f]+", instead(404, b'{"title": "Not found"}'), times=2),
    ]
    transport = Scripted(sim, rules)
    sink = fast_sink(transport)
    try:
        sink.submit([change(0, "a@example.com", firstName="Ann")])
        (outcome,) = wait_outcomes(sink, 1)
        assert outcome.reason is None
        assert transport.count("POST", "/batches") == 1
        assert all(rule.times == 0 for rule in rules)
    finally:
        sink.stop()


class HeldBatch:
    """The first batch is taken and answered but not handed to Omnisend until `land`: it
    lands late, with what it carried then."""

    FAKE_ID = "a" * 24

    def __init__(self) -> None:
        self.request: httpx.Request | None = None
        self.landed = False

    async def post(self, request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        await request.aread()
        self.request = request
        return httpx.Response(201, json={"batchID": self.FAKE_ID, "totalCount": 1})

    async def status(self, request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        state = "finished" if self.landed else "inProgress"
        return httpx.Response(
            200, json={"batchID": self.FAKE_ID, "status": state, "errorsCount": 0}
        )

    def land(self, sim_transport: SimulatorTransport) -> None:
        assert self.request is not None
        asyncio.run(sim_transport.handle_async_request(self.request))
        self.landed = True


def test_a_batch_past_its_deadline_goes_again_and_its_late_landing_is_repaired() -> None:
    sim = simulator()
    held = HeldBatch()
    rules = [
        Rule("POST", "/batches", held.post),
        Rule("GET", f"/batches/{HeldBatch.FAKE_ID}", held.status, times=-1),
    ]
    sink = fast_sink(Scripted(sim, rules), batch_deadline_s=0.3)
    try:
        sink.submit([change(0, "a@example.com", at=1, firstName="Old")])
        deadline = time.monotonic() + 5
        while held.request is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sink.submit([change(1, "a@example.com", at=2, firstName="New")])
        outcomes = wait_outcomes(sink, 2)  # both finish: the deadline freed the contact
        assert sorted((o.position.offset, o.reason) for o in outcomes) == [(0, None), (1, None)]
        assert metric(sink, "omnisend_batches_stuck_total") == 1
        assert contacts(sim)["a@example.com"]["firstName"] == "New"
        held.land(SimulatorTransport(sim))  # the stuck batch finishes after all, with "Old"
        assert contacts(sim)["a@example.com"]["firstName"] == "Old"
        deadline = time.monotonic() + 5
        while contacts(sim)["a@example.com"]["firstName"] != "New" or sink.uncertain:
            assert time.monotonic() < deadline, "the newest fields were not sent once more"
            time.sleep(0.01)
    finally:
        sink.stop()


def test_a_batch_id_already_in_flight_is_an_unexpected_answer_not_a_second_batch() -> None:
    """A cache or proxy answers a second batch with the first one's answer (the second batch was
    created all the same): tracked under one id, the first batch's contacts would never finish.
    The second answer is taken as lost instead: its contacts go again, haunted."""
    sim = simulator()
    first: list[bytes] = []

    async def stale(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        answer = await inner.handle_async_request(request)  # carried out, whatever is said
        body = await answer.aread()
        first.append(body)
        return httpx.Response(answer.status_code, content=first[0], headers=answer.headers)

    transport = Scripted(sim, [Rule("POST", "/batches", stale, times=2)])
    sink = fast_sink(transport, batch_deadline_s=1.0, first_poll_s=0.2)
    try:
        emails = [f"c{i}@example.com" for i in range(150)]  # two batches, both in flight
        sink.submit([change(i, email, firstName="Ann") for i, email in enumerate(emails)])
        outcomes = wait_outcomes(sink, len(emails))
        assert sink.fatal is None
        assert sorted(o.position.offset for o in outcomes) == list(range(len(emails)))
        assert all(o.reason is None for o in outcomes)
        assert all(contacts(sim)[email]["tags"] == ["segment: VIP"] for email in emails)
        assert transport.count("POST", "/batches") >= 3  # the stale one's contacts went again
    finally:
        sink.stop()


def test_items_that_say_their_batch_has_not_ended_are_not_sorted() -> None:
    """The status said the batch ended with errors, its items (a lagging copy) say it still
    runs and list none: its contacts must not go again while it may still run."""

    async def running(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        batch_id = request.url.path.split("/")[-2]
        body = {"batchID": batch_id, "status": "inProgress", "responses": [], "errors": []}
        return httpx.Response(200, json=body)

    rule = Rule("GET", "/batches/[0-9a-f]+/items", running, times=2)
    transport = Scripted(simulator(), [rule])
    sink = fast_sink(transport)
    try:
        good, bad = change(0, "good@example.com"), change(1, "bad@example.com", birthdate=5)
        sink.submit([good, bad])  # one refused: the batch's items are read
        outcomes = {o.position.offset: o for o in wait_outcomes(sink, 2)}
        assert sorted(outcomes) == [0, 1]
        assert outcomes[0].reason is None
        assert outcomes[1].reason == "rejected_by_omnisend"
        assert rule.times == 0  # the odd items were read, and not believed
        assert transport.count("POST", "/batches") == 1
    finally:
        sink.stop()


def test_the_status_of_another_batch_is_not_taken_for_this_one() -> None:
    """Taken, a batch still running would count as finished: its contacts' tags would go before
    the contacts exist, and Omnisend drops such tags."""
    sim = simulator()
    held = HeldBatch()
    other = {"batchID": "b" * 24, "status": "finished", "errorsCount": 0}

    async def wrong(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        return httpx.Response(200, json=other)

    lying = Rule("GET", f"/batches/{HeldBatch.FAKE_ID}", wrong, times=3)
    rules = [
        Rule("POST", "/batches", held.post),
        lying,
        Rule("GET", f"/batches/{HeldBatch.FAKE_ID}", held.status, times=-1),
    ]
    sink = fast_sink(Scripted(sim, rules))
    try:
        sink.submit([change(0, "a@example.com", firstName="Ann")])
        deadline = time.monotonic() + 10
        while lying.times:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sink.take_outcomes() == []  # not finished on another batch's word
        held.land(SimulatorTransport(sim))
        (outcome,) = wait_outcomes(sink, 1)
        assert outcome.reason is None
        assert contacts(sim)["a@example.com"]["tags"] == ["segment: VIP"]
    finally:
        sink.stop()


def refuse_bad(limit: int | None = None) -> Rule:
    """A whole batch refused: 400 when an item has firstName "Bad"; 413 over `limit` items."""

    async def answer(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        import json  # noqa: PLC0415

        items = json.loads(await request.aread())["items"]
        if limit is not None and len(items) > limit:
            return httpx.Response(413, json={"title": "Payload too large", "status": 413})
        if any(item.get("firstName") == "Bad" for item in items):
            problem = {"title": "Validation failed", "status": 400, "detail": "items[?]"}
            return httpx.Response(400, json=problem)
        return await inner.handle_async_request(request)

    return Rule("POST", "/batches", answer, times=-1)


def test_a_batch_refused_as_a_whole_costs_only_its_guilty_item() -> None:
    sim = simulator()
    transport = Scripted(sim, [refuse_bad()])
    sink = fast_sink(transport)
    try:
        names = ["Ann"] * 40
        names[27] = "Bad"
        sink.submit([change(i, f"c{i}@example.com", firstName=n) for i, n in enumerate(names)])
        outcomes = {o.position.offset: o for o in wait_outcomes(sink, len(names))}
        assert sorted(outcomes) == list(range(len(names)))
        assert [i for i, o in outcomes.items() if o.reason] == [27]
        assert outcomes[27].reason == "rejected_by_omnisend"
        assert "400" in outcomes[27].detail
        assert len(contacts(sim)) == 39
        assert transport.count("POST", "/batches") <= 2 * 6 + 1  # halves down to one item
    finally:
        sink.stop()


def test_a_batch_too_large_is_sent_in_halves_until_it_fits() -> None:
    sim = simulator()
    sink = fast_sink(Scripted(sim, [refuse_bad(limit=30)]))
    try:
        sink.submit([change(i, f"c{i}@example.com", firstName="Ann") for i in range(100)])
        outcomes = wait_outcomes(sink, 100)
        assert len(outcomes) == 100
        assert all(o.reason is None for o in outcomes)
        assert metric(sink, "omnisend_batches_split_total") >= 3
    finally:
        sink.stop()


def test_a_lost_tag_answer_holds_the_opposite_call_for_the_settle_time() -> None:
    sim = simulator()
    transport = Scripted(
        sim, [Rule("DELETE", "/contacts/tags", forward_then(lose=httpx.ReadTimeout))]
    )
    sink = fast_sink(transport, settle_s=0.5)
    try:
        sink.submit([change(0, "a@example.com")])
        assert len(wait_outcomes(sink, 1)) == 1
        sink.submit([change(1, "a@example.com", entered=False)])
        deadline = time.monotonic() + 5
        while transport.count("DELETE", "/contacts/tags") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        sink.submit([change(2, "a@example.com", entered=True)])  # the opposite, right behind
        assert len(wait_outcomes(sink, 2)) == 2
        (lost_at,) = [t for t, m, _, status in transport.log if m == "DELETE"]
        adds = [t for t, m, p, _ in transport.log if m == "POST" and p == "/contacts/tags"]
        assert adds[-1] - lost_at >= 0.5
    finally:
        sink.stop()


def test_a_task_that_fails_unexpectedly_stops_the_sink_instead_of_dying_silently() -> None:
    sim = simulator()
    sink = fast_sink(Scripted(sim))
    try:

        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("a bug")

        sink._state.coalescer.tags_accepted = broken  # type: ignore[method-assign]
        sink.submit([change(0, "a@example.com", entered=False)])
        deadline = time.monotonic() + 5
        while sink.fatal is None:
            assert time.monotonic() < deadline, "the task died silently"
            time.sleep(0.01)
        assert isinstance(sink.fatal, Crashed)
    finally:
        sink.stop()


def test_an_answer_that_drips_forever_is_cut_at_the_deadline() -> None:
    async def drip(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(202)

    async def call() -> None:
        client = OmnisendClient(httpx.MockTransport(drip), "key", BASE_URL, deadline_s=0.2)
        await client.change_tags(True, "vip", ["a@example.com"])

    started = time.monotonic()
    with pytest.raises(Retriable) as info:
        asyncio.run(call())
    assert time.monotonic() - started < 2
    assert info.value.maybe_applied


def test_a_reset_never_waits_for_a_busy_loop_nor_loses_what_comes_after_it() -> None:
    """After a rebalance, the changes of the new assignment are never dropped by a reset the
    loop meets late, and outcomes of forgotten records never come back."""
    sim = simulator()
    sink = fast_sink(Scripted(sim))
    try:
        sink.submit([change(0, "old@example.com")])
        assert len(wait_outcomes(sink, 1)) == 1
        release = threading.Event()

        def stuck() -> None:  # the loop is held in one long step
            release.wait(10)

        sink._call(stuck)
        sink.submit([change(1, "forgotten@example.com")])  # before the rebalance
        started = time.monotonic()
        sink.reset()
        assert time.monotonic() - started < 1.0
        sink.submit([change(i, f"new{i}@example.com") for i in range(2, 6)])
        release.set()
        outcomes = wait_outcomes(sink, 4)
        assert sorted(o.position.offset for o in outcomes) == [2, 3, 4, 5]
        assert sink.drain(5.0)
        assert sink.take_outcomes() == []
        assert "forgotten@example.com" not in contacts(sim)
    finally:
        sink.stop()


class RecordingBudget(Budget):
    """Keeps every slot it hands out."""

    def __init__(self) -> None:
        super().__init__(BudgetConfig(1_000_000, 500_000, headroom=1.0))
        self.slots: list[Slot] = []

    def take(self, now: float, tag_call: bool, full: bool = False, read: bool = False) -> Slot:
        slot = super().take(now, tag_call, full=full, read=read)
        self.slots.append(slot)
        return slot


def test_a_reset_cancels_the_requests_in_flight_and_frees_their_budget() -> None:
    """A rebalance forgets the old records: their requests still in flight are cancelled (not
    carried out later behind the new owner's back, not answered into the new state), and the
    budget slots they held are given back, even of one cancelled before it began."""
    started = threading.Event()

    async def slow(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        started.set()
        await asyncio.sleep(1.0)
        return await inner.handle_async_request(request)

    sim = simulator()
    budget = RecordingBudget()
    sink = fast_sink(Scripted(sim, [Rule("POST", "/batches", slow, times=4)]), budget=budget)
    try:
        for n in range(3):
            started.clear()
            sink.submit([change(n, f"old{n}@example.com")])
            assert started.wait(5)
            sink.reset()
        sink.submit([change(3, "old3@example.com")])
        sink.reset()  # perhaps before its request began
        sink.submit([change(10 + i, f"new{i}@example.com") for i in range(3)])
        outcomes = wait_outcomes(sink, 3)
        assert sorted(o.position.offset for o in outcomes) == [10, 11, 12]
        assert sink.drain(5.0)
        assert sink.take_outcomes() == []
        assert sink.fatal is None
        assert not [c for c in contacts(sim) if c.startswith("old")]
        assert budget.slots
        assert all(slot.answered for slot in budget.slots)
    finally:
        sink.stop()


def test_a_request_cancelled_before_it_began_gives_its_slot_back() -> None:
    budget = RecordingBudget()
    sink = fast_sink(Scripted(simulator()), budget=budget)
    ran: list[int] = []
    spawned = threading.Event()

    async def request() -> None:
        ran.append(1)

    def on_the_loop() -> None:  # a request spawned, then a reset in the same step
        sink._sender.spawn(request(), sink.clock.now(), READ)
        sink._reset_to(sink._mail.new_epoch())
        spawned.set()

    try:
        sink._call(on_the_loop)
        assert spawned.wait(5)
        deadline = time.monotonic() + 5
        while sink._sender.tasks:  # the cancel is carried out at the loop's next step
            assert time.monotonic() < deadline, "the cancelled request never ended"
            time.sleep(0.01)
        assert ran == []
        assert len(budget.slots) == 1
        assert budget.slots[0].answered
    finally:
        sink.stop()


def test_a_tag_call_refused_as_a_whole_costs_only_its_guilty_email() -> None:
    async def refuse_bad(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        import json  # noqa: PLC0415

        if "bad@example.com" in json.loads(await request.aread())["emails"]:
            return httpx.Response(400, json={"title": "Validation failed", "status": 400})
        return await inner.handle_async_request(request)

    sim = simulator()
    sink = fast_sink(Scripted(sim, [Rule("DELETE", "/contacts/tags", refuse_bad, times=-1)]))
    try:
        emails = [f"c{i}@example.com" for i in range(20)] + ["bad@example.com"]
        sink.submit([change(i, email, entered=False) for i, email in enumerate(emails)])
        outcomes = {o.position.offset: o.reason for o in wait_outcomes(sink, len(emails))}
        assert outcomes == {i: (None if i < 20 else "rejected_by_omnisend") for i in range(21)}
        assert metric(sink, "omnisend_tag_calls_split_total") >= 1
    finally:
        sink.stop()


def test_after_a_reset_an_opposite_tag_call_still_waits_for_the_earlier_to_settle() -> None:
    """A rebalance between an accepted add and the removal of the same tag: Omnisend applies
    tag calls asynchronously, so the removal must still wait `settle_s` after the add."""
    sim = simulator()
    scripted = Scripted(sim)
    sink = fast_sink(scripted, settle_s=1.0)
    try:
        sink.submit([change(0, "a@example.com", at=1_000)])
        assert len(wait_outcomes(sink, 1)) == 1
        sink.reset()
        sink.submit([change(1, "a@example.com", entered=False, at=2_000)])
        assert len(wait_outcomes(sink, 1)) == 1
        calls = [(t, m) for t, m, p, _ in scripted.log if p == "/contacts/tags"]
        (added, _), (removed, _) = calls
        assert [m for _, m in calls] == ["POST", "DELETE"]
        assert removed - added >= 0.9
    finally:
        sink.stop()
