"""The Confluent wire format with a Schema Registry: evolved writers, unknown ids, outages."""

from __future__ import annotations

import copy
import json
import threading
import time

import fastavro

from connector.broker import Broker
from connector.codec import bundled_schema_json, encode_confluent
from connector.simulator import SimulatorServer
from tests.events import event
from tests.integration.conftest import (
    RunConnector,
    caught_up,
    connector_env,
    produce,
    read_all,
    sim_contacts,
)
from tests.registry import RegistryServer


def evolved_schema() -> dict[str, object]:
    """A newer writer: one added field with a default; the reader ignores it."""
    schema = copy.deepcopy(bundled_schema_json())
    schema["fields"].append({"name": "source", "type": "string", "default": "cdp"})
    return schema


def test_evolved_writer_decodes_and_unknown_id_is_dead_lettered(
    broker: Broker,
    topic: str,
    sim: SimulatorServer,
    registry: RegistryServer,
    run_connector: RunConnector,
) -> None:
    writer = evolved_schema()
    v1 = registry.register(f"{topic}-value", json.dumps(bundled_schema_json()))
    v2 = registry.register(f"{topic}-value", json.dumps(writer))
    records = [
        (b"p1", encode_confluent(event("one@example.com", profile_id="p1"), v1)),
        (
            b"p2",
            encode_confluent(
                {**event("two@example.com", profile_id="p2"), "source": "crm"},
                v2,
                fastavro.parse_schema(writer),
            ),
        ),
        (b"p3", encode_confluent(event("three@example.com", profile_id="p3"), 999)),
    ]
    produce(broker.bootstrap, topic, records)
    env = connector_env(
        broker, topic, sim, VALUE_FORMAT="confluent", SCHEMA_REGISTRY_URL=registry.url
    )
    run = run_connector(env, caught_up(topic, 3))
    assert run.exit_code == 0
    assert set(sim_contacts(sim)) == {"one@example.com", "two@example.com"}
    (dead,) = read_all(broker.bootstrap, f"{topic}.dlq", 1)
    assert dict(dead.headers())["omnisend.dlq.reason"] == b"unknown_schema_id"


def test_unreachable_registry_is_retried_not_dead_lettered(
    broker: Broker,
    topic: str,
    sim: SimulatorServer,
    registry: RegistryServer,
    run_connector: RunConnector,
) -> None:
    schema_id = registry.register(f"{topic}-value", json.dumps(bundled_schema_json()))
    registry.available = False
    records = [
        (
            f"p{i}".encode(),
            encode_confluent(event(f"r{i}@example.com", profile_id=f"p{i}"), schema_id),
        )
        for i in range(10)
    ]
    produce(broker.bootstrap, topic, records)
    threading.Timer(3.0, lambda: setattr(registry, "available", True)).start()
    env = connector_env(
        broker, topic, sim, VALUE_FORMAT="confluent", SCHEMA_REGISTRY_URL=registry.url
    )
    started = time.monotonic()
    run = run_connector(env, caught_up(topic, 10))
    assert time.monotonic() - started >= 2.5  # it waited for the registry
    assert run.pipeline.stats["dead_lettered"] == 0
    assert len(sim_contacts(sim)) == 10
