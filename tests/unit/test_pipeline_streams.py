"""The whole pipeline over random record streams, without a broker: valid changes and every kind
of poison (bad framing, unknown and unreadable schema ids, a registry that is down for a while,
oversized values, bad keys, bad emails and timestamps, duplicates, tombstones, headers too large
for the dead-letter topic), over several partitions. Nothing raises out of the loop, every record
gets exactly one fate, a committed offset never passes an unfinished record, everything ends
committed (past the transaction markers that end some partitions), and Omnisend ends as the
valid changes say."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from connector.core.clock import SystemClock
from connector.core.codec import ConfluentDecoder, bundled_schema_json, encode_confluent
from connector.core.errors import ExitCode
from connector.core.events import ContactChange, Position, RawRecord
from connector.core.mapping import Mapping
from connector.core.routing import Export, Router
from connector.kafka.dlq import DeadLetters
from connector.kafka.registry import RegistryClient
from connector.kafka.results import Results
from connector.metrics import Metrics
from connector.omnisend.sinks import Sinks
from connector.pipeline import Pipeline
from tests.defaults import pipeline_config
from tests.events import event
from tests.fake_kafka import MemoryProducer, MemorySource
from tests.omnisend_fakes import Scripted, contacts, fast_sink, simulator
from tests.unit.test_coalesce import one_by_one

TOPIC = "segments"
RESULTS = "segments.results"
T0 = 1_790_000_000_000
MAX_VALUE_BYTES = 4096
DLQ_MAX_BYTES = 8192  # what the dead-letter producer takes: large headers must be dropped
BIG_HEADER = 9000
FAR_FUTURE_MS = 253_402_300_800_000  # 10000-01-01
GOOD, JSON_ID, PROTO_ID, UNKNOWN_ID, FLAKY_ID, GARBAGE_ID, UNTYPED_ID = 1, 2, 3, 4, 5, 6, 7
EMAILS = ["ann@x.io", "bob@x.io", "cid@x.io"]
SEGMENTS = [("seg-1", "One"), ("seg-2", "Two")]

# kind -> the DLQ reason it must end with (None: it is synced, or skipped)
KINDS: dict[str, str | None] = {
    "valid": None,
    "flaky_registry": None,  # valid, under a schema id the registry is down for at first
    "duplicate": None,
    "tombstone": None,
    "bad_magic": "invalid_magic_byte",
    "unknown_id": "unknown_schema_id",
    "json_schema": "unsupported_schema",
    "protobuf": "unsupported_schema",
    "garbage_schema": "unsupported_schema",
    "json_untyped": "unsupported_schema",  # a JSON Schema registered without its type
    "truncated": "malformed_avro",
    "trailing": "trailing_bytes",
    "oversized": "oversized_value",
    "bad_key": "invalid_key",
    "bad_email": "invalid_email",
    "no_email": "missing_email",
    "bad_timestamp": "invalid_timestamp",
    "far_timestamp": "invalid_timestamp",  # year 10000: no date can say it
}

# Kinds whose records are never decoded: their results cannot name the profile.
UNDECODED = {
    "tombstone",
    "bad_magic",
    "unknown_id",
    "json_schema",
    "protobuf",
    "garbage_schema",
    "json_untyped",
    "truncated",
    "trailing",
    "oversized",
    "bad_key",
}


class Registry:
    """A Schema Registry behind a MockTransport, down for the first `outage` asks of
    FLAKY_ID."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        bundled = json.dumps(bundled_schema_json())
        self.answers: dict[int, Any] = {
            GOOD: {"schema": bundled},
            FLAKY_ID: {"schema": bundled},
            JSON_ID: {"schemaType": "JSON", "schema": '{"type": "object"}'},
            PROTO_ID: {"schemaType": "PROTOBUF", "schema": "syntax = 'proto3';"},
            GARBAGE_ID: {"schema": "{not json"},
            UNTYPED_ID: {"schema": '{"type": "object", "properties": {}}'},
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        schema_id = int(request.url.path.rsplit("/", 1)[1])
        if schema_id == FLAKY_ID and self.outage > 0:
            self.outage -= 1
            return httpx.Response(503)
        if schema_id not in self.answers:
            return httpx.Response(404, json={"error_code": 40403})
        return httpx.Response(200, json=self.answers[schema_id])


def value_of(kind: str, e: dict[str, Any]) -> bytes | None:
    schema_id = {
        "flaky_registry": FLAKY_ID,
        "unknown_id": UNKNOWN_ID,
        "json_schema": JSON_ID,
        "protobuf": PROTO_ID,
        "garbage_schema": GARBAGE_ID,
        "json_untyped": UNTYPED_ID,
    }.get(kind, GOOD)
    good = encode_confluent(e, schema_id)
    spoiled = {
        "tombstone": None,
        "bad_magic": b"\x01" + good[1:],
        "truncated": good[: len(good) // 2],
        "trailing": good + b"\x00\x01",
        "oversized": good + b"\x00" * MAX_VALUE_BYTES,
    }
    return spoiled.get(kind, good)


def record_event(kind: str, i: int, at: int, choice: tuple[int, int, bool, str]) -> dict[str, Any]:
    email_index, segment_index, entered, name = choice
    segment_id, segment_name = SEGMENTS[segment_index]
    email: str | None = EMAILS[email_index]
    if kind == "bad_email":
        email = "not-an-address"
    elif kind == "no_email":
        email = None
    return event(
        email,
        change="ENTERED" if entered else "EXITED",
        segment_id=segment_id,
        segment_name=segment_name,
        occurred_at={"bad_timestamp": 0, "far_timestamp": FAR_FUTURE_MS}.get(kind, at),
        profile_id=f"p{email_index}",
        event_id=f"e{i}",
        first_name=name,
    )


def contact_change(e: dict[str, Any], i: int) -> ContactChange:
    entered = e["change"] == "ENTERED"
    fields = {"firstName": e["profile"]["first_name"]} if entered else {}
    tag = f"segment: {e['segment_name']}"
    position = Position(TOPIC, 0, i)
    return ContactChange(
        position, e["event_id"], e["occurred_at"], e["profile"]["email"], tag, entered, fields
    )


class Watched(Pipeline):
    """Records the one fate of every record, and refuses a second."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.given: dict[Position, str] = {}

        def watched(raw: RawRecord, outcome: str) -> None:
            assert raw.position not in self.given, f"{raw.position} got a second fate"
            self.given[raw.position] = outcome

        self.fates.observe = watched


record_st = st.tuples(
    st.sampled_from(list(KINDS)),
    st.integers(0, 2),  # partition
    st.tuples(st.integers(0, 2), st.integers(0, 1), st.booleans(), st.sampled_from("AB")),
    st.booleans(),  # headers too large for the dead-letter topic
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.lists(record_st, min_size=1, max_size=60),
    order=st.randoms(use_true_random=False),
    outage=st.integers(0, 3),
    with_results=st.booleans(),
    capacity=st.sampled_from([None, 1, 3]),  # the producer's queue, full now and then
    # A transaction's commit marker (or two) after a partition's last record.
    markers=st.dictionaries(st.integers(0, 2), st.integers(1, 2), max_size=3),
)
def test_any_stream_ends_committed_with_one_fate_per_record(
    spec: list[tuple[str, int, tuple[int, int, bool, str], bool]],
    order: Any,
    outage: int,
    with_results: bool,
    capacity: int | None,
    markers: dict[int, int],
) -> None:
    times = list(range(len(spec)))
    order.shuffle(times)  # distinct occurred_at, in any order
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []
    kinds: list[str] = []
    valid: list[ContactChange] = []
    sent: list[dict[str, Any]] = []  # valid events, which may be sent again
    for i, (drawn, partition, choice, big_headers) in enumerate(spec):
        kind = "valid" if drawn == "duplicate" and not sent else drawn
        if kind == "duplicate":
            e = order.choice(sent)
        else:
            e = record_event(kind, i, T0 + times[i], choice)
        if kind in ("valid", "flaky_registry"):
            sent.append(e)
            valid.append(contact_change(e, i))
        key = b"\xff\xfe" if kind == "bad_key" else e["profile_id"].encode()
        headers: list[tuple[str, bytes | None]] = (
            [("trace", b"t" * BIG_HEADER)] if big_headers else []
        )
        records.append((partition, key, value_of(kind, e), headers))
        kinds.append(kind)
    consumer = MemorySource.of(TOPIC, records)
    consumer.markers = markers
    # Deliveries lag a turn: a commit may come while results are still on their way.
    producer = MemoryProducer(DLQ_MAX_BYTES, lag_polls=1, capacity=capacity)
    sim = simulator()
    sink = fast_sink(Scripted(sim))
    registry = Registry(outage)
    decoder = ConfluentDecoder(
        RegistryClient(httpx.Client(transport=httpx.MockTransport(registry.handle)), "http://sr")
    )

    pipeline = Watched(
        pipeline_config(
            TOPIC,
            max_value_bytes=MAX_VALUE_BYTES,
            commit_interval_s=0,  # every turn: a commit must never pass unsettled work
            registry_retry_s=0.02,
            dlq_max_invalid_share=1.0,
            shutdown_timeout_s=5,
        ),
        consumer,
        decoder,
        Router((Export("all", "default", Mapping()),)),
        Sinks({"default": sink}),
        DeadLetters(producer, f"{TOPIC}.dlq", DLQ_MAX_BYTES),
        Metrics(CollectorRegistry()),
        SystemClock(),
        email_hash=lambda email: f"h({email})",
        results=Results(producer, RESULTS) if with_results else None,
    )

    def settled() -> set[Position]:
        """With a results topic, a record is settled once its result is delivered."""
        if not with_results:
            return set(pipeline.given)
        delivered = [m for m in producer.delivered if m["topic"] == RESULTS]
        sources = (json.loads(m["value"])["source"] for m in delivered)
        return {Position(s["topic"], s["partition"], s["offset"]) for s in sources}

    def check_commit(tp: tuple[str, int], offset: int) -> None:
        done = settled()
        records_before = range(min(offset, consumer.end(tp[1])))  # markers are no records
        unfinished = [o for o in records_before if Position(tp[0], tp[1], o) not in done]
        assert unfinished == [], f"committed {tp} at {offset} past unfinished {unfinished}"

    consumer.on_commit = check_commit
    deadline = time.monotonic() + 60

    def finished(p: Pipeline) -> bool:
        assert time.monotonic() < deadline, "the stream did not finish"
        ends = {p_: consumer.end(p_) + markers.get(p_, 0) for p_ in consumer.partitions}
        return all(consumer.committed.get((TOPIC, q), 0) == end for q, end in ends.items())

    exit_code = pipeline.run(threading.Event(), until=finished)
    assert exit_code == 0
    assert len(pipeline.given) == len(records)

    letters = [m for m in producer.delivered if m["topic"] == f"{TOPIC}.dlq"]
    dead = {
        (int(h["omnisend.dlq.original.partition"]), int(h["omnisend.dlq.original.offset"])): h
        for h in (dict(m["headers"]) for m in letters)
    }
    assert len(dead) == len(letters)  # one dead letter per failed record
    results = [json.loads(m["value"]) for m in producer.delivered if m["topic"] == RESULTS]
    by_source = {(r["source"]["partition"], r["source"]["offset"]): r for r in results}
    assert len(by_source) == len(results) == (len(records) if with_results else 0)
    offsets: dict[int, int] = {}
    for (partition, _, _, headers), kind in zip(records, kinds, strict=True):
        offset = offsets[partition] = offsets.get(partition, -1) + 1
        want = KINDS[kind]
        letter = dead.get((partition, offset))
        got = None if letter is None else letter["omnisend.dlq.reason"]
        assert got == (None if want is None else want.encode()), (kind, partition, offset)
        if letter is not None and headers:  # too large with its own headers: dropped
            assert letter["omnisend.dlq.dropped"] in (b"value,headers", b"value,headers,key")
            assert "trace" not in letter
        if with_results:
            check_result(by_source[(partition, offset)], kind, want, pipeline.given)
    if with_results:  # every copy of an event but one is a duplicate
        copies = Counter(r["event_id"] for r in results if r["reason"] in (None, "superseded"))
        assert set(copies.values()) <= {1}
        duplicates = Counter(r["event_id"] for r in results if r["reason"] == "duplicate")
        assert duplicates.keys() <= copies.keys()
        assert sum(duplicates.values()) == kinds.count("duplicate")

    expected_fields, expected_tags = one_by_one(valid)
    state = contacts(sim)
    assert set(state) == set(expected_fields)
    for email, fields in expected_fields.items():
        assert {k: state[email][k] for k in fields} == fields
        assert set(state[email]["tags"]) == expected_tags[email]


def check_result(result: dict[str, Any], kind: str, reason: str | None, fates: Any) -> None:
    """A record's result says what became of it, and who it was about."""
    source = result["source"]
    assert (
        fates[Position(source["topic"], source["partition"], source["offset"])]
        == (result["outcome"])
    )
    if reason is not None:
        assert (result["outcome"], result["reason"]) == ("dead_lettered", reason), kind
    elif kind == "tombstone":
        assert (result["outcome"], result["reason"], result["profile_id"]) == (
            "skipped",
            "tombstone",
            None,
        )
    else:  # which copy of an event is the duplicate depends on the partitions' order
        assert result["outcome"] in ("done", "skipped"), kind
        assert result["reason"] in (None, "superseded", "duplicate"), kind
        if result["reason"] != "duplicate":  # a duplicate is not routed again
            assert result["exports"] == ["all"]
            assert result["email_hash"] in {f"h({e})" for e in EMAILS}
    if kind not in UNDECODED:
        assert result["profile_id"] in {"p0", "p1", "p2"}, kind
        assert result["segment_id"] in {"seg-1", "seg-2"}, kind
    else:
        assert result["profile_id"] is None, kind


class Down:
    """A Schema Registry that is away for its first `outage` asks (each a 503 here; a timeout
    in life, five seconds each), then knows no schema; counts the asks."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.asks = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.asks += 1
        if self.asks <= self.outage:
            return httpx.Response(503)
        return httpx.Response(404, json={"error_code": 40403})


def registry_pipeline(
    registry: Down, count: int, retry_s: float, **config: Any
) -> tuple[Pipeline, MemoryProducer]:
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (0, f"p{i}".encode(), encode_confluent(event(f"r{i}@x.io"), FLAKY_ID), [])
        for i in range(count)
    ]
    producer = MemoryProducer(1 << 20)
    client = RegistryClient(
        httpx.Client(transport=httpx.MockTransport(registry.handle)), "http://sr"
    )
    pipeline = Pipeline(
        pipeline_config(TOPIC, registry_retry_s=retry_s, shutdown_timeout_s=2, **config),
        MemorySource.of(TOPIC, records),
        ConfluentDecoder(client),
        Router((Export("all", "default", Mapping()),)),
        Sinks({"default": fast_sink(Scripted(simulator()))}),
        DeadLetters(producer, f"{TOPIC}.dlq", 1 << 20),
        Metrics(CollectorRegistry()),
        SystemClock(),
    )
    return pipeline, producer


def test_a_registry_that_is_away_is_asked_once_per_retry_not_once_per_record() -> None:
    """Each ask of an unreachable registry waits for its timeout: asked for every record of a
    poll, the loop would stand still for minutes (and the liveness probe restart the pod)."""
    registry = Down(outage=1_000_000)
    pipeline, _ = registry_pipeline(registry, count=200, retry_s=3600.0)
    turns = [0]

    def three_turns(p: Pipeline) -> bool:
        turns[0] += 1
        return turns[0] > 3

    pipeline.run(threading.Event(), until=three_turns)
    assert registry.asks == 1
    decided = [pipeline.stats[fate] for fate in ("done", "skipped", "dead_lettered")]
    assert decided == [0, 0, 0]  # all of them held
    assert pipeline.committed().get((TOPIC, 0), 0) == 0


def test_while_records_wait_for_the_registry_the_pipeline_says_why_and_every_retry_is_logged() -> (
    None
):
    """A registry that keeps refusing (a 401 after a credential rotation, a redirect, an
    outage) held the records in silence after one log line: no retry logged, nothing for
    `/readyz` to show. Now each failed retry is logged and the pipeline names what the
    registry answered until the records decode."""
    registry = Down(outage=3)
    during_asks: list[str | None] = []  # what /readyz would read while the registry is asked
    handle = registry.handle

    def asked(request: httpx.Request) -> httpx.Response:
        during_asks.append(pipeline.intake.registry_error)
        return handle(request)

    registry.handle = asked  # type: ignore[method-assign]
    pipeline, _ = registry_pipeline(registry, count=5, retry_s=0.01)
    seen: list[str | None] = []

    def watch(p: Pipeline) -> bool:
        seen.append(p.intake.registry_error)
        return p.stats["dead_lettered"] == 5  # the registry knows no schema once it is back

    with capture_logs() as logs:
        pipeline.run(threading.Event(), until=watch)
    waiting = [error for error in seen if error is not None]
    assert waiting
    assert all("503" in error for error in waiting)
    assert seen[-1] is None
    retries = [e for e in logs if e["event"] == "schema_registry_unavailable"]
    assert len(retries) == 3  # the first ask and both failed retries
    assert [e["event"] for e in logs].count("schema_registry_recovered") == 1
    # Asked again (the held records are out of their list meanwhile), still not ready.
    assert len(during_asks) >= 4
    assert during_asks[0] is None
    assert all(error is not None for error in during_asks[1:4])


def test_records_held_for_the_registry_count_towards_the_dead_letter_limit_once_decided() -> None:
    """Held records were counted as valid when held, and their dead letters once decided were
    not counted at all: a stream of records the registry then refuses passed the limit."""
    registry = Down(outage=300)  # as many asks as records: every record is held at first
    pipeline, producer = registry_pipeline(
        registry, count=300, retry_s=0.01, dlq_max_invalid_share=0.5, dlq_window_records=100
    )
    deadline = time.monotonic() + 30

    def stopped(p: Pipeline) -> bool:
        assert time.monotonic() < deadline, "the limit was never reached"
        return False

    assert pipeline.run(threading.Event(), until=stopped) == ExitCode.DLQ_LIMIT
    letters = [m for m in producer.delivered if m["topic"] == f"{TOPIC}.dlq"]
    assert len(letters) < 300  # it stopped at the limit, not after the whole stream


def test_records_after_the_dead_letter_limit_are_not_committed() -> None:
    """The loop stops at the record that passes the limit; those after it were delivered by
    the consumer but never admitted, so its position must not carry the commit over them."""
    registry = Down(outage=0)  # no schema known: every record is invalid
    pipeline, producer = registry_pipeline(
        registry, count=300, retry_s=0.01, dlq_max_invalid_share=0.5, dlq_window_records=100
    )
    assert pipeline.run(threading.Event()) == ExitCode.DLQ_LIMIT
    letters = [m for m in producer.delivered if m["topic"] == f"{TOPIC}.dlq"]
    assert 0 < len(letters) < 300
    assert pipeline.committed().get((TOPIC, 0), 0) <= len(letters)
