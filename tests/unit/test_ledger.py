"""The record ledger against an oracle: records fanned out to several exports, their outcomes
interleaved at random, releases in any order, a rebalance at any point. Every record gets at
most one fate (exactly one unless forgotten), the fate is the oracle's, and the committable
offset never passes a record that was not released."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from connector.core.events import Position, RawRecord
from connector.core.intents import Outcome
from connector.core.ledger import Done, Failed, Fate, Ledger, Skipped

TOPIC = "t"


def record(partition: int, offset: int) -> RawRecord:
    return RawRecord(Position(TOPIC, partition, offset), b"k", b"value", [], 0)


def outcome(position: Position, kind: str, n: int) -> Outcome:
    if kind == "failed":
        return Outcome(position, reason="rejected_by_omnisend", detail=f"d{n}", email="e")
    if kind == "skipped":
        return Outcome(position, skipped=f"superseded{n}")
    return Outcome(position, contact_id=None if kind == "done" else f"id{n}")


def oracle(kinds: list[str]) -> tuple[int, Fate]:
    """(index of the outcome that decides, the fate)."""
    contact_id = None
    for index, kind in enumerate(kinds):
        if kind == "failed":
            return index, Failed("rejected_by_omnisend", f"d{index}", "e", contact_id)
        if kind == "done-with-id":
            contact_id = f"id{index}"
    if any(k.startswith("done") for k in kinds):
        return len(kinds) - 1, Done(contact_id)
    return len(kinds) - 1, Skipped(f"superseded{len(kinds) - 1}")


@dataclass
class Tracked:
    raw: RawRecord
    kinds: list[str]
    sent: int = 0
    fates: list[tuple[int, Fate]] = field(default_factory=list)


KINDS = st.sampled_from(["done", "done-with-id", "skipped", "failed"])


@given(
    plans=st.lists(st.lists(KINDS, min_size=1, max_size=3), min_size=1, max_size=12),
    order=st.lists(st.integers(0, 100), max_size=60),
    releases=st.lists(st.integers(0, 100), max_size=20),
    forget_at=st.one_of(st.none(), st.integers(0, 60)),
)
def test_each_record_gets_the_oracle_s_fate_once(
    plans: list[list[str]], order: list[int], releases: list[int], forget_at: int | None
) -> None:
    ledger = Ledger()
    tracked = []
    for index, kinds in enumerate(plans):
        raw = record(index % 2, index // 2)
        ledger.admit(raw)
        ledger.fan_out(raw.position, len(kinds))
        tracked.append(Tracked(raw, kinds))
    released: set[int] = set()
    forgotten = False
    # Outcomes arrive interleaved across records (each record's in its own order), with
    # releases of decided records in between, and perhaps a rebalance.
    steps = order + list(range(len(tracked))) * 3
    for step_no, pick in enumerate(steps):
        if forget_at is not None and step_no == forget_at:
            ledger.forget()
            forgotten = True
        item = tracked[pick % len(tracked)]
        if item.sent < len(item.kinds):
            settled = ledger.settle(outcome(item.raw.position, item.kinds[item.sent], item.sent))
            if settled is not None:
                assert settled[0] is item.raw
                item.fates.append((item.sent, settled[1]))
            item.sent += 1
        if releases and step_no < len(releases):
            victim = tracked[releases[step_no] % len(tracked)]
            if victim.fates and ledger.release(victim.raw):
                released.add(tracked.index(victim))
        if not forgotten:
            assert_never_past_unreleased(ledger, tracked, released)
    for item in tracked:
        if forgotten:
            assert len(item.fates) <= 1
            assert not item.fates or item.fates == [oracle(item.kinds[: item.fates[0][0] + 1])]
        else:
            assert item.fates == [oracle(item.kinds)]


def assert_never_past_unreleased(
    ledger: Ledger, tracked: list[Tracked], released: set[int]
) -> None:
    for (_, partition), position in ledger.offsets.to_commit().items():
        for number, item in enumerate(tracked):
            at = item.raw.position
            if at.partition == partition and at.offset < position:
                assert number in released


def test_offsets_pass_released_records_only_in_order() -> None:
    ledger = Ledger()
    raws = [record(0, offset) for offset in range(3)]
    for raw in raws:
        ledger.admit(raw)
    assert ledger.release(raws[1])
    assert ledger.offsets.to_commit() == {(TOPIC, 0): 0}  # the first record is not done
    assert ledger.release(raws[0])
    assert ledger.offsets.to_commit() == {(TOPIC, 0): 2}
    assert len(ledger) == 1
    assert ledger.bytes == raws[2].size


def test_a_record_consumed_again_after_a_rebalance_is_not_released_by_its_old_self() -> None:
    ledger = Ledger()
    old = record(0, 0)
    ledger.admit(old)
    ledger.forget()
    new = record(0, 0)
    ledger.admit(new)
    assert not ledger.release(old)
    assert not ledger.dead_lettered(old)
    assert ledger.settle(Outcome(new.position)) == (new, Done(None))
    assert ledger.release(new)


def test_a_dead_letter_blocks_later_fates_until_released() -> None:
    ledger = Ledger()
    raw = record(0, 0)
    ledger.admit(raw)
    ledger.dead_lettering(raw.position)
    assert ledger.is_dead_lettering(raw.position)
    assert ledger.settle(Outcome(raw.position)) is None
    assert ledger.dead_lettered(raw)
    assert not ledger.is_dead_lettering(raw.position)
    assert ledger.settle(Outcome(raw.position)) is None  # still decided: its result is next
    assert ledger.release(raw)
