"""The results topic: what one result says, the contact id read from Omnisend's answer, and a
results topic that cannot be written stopping the loop (exit 5) with nothing committed past it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from connector.core.clock import ManualClock
from connector.core.coalesce import Coalescer
from connector.core.codec import PlainAvroDecoder, encode_plain
from connector.core.errors import ExitCode
from connector.core.events import ContactChange, Position, RawRecord, SegmentChange
from connector.core.intents import Outcome
from connector.core.mapping import Mapping
from connector.core.routing import Export, Router
from connector.kafka.dlq import DeadLetters
from connector.kafka.results import MAX_TEXT_CHARS, About, Results, result_value
from connector.metrics import Metrics
from connector.omnisend import answers
from connector.omnisend.sinks import Sinks
from connector.pipeline import Pipeline
from tests.defaults import pipeline_config
from tests.events import event
from tests.fake_kafka import MemoryProducer, MemorySource
from tests.omnisend_fakes import Scripted, fast_sink, simulator

TOPIC = "segments"
RESULTS = "segments.results"


def raw(offset: int = 7) -> RawRecord:
    return RawRecord(Position(TOPIC, 2, offset), b"p-1", b"value", [], 1_790_000_000_000)


def change(
    profile_id: str = "p-1", segment_name: str = "VIP", at_ms: int = 1_790_000_000_000
) -> SegmentChange:
    return SegmentChange("e-1", at_ms, "seg-1", segment_name, True, profile_id, {})


def test_a_result_names_the_profile_segment_exports_and_source() -> None:
    about = About.of(change())
    about.exports, about.email_hash, about.contact_id = ("eu", "us"), "hash-of-15", "65f0c0ffee"
    value = result_value(raw(), "done", None, about, 1_790_000_001.5)
    assert (value["outcome"], value["reason"]) == ("done", None)
    assert value["at"] == "2026-09-21T14:13:21.500+00:00"
    assert (value["profile_id"], value["segment_id"], value["change"]) == (
        "p-1",
        "seg-1",
        "ENTERED",
    )
    assert value["exports"] == ["eu", "us"]
    assert value["email_hash"] == "hash-of-15"
    assert value["contact_id"] == "65f0c0ffee"
    assert value["source"] == {
        "topic": TOPIC,
        "partition": 2,
        "offset": 7,
        "timestamp_ms": 1_790_000_000_000,
    }


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_any_timestamp_renders_or_is_null_never_raises(millis: int) -> None:
    value = result_value(
        raw(), "dead_lettered", "invalid_timestamp", About.of(change(at_ms=millis)), 0.0
    )
    assert value["occurred_at"] is None or value["occurred_at"].endswith("+00:00")
    json.dumps(value)


def test_a_record_never_decoded_has_a_result_with_only_its_source() -> None:
    value = result_value(raw(), "dead_lettered", "malformed_avro", None, 0.0)
    assert (value["profile_id"], value["email_hash"], value["exports"]) == (None, None, [])
    assert value["reason"] == "malformed_avro"


@given(st.text(min_size=MAX_TEXT_CHARS + 1, max_size=3 * MAX_TEXT_CHARS))
def test_huge_values_are_cut_and_the_result_says_so(text: str) -> None:
    value = result_value(raw(), "done", None, About.of(change(text, text)), 0.0)
    assert len(value["profile_id"]) == len(value["segment_name"]) == MAX_TEXT_CHARS
    assert value["truncated"] == ["profile_id", "segment_name"]


def test_text_no_utf_8_holds_is_written_as_its_escape_never_raised() -> None:
    producer = MemoryProducer(1 << 20)
    results = Results(producer, RESULTS)
    value = result_value(raw(), "dead_lettered", "rejected_by_omnisend", None, 0.0)
    value["profile_id"] = "p-\ud83d"
    results.send(raw(), value)
    results.flush(1.0)
    (message,) = producer.delivered
    assert message["key"] == b"p-\\ud83d"
    assert json.loads(message["value"])["profile_id"] == "p-\ud83d"  # the escape reads back


def items_answer(items: list[dict[str, Any]]) -> httpx.Response:
    body = {"batchID": "b" * 24, "status": "finished", "responses": items, "errors": []}
    return httpx.Response(200, json=body)


def item(email: str, response: Any, code: int = 200) -> dict[str, Any]:
    request = {"identifiers": [{"type": "email", "id": email}]}
    return {"request": request, "responseCode": code, "response": response}


def test_contact_ids_come_from_accepted_items_when_sensible() -> None:
    parsed = answers.batch_items(
        "e",
        items_answer(
            [
                item("a@x.io", {"id": "65f0a"}),  # 2026-03-15: a ContactResponse
                item("b@x.io", {"contactID": "65f0b"}),  # older versions' answer
                item("c@x.io", {"id": 12}),
                item("d@x.io", {"id": "x" * 65}),
                item("e@x.io", "<html>"),
                item("f@x.io", {"id": "65f0f"}, code=400),
            ]
        ),
    )
    assert parsed.contact_ids == {"a@x.io": "65f0a", "b@x.io": "65f0b"}
    assert "f@x.io" in parsed.refused


def test_an_accepted_upsert_gives_its_records_the_contact_id() -> None:
    c = Coalescer()
    position = Position(TOPIC, 0, 1)
    c.add(ContactChange(position, "e", 1, "ann@x.io", "vip", True, {"firstName": "A"}), 0.0)
    (intent,) = c.take_upserts(100)
    c.upsert_accepted(intent.email, 0.0, "65f0a")
    (tags,) = c.take_tags((True, "vip"), 250, 10.0)
    c.tags_accepted([tags], 10.0)
    (outcome,) = c.drain_outcomes()
    assert (outcome.position, outcome.reason, outcome.contact_id) == (position, None, "65f0a")


class RefusingProducer(MemoryProducer):
    """Delivers dead letters; refuses every result, as a broker refuses a topic this client
    may not write."""

    def poll(self, timeout: float = 0, everything: bool = False) -> int:
        refused = [q for q in self.queued if q[0]["topic"] == RESULTS]
        self.queued = [q for q in self.queued if q[0]["topic"] != RESULTS]
        for _, report, _ in refused:
            report(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), None)
        return super().poll(timeout, everything)


def test_a_results_topic_that_cannot_be_written_stops_the_loop_with_exit_5() -> None:
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (0, f"p{i}".encode(), encode_plain(event(f"r{i}@example.com")), []) for i in range(5)
    ]
    records.append((0, b"bad", b"\x00not avro", []))
    consumer = MemorySource.of(TOPIC, records)
    producer = RefusingProducer(1 << 20)

    pipeline = Pipeline(
        pipeline_config(TOPIC, shutdown_timeout_s=5, dlq_max_invalid_share=1.0),
        consumer,
        PlainAvroDecoder(),
        Router((Export("all", "default", Mapping()),)),
        Sinks({"default": fast_sink(Scripted(simulator()))}),
        DeadLetters(producer, f"{TOPIC}.dlq", 1 << 20),
        Metrics(CollectorRegistry()),
        ManualClock(1_000.0),
        results=Results(producer, RESULTS),
    )
    turns = [0]

    def until(p: Pipeline) -> bool:
        turns[0] += 1
        assert turns[0] < 2_000, "the loop did not stop"
        return False

    assert pipeline.run(threading.Event(), until=until) == ExitCode.KAFKA_FATAL
    assert "cannot write to the results topic" in str(pipeline.fatal)
    assert consumer.committed.get((TOPIC, 0), 0) == 0


class TwoExportSinks:
    """The pipeline's view of the sinks, scripted: the first export of each record syncs it, the
    second finds its change superseded; the second's fate comes last."""

    fatal = None

    def __init__(self) -> None:
        self._outcomes: list[Outcome] = []

    def submit(self, changes: list[tuple[str, ContactChange]]) -> None:
        for _, c in sorted(changes, key=lambda pair: pair[1].export):
            skipped = "superseded" if c.export == 1 else None
            self._outcomes.append(Outcome(c.position, skipped=skipped, contact_id="65f0"))

    def take_outcomes(self) -> list[Outcome]:
        out, self._outcomes = self._outcomes, []
        return out

    def saturated(self, fraction: float = 1.0) -> bool:
        return False

    def drain(self, timeout_s: float) -> bool:
        return True

    def reset(self) -> None: ...

    def stop(self) -> None: ...

    def reassign_budget(self, share: float) -> None: ...


def test_a_record_some_export_synced_is_done_whatever_fate_comes_last() -> None:
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (0, b"p", encode_plain(event(f"r{i}@example.com")), []) for i in range(3)
    ]
    consumer = MemorySource.of(TOPIC, records)
    producer = MemoryProducer(1 << 20)
    exports = (Export("a", "default", Mapping()), Export("b", "default", Mapping()))
    pipeline = Pipeline(
        pipeline_config(TOPIC, shutdown_timeout_s=5, commit_interval_s=0),
        consumer,
        PlainAvroDecoder(),
        Router(exports),
        TwoExportSinks(),  # type: ignore[arg-type]
        DeadLetters(producer, f"{TOPIC}.dlq", 1 << 20),
        Metrics(CollectorRegistry()),
        ManualClock(time.time()),
        results=Results(producer, RESULTS),
    )
    pipeline.run(threading.Event(), until=lambda p: consumer.committed.get((TOPIC, 0), 0) == 3)
    results = [json.loads(m["value"]) for m in producer.delivered if m["topic"] == RESULTS]
    assert [(r["outcome"], r["exports"], r["contact_id"]) for r in results] == [
        ("done", ["a", "b"], "65f0")
    ] * 3


def test_a_result_always_has_a_key_so_a_compacted_results_topic_takes_it() -> None:
    """Keyed by the profile; a record never decoded has none, so its own key, else its
    position. A null key is refused by a compacted topic (INVALID_RECORD): exit 5, and the
    same record again after every restart."""
    producer = MemoryProducer(1 << 20)
    results = Results(producer, RESULTS)
    keyless = RawRecord(Position(TOPIC, 2, 9), None, b"\x00garbage", [], 0)
    for record in (raw(), keyless):
        results.send(record, result_value(record, "dead_lettered", "malformed_avro", None, 0.0))
    results.flush(1.0)
    assert [m["key"] for m in producer.delivered] == [b"p-1", f"{TOPIC}/2/9".encode()]
