"""Offset bookkeeping: the commit position never passes an unfinished record."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.core.errors import OffsetsWentBack
from connector.core.offsets import OffsetTracker, PartitionOffsets

TP = ("t", 0)


def test_position_is_first_unfinished() -> None:
    p = PartitionOffsets()
    for offset in (5, 6, 7, 9):
        p.track(offset)
    p.done(6)
    assert p.position() == 5
    p.done(5)
    assert p.position() == 7
    p.done(7)
    p.done(9)
    assert p.position() == 10
    assert p.unfinished == 0


def test_offsets_must_increase() -> None:
    p = PartitionOffsets()
    p.track(3)
    with pytest.raises(OffsetsWentBack, match="went back"):
        p.track(3)


def test_commits_never_go_backwards_and_repeat_only_on_progress() -> None:
    t = OffsetTracker()
    t.track(TP, 0)
    t.track(TP, 1)
    t.done(TP, 0)
    assert t.to_commit() == {TP: 1}
    t.committed({TP: 1})
    assert t.to_commit() == {}
    t.done(TP, 1)
    assert t.to_commit() == {TP: 2}


def test_revoked_partition_is_forgotten_and_late_completions_ignored() -> None:
    t = OffsetTracker()
    t.track(TP, 0)
    t.forget([TP])
    t.done(TP, 0)
    assert t.to_commit() == {}
    assert t.unfinished() == 0


@given(
    st.integers(min_value=1, max_value=60).flatmap(
        lambda n: st.tuples(st.just(n), st.permutations(list(range(n))))
    )
)
def test_committed_offset_never_passes_an_unfinished_message(case: tuple[int, list[int]]) -> None:
    n, completion_order = case
    tracker = OffsetTracker()
    offsets = [10 + 2 * i for i in range(n)]  # gaps, as after compaction or transactions
    for offset in offsets:
        tracker.track(TP, offset)
    finished: set[int] = set()
    last = -1
    for index in completion_order:
        tracker.done(TP, offsets[index])
        finished.add(offsets[index])
        commit = tracker.to_commit().get(TP)
        if commit is None:
            continue
        assert commit >= last
        assert all(o in finished for o in offsets if o < commit)
        tracker.committed({TP: commit})
        last = commit
    assert tracker.to_commit().get(TP, last) == offsets[-1] + 1


def test_invalid_share_needs_enough_records_and_slides() -> None:
    from connector.core.ledger import InvalidShare  # noqa: PLC0415

    share = InvalidShare(200)
    for _ in range(99):
        share.add(invalid=True)
    assert not share.exceeds(0.5)  # too few records to judge
    share.add(invalid=True)
    assert share.exceeds(0.5)
    for _ in range(200):
        share.add(invalid=False)
    assert share.share() == 0.0


@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("track"), st.integers(1, 3)),  # the next record, this far on
            st.tuples(st.just("done"), st.integers(0, 50)),  # one of the unfinished, by index
            st.tuples(st.just("reached"), st.integers(0, 3)),  # the consumer, this far past
        ),
        max_size=40,
    )
)
def test_the_consumer_s_position_carries_the_commit_only_past_finished_records(
    steps: list[tuple[str, int]],
) -> None:
    """Positions come as the loop reads them, once every record before them is tracked: over
    markers they move the commit to where the consumer stands, never past unfinished work."""
    tracker = OffsetTracker()
    tracked: list[int] = []
    unfinished: list[int] = []
    stands = 0  # where the consumer stands: past every record delivered
    told: list[int] = []  # the positions the consumer told
    for kind, n in steps:
        if kind == "track":
            offset = stands + n - 1
            tracker.track(TP, offset)
            tracked.append(offset)
            unfinished.append(offset)
            stands = offset + 1
        elif kind == "done" and unfinished:
            tracker.done(TP, unfinished.pop(n % len(unfinished)))
        elif kind == "reached":
            stands += n  # markers no record reaches
            told.append(stands)
            tracker.reached({TP: stands})
        commit = tracker.to_commit().get(TP)
        if commit is not None:
            assert all(o not in unfinished for o in tracked if o < commit)
            tracker.committed({TP: commit})
    after = max([o + 1 for o in tracked] + told) if tracked or told else None
    want = min(unfinished) if unfinished else after
    assert tracker.done_positions().get(TP) == want


def test_heads_count_only_records_finished_behind_the_first_unfinished_one() -> None:
    """What a partition is held back for: records still unfinished are the loop's backpressure
    (counting them held healthy partitions back whenever in-flight work was at its cap)."""
    tracker = OffsetTracker()
    tp = ("t", 0)
    for offset in range(200):
        tracker.track(tp, offset)
    for offset in range(1, 151):
        tracker.done(tp, offset)
    assert tracker.heads() == {tp: (0, 150)}
    tracker.done(tp, 0)
    assert tracker.heads() == {tp: (151, 0)}  # the finished prefix is dropped
    for offset in range(151, 200):
        tracker.done(tp, offset)
    assert tracker.heads() == {tp: (None, 0)}
