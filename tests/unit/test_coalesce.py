"""Coalescing: the result equals applying the events one by one, with every record's fate known
exactly once, and tag adds only after their contact exists."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.coalesce import Coalescer, Outcome, TagIntent, UpsertIntent
from connector.events import ContactChange, Position


def change(
    offset: int, email: str, tag: str, entered: bool, at: int, name: str = "A"
) -> ContactChange:
    fields = {"firstName": name} if entered else {}
    return ContactChange(
        Position("t", 0, offset), f"e{offset}", at, email, tag, entered, fields, 10
    )


class Omnisend:
    """Applies what the coalescer sends, in order. With `flaky`, a call or batch item fails
    transiently (before applying anything) when the random source says so."""

    def __init__(self, flaky: random.Random | None = None) -> None:
        self.contacts: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, set[str]] = {}
        self.flaky = flaky
        self.upserts_sent: list[UpsertIntent] = []
        self.tags_sent: list[list[TagIntent]] = []

    def _fails(self) -> bool:
        return self.flaky is not None and self.flaky.random() < 0.3

    def send(self, c: Coalescer, now: float) -> None:
        """Take what is ready; it completes at the next `complete`, so that changes may arrive
        while calls are in flight."""
        self.upserts_sent.extend(c.take_upserts(100))
        for group, _, _ in list(c.ready_groups()):
            self.tags_sent.append(c.take_tags(group, 250, now))

    def complete(self, c: Coalescer, now: float) -> None:
        upserts, self.upserts_sent = self.upserts_sent, []
        for intent in upserts:
            if self._fails():
                c.upsert_retry(intent.email)
                continue
            self.contacts[intent.email] = dict(intent.fields)
            self.tags.setdefault(intent.email, set())
            c.upsert_accepted(intent.email, now)
        calls, self.tags_sent = self.tags_sent, []
        for tag_intents in calls:
            if tag_intents and self._fails():
                c.tags_retry(tag_intents, now)
                continue
            for t in tag_intents:
                if t.email in self.contacts:  # unknown emails are ignored
                    (self.tags[t.email].add if t.add else self.tags[t.email].discard)(t.tag)
            c.tags_accepted(tag_intents, now)

    def drain(self, c: Coalescer, now: float, rounds: int = 1_000) -> None:
        for _ in range(rounds):
            self.complete(c, now)
            if c.idle:
                return
            self.send(c, now)
            now += 1
        raise AssertionError(f"stuck: {len(c.upserts)} upserts, {len(c.tags)} tags wait")


def one_by_one(
    events: list[ContactChange],
) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    contacts: dict[str, dict[str, Any]] = {}
    fields_at: dict[str, int] = {}
    tags: dict[str, set[str]] = {}
    latest: dict[tuple[str, str], int] = {}
    for e in events:
        key = (e.email, e.tag)
        if e.occurred_at_ms < latest.get(key, -1):
            continue  # stale: a newer change of this membership was already seen
        latest[key] = e.occurred_at_ms
        if e.entered:
            if e.occurred_at_ms >= fields_at.get(e.email, -1):
                contacts[e.email], fields_at[e.email] = dict(e.fields), e.occurred_at_ms
            tags.setdefault(e.email, set()).add(e.tag)
        elif e.email in tags:
            tags[e.email].discard(e.tag)
    return contacts, tags


event_st = st.tuples(
    st.sampled_from(["a@x.io", "b@x.io", "c@x.io"]),
    st.sampled_from(["seg: 1", "seg: 2"]),
    st.booleans(),
    st.integers(min_value=1, max_value=6),
    st.sampled_from(["A", "B"]),
    st.sampled_from(["", "send", "complete", "drain"]),  # what Omnisend does after this event
)


@settings(max_examples=300, deadline=None)
@given(st.lists(event_st, min_size=1, max_size=40), st.none() | st.randoms(use_true_random=False))
def test_coalesced_output_equals_applying_events_one_by_one(
    spec: list[tuple[Any, ...]], flaky: random.Random | None
) -> None:
    """With or without transient failures (retried calls and batch items)."""
    events = [
        change(i, email, tag, entered, at, name)
        for i, (email, tag, entered, at, name, _) in enumerate(spec)
    ]
    c, omnisend, outcomes = Coalescer(), Omnisend(flaky), []
    for event, (*_, step) in zip(events, spec, strict=True):
        c.add(event, now=0.0)
        if step == "send":
            omnisend.send(c, 0.0)
        elif step == "complete":
            omnisend.complete(c, 0.0)
        elif step == "drain":
            omnisend.drain(c, 0.0)
    omnisend.drain(c, 0.0)
    outcomes = c.drain_outcomes()
    contacts, tags = one_by_one(events)
    assert omnisend.contacts == contacts
    assert {e: t for e, t in omnisend.tags.items() if e in contacts} == tags
    assert sorted(o.position.offset for o in outcomes) == list(range(len(events)))
    assert all(o.reason is None for o in outcomes)


def test_superseded_change_shares_the_fate_of_its_successor() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", True, 1), 0)
    c.add(change(1, "a@x.io", "s", False, 2), 0)
    (upsert,) = c.take_upserts(100)
    c.upsert_accepted(upsert.email, 0)
    assert [o.position.offset for o in c.drain_outcomes()] == []  # both wait for the remove
    ((group, count, _),) = list(c.ready_groups())
    assert group == (False, "s")
    assert count == 1
    c.tags_accepted(c.take_tags(group, 250, 0), 0)
    assert sorted(o.position.offset for o in c.drain_outcomes()) == [0, 1]


def test_tag_add_waits_for_its_upsert() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", True, 1), 0)
    assert list(c.ready_groups()) == []
    (upsert,) = c.take_upserts(100)
    assert list(c.ready_groups()) == []  # still in flight
    c.upsert_accepted(upsert.email, 0)
    assert [g for g, _, _ in c.ready_groups()] == [(True, "s")]


def test_failed_upsert_fails_its_waiting_adds_with_the_reason() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s1", True, 1), 0)
    c.add(change(1, "a@x.io", "s2", True, 2), 0)
    (upsert,) = c.take_upserts(100)
    c.upsert_failed(upsert.email, "rejected_by_omnisend", "bad field", 0)
    outcomes = sorted(c.drain_outcomes(), key=lambda o: o.position.offset)
    assert [(o.position.offset, o.reason) for o in outcomes] == [
        (0, "rejected_by_omnisend"),
        (1, "rejected_by_omnisend"),
    ]
    assert c.idle


def test_known_contact_with_same_fields_needs_no_upsert() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s1", True, 1), 0)
    c.upsert_accepted(c.take_upserts(100)[0].email, 0)
    c.add(change(1, "a@x.io", "s2", True, 2), 0)
    assert c.take_upserts(100) == []
    assert [g for g, _, _ in c.ready_groups()] == [(True, "s1"), (True, "s2")]
    c.add(change(2, "a@x.io", "s3", True, 3, name="Changed"), 0)
    assert [u.fields for u in c.take_upserts(100)] == [{"firstName": "Changed"}]


def test_late_event_is_stale() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", False, 5), 0)
    c.tags_accepted(c.take_tags((False, "s"), 250, 0), 0)
    c.drain_outcomes()
    c.add(change(1, "a@x.io", "s", True, 4), 0)
    assert c.drain_outcomes() == [Outcome(Position("t", 0, 1), 10, skipped="superseded")]
    assert c.idle


def test_opposite_operation_waits_for_the_earlier_to_settle() -> None:
    c = Coalescer(settle_s=5.0)
    c.add(change(0, "a@x.io", "s", False, 1), 0)
    in_flight = c.take_tags((False, "s"), 250, 0)
    c.add(change(1, "a@x.io", "s", False, 2), 0)  # same direction, but one is in flight
    c.add(change(2, "a@x.io", "s", True, 3), 0)
    c.upsert_accepted(c.take_upserts(100)[0].email, 0)
    assert c.take_tags((True, "s"), 250, 0) == []  # held while the remove is in flight
    c.tags_accepted(in_flight, now=10)
    assert c.take_tags((True, "s"), 250, now=14) == []  # the remove has not settled
    assert [i.email for i in c.take_tags((True, "s"), 250, now=15)] == ["a@x.io"]


def test_retried_upsert_goes_first_and_merges_into_a_newer_one() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", True, 1), 0)
    c.take_upserts(100)
    c.add(change(1, "a@x.io", "s", True, 2, name="B"), 0)
    retried = c.upsert_retry("a@x.io")
    assert retried.fields == {"firstName": "B"}
    assert len(retried.tickets) == 2


def test_opposite_operation_arriving_after_the_earlier_was_accepted_also_waits() -> None:
    c = Coalescer(settle_s=5.0)
    c.add(change(0, "a@x.io", "s", True, 1), 0)
    c.upsert_accepted(c.take_upserts(100)[0].email, 0)
    c.tags_accepted(c.take_tags((True, "s"), 250, 0), now=10)
    c.add(change(1, "a@x.io", "s", False, 2), now=11)  # arrives once the add was accepted
    assert c.take_tags((False, "s"), 250, now=14) == []  # the add may still be queued
    assert [i.email for i in c.take_tags((False, "s"), 250, now=15)] == ["a@x.io"]
    # Same direction again right after: no wait.
    c.tags_accepted([], now=15)
    c.add(change(2, "b@x.io", "s", True, 3), now=15)
    c.upsert_accepted(c.take_upserts(100)[0].email, 15)
    assert [i.email for i in c.take_tags((True, "s"), 250, now=15)] == ["b@x.io"]


def test_settled_calls_are_forgotten() -> None:
    c = Coalescer(settle_s=1.0)
    for i in range(50):
        c.add(change(i, f"{i}@x.io", "s", False, 1), 0)
    c.tags_accepted(c.take_tags((False, "s"), 250, 0), now=0)
    assert len(c._accepted) == 50
    c.tags_accepted([], now=2)
    assert len(c._accepted) == 0


def test_a_retried_tag_call_absorbed_by_a_newer_change_still_goes() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", False, 1), 0)
    in_flight = c.take_tags((False, "s"), 250, 0)
    c.add(change(1, "a@x.io", "s", False, 2), 0)  # waits: the same key is in flight
    c.tags_retry(in_flight, 0)  # the call failed transiently; the newer change absorbs it
    retried = c.take_tags((False, "s"), 250, 0)
    assert [len(i.tickets) for i in retried] == [2]
    c.tags_accepted(retried, 0)
    assert sorted(o.position.offset for o in c.drain_outcomes()) == [0, 1]
