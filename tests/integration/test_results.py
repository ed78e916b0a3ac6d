"""The results topic end to end, over a real broker and the simulator: one result per consumed
record, each saying what became of it, written before its offset is committed; a results topic
the connector may not write stops it with exit 5, committing nothing."""

from __future__ import annotations

import json
import threading

from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

from connector.app import running
from connector.core.codec import encode_plain
from connector.dev.broker import Broker
from connector.logs import EmailHasher
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from connector.simulator.config import Faults
from tests.events import event
from tests.integration.conftest import (
    RunConnector,
    bootstrap_env,
    caught_up,
    connector_env,
    produce,
    read_all,
    sim_contacts,
)
from tests.mockcluster import MockCluster

HASH_KEY = "results-test-key"
TOPIC_AUTHORIZATION_FAILED = 29


def test_every_record_gets_one_result_saying_what_became_of_it(
    broker: Broker, topic: str, run_connector: RunConnector
) -> None:
    entries = [event(f"r{i}@example.com", profile_id=f"p{i}") for i in range(40)]
    again = entries[3]  # the same event twice: the second copy is a duplicate
    records: list[tuple[bytes | None, bytes | None]] = [
        (e["profile_id"].encode(), encode_plain(e)) for e in [*entries, again]
    ]
    records += [(b"tomb", None), (b"bad", b"\x00 not avro")]
    produce(broker.bootstrap, topic, records)
    results_topic = f"{topic}.results"
    # Items fail now and then: those batches' items are read, and name the contacts' ids.
    faults = Faults(seed=3, item_error_rate=0.3)
    with SimulatorServer(SimulatorConfig(time_scale=0.1, faults=faults)) as sim:
        env = connector_env(
            broker,
            topic,
            sim,
            KAFKA_RESULTS_TOPIC=results_topic,
            EMAIL_HASH_KEY=HASH_KEY,
            DLQ_MAX_INVALID_SHARE="1",
        )
        run = run_connector(env, until=caught_up(topic, len(records)), timeout_s=90)
        assert run.exit_code == 0
        state = sim_contacts(sim)
    messages = read_all(broker.bootstrap, results_topic, len(records))
    assert len(messages) == len(records)
    assert all(b"@example.com" not in m.value() for m in messages)  # never an address
    results = [json.loads(m.value()) for m in messages]
    by_offset = {(r["source"]["partition"], r["source"]["offset"]): r for r in results}
    assert len(by_offset) == len(records)  # one each
    outcomes = sorted((r["outcome"], r["reason"]) for r in results)
    assert outcomes == sorted(
        [("done", None)] * 40
        + [("skipped", "duplicate"), ("skipped", "tombstone")]
        + [("dead_lettered", "malformed_avro")]
    )
    hashed = EmailHasher(HASH_KEY.encode())
    ids = {hashed(email): contact["id"] for email, contact in state.items()}
    done = [r for r in results if r["outcome"] == "done"]
    for result in done:
        assert result["exports"] == ["default"]
        assert result["email_hash"] in ids
        assert result["contact_id"] in (None, ids[result["email_hash"]])
    assert any(r["contact_id"] is not None for r in done)
    keys = {m.key() for m in messages if json.loads(m.value())["outcome"] == "done"}
    assert keys == {e["profile_id"].encode() for e in entries}  # keyed by profile


def test_a_results_topic_that_cannot_be_written_stops_the_connector_with_exit_5() -> None:
    topic = "refused-results"
    with MockCluster() as cluster, SimulatorServer(SimulatorConfig(time_scale=0.1)) as sim:
        cluster.create_topic(topic, 2)
        cluster.refuse_topic(f"{topic}.results", TOPIC_AUTHORIZATION_FAILED)
        records = [(f"p{i}".encode(), encode_plain(event(f"x{i}@example.com"))) for i in range(20)]
        produce(cluster.bootstrap, topic, records)
        settings, kafka = load_settings(
            bootstrap_env(cluster.bootstrap, topic, sim, KAFKA_RESULTS_TOPIC=f"{topic}.results")
        )
        with running(settings, kafka) as parts:
            stop = threading.Event()
            timer = threading.Timer(60, stop.set)  # a stall would fail below, not hang
            timer.start()
            exit_code = parts.pipeline.run(stop)
            timer.cancel()
            assert not stop.is_set(), "the connector did not stop by itself"
            assert exit_code == 5
        group = Consumer(
            {"bootstrap.servers": cluster.bootstrap, "group.id": settings.kafka_group_id}
        )
        committed = group.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
        group.close()
        assert all(p.offset in (OFFSET_INVALID, 0) for p in committed)  # nothing passed
