"""The poison corpus (`tests/data/poison/`): every kind of bad record reaches the DLQ with its
reason, and the good records around them are synced: poison never stops the stream."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka import Producer

from connector.broker import Broker
from connector.codec import encode_confluent
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
