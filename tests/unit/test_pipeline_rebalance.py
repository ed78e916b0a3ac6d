"""Rebalances at any moment, without a broker: the loop over an in-memory `Source` that revokes
(or loses) its partitions between any two polls, mid-batch included. Whatever the moments, no
commit passes a record that never had its fate, every record ends committed, and Omnisend ends
holding the tags the stream's latest changes say. Each profile's changes come in order (keyed by
profile, as README "What to know" asks): a late event is recognised only while the connector
remembers the newer one, and a rebalance starts with empty caches."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from connector.core.clock import SystemClock
from connector.core.codec import PlainAvroDecoder, encode_plain
from connector.core.events import Position, RawRecord
from connector.core.mapping import Mapping
from connector.core.routing import Export, Router
from connector.kafka.dlq import DeadLetters
from connector.kafka.partitions import Partitions
from connector.metrics import Metrics
from connector.omnisend.sinks import Sinks
from connector.pipeline import Pipeline
from connector.simulator import Simulator
from tests.defaults import pipeline_config
from tests.events import event
from tests.fake_kafka import MemoryProducer, MemorySource
from tests.omnisend_fakes import Scripted, contacts, fast_sink, simulator

TOPIC = "segments"
T0 = 1_790_000_000_000
EMAILS = ["ann@x.io", "bob@x.io", "cid@x.io", "dan@x.io"]
SEGMENTS = ["One", "Two"]


class Rebalancing(MemorySource):
    """Takes its partitions away before the polls numbered in `revoke_at` (revoked: the loop
    may finish and commit first) or `lose_at` (lost: it may not), then assigns them again from
    the committed offsets, as a group that rebalanced back to this member would."""

    revoke_at: frozenset[int] = frozenset()
    lose_at: frozenset[int] = frozenset()
    batch = 500  # records per poll at most: small ones put rebalances mid-stream
    polls = 0

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        self.polls += 1
        if self._listener is not None and self._assigned:
            if self.polls in self.revoke_at:
                self._listener.on_revoke(list(self._assigned))
                self._assigned, self.paused = [], set()
            elif self.polls in self.lose_at:
                self._listener.on_lost(list(self._assigned))
                self._assigned, self.paused = [], set()
        return super().poll(min(max_records, self.batch), timeout_s)


class Watched(Pipeline):
    """Counts the fates each record was given (a record read again after a rebalance may be
    given one again: at least once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.given: Counter[Position] = Counter()

        def watched(raw: RawRecord, outcome: str) -> None:
            self.given[raw.position] += 1

        self.fates.observe = watched


def watched(
    source: MemorySource, producer: MemoryProducer, sim: Simulator, **config: Any
) -> Watched:
    """The loop over `source` into `sim`, dead letters to `producer`; a commit past a record
    that never had its fate fails the test."""

    pipeline = Watched(
        pipeline_config(TOPIC, commit_interval_s=0, shutdown_timeout_s=5, **config),
        source,
        PlainAvroDecoder(),
        Router((Export("all", "default", Mapping()),)),
        Sinks({"default": fast_sink(Scripted(sim))}),
        DeadLetters(producer, f"{TOPIC}.dlq", 1 << 20),
        Metrics(CollectorRegistry()),
        SystemClock(),
    )

    def check_commit(tp: tuple[str, int], offset: int) -> None:
        unfinished = [o for o in range(offset) if not pipeline.given[Position(*tp, o)]]
        assert unfinished == [], f"committed {tp} at {offset} past unfinished {unfinished}"

    source.on_commit = check_commit
    return pipeline


def all_committed(source: MemorySource, within_s: float = 60) -> Callable[[Pipeline], bool]:
    deadline = time.monotonic() + within_s

    def finished(p: Pipeline) -> bool:
        assert time.monotonic() < deadline, "the stream did not finish"
        ends = {q: source.end(q) for q in source.partitions}
        return all(source.committed.get((TOPIC, q), 0) == end for q, end in ends.items())

    return finished


change_st = st.tuples(
    st.integers(0, len(EMAILS) - 1),
    st.integers(0, len(SEGMENTS) - 1),
    st.booleans(),  # entered
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.lists(change_st, min_size=1, max_size=40),
    revoke_at=st.frozensets(st.integers(1, 30), max_size=4),
    lose_at=st.frozensets(st.integers(1, 30), max_size=2),
    batch=st.sampled_from([1, 3, 500]),
)
def test_rebalances_at_any_moment_lose_nothing_and_commit_nothing_unfinished(
    spec: list[tuple[int, int, bool]],
    revoke_at: frozenset[int],
    lose_at: frozenset[int],
    batch: int,
) -> None:
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []
    latest: dict[tuple[str, str], tuple[int, bool]] = {}  # (email, tag) -> (when, entered)
    for i, (e, s, entered) in enumerate(spec):
        # One partition per profile, its changes in order.
        email, segment, at = EMAILS[e], SEGMENTS[s], T0 + i
        partition = e % 3
        value = encode_plain(
            event(
                email,
                change="ENTERED" if entered else "EXITED",
                segment_id=f"seg-{s}",
                segment_name=segment,
                occurred_at=at,
                event_id=f"e{i}",
                profile_id=f"p{e}",
            )
        )
        records.append((partition, f"p{e}".encode(), value, []))
        key = (email, f"segment: {segment}")
        if key not in latest or at > latest[key][0]:
            latest[key] = (at, entered)

    source = Rebalancing.of(TOPIC, records)
    source.revoke_at, source.lose_at, source.batch = revoke_at, lose_at - revoke_at, batch
    producer = MemoryProducer(1 << 20)
    sim = simulator()
    pipeline = watched(source, producer, sim)
    assert pipeline.run(threading.Event(), until=all_committed(source)) == 0
    assert all(
        pipeline.given[Position(TOPIC, q, o)] >= 1
        for q in source.partitions
        for o in range(source.end(q))
    )
    assert producer.delivered == []  # nothing here is invalid
    held = contacts(sim)
    for email in EMAILS:
        want = {tag for (e, tag), (_, entered) in latest.items() if e == email and entered}
        got = set(held[email]["tags"]) if email in held else set()
        assert got == want, email


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.booleans(), min_size=100, max_size=300),  # True: valid
    share=st.sampled_from([0.2, 0.5, 0.8]),
)
def test_the_dead_letter_limit_stops_the_loop_and_commits_only_what_had_its_fate(
    kinds: list[bool], share: float
) -> None:
    """DLQ_MAX_INVALID_SHARE over the last 100 records: exit 4 as soon as the share is passed
    (never while it is not), and what is committed had its fate."""
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (
            0,
            b"k",
            encode_plain(event(EMAILS[i % 4], occurred_at=T0 + i, event_id=f"e{i}"))
            if valid
            else b"\x00garbage",
            [],
        )
        for i, valid in enumerate(kinds)
    ]
    # The record at which the share of invalid ones among the last 100 first passes the limit.
    trip = next(
        (i for i in range(99, len(kinds)) if kinds[i - 99 : i + 1].count(False) / 100 > share),
        None,
    )
    source = MemorySource.of(TOPIC, records)
    producer = MemoryProducer(1 << 20)
    pipeline = watched(
        source, producer, simulator(), dlq_window_records=100, dlq_max_invalid_share=share
    )
    exit_code = pipeline.run(threading.Event(), until=all_committed(source))
    assert exit_code == (0 if trip is None else 4)
    if trip is not None:  # it stopped there instead of draining the topic
        assert source.committed.get((TOPIC, 0), 0) <= trip + 1


def test_partitions_paused_for_backpressure_are_not_shown_paused_after_a_rebalance() -> None:
    """The gauge kept the count of the partitions paused before the rebalance, while the new
    ones arrive unpaused: the dashboard showed backpressure that was not there."""
    registry = CollectorRegistry()
    source = MemorySource.of(TOPIC, [(p, b"k", b"v", []) for p in range(3)])
    partitions = Partitions(source, TOPIC, Metrics(registry), SystemClock())
    partitions.assign([(TOPIC, p) for p in range(3)])
    partitions.pause(True)
    gauge = "omnisend_connector_paused_partitions"
    assert registry.get_sample_value(gauge) == 3
    partitions.forget()
    partitions.assign([(TOPIC, 0)])
    assert registry.get_sample_value(gauge) == 0
