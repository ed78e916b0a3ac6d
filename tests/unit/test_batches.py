"""The batch tracker, without a loop: when batches are read, how failures and odd answers move
that, and when a batch counts as stuck."""

from __future__ import annotations

from connector.core.intents import Part, UpsertIntent
from connector.omnisend.answers import BatchStatus
from connector.omnisend.batches import BatchTracker, TrackerConfig


def intents(*emails: str) -> list[UpsertIntent]:
    return [UpsertIntent(e, {0: Part({}, 1)}, 0.0) for e in emails]


def tracker() -> BatchTracker:
    return BatchTracker(
        TrackerConfig(max_poll_interval_s=10.0, deadline_s=600.0, stuck_poll_s=60.0)
    )


def test_one_odd_duration_never_leaves_later_batches_unread_for_long() -> None:
    t = tracker()
    first = t.add("b1", intents("a@x.io"), now=0.0)
    thirty_years = BatchStatus("b1", "finished", 0, duration_s=30 * 365 * 86400.0)
    assert t.on_status(first, thirty_years, now=2.0) == "accepted"
    assert t.batch_seconds <= 2.0  # never more than was observed
    second = t.add("b2", intents("b@x.io"), now=100.0)
    assert second.next_poll_at <= 100.0 + 10.0


def test_a_batch_read_a_thousand_times_keeps_its_interval() -> None:
    t = tracker()
    batch = t.add("b1", intents("a@x.io"), now=0.0)
    batch.polls = 5_000
    assert t.on_status(batch, BatchStatus("b1", "inProgress", None, None), now=50.0) == "wait"
    assert 50.0 < batch.next_poll_at <= 60.0


def test_failed_reads_back_off_per_batch_and_a_stuck_batch_is_read_rarely() -> None:
    t = tracker()
    batch = t.add("b1", intents("a@x.io"), now=0.0)
    delays = []
    for _ in range(12):
        t.read_failed(batch, now=100.0)
        delays.append(batch.next_poll_at - 100.0)
    assert delays[0] < 1.0
    assert max(delays) <= 15.0  # up to the poll interval, jittered
    assert delays[-1] >= 5.0
    (overdue,) = t.overdue(now=600.0)
    t.mark_stuck(overdue, ghost=1, now=600.0)
    for _ in range(3):
        t.read_failed(batch, now=700.0)
        assert batch.next_poll_at - 700.0 >= 60.0
    assert t.live == {}
    assert list(t.stuck) == ["b1"]


def test_a_failing_list_read_leaves_its_batches_read_by_their_ids() -> None:
    """At once when Omnisend refused the list (a 4xx), else after the second failure."""
    t = tracker()
    a, b, c = (t.add(f"b{i}", intents(f"{i}@x.io"), now=0.0) for i in range(3))
    listed, _ = t.due_status(now=5.0)
    assert {x.batch_id for x in listed} == {"b0", "b1", "b2"}
    t.read_failed(a, now=5.0, listed=True)
    t.read_failed(b, now=5.0, listed=True, refused=True)
    t.read_failed(c, now=5.0)  # a read by id: no reason to leave the list
    assert (a.unlisted, b.unlisted, c.unlisted) == (False, True, False)
    t.read_failed(a, now=6.0, listed=True)
    assert a.unlisted
    _, by_id = t.due_status(now=100.0)
    assert {x.batch_id for x in by_id} >= {"b0", "b1"}


def test_the_deadline_grows_with_batches_that_land_late_but_only_fourfold() -> None:
    """A slow Omnisend must not get every batch sent twice; a wrong answer must not stretch the
    deadline without bound."""
    t = tracker()
    for i in range(20):
        batch = t.add(f"b{i}", intents("a@x.io"), now=0.0)
        t.mark_stuck(batch, ghost=i, now=600.0)
        landed = BatchStatus(f"b{i}", "finished", 0, duration_s=None)
        assert t.on_status(batch, landed, now=100_000.0) == "landed"
    assert 600.0 < t.deadline_s <= 4 * 600.0
