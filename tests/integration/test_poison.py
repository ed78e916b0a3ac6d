"""The poison corpus (`tests/data/poison/`): every kind of bad record reaches the DLQ with its
reason, and the good records around them are synced: poison never stops the stream."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka import Producer

from connector.core.codec import encode_confluent, encode_plain
from connector.dev.broker import Broker
from connector.simulator import SimulatorServer
from tests.events import event
from tests.integration.conftest import (
    RunConnector,
    caught_up,
    connector_env,
    read_all,
    sim_contacts,
)
from tests.registry import RegistryServer

CORPUS = Path(__file__).parents[1] / "data" / "poison"


def test_every_kind_of_poison_is_dead_lettered_with_its_reason(
    broker: Broker,
    topic: str,
    sim: SimulatorServer,
    registry: RegistryServer,
    run_connector: RunConnector,
) -> None:
    for schema_id, schema in json.loads((CORPUS / "schemas.json").read_text()).items():
        registry.schemas[int(schema_id)] = json.dumps(schema)
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    assert len({case["reason"] for case in manifest}) >= 10
    producer = Producer({"bootstrap.servers": broker.bootstrap, "log.connection.close": False})
    for i, case in enumerate(manifest):
        producer.produce(
            topic,
            key=bytes.fromhex(case["key_hex"]),
            value=(CORPUS / f"{case['name']}.bin").read_bytes(),
            headers=[("poison", case["name"].encode())],
        )
        producer.produce(
            topic,
            key=f"good-{i}".encode(),
            value=encode_confluent(event(f"good{i}@example.com"), 1),
        )
    assert producer.flush(30) == 0
    total = 2 * len(manifest)
    env = connector_env(
        broker,
        topic,
        sim,
        VALUE_FORMAT="confluent",
        SCHEMA_REGISTRY_URL=registry.url,
        MAX_VALUE_BYTES="1024",
        DLQ_MAX_INVALID_SHARE="1",
    )
    run = run_connector(env, caught_up(topic, total))
    assert run.exit_code == 0
    dead = read_all(broker.bootstrap, f"{topic}.dlq", len(manifest))
    reasons = {
        dict(m.headers())["poison"].decode(): dict(m.headers())["omnisend.dlq.reason"].decode()
        for m in dead
    }
    assert reasons == {case["name"]: case["reason"] for case in manifest}
    assert len(sim_contacts(sim)) == len(manifest)  # every good record went through


def test_large_records_are_dead_lettered_without_a_restart_loop(
    broker: Broker, topic: str, sim: SimulatorServer, run_connector: RunConnector
) -> None:
    """A value between librdkafka's 1,000,000 bytes and MAX_VALUE_BYTES (1 MiB) goes to the DLQ
    whole; one the DLQ producer cannot carry goes without its value, the header saying so."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 5_000_000})
    between = b"\x02" * 1_040_000  # not Avro: malformed_avro, and larger than 1,000,000
    huge = b"\x02" * 2_000_000  # over MAX_VALUE_BYTES and over the DLQ producer's limit
    for key, value in ((b"between", between), (b"huge", huge)):
        producer.produce(topic, key=key, value=value, headers=[("trace", b"t-" + key)])
    producer.produce(topic, key=b"good", value=encode_plain(event("good@example.com")))
    assert producer.flush(30) == 0
    env = connector_env(broker, topic, sim, DLQ_MAX_INVALID_SHARE="1")
    run = run_connector(env, caught_up(topic, 3))
    assert run.exit_code == 0
    dead = {m.key(): m for m in read_all(broker.bootstrap, f"{topic}.dlq", 2)}
    assert dead[b"between"].value() == between
    assert dict(dead[b"between"].headers())["omnisend.dlq.reason"] == b"malformed_avro"
    headers = dict(dead[b"huge"].headers())
    assert dead[b"huge"].value() is None
    assert headers["omnisend.dlq.reason"] == b"oversized_value"
    assert headers["omnisend.dlq.dropped"] == b"value"
    assert headers["omnisend.dlq.original.value.bytes"] == b"2000000"
    assert headers["trace"] == b"t-huge"
    assert set(sim_contacts(sim)) == {"good@example.com"}
