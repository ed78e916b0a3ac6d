"""The Confluent wire format with a Schema Registry: evolved writers, unknown ids, outages."""

from __future__ import annotations

import copy
import json
from typing import Any

import fastavro
import httpx

from connector.core.codec import bundled_schema_json, encode_confluent
from connector.dev.broker import Broker, free_port
from connector.pipeline import Pipeline
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
    port = free_port()
    env = connector_env(
        broker,
        topic,
        sim,
        VALUE_FORMAT="confluent",
        SCHEMA_REGISTRY_URL=registry.url,
        METRICS_PORT=str(port),
    )
    probes: list[tuple[int, dict[str, Any]]] = []
    done = caught_up(topic, 10)

    def probed(pipeline: Pipeline) -> bool:
        # While records wait for the registry, /readyz says so and what it answered; the
        # registry comes back after three turns of that (not on a timer: joining the group
        # may take longer than any outage).
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        probes.append((answer.status_code, answer.json()))
        waited = sum(1 for _, body in probes if body["schema_registry_available"] is False)
        registry.available = registry.available or waited >= 3
        return done(pipeline)

    run = run_connector(env, probed)
    assert run.pipeline.stats["dead_lettered"] == 0
    assert len(sim_contacts(sim)) == 10
    waiting = [(s, body) for s, body in probes if body["schema_registry_available"] is False]
    assert len(waiting) >= 3  # the records waited for the registry
    assert all(status == 503 for status, _ in waiting)
    assert "answered 503" in waiting[0][1]["schema_registry_error"]
    assert probes[-1][1]["schema_registry_available"] is True


def test_schemas_the_connector_cannot_read_are_dead_lettered_and_asked_for_once(
    broker: Broker,
    topic: str,
    sim: SimulatorServer,
    registry: RegistryServer,
    run_connector: RunConnector,
) -> None:
    """JSON Schema and Protobuf subjects in the same registry, and an Avro schema referencing
    one the registry resolves: the first two are dead-lettered (asked for once each), the third
    decodes; good records flow on around them."""
    good = registry.register(f"{topic}-value", json.dumps(bundled_schema_json()))
    json_id = registry.register("other-json", json.dumps({"type": "object"}), "JSON")
    proto_id = registry.register("other-proto", 'syntax = "proto3"; message M {}', "PROTOBUF")
    change_enum = copy.deepcopy(bundled_schema_json()["fields"][4]["type"])
    change_enum["namespace"] = "cdp.segments.v1"
    registry.register("membership-change", json.dumps(change_enum))
    writer = copy.deepcopy(bundled_schema_json())
    writer["fields"][4]["type"] = "cdp.segments.v1.MembershipChange"
    reference = {
        "name": "cdp.segments.v1.MembershipChange",
        "subject": "membership-change",
        "version": 1,
    }
    with_reference = registry.register(f"{topic}-value", json.dumps(writer), None, [reference])
    named: dict[str, Any] = {}
    fastavro.parse_schema(change_enum, named_schemas=named)
    parsed_writer = fastavro.parse_schema(writer, named_schemas=named)
    records = []
    for i in range(12):
        e = event(f"r{i}@example.com", profile_id=f"p{i}")
        schema_id = (good, json_id, proto_id, with_reference)[i % 4]
        value = encode_confluent(
            e, schema_id, parsed_writer if schema_id == with_reference else None
        )
        records.append((f"p{i}".encode(), value))
    produce(broker.bootstrap, topic, records)
    env = connector_env(
        broker, topic, sim, VALUE_FORMAT="confluent", SCHEMA_REGISTRY_URL=registry.url
    )
    run = run_connector(env, caught_up(topic, 12))
    assert run.exit_code == 0
    assert set(sim_contacts(sim)) == {f"r{i}@example.com" for i in range(12) if i % 4 in (0, 3)}
    dead = read_all(broker.bootstrap, f"{topic}.dlq", 6)
    assert (
        sorted(dict(m.headers())["omnisend.dlq.reason"] for m in dead)
        == [b"unsupported_schema"] * 6
    )
    asked = [path for path in registry.requests if path.startswith("/schemas/ids/")]
    assert sorted(asked) == sorted(
        f"/schemas/ids/{i}" for i in (good, json_id, proto_id, with_reference)
    )
