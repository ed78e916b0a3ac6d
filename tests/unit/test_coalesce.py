"""Coalescing: the result equals applying the events one by one, with every record's fate known
exactly once, and tag adds only after their contact exists."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core.coalesce import Coalescer
from connector.core.events import ContactChange, Position
from connector.core.intents import Outcome, TagIntent, UpsertIntent


def change(
    offset: int, email: str, tag: str, entered: bool, at: int, name: str = "A", export: int = 0
) -> ContactChange:
    """Export 0 maps firstName, export 1 city (each export owns the fields it maps)."""
    fields = {("firstName", "city")[export]: name} if entered else {}
    return ContactChange(
        Position("t", 0, offset), f"e{offset}", at, email, tag, entered, fields, export
    )


class Omnisend:
    """Applies what the coalescer sends, in order. With `flaky`, when the random source says
    so: a call or batch item fails transiently before applying anything; a tag call's answer
    is lost after it was applied; a batch gets stuck, its contacts are sent again (as the sink
    does at the batch deadline), and the stuck batch lands later, over whatever came since."""

    def __init__(self, flaky: random.Random | None = None) -> None:
        self.contacts: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, set[str]] = {}
        self.flaky = flaky
        self.upserts_sent: list[UpsertIntent] = []
        self.tags_sent: list[list[TagIntent]] = []
        self.stuck: list[tuple[int, str, dict[str, Any]]] = []  # (ghost, email, fields)

    def _fails(self, share: float = 0.3) -> bool:
        return self.flaky is not None and self.flaky.random() < share

    def send(self, c: Coalescer, now: float) -> None:
        """Take what is ready; it completes at the next `complete`, so that changes may arrive
        while calls are in flight."""
        self.upserts_sent.extend(c.take_upserts(100))
        for group, _, _ in list(c.ready_groups()):
            self.tags_sent.append(c.take_tags(group, 250, now))

    def _upsert(self, email: str, fields: dict[str, Any]) -> None:
        self.contacts.setdefault(email, {}).update(fields)  # POST updates what it carries
        self.tags.setdefault(email, set())

    def land(self, c: Coalescer, now: float, share: float) -> None:
        """Stuck batches finish, late."""
        for stuck in list(self.stuck):
            if share >= 1 or self._fails(share):
                ghost, email, fields = stuck
                self._upsert(email, fields)
                self.stuck.remove(stuck)
                c.ghost_gone(ghost, now)

    def complete(self, c: Coalescer, now: float) -> None:
        self.land(c, now, 0.1)
        upserts, self.upserts_sent = self.upserts_sent, []
        for intent in upserts:
            if self._fails():
                c.upsert_retry(intent.email)
            elif self._fails(0.15):
                ghost = c.haunt([intent])
                self.stuck.append((ghost, intent.email, dict(intent.fields)))
                c.upsert_retry(intent.email)
            else:
                self._upsert(intent.email, intent.fields)
                c.upsert_accepted(intent.email, now)
        calls, self.tags_sent = self.tags_sent, []
        for tag_intents in calls:
            lost = tag_intents and self._fails(0.15)
            if tag_intents and not lost and self._fails():
                c.tags_retry(tag_intents, now)
                continue
            for t in tag_intents:
                if t.email in self.contacts:  # unknown emails are ignored
                    (self.tags[t.email].add if t.add else self.tags[t.email].discard)(t.tag)
            if lost:
                c.tags_retry(tag_intents, now, maybe_applied=True)
            else:
                c.tags_accepted(tag_intents, now)

    def drain(self, c: Coalescer, now: float, rounds: int = 1_000) -> None:
        for _ in range(rounds):
            self.complete(c, now)
            if c.idle and not self.stuck:
                return
            if c.idle:
                self.land(c, now, 1.0)
            self.send(c, now)
            now += 1
        raise AssertionError(f"stuck: {len(c.upserts)} upserts, {len(c.tagging.tags)} tags wait")


def one_by_one(
    events: list[ContactChange],
) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """The state the events describe, whatever order they arrive in: membership per (email,
    tag) by `occurred_at`; fields per (email, export) by `occurred_at`, from entries only, each
    export owning its fields; a contact exists once it entered any segment (ties: the later
    arrival wins). The same rule as `tests/workload.py`'s `expected_state`."""
    parts: dict[str, dict[int, tuple[int, dict[str, Any]]]] = {}
    membership: dict[tuple[str, str], tuple[int, bool]] = {}
    for e in events:
        if e.entered:
            current = parts.setdefault(e.email, {}).get(e.export)
            if current is None or e.occurred_at_ms >= current[0]:
                parts[e.email][e.export] = (e.occurred_at_ms, dict(e.fields))
        key = (e.email, e.tag)
        if e.occurred_at_ms >= membership.get(key, (-1, False))[0]:
            membership[key] = (e.occurred_at_ms, e.entered)
    contacts = {
        email: {k: v for _, (_, fields) in sorted(by_export.items()) for k, v in fields.items()}
        for email, by_export in parts.items()
    }
    tags = {
        email: {tag for (m, tag), (_, inside) in membership.items() if m == email and inside}
        for email in contacts
    }
    return contacts, tags


event_st = st.tuples(
    st.sampled_from(["a@x.io", "b@x.io", "c@x.io"]),
    st.sampled_from(["seg: 1", "seg: 2"]),
    st.booleans(),
    st.integers(min_value=1, max_value=6),
    st.sampled_from(["A", "B"]),
    st.sampled_from(["", "send", "complete", "drain"]),  # what Omnisend does after this event
    st.sampled_from([0, 0, 1]),  # the export
)


def play(
    events: list[ContactChange], steps: list[str], flaky: random.Random | None, label: str = ""
) -> None:
    """Feed the events, Omnisend doing `steps[i]` after event i, then draining: the end state
    equals the oracle's, and every record has exactly one fate, none failed."""
    c, omnisend = Coalescer(exports=(0, 1)), Omnisend(flaky)
    for event, step in zip(events, steps, strict=True):
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
    assert omnisend.contacts == contacts, label
    assert {e: t for e, t in omnisend.tags.items() if e in contacts} == tags, label
    assert sorted(o.position.offset for o in outcomes) == list(range(len(events))), label
    assert all(o.reason is None for o in outcomes), label


@settings(max_examples=300, deadline=None)
@given(st.lists(event_st, min_size=1, max_size=40), st.none() | st.randoms(use_true_random=False))
def test_coalesced_output_equals_applying_events_one_by_one(
    spec: list[tuple[Any, ...]], flaky: random.Random | None
) -> None:
    """With or without transient failures (retried calls and batch items)."""
    events = [
        change(i, email, tag, entered, at, name, export)
        for i, (email, tag, entered, at, name, _, export) in enumerate(spec)
    ]
    play(events, [step for *_, step, _ in spec], flaky)


def random_scenario(seed: int) -> None:
    """Up to 20 changes of two contacts in two segments and two exports, with ties in
    `occurred_at`, arriving while Omnisend sends, completes (failing, losing answers, getting
    stuck and landing late) and drains at random."""
    rng = random.Random(seed)
    events: list[ContactChange] = []
    steps: list[str] = []
    for i in range(rng.randint(1, 20)):
        events.append(
            change(
                i,
                rng.choice(["a@x.io", "b@x.io"]),
                rng.choice(["seg: 1", "seg: 2"]),
                rng.random() < 0.7,
                rng.randint(1, 6),
                rng.choice("AB"),
                rng.choice([0, 0, 1]),
            )
        )
        steps.append(rng.choice(["", "send", "complete", "drain"]))
    play(events, steps, random.Random(seed), f"seed {seed}")


def test_thousands_of_random_scenarios_converge() -> None:
    """Seeded, so a failure names the seed that reproduces it; Hypothesis above shrinks,
    this one reaches the rarer interleavings (a stuck batch landing after a tie)."""
    for seed in range(3000):
        random_scenario(seed)


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


def test_a_late_entry_is_superseded_only_where_something_newer_is_known() -> None:
    """Membership per (email, tag), attributes per email: a late ENTERED that is the contact's
    only entry still creates it (without its tag); one older than known attributes needs
    nothing."""
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", False, 5), 0)
    c.tags_accepted(c.take_tags((False, "s"), 250, 0), 0)
    c.drain_outcomes()
    c.add(change(1, "a@x.io", "s", True, 4, name="Ann"), 0)
    assert list(c.ready_groups()) == []  # its membership is superseded: no tag call
    (upsert,) = c.take_upserts(100)
    assert upsert.fields == {"firstName": "Ann"}
    c.upsert_accepted(upsert.email, 0)
    assert [o.position.offset for o in c.drain_outcomes()] == [1]
    c.add(change(2, "a@x.io", "s", True, 3, name="Old"), 0)  # older than what Omnisend has
    assert c.drain_outcomes() == [Outcome(Position("t", 0, 2), skipped="superseded")]
    assert c.idle


def test_a_late_entry_with_the_newest_attributes_sends_them() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s1", True, 1, name="Old"), 0)
    c.add(change(1, "a@x.io", "s2", False, 9), 0)  # newest membership of s2
    c.add(change(2, "a@x.io", "s2", True, 5, name="New"), 0)  # late for s2, newest attributes
    (upsert,) = c.take_upserts(100)
    assert upsert.fields == {"firstName": "New"}


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
    assert len(c.tagging._accepted) == 50
    c.tags_accepted([], now=2)
    assert len(c.tagging._accepted) == 0


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


def test_two_exports_fields_are_merged_never_replaced() -> None:
    """Export 0 maps firstName, export 1 city: one contact in both exports' segments keeps
    both, whichever event is later and whether they share a batch or not."""
    c = Coalescer(exports=(0, 1))
    c.add(change(0, "a@x.io", "vip", True, 1, name="Ann", export=0), 0)
    c.add(change(1, "a@x.io", "geo", True, 2, name="Vilnius", export=1), 0)
    (upsert,) = c.take_upserts(100)
    assert upsert.fields == {"firstName": "Ann", "city": "Vilnius"}
    c.upsert_accepted(upsert.email, 0)
    c.add(change(2, "a@x.io", "vip", True, 3, name="Anna", export=0), 0)
    (upsert,) = c.take_upserts(100)
    assert upsert.fields == {"firstName": "Anna"}  # only the part that changed
    c.add(change(3, "a@x.io", "geo", True, 4, name="Vilnius", export=1), 0)
    assert c.take_upserts(100) == []  # geo's part is unchanged and known


def test_a_refused_upsert_fails_only_its_own_records_when_the_contact_exists() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s1", True, 1, name="Ann"), 0)
    c.upsert_accepted(c.take_upserts(100)[0].email, 0)
    c.tags_accepted(c.take_tags((True, "s1"), 250, 0), 0)
    c.drain_outcomes()
    c.add(change(1, "a@x.io", "s2", True, 2, name="Ann"), 0)  # same fields: a tag call only
    c.add(change(2, "a@x.io", "s3", True, 3, name="Bad"), 0)  # Omnisend refuses these fields
    (upsert,) = c.take_upserts(100)
    c.upsert_failed(upsert.email, "rejected_by_omnisend", "bad", 0)
    assert [(o.position.offset, o.reason) for o in c.drain_outcomes()] == []  # s3's add waits
    groups = {group for group, _, _ in c.ready_groups()}
    assert groups == {(True, "s2"), (True, "s3")}
    c.tags_accepted(c.take_tags((True, "s2"), 250, 0), 0)
    c.tags_accepted(c.take_tags((True, "s3"), 250, 0), 0)
    fates = {o.position.offset: o.reason for o in c.drain_outcomes()}
    assert fates == {1: None, 2: "rejected_by_omnisend"}


def test_a_lost_tag_answer_holds_the_opposite_call_for_the_settle_time() -> None:
    c = Coalescer(settle_s=5.0)
    c.add(change(0, "a@x.io", "s", False, 1), 0)
    lost = c.take_tags((False, "s"), 250, 0)
    c.add(change(1, "a@x.io", "s", True, 2), 0)  # the opposite, waiting behind the call
    c.upsert_accepted(c.take_upserts(100)[0].email, 0)
    c.tags_retry(lost, now=10, maybe_applied=True)  # timed out: Omnisend may have it
    assert c.take_tags((True, "s"), 250, now=14.9) == []
    assert [i.email for i in c.take_tags((True, "s"), 250, now=15)] == ["a@x.io"]


def test_a_ghost_that_lands_late_gets_the_newest_fields_sent_once_more() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", True, 1, name="Old"), 0)
    stuck = c.take_upserts(100)
    c.add(change(1, "a@x.io", "s", True, 2, name="New"), 0)  # waits: one upsert in flight
    ghost = c.haunt(stuck)
    c.upsert_retry("a@x.io")  # the stuck batch's contacts go again, with the newest fields
    (newer,) = c.take_upserts(100)
    assert newer.fields == {"firstName": "New"}
    c.upsert_accepted("a@x.io", 0)
    assert c.take_upserts(100) == []
    c.ghost_gone(ghost, 0)  # the old batch finished after all: "Old" may have won
    (redo,) = c.take_upserts(100)
    assert redo.fields == {"firstName": "New"}
    assert redo.tickets == []


def test_a_ghost_with_the_same_fields_needs_nothing_and_an_expired_one_is_forgotten() -> None:
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", True, 1, name="Same"), 0)
    stuck = c.take_upserts(100)
    ghost = c.haunt(stuck, until=10.0)
    c.upsert_retry("a@x.io")
    c.upsert_accepted(c.take_upserts(100)[0].email, 0)
    c.expire_ghosts(9.0)
    assert c.ghosts == 1
    c.expire_ghosts(10.0)
    assert c.ghosts == 0
    assert c.take_upserts(100) == []
    c.ghost_gone(ghost, 11.0)  # twice: nothing


def test_a_change_back_to_the_known_fields_is_sent_while_a_ghost_may_land() -> None:
    """Known A; B goes in a batch that gets stuck, and its retry is refused; C brings back A's
    very fields: it must be sent (Omnisend may hold B), and sent again if B lands later."""
    c = Coalescer()
    c.add(change(0, "a@x.io", "s", True, 1, name="A"), 0)
    c.upsert_accepted(c.take_upserts(100)[0].email, 0)
    c.add(change(1, "a@x.io", "s", True, 2, name="B"), 0)
    stuck = c.take_upserts(100)
    ghost = c.haunt(stuck)
    c.upsert_retry("a@x.io")
    c.take_upserts(100)
    c.upsert_failed("a@x.io", "omnisend_retries_exhausted", "503", 0)
    c.add(change(2, "a@x.io", "s", True, 3, name="A"), 0)
    (back,) = c.take_upserts(100)
    assert back.fields == {"firstName": "A"}
    c.upsert_accepted("a@x.io", 0)
    c.ghost_gone(ghost, 0)  # B landed after all
    (redo,) = c.take_upserts(100)
    assert redo.fields == {"firstName": "A"}


def test_ready_counts_say_what_a_take_would_take_now() -> None:
    """The sink sends a call unpaced only when it is full: a count of waiting intents that
    includes emails still in a batch, or intents still settling, would call a small one full."""
    c = Coalescer(settle_s=5.0)
    for i in range(100):
        c.add(change(i, f"c{i}@x.io", "s", True, 1), 0)
    first = c.take_upserts(100)
    for i in range(105):  # newer changes of the same 100, and 5 new contacts
        c.add(change(100 + i, f"c{i}@x.io", "s", True, 2, name="B"), 0)
    assert len(c.upserts) == 105
    assert c.upserts_ready(100) == 5 == len(c.take_upserts(100))
    for intent in first:
        c.upsert_accepted(intent.email, 0)
    c.add(change(300, "c0@x.io", "t", False, 3), 0)  # c0 is known: no upsert needed
    removed = c.take_tags((False, "t"), 250, 0)
    c.tags_accepted(removed, now=10)
    c.add(change(301, "c0@x.io", "t", True, 4, name="B"), 10)  # settles until 15
    c.add(change(302, "c1@x.io", "t", True, 5, name="B"), 10)
    assert c.tags_sendable((True, "t"), 250, now=14) == (1, 10)  # c1 only: c0 is settling
    # c0 could go from 15 (when its opposite call settled), c1 since it arrived at 10.
    assert c.tags_sendable((True, "t"), 250, now=15) == (2, 10)
    assert c.tags_sendable((True, "t"), 1, now=15) == (1, 15)  # c0 first, in arrival order
    assert len(c.take_tags((True, "t"), 250, now=14)) == 1


def test_a_rebalance_keeps_the_wait_of_opposite_calls() -> None:
    """A rebalance starts a new coalescer (what this process knew of Omnisend's contacts may
    be stale), but an add accepted just before, or in flight when its request was cancelled,
    may still be queued in Omnisend: a removal of the same key right after the rebalance
    must wait `settle_s` as it would have without one, or the add may land last."""
    old = Coalescer(settle_s=5.0)
    old.add(change(0, "a@x.io", "s", True, 1), 0)
    old.add(change(1, "b@x.io", "s", True, 1), 0)
    for intent in old.take_upserts(100):
        old.upsert_accepted(intent.email, 0)
    accepted, cancelled = old.take_tags((True, "s"), 1, 0), old.take_tags((True, "s"), 1, 0)
    old.tags_accepted(accepted, now=10)
    assert [i.email for i in cancelled] == ["b@x.io"]  # still in flight at the rebalance
    new = Coalescer(settle_s=5.0)
    new.carry_holds(old.holds(now=11))
    new.add(change(2, "a@x.io", "s", False, 2), now=12)
    new.add(change(3, "b@x.io", "s", False, 2), now=12)
    assert new.take_tags((False, "s"), 250, now=14.9) == []
    assert [i.email for i in new.take_tags((False, "s"), 250, now=15)] == ["a@x.io"]
    assert [i.email for i in new.take_tags((False, "s"), 250, now=16)] == ["b@x.io"]
    # A settled call is not carried; one in flight is, as if accepted at the rebalance.
    assert set(old.holds(now=100)) == {("b@x.io", "s")}
