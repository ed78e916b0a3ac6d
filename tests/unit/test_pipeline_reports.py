"""What the loop says while it runs: that it waits for the group, which share of the budget its
partitions give it, and a progress summary at its interval."""

from __future__ import annotations

import threading

import structlog.testing
from prometheus_client import CollectorRegistry

from connector.core.clock import ManualClock
from connector.core.codec import PlainAvroDecoder, encode_plain
from connector.core.errors import Retriable
from connector.core.mapping import Mapping
from connector.core.routing import Export, Router
from connector.kafka.dlq import DeadLetters
from connector.metrics import Metrics
from connector.omnisend.sinks import Sinks
from connector.pipeline import Pipeline
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
