"""A record that never finishes (a tag call something between the connector and Omnisend always
fails, say) holds its partition's commit where it is, while the records after it finish. Those
must not pile up without bound behind it, and the stall must show per partition: the other
partitions go on, and the alert needs a figure for the one that stands still."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from connector.core.clock import SystemClock
from connector.core.codec import PlainAvroDecoder, encode_plain
from connector.core.mapping import Mapping
from connector.core.routing import Export, Router
from connector.kafka.dlq import DeadLetters
from connector.metrics import Metrics
from connector.omnisend.sinks import Sinks
from connector.pipeline import CONSUME_BATCH, Pipeline
from tests.defaults import pipeline_config
from tests.events import event
from tests.fake_kafka import MemoryProducer, MemorySource
from tests.omnisend_fakes import Rule, Scripted, fast_sink, instead, simulator

TOPIC = "segments"
WINDOW = 100  # MAX_IN_FLIGHT_RECORDS
BLOCKED = "stuck@x.io"
GATEWAY_PAGE = b"<html><body>502 Bad Gateway</body></html>"


def blocked_stream(behind: int, other: int) -> MemorySource:
    """Partition 0: the blocked contact's entry, then `behind` entries of other contacts;
    partition 1: `other` entries."""
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]
    records = [(0, b"p-stuck", encode_plain(event(BLOCKED, segment_name="Blocked")), [])]
    records += [
        (0, f"p{i}".encode(), encode_plain(event(f"a{i}@x.io", segment_name="Fine")), [])
        for i in range(behind)
    ]
    records += [
        (1, f"q{i}".encode(), encode_plain(event(f"b{i}@x.io", segment_name="Fine")), [])
        for i in range(other)
    ]
    return MemorySource.of(TOPIC, records)


def stalled_pipeline(source: MemorySource, registry: CollectorRegistry) -> Pipeline:
    """Every call adding the tag `segment: Blocked` is answered 502 by a gateway, for ever."""
    transport = Scripted(
        simulator(),
        [
            Rule(
                "POST",
                "/contacts/tags",
                instead(502, GATEWAY_PAGE, "text/html"),
                times=-1,
                when=lambda request: b"Blocked" in request.content,
            )
        ],
    )
    return Pipeline(
        pipeline_config(
            TOPIC, commit_interval_s=0, max_in_flight_records=WINDOW, shutdown_timeout_s=0.5
        ),
        source,
        PlainAvroDecoder(),
        Router((Export("all", "default", Mapping()),)),
        Sinks({"default": fast_sink(transport)}),
        DeadLetters(MemoryProducer(1 << 20), f"{TOPIC}.dlq", 1 << 20),
        Metrics(registry),
        SystemClock(),
    )


def until(condition: Callable[[], bool], within_s: float = 30) -> Callable[[Pipeline], bool]:
    deadline = time.monotonic() + within_s

    def reached(p: Pipeline) -> bool:
        assert time.monotonic() < deadline, "the condition was not reached in time"
        return condition()

    return reached


def test_records_finished_behind_one_that_never_finishes_do_not_pile_up() -> None:
    """Before: the partition was read to its end, every finished record's offset kept behind
    the unfinished one (about 80 bytes each, for as long as it stood: without bound)."""
    behind = 3 * CONSUME_BATCH + 4 * WINDOW
    source = blocked_stream(behind, other=2 * CONSUME_BATCH)
    pipeline = stalled_pipeline(source, CollectorRegistry())
    p0, p1 = (TOPIC, 0), (TOPIC, 1)

    def stalled() -> bool:
        other_done = source.committed.get(p1, 0) == source.end(1)
        return other_done and p0 in source.paused and pipeline.in_flight <= 1

    pipeline.run(threading.Event(), until=until(stalled))
    # The partition stands paused once a window's worth waits behind its blocked record (a
    # poll may bring up to one batch more); the other partition went on to its end.
    assert source.reading_at[p0] <= 1 + WINDOW + CONSUME_BATCH
    assert source.reading_at[p0] < source.end(0)
    assert source.committed.get(p0, 0) == 0  # the blocked record is not passed
    assert p1 not in source.paused


def test_a_partition_held_by_one_record_shows_how_long_it_has_been_held() -> None:
    registry = CollectorRegistry()
    source = blocked_stream(behind=10, other=10)
    pipeline = stalled_pipeline(source, registry)
    gauge = "omnisend_connector_partition_blocked_seconds"

    def held(partition: int) -> float:
        labels = {"topic": TOPIC, "partition": str(partition)}
        return registry.get_sample_value(gauge, labels) or 0.0

    pipeline.run(threading.Event(), until=until(lambda: held(0) >= 0.5))
    assert source.committed.get((TOPIC, 1), 0) == source.end(1)
    assert held(1) == 0.0  # nothing unfinished there
    assert registry.get_sample_value(gauge, {"topic": TOPIC, "partition": "1"}) is not None
