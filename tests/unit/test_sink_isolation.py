"""A batch that always fails as a whole because of one contact (a firewall's rule matching its
values, answering 403 or 5xx) must not stop every other upsert of its connection: after a few
whole failures in a row its contacts go in halves, down to the one that fails alone, which is
then retried on its own, slowly, and never dead-lettered (nothing proves the contact is wrong:
in a brownout every request fails now and then). In a brownout, the narrowing costs a bounded
number of requests, and nothing is left behind once Omnisend is well again."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connector.omnisend.apart import MAX_ISOLATED, MAX_SPLIT_GROUPS
from connector.omnisend.sink import OmnisendSink
from connector.simulator.transport import SimulatorTransport
from tests.omnisend_fakes import (
    Rule,
    Scripted,
    change,
    contacts,
    fast_sink,
    instead,
    metric,
    simulator,
    wait_outcomes,
)

FIREWALL_PAGE = b"<html><title>Access denied</title></html>"


def blocks(email: str, status: int = 403) -> Rule:
    """A firewall refusing every batch that carries `email`."""
    return Rule(
        "POST",
        "/batches",
        instead(status, FIREWALL_PAGE, "text/html"),
        times=-1,
        when=lambda request: email.encode() in request.content,
    )


def wait_isolated(sink: OmnisendSink, count: int, request: str = "batch") -> None:
    deadline = time.monotonic() + 10  # its halves fail a few times more before it is alone
    while metric(sink, "omnisend_isolated_contacts", request=request) != count:
        assert time.monotonic() < deadline, f"not {count} isolated in time"
        time.sleep(0.01)


def test_one_contact_a_firewall_always_refuses_does_not_hold_back_the_others() -> None:
    """Before: the batch with that contact was put back at the front of the line and sent
    again, for ever: no other contact of the connection was upserted again."""
    sim = simulator()
    transport = Scripted(sim, [blocks("c7@example.com")])
    sink = fast_sink(transport)
    try:
        emails = [f"c{i}@example.com" for i in range(60)]
        sink.submit([change(i, e, firstName="Ann") for i, e in enumerate(emails)])
        outcomes = wait_outcomes(sink, len(emails) - 1, timeout=30)
        assert sorted(o.position.offset for o in outcomes) == [i for i in range(60) if i != 7]
        assert all(o.reason is None for o in outcomes)  # nothing dead-lettered
        assert set(contacts(sim)) == set(emails) - {"c7@example.com"}
        wait_isolated(sink, 1)
        refused = len(transport.log)
        time.sleep(0.5)
        assert sink.take_outcomes() == []  # the blocked one stays unfinished, not failed
        # Retried on its own every retry_max_s (0.05 s here), not in a tight loop.
        assert len(transport.log) - refused <= 0.5 / 0.05 + 2
    finally:
        sink.stop()


def test_a_contact_retried_alone_goes_through_once_the_firewall_lets_it() -> None:
    sim = simulator()
    rule = blocks("c3@example.com", status=502)
    sink = fast_sink(Scripted(sim, [rule]))
    try:
        sink.submit([change(i, f"c{i}@example.com") for i in range(20)])
        assert len(wait_outcomes(sink, 19)) == 19
        rule.times = 0  # the rule is lifted
        (last,) = wait_outcomes(sink, 1, timeout=10)
        assert last.position.offset == 3
        assert last.reason is None
        assert contacts(sim)["c3@example.com"]["tags"] == ["segment: VIP"]
        assert metric(sink, "omnisend_isolated_contacts", request="batch") == 0
    finally:
        sink.stop()


def brownout(rate: float, seed: int, on: threading.Event) -> Rule:
    """While `on` is set, a share `rate` of batch creations fail with a 503, at random."""
    rng = random.Random(seed)

    async def answer(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        if on.is_set() and rng.random() < rate:
            return httpx.Response(503, content=b"<html>busy</html>")
        return await inner.handle_async_request(request)

    return Rule("POST", "/batches", answer, times=-1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.floats(0.3, 0.95), seed=st.integers(0, 1000), count=st.integers(50, 400))
@example(rate=0.95, seed=0, count=400)  # groups in flight once went uncounted: 37 batches
def test_a_brownout_loses_nothing_and_leaves_no_flood_of_small_batches(
    rate: float, seed: int, count: int
) -> None:
    """Random failures (tag calls and reads all well): every contact syncs once Omnisend is
    well again, none is dead-lettered, and what is left to send then goes in few requests."""
    sim, on = simulator(), threading.Event()
    on.set()
    transport = Scripted(sim, [brownout(rate, seed, on)])
    sink = fast_sink(transport, batch_size=20)
    try:
        emails = [f"b{i}@example.com" for i in range(count)]
        sink.submit([change(i, e) for i, e in enumerate(emails)])
        got = wait_outcomes(sink, count, timeout=1.0)  # some go through meanwhile
        on.clear()
        after, left = len(transport.log), count - len(got)
        got += wait_outcomes(sink, count - len(got), timeout=30)
        assert sorted(o.position.offset for o in got) == list(range(count))
        assert all(o.reason is None for o in got)
        assert set(contacts(sim)) == set(emails)
        batches_after = sum(
            1 for _, m, p, _ in transport.log[after:] if m == "POST" and p == "/batches"
        )
        # Full batches of what was left, plus at most the groups and contacts set apart.
        # (Requests on their way when it ended count too: up to 16 at a time, some part-full.)
        assert batches_after <= left // 20 + 1 + MAX_SPLIT_GROUPS + MAX_ISOLATED + 16
        assert batches_after > 0 or left == 0
        assert metric(sink, "omnisend_isolated_contacts", request="batch") == 0
    finally:
        sink.stop()


def test_a_429_to_an_isolated_contact_still_holds_the_brands_budget() -> None:
    sim = simulator()
    rules = [blocks("c2@example.com")]
    sink = fast_sink(Scripted(sim, rules))
    try:
        sink.submit([change(i, f"c{i}@example.com") for i in range(10)])
        assert len(wait_outcomes(sink, 9)) == 9
        wait_isolated(sink, 1)
        deadline = time.monotonic() + 10
        too_many = b'{"title": "Too many requests", "status": 429, "retryAfter": 1}'
        rules.insert(0, Rule("POST", "/batches", instead(429, too_many), times=1))
        while rules[0].times:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05)
        assert metric(sink, "omnisend_rate_limited_total") == 1
    finally:
        sink.stop()


def test_one_email_a_firewall_refuses_in_every_tag_call_does_not_hold_back_its_tag() -> None:
    """Before: the tag call with that email went back whole and failed again for ever, so no
    other contact got the tag, and every failure backed the whole connection off."""
    sim = simulator()
    rule = Rule(
        "POST",
        "/contacts/tags",
        instead(403, FIREWALL_PAGE, "text/html"),
        times=-1,
        when=lambda request: b"t7@example.com" in request.content,
    )
    sink = fast_sink(Scripted(sim, [rule]))
    try:
        emails = [f"t{i}@example.com" for i in range(60)]
        sink.submit([change(i, e) for i, e in enumerate(emails)])
        outcomes = wait_outcomes(sink, len(emails) - 1, timeout=30)
        assert sorted(o.position.offset for o in outcomes) == [i for i in range(60) if i != 7]
        assert all(o.reason is None for o in outcomes)
        state = contacts(sim)
        assert [e for e in emails if state[e]["tags"] != ["segment: VIP"]] == ["t7@example.com"]
        wait_isolated(sink, 1, "tag_call")
        rule.times = 0  # lifted: it goes through at its next try
        (last,) = wait_outcomes(sink, 1, timeout=10)
        assert last.position.offset == 7
        assert contacts(sim)["t7@example.com"]["tags"] == ["segment: VIP"]
        assert metric(sink, "omnisend_isolated_contacts", request="tag_call") == 0
    finally:
        sink.stop()


def captured(bodies: list[bytes]) -> Rule:
    """Answers nothing: writes down every batch's body on its way (put it first)."""

    def write_down(request: httpx.Request) -> bool:
        bodies.append(request.content)
        return False

    return Rule("POST", "/batches", instead(500), times=-1, when=write_down)


def emails_of(body: bytes) -> set[str]:
    return {i["identifiers"][0]["id"] for i in json.loads(body)["items"]}


def test_a_failed_batch_takes_no_new_companions_while_contacts_trickle_in() -> None:
    """Before: the failed batch went back to the front of the line, and each contact arriving
    meanwhile rode along with it, so it never failed often enough to be halved: no upsert of
    the connection went through for as long as the trickle lasted."""
    sim, bodies = simulator(), list[bytes]()
    poison = "poison@example.com"
    sink = fast_sink(Scripted(sim, [captured(bodies), blocks(poison)]))
    try:
        sink.submit([change(0, poison)])
        for i in range(1, 40):
            sink.submit([change(i, f"n{i}@example.com")])
            time.sleep(0.01)
        assert len(wait_outcomes(sink, 39)) == 39
        wait_isolated(sink, 1)
        with_poison = [emails_of(b) for b in bodies if poison.encode() in b]
        assert all(later <= with_poison[0] for later in with_poison[1:])
    finally:
        sink.stop()


def test_a_newer_change_of_an_isolated_contact_is_sent_alone_too() -> None:
    """Before: the newer change went back to the line, and its batches failed as a whole
    again, holding back every upsert until it was narrowed down once more."""
    sim, bodies = simulator(), list[bytes]()
    poison = "poison@example.com"
    sink = fast_sink(Scripted(sim, [captured(bodies), blocks(poison)]), retry_max_s=0.2)
    try:
        sink.submit([change(0, poison, firstName="A")])
        sink.submit([change(i, f"a{i}@example.com") for i in range(1, 30)])
        assert len(wait_outcomes(sink, 29)) == 29
        wait_isolated(sink, 1)
        isolated_at = len(bodies)
        sink.submit([change(100, poison, firstName="B", at=5_000)])
        for i in range(101, 140):  # a trickle over the isolated contact's next tries
            sink.submit([change(i, f"n{i}@example.com")])
            time.sleep(0.015)
        assert len(wait_outcomes(sink, 39)) == 39
        later = [b for b in bodies[isolated_at:] if poison.encode() in b]
        assert later, "the isolated contact was not tried again"
        assert all(emails_of(b) == {poison} for b in later)
        assert any(b'"B"' in b for b in later)  # with its newest fields
    finally:
        sink.stop()


def test_more_blocked_contacts_than_can_be_isolated_do_not_wake_the_isolated_ones_again() -> None:
    """With more contacts blocked than isolated (the rest failing apart, as a whole), every
    success after their failures woke the isolated contacts: each was tried again every
    half second or so instead of every `retry_max_s`, spending the brand's budget."""
    sim, bodies = simulator(), list[bytes]()
    bad = {f"p{i}@example.com" for i in range(MAX_ISOLATED + 2)}
    rule = Rule(
        "POST",
        "/batches",
        instead(403, FIREWALL_PAGE, "text/html"),
        times=-1,
        when=lambda request: any(e.encode() in request.content for e in bad),
    )
    sink = fast_sink(Scripted(sim, [captured(bodies), rule]), retry_base_s=0.1, retry_max_s=2)
    stop, sent = threading.Event(), [1000]

    def trickle() -> None:  # healthy contacts keep coming: their batches go through
        while not stop.is_set():
            sink.submit([change(sent[0], f"n{sent[0]}@example.com")])
            sent[0] += 1
            time.sleep(0.02)

    trickling = threading.Thread(target=trickle)
    trickling.start()
    try:
        sink.submit([change(i, e) for i, e in enumerate(sorted(bad))])
        wait_isolated(sink, MAX_ISOLATED)
        start = len(bodies)
        time.sleep(3)
        alone = Counter(
            email
            for body in bodies[start:]
            if len(emails := emails_of(body)) == 1 and emails <= bad
            for email in emails
        )
        isolated_tries = sorted(alone.values())[:MAX_ISOLATED]  # the two not isolated: more
        assert isolated_tries, "no isolated contact was tried"
        assert max(isolated_tries) <= 3 / 2 + 2  # every retry_max_s, and one wake at most
    finally:
        stop.set()
        trickling.join()
        sink.stop()


def test_after_an_outage_an_isolated_contact_is_tried_again_at_once() -> None:
    """Every batch fails for a while (an outage, not a firewall's rule): a contact isolated
    meanwhile goes as soon as Omnisend answers again, not a whole `retry_max_s` later."""
    sim, down = simulator(), threading.Event()
    down.set()
    outage = Rule("POST", "/batches", instead(503, b"<html>down</html>", "text/html"), times=-1)
    outage.when = lambda request: down.is_set()
    sink = fast_sink(Scripted(sim, [outage]), retry_base_s=0.01, retry_max_s=20)
    try:
        sink.submit([change(0, "alone@example.com")])
        wait_isolated(sink, 1)
        sink.submit([change(i, f"c{i}@example.com") for i in range(1, 6)])
        time.sleep(0.3)  # their batches fail too, a few times in a row
        down.clear()
        outcomes = wait_outcomes(sink, 6, timeout=10)  # well before retry_max_s
        assert sorted(o.position.offset for o in outcomes) == list(range(6))
    finally:
        sink.stop()
