"""What the loop says while it runs: that it waits for the group, which share of the budget its
partitions give it, and a progress summary at its interval."""

from __future__ import annotations

import threading

import structlog.testing
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from connector.app import kafka_error_handler
from connector.core.clock import ManualClock
from connector.core.codec import PlainAvroDecoder, encode_plain
from connector.core.errors import ExitCode, Retriable
from connector.core.mapping import Mapping
from connector.core.routing import Export, Router
from connector.kafka.dlq import DeadLetters
from connector.metrics import Metrics
from connector.omnisend.sinks import Sinks
from connector.pipeline import Pipeline
from connector.simulator.config import Faults
from tests.defaults import pipeline_config
from tests.events import event
from tests.fake_kafka import MemoryProducer, MemorySource
from tests.omnisend_fakes import Scripted, fast_sink, simulator

TOPIC = "segments"


class BrokerAwayAtFirst(MemorySource):
    """Its first metadata requests fail, as when a broker is away right after an assignment."""

    failures = 3

    def partition_count(self, topic: str) -> int:
        if self.failures:
            self.failures -= 1
            raise Retriable(f"metadata of {topic}: broker transport failure")
        return super().partition_count(topic)


def test_the_loop_says_it_waits_then_its_share_then_its_progress() -> None:
    headers: list[tuple[str, bytes | None]] = []
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (i % 2, f"p{i}".encode(), encode_plain(event(f"r{i}@example.com")), headers)
        for i in range(6)
    ]
    consumer = BrokerAwayAtFirst.of(TOPIC, records)  # the loop outlives a failed metadata read
    producer = MemoryProducer(1 << 20)
    clock = ManualClock(1_000.0)
    sink = fast_sink(Scripted(simulator()))

    pipeline = Pipeline(
        pipeline_config(TOPIC, progress_every_s=60.0, shutdown_timeout_s=5),
        consumer,
        PlainAvroDecoder(),
        Router((Export("all", "default", Mapping()),)),
        Sinks({"default": sink}),
        DeadLetters(producer, f"{TOPIC}.dlq", 1 << 20),
        Metrics(CollectorRegistry()),
        clock,
    )
    pipeline.progress_fields = lambda: {"lag": 0}
    turns = [0]

    def until(p: Pipeline) -> bool:
        turns[0] += 1
        clock.advance(7.0)
        return turns[0] >= 40

    with structlog.testing.capture_logs() as lines:
        pipeline.run(threading.Event(), until=until)
    events = [line["event"] for line in lines]
    assert events[0] == "waiting_for_assignment"
    share = next(line for line in lines if line["event"] == "budget_share")
    assert (share["topic_partitions"], share["budget_share"]) == (2, 1.0)
    progress = [line for line in lines if line["event"] == "progress"]
    assert len(progress) == 4  # 40 turns of 7 s: every 60 s
    assert progress[-1]["consumed"] == 6
    assert progress[-1]["lag"] == 0
    assert pipeline.assignment_seen
    assert consumer.failures == 0  # asked again until the broker answered


def test_every_skip_is_counted_once_in_the_metric_by_its_reason() -> None:
    """Skips are told to the metrics once per turn, not per record: none may be lost on the
    way (the last turn's are told at shutdown) or told twice."""
    at = 999_000  # ms: a second before the loop's clock
    duplicate = event("dup@example.com", event_id="same-id", occurred_at=at)
    events = [
        duplicate,
        duplicate,  # the same event again: skipped as a duplicate
        event("o@example.com", segment_id="seg-2", segment_name="News", occurred_at=at),
        *(event(f"r{i}@example.com", profile_id=f"p{i}", occurred_at=at) for i in range(5)),
        event("late@example.com", segment_id="seg-9", segment_name="Other", occurred_at=at),
    ]
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (i % 2, f"k{i}".encode(), encode_plain(e), []) for i, e in enumerate(events)
    ]
    registry = CollectorRegistry()
    pipeline = Pipeline(
        pipeline_config(TOPIC, shutdown_timeout_s=5),
        MemorySource.of(TOPIC, records),
        PlainAvroDecoder(),
        Router((Export("all", "default", Mapping(), frozenset({"seg-1"})),)),
        Sinks({"default": fast_sink(Scripted(simulator()))}),
        DeadLetters(MemoryProducer(1 << 20), f"{TOPIC}.dlq", 1 << 20),
        Metrics(registry),
        ManualClock(1_000.0),
    )
    fates: dict[str, int] = {}
    pipeline.fates.observe = lambda raw, outcome: fates.__setitem__(
        outcome, fates.get(outcome, 0) + 1
    )

    def until(p: Pipeline) -> bool:
        return p.stats["consumed"] == len(events) and not len(p.fates.ledger)

    pipeline.run(threading.Event(), until=until)

    def skipped(reason: str) -> float | None:
        labels = {"connection": "default", "reason": reason}
        return registry.get_sample_value("omnisend_connector_events_skipped_total", labels)

    assert skipped("duplicate") == 1
    assert skipped("no_export") == 2
    assert fates.get("skipped") == 3 == pipeline.stats["skipped"]


def one_partition(count: int) -> MemorySource:
    """`count` valid events in partition 0, each of its own contact."""
    return MemorySource.of(
        TOPIC,
        [
            (0, f"p{i}".encode(), encode_plain(event(f"r{i}@x.io", occurred_at=999_000)), [])
            for i in range(count)
        ],
    )


def small_pipeline(source: MemorySource) -> Pipeline:
    return Pipeline(
        pipeline_config(TOPIC, shutdown_timeout_s=2),
        source,
        PlainAvroDecoder(),
        Router((Export("all", "default", Mapping()),)),
        Sinks({"default": fast_sink(Scripted(simulator()))}),
        DeadLetters(MemoryProducer(1 << 20), f"{TOPIC}.dlq", 1 << 20),
        Metrics(CollectorRegistry()),
        ManualClock(1_000.0),
    )


def test_a_fatal_kafka_error_stops_the_loop_with_exit_5() -> None:
    """A fatal error of the client (a static member fenced by another with its instance id)
    leaves a consumer that never consumes again: logging it and going on polling would be a
    silent stall with green probes."""
    pipeline = small_pipeline(one_partition(1))
    on_error = kafka_error_handler(lambda: pipeline)
    on_error(KafkaError(KafkaError._TRANSPORT, "a broker went away"))  # not fatal: going on
    assert pipeline.fatal is None
    turns = [0]

    def fenced_at_third_turn(p: Pipeline) -> bool:
        turns[0] += 1
        if turns[0] == 3:
            on_error(KafkaError(KafkaError._FATAL, "fenced by another instance", fatal=True))
        assert turns[0] < 100, "the loop went on after a fatal error"
        return False

    assert pipeline.run(threading.Event(), until=fenced_at_third_turn) == ExitCode.KAFKA_FATAL
    assert "fenced" in str(pipeline.fatal)


def test_offsets_that_go_back_without_a_rebalance_stop_the_loop_and_say_why() -> None:
    """Log truncation after an unclean leader election, or a topic deleted and made again,
    rewinds a partition under the consumer: the records in flight cannot be matched to their
    offsets any more. The loop stops (exit 1) with what happened, committing only what is
    finished; the next start resumes from there."""
    source = one_partition(6)
    pipeline = small_pipeline(source)
    turns = [0]

    def rewound_at_third_turn(p: Pipeline) -> bool:
        turns[0] += 1
        if turns[0] == 3:
            source.reading_at[(TOPIC, 0)] = 2
        assert turns[0] < 100, "the loop went on"
        return False

    with structlog.testing.capture_logs() as lines:
        code = pipeline.run(threading.Event(), until=rewound_at_third_turn)
    assert code == ExitCode.FAILED
    assert "went back" in str(pipeline.fatal)
    assert any(line["event"] == "fatal" for line in lines)


def test_with_several_connections_dead_letters_and_skips_name_the_connection_they_came_from() -> (
    None
):
    """Counted under `connection="all"` they were invisible on the dashboard of the brand that
    refused the records (its series stayed at zero). Only what is decided before routing (a
    decode error, a duplicate, no export) belongs to no connection."""
    eu = simulator(faults=Faults(refused_emails=frozenset({"refused@x.io"})))
    events = [
        event("refused@x.io", segment_id="seg-eu", occurred_at=999_000),
        event("fine@x.io", segment_id="seg-us", occurred_at=999_000),
        # An exit older than the entry: nothing to do, superseded.
        event("fine@x.io", change="EXITED", segment_id="seg-us", occurred_at=998_000),
        event("nobody@x.io", segment_id="seg-none", occurred_at=999_000),  # no export
    ]
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (0, f"k{i}".encode(), encode_plain(e), []) for i, e in enumerate(events)
    ]
    registry = CollectorRegistry()
    pipeline = Pipeline(
        pipeline_config(TOPIC, shutdown_timeout_s=5, connection="all"),
        MemorySource.of(TOPIC, records),
        PlainAvroDecoder(),
        Router(
            (
                Export("eu", "eu", Mapping(), frozenset({"seg-eu"})),
                Export("us", "us", Mapping(), frozenset({"seg-us"})),
            )
        ),
        Sinks({"eu": fast_sink(Scripted(eu)), "us": fast_sink(Scripted(simulator()))}),
        DeadLetters(MemoryProducer(1 << 20), f"{TOPIC}.dlq", 1 << 20),
        Metrics(registry),
        ManualClock(1_000.0),
    )

    def until(p: Pipeline) -> bool:
        return p.stats["consumed"] == len(events) and not len(p.fates.ledger)

    pipeline.run(threading.Event(), until=until)

    def sample(name: str, connection: str, reason: str) -> float | None:
        labels = {"connection": connection, "reason": reason}
        return registry.get_sample_value(f"omnisend_connector_{name}_total", labels)

    assert sample("dlq_records", "eu", "rejected_by_omnisend") == 1
    assert not sample("dlq_records", "all", "rejected_by_omnisend")
    assert sample("events_skipped", "us", "superseded") == 1
    assert sample("events_skipped", "all", "no_export") == 1
