"""The pure parts of the jobs: `--since`, progress arithmetic, finding the first record of a
time whatever the broker answers, and rebuilding segment membership for `reconcile`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError
from hypothesis import example, given
from hypothesis import strategies as st

from connector.cli.jobs import reconcile_exit_code
from connector.core.errors import ConfigError, Fatal, InvalidRecord, Retriable
from connector.core.events import Position, RawRecord, SegmentChange
from connector.core.mapping import Mapping
from connector.core.recent import IntTable, fingerprint
from connector.core.routing import Export
from connector.jobs import reconcile as reconcile_job
from connector.jobs.drift import Drift, Finder, Membership, drift, shared_members
from connector.jobs.dryrun import CaughtUp
from connector.jobs.runner import Span, _Probe, decode_waiting, parse_since, replay_selector
from connector.kafka.dlq import HEADER_PREFIX

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_since_takes_a_time_or_a_duration() -> None:
    assert parse_since("2026-11-01T08:00:00Z") == int(
        datetime(2026, 11, 1, 8, tzinfo=UTC).timestamp() * 1000
    )
    assert parse_since("2026-11-01") == int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
    assert parse_since("6h", NOW) == int(NOW.timestamp() * 1000) - 6 * 3_600_000
    assert parse_since("2d", NOW) == int(NOW.timestamp() * 1000) - 2 * 86_400_000
    with pytest.raises(ConfigError, match="ISO time"):
        parse_since("yesterday")


@given(st.text(max_size=12) | st.from_regex(r"[0-9.e+]{1,400}[smhd]", fullmatch=True))
@example("9999-12-31T23:59:59-14:00")
@example("0001-01-01T00:00:00+14:00")
def test_any_since_is_a_time_from_the_epoch_on_or_a_configuration_error(text: str) -> None:
    """`²d` (a digit to `str.isdigit`, not to `float`) ended in a traceback, and `1000000d`
    in one after the whole backfill had run, when its report named the time."""
    try:
        since_ms = parse_since(text, NOW)
    except ConfigError:
        return
    assert since_ms >= 0
    datetime.fromtimestamp(since_ms / 1000, UTC).isoformat()  # the report can name it


def test_span_counts_done_records_per_partition() -> None:
    s = Span("t", {0: 10, 1: 0}, {0: 20, 1: 5})
    assert s.total == 15
    assert s.done({("t", 0): 15}) == 5
    assert s.done({("t", 0): 25, ("t", 1): 5}) == 15  # never past the end


class Message:
    def __init__(self, offset: int, ts: int) -> None:
        self._offset, self._ts = offset, ts

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


class Partition:
    """One partition's records (timestamps by offset) behind the consumer calls a probe uses,
    and a broker whose OffsetsForTimes answer is given."""

    def __init__(self, timestamps: list[int], answer: int | None) -> None:
        self.timestamps, self.answer = timestamps, answer
        self.at = 0
        self.reads = 0

    def assign(self, partitions: list[Any]) -> None:
        self.at = partitions[0].offset

    def poll(self, timeout: float) -> Message | None:
        self.reads += 1
        if self.at >= len(self.timestamps):
            raise AssertionError("a probe read past the end")
        return Message(self.at, self.timestamps[self.at])

    def offsets_for_times(self, partitions: list[Any], timeout: float) -> list[Any]:
        found = partitions[0]
        if self.answer is None:  # a correct broker
            found.offset = next(
                (i for i, ts in enumerate(self.timestamps) if ts >= found.offset), -1
            )
        else:
            found.offset = self.answer
        return [found]


TIMES = [100, 200, 300, 400, 500, 600, 700, 800]


@pytest.mark.parametrize("answer", [None, 0, -1, 7])
@pytest.mark.parametrize(("since", "first"), [(50, 0), (300, 2), (350, 3), (800, 7), (900, 8)])
def test_first_record_of_a_time(answer: int | None, since: int, first: int) -> None:
    partition = Partition(TIMES, answer)
    assert (
        _Probe(cast(Consumer, partition), "t", 0).first_at_or_after(since, 0, len(TIMES)) == first
    )


def test_a_right_answer_costs_at_most_two_reads() -> None:
    partition = Partition(list(range(0, 100_000, 10)), None)
    _Probe(cast(Consumer, partition), "t", 0).first_at_or_after(50_005, 0, 10_000)
    assert partition.reads <= 2


def change(
    profile: str,
    email: str,
    at: int,
    entered: bool = True,
    name: str = "VIP",
    segment: str = "s1",
    city: str = "",
) -> SegmentChange:
    attributes = {"email": email, "first_name": "A"} | ({"city": city} if city else {})
    return SegmentChange(f"e{at}", at, segment, name, entered, profile, attributes)


def emails(table: IntTable) -> set[int]:
    return {email for email, _ in table.items()}


def test_membership_follows_the_latest_change_of_each_profile() -> None:
    export = Export("all", "c", Mapping())
    m = Membership([export])
    now = 10_000
    for c in (
        change("p1", "a@x.io", 2, entered=False),
        change("p1", "a@x.io", 1),  # older: the exit wins
        change("p2", "b@x.io", 3),
        change("p2", "b2@x.io", 4),  # the email changed
        change("p3", "c@x.io", 5, name="Old"),
        change("p3", "c@x.io", 6, name="New"),  # the segment was renamed
    ):
        m.add(c, now)
    expected = m.expected(export)
    assert set(expected) == {"segment: VIP", "segment: Old", "segment: New"}
    assert emails(expected["segment: New"]) == {fingerprint("b2@x.io"), fingerprint("c@x.io")}
    assert len(expected["segment: VIP"]) == 0
    assert len(expected["segment: Old"]) == 0
    d = drift("segment: New", expected["segment: New"], ["b@x.io", "c@x.io"])
    assert d.missing == 1
    assert d.is_missing("b2@x.io")
    assert d.stale == 1
    assert d.report()["staleSamples"] == ["b***@x.io"]


def test_a_missing_member_is_repaired_with_the_contact_s_latest_fields() -> None:
    """Entered A in Vilnius, later B in Kaunas, lost only A's tag: the repair of A carries
    Kaunas, the latest by occurred_at across the export's segments."""
    export = Export("all", "c", Mapping())
    m = Membership([export])
    events = [
        (0, 0, change("p1", "a@x.io", 1, name="A", segment="sa", city="Vilnius")),
        (1, 0, change("p1", "a@x.io", 2, name="B", segment="sb", city="Kaunas")),
    ]
    for partition, offset, event in events:
        m.add(event, 10_000, partition, offset)
    expected = m.expected(export)
    drifts = [
        drift("segment: A", expected["segment: A"], []),
        drift("segment: B", expected["segment: B"], ["a@x.io"]),
    ]
    finder = Finder(export, m, drifts)
    repairs = [
        r for partition, offset, event in events for r in finder.visit(partition, offset, event)
    ]
    assert [(r.email, r.tag, r.fields.get("city"), r.occurred_at_ms) for r in repairs] == [
        ("a@x.io", "segment: A", "Kaunas", 2)
    ]
    assert drifts[0].report()["missingSamples"] == ["a***@x.io"]


def test_a_drift_keeps_counts_and_a_few_samples_not_every_address() -> None:
    untagged: list[tuple[str, str]] = []
    found = drift("segment: Old", IntTable(1), [])
    found.on_stale = lambda tag, email: untagged.append((tag, email))
    found.hold(f"c{i:05}@x.io" for i in range(10_000))
    assert found.stale == 10_000
    assert len(untagged) == 10_000  # each handed over as found, to untag
    samples = found.report()["staleSamples"]
    assert samples == [f"c0***{i}@x.io" for i in range(5)]  # distinguishable, not readable
    assert len(found.stale_samples) == 5


def test_a_tag_two_exports_of_one_connection_make_is_stale_for_neither() -> None:
    """Two exports on one brand, the same segment, one by `email` and one by `billing_email`:
    the tag is each one's members together. Compared per export, each found the other's
    members stale, and `--apply` untagged them."""
    mine = Export("mine", "eu", Mapping(), frozenset({"VIP"}))
    billing = Export(
        "billing", "eu", Mapping(email_attribute="billing_email", fields={}), frozenset({"VIP"})
    )
    elsewhere = Export("elsewhere", "us", Mapping(), frozenset({"VIP"}))
    exports = [mine, billing, elsewhere]
    m = Membership(exports)
    attributes = {"email": "a@x.io", "billing_email": "bill@x.io", "first_name": "A"}
    m.add(SegmentChange("e1", 1, "s1", "VIP", True, "p1", attributes), 10_000)
    for export in (mine, billing):
        expected = m.expected(export)
        others = shared_members(m, export, expected, exports).get("segment: VIP", [])
        found = Drift("segment: VIP", expected["segment: VIP"], others=others)
        found.hold(["a@x.io", "bill@x.io", "gone@x.io"])
        assert (found.stale, found.missing) == (1, 0), export.name  # only gone@x.io
    # Another brand's members are no excuse: on "us", bill@x.io holds the tag wrongly.
    expected = m.expected(elsewhere)
    others = shared_members(m, elsewhere, expected, exports).get("segment: VIP", [])
    found = Drift("segment: VIP", expected["segment: VIP"], others=others)
    found.hold(["a@x.io", "bill@x.io"])
    assert found.stale == 1


def test_dead_letters_whose_value_was_dropped_are_counted_not_replayed() -> None:
    """A dead letter too large for its topic went without its value: replayed, it would read as
    a tombstone and count as skipped, and the job would say it replayed everything."""

    def letter(reason: str, dropped: str | None) -> RawRecord:
        headers: list[tuple[str, bytes | None]] = [(HEADER_PREFIX + "reason", reason.encode())]
        if dropped is not None:
            headers.append((HEADER_PREFIX + "dropped", dropped.encode()))
        value = None if dropped and "value" in dropped else b"\x00"
        return RawRecord(Position("t.dlq", 0, 0), b"k", value, headers, 0)

    select, dropped = replay_selector(["rejected_by_omnisend"])
    assert select(letter("rejected_by_omnisend", None))
    assert not select(letter("rejected_by_omnisend", "value,headers"))
    assert not select(letter("invalid_email", "value"))  # not asked for: not counted
    assert not select(letter("invalid_email", None))
    assert dropped() == 1
    everything, dropped = replay_selector([])
    assert everything(letter("invalid_email", None))
    assert not everything(letter("invalid_email", "value"))
    assert dropped() == 1


class FakeLoop:
    """What `CaughtUp` reads of a pipeline."""

    def __init__(self, done: dict[int, int], consumed: int = 0) -> None:
        self.in_flight = 0
        self.assigned = [("t", p) for p in range(3)]
        self.stats = {"consumed": consumed}
        self._done = done

    def done_positions(self) -> dict[tuple[str, int], int]:
        return {("t", p): o for p, o in self._done.items()}


def test_a_dry_run_is_done_at_the_span_it_started_with_even_where_nothing_came() -> None:
    """A partition whose records all expired (its start is its end) delivers nothing: it is
    done all the same, or the dry run would never end."""
    starts, ends = {0: 0, 1: 50, 2: 7}, {0: 100, 1: 50, 2: 9}
    check = CaughtUp(Span("t", starts, ends))
    assert not check(FakeLoop({0: 100, 2: 8}))
    assert check(FakeLoop({0: 100, 2: 9}))  # partition 1 delivered nothing: nothing to do


def test_a_dry_run_does_not_end_at_a_pause_in_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """It ended once nothing came for 3 s and reported success: a broker restarting or a slow
    first fetch cut it short. (A transactional topic's last marker, the reason for that, is
    passed by the consumer's position now.)"""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    check = CaughtUp(Span("t", {0: 0}, {0: 10}))
    loop = FakeLoop({0: 4}, consumed=4)
    assert not check(loop)
    now[0] += 3600  # an hour without a record
    assert not check(loop)
    assert not check.reached
    loop._done = {0: 10}
    assert check(loop)
    assert check.reached


class Away:
    """A decoder whose Schema Registry does not answer its first `outage` asks."""

    def __init__(self, outage: int) -> None:
        self.outage, self.asks = outage, 0

    def decode(self, value: bytes) -> Any:
        self.asks += 1
        if self.asks <= self.outage:
            raise Retriable("schema registry: 503")
        if value == b"bad":
            raise InvalidRecord("decode", "malformed_avro", "truncated")
        return "event"


def test_a_job_reading_the_topic_waits_for_the_registry_then_says_it_gave_up() -> None:
    """`reconcile` ended in a traceback at the first record while the registry was away. The
    wait counts each ask's own timeout (five seconds against a registry that does not
    answer), not only the pauses between."""
    clock = [0.0]

    class Slow(Away):
        def decode(self, value: bytes) -> Any:
            clock[0] += 5.0  # the ask's timeout
            return super().decode(value)

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    decoder = Slow(outage=3)
    event: object = decode_waiting(decoder, b"ok", 60, sleep, lambda: clock[0])
    assert (event, decoder.asks) == ("event", 4)
    with pytest.raises(InvalidRecord):
        decode_waiting(Slow(outage=0), b"bad", 60, sleep, lambda: clock[0])
    clock[0] = 0.0
    with pytest.raises(Fatal, match=r"Schema Registry gave no usable answer for 60 s: .*503"):
        decode_waiting(Slow(outage=10**6), b"ok", 60, sleep, lambda: clock[0])
    assert 60 <= clock[0] < 60 + 5 + 2 + 5  # one ask and one pause past the deadline at most


def test_a_missing_member_whose_entry_left_the_topic_between_the_reads_is_counted() -> None:
    """Retention removed the latest entry between the first read and the repairing one: no
    repair, and `reconcile --apply` said nothing and exited 0."""
    export = Export("all", "c", Mapping())
    m = Membership([export])
    events = [
        (0, 0, change("p1", "a@x.io", 1, name="A")),
        (0, 1, change("p2", "b@x.io", 2, name="A")),
    ]
    for partition, offset, event in events:
        m.add(event, 10_000, partition, offset)
    drifts = [drift("segment: A", m.expected(export)["segment: A"], [])]  # both missing
    finder = Finder(export, m, drifts)
    assert finder.not_found == 2
    assert finder.visit(*events[1])  # a@x.io's entry is gone: only b@x.io is met
    assert finder.not_found == 1


@pytest.mark.parametrize(
    ("applied_export", "code"),
    [
        ({"repair": {"repaired": 1, "failed": 0}, "notRepairedUnsure": 0, "notFound": 0}, 0),
        ({"repair": {"repaired": 0, "failed": 1}, "notRepairedUnsure": 0, "notFound": 0}, 1),
        ({"repair": {"repaired": 0, "failed": 0}, "notRepairedUnsure": 1, "notFound": 0}, 1),
        ({"repair": {"repaired": 0, "failed": 0}, "notRepairedUnsure": 0, "notFound": 1}, 1),
    ],
    ids=["repaired", "a repair failed", "left unsure", "entry gone"],
)
def test_reconcile_applied_exits_1_while_a_missing_member_was_left_as_it_was(
    applied_export: dict[str, Any], code: int
) -> None:
    tags = [{"tag": "segment: A", "missing": 1, "stale": 0}]
    assert reconcile_exit_code({"exports": [{"tags": tags, **applied_export}]}, True) == code
    assert reconcile_exit_code({"exports": [{"tags": tags}]}, False) == 1  # found, not applied
    assert reconcile_exit_code({"exports": [{"tags": []}]}, False) == 0


def test_reconcile_s_tail_is_blind_after_a_failed_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka's position moves past an offset it could not fetch: the tail took itself
    for caught up past a record it never read, and would repair a contact the live connector
    had changed there."""

    class Consumer:
        def assign(self, partitions: Any) -> None: ...

        def get_watermark_offsets(self, tp: Any, timeout: float = -1) -> tuple[int, int]:
            return 0, 2

        def consume(self, num: int = 1, timeout: float = -1) -> list[Any]:
            error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
            return [SimpleNamespace(error=lambda: error, value=lambda: None)]

        def position(self, tps: list[Any]) -> list[Any]:
            return [SimpleNamespace(partition=tp.partition, offset=2) for tp in tps]

    monkeypatch.setattr(reconcile_job, "job_consumer", lambda config: Consumer())
    monkeypatch.setattr(reconcile_job, "make_decoder", lambda settings: None)
    config = cast(Any, SimpleNamespace(settings=SimpleNamespace(kafka_topic="t")))
    tail = reconcile_job.Tail(config, [], {0: 0})
    assert tail.changed("ann@x.io")  # not known: no repair
    assert (tail.unsure, tail.changed_since) == (1, 0)
