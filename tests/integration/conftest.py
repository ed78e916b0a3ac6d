"""The real pieces: a tansu broker (one per session), the Omnisend simulator, a Schema Registry
test server, and a helper that runs the connector until a condition holds."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client import CollectorRegistry

from connector.app import running
from connector.core.codec import encode_plain
from connector.dev.broker import Broker
from connector.kafka.clients import ensure_topic
from connector.omnisend.client import API_VERSION
from connector.pipeline import Pipeline
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.registry import RegistryServer

# Real Kafka's lowest accepted session timeout; tansu's joins take about half of it.
FAST_GROUP = {"KAFKA_CFG_SESSION_TIMEOUT_MS": "6000", "KAFKA_CFG_HEARTBEAT_INTERVAL_MS": "1000"}


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    with Broker() as b:
        yield b


@pytest.fixture
def topic(broker: Broker) -> str:
    name = f"segments-{uuid.uuid4().hex[:8]}"
    ensure_topic(broker.bootstrap, {}, name, 3)
    return name


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(time_scale=0.1)) as server:
        yield server


def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "log.connection.close": False})
    for key, value in records:
        producer.produce(topic, value=value, key=key, headers=headers)
    assert producer.flush(30) == 0


def produce_events(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    produce(bootstrap, topic, [(e["profile_id"].encode(), encode_plain(e)) for e in events])


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "log.connection.close": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < expected and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    consumer.close()
    return messages


@dataclass
class Run:
    pipeline: Pipeline
    exit_code: int | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)


def connector_env(broker: Broker, topic: str, sim: SimulatorServer, **extra: str) -> dict[str, str]:
    return bootstrap_env(broker.bootstrap, topic, sim, **extra)


def bootstrap_env(bootstrap: str, topic: str, sim: SimulatorServer, **extra: str) -> dict[str, str]:
    """The test settings of a connector on any Kafka (tansu or librdkafka's mock cluster)."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP_ID": f"group-{topic}",
        "VALUE_FORMAT": "avro",
        "OMNISEND_API_KEY": "test-key",
        "OMNISEND_PRIVACY_ACKNOWLEDGED": "true",
        "OMNISEND_BASE_URL": sim.api_url,
        "RATE_LIMIT_WINDOW_S": str(sim.simulator.config.window_s),
        "METRICS_PORT": "0",
        "METRICS_HOST": "127.0.0.1",
        "UPSERT_LINGER_S": "0.05",
        "TAG_LINGER_S": "0.05",
        "TAG_SETTLE_S": "0.3",
        **FAST_GROUP,
        **extra,
    }


RunConnector = Callable[..., Run]


@pytest.fixture
def run_connector() -> RunConnector:
    def run(env: dict[str, str], until: Callable[[Pipeline], bool], timeout_s: float = 60) -> Run:
        settings, kafka = load_settings(env)
        registry = CollectorRegistry()
        deadline = time.monotonic() + timeout_s
        with running(settings, kafka, registry=registry) as parts:
            result = Run(parts.pipeline, registry=registry)
            result.exit_code = parts.pipeline.run(
                threading.Event(), until=lambda p: until(p) or time.monotonic() > deadline
            )
        assert time.monotonic() <= deadline, "the connector did not reach its goal in time"
        return result

    return run


def caught_up(topic: str, count: int) -> Callable[[Pipeline], bool]:
    """True once `count` records of the topic are committed."""
    return lambda p: sum(o for (t, _), o in p.committed().items() if t == topic) >= count


def sim_contacts(sim: SimulatorServer, settle_s: float = 0.3) -> dict[str, dict[str, Any]]:
    time.sleep(settle_s)  # queued tag operations apply after the simulator's delay
    state = httpx.get(f"{sim.url}/_sim/state").json()["brands"]["brand-1"]["contacts"]
    return {c["email"]: c for c in state}


def sim_stats(sim: SimulatorServer) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{sim.url}/_sim/stats").json()
    return stats


@pytest.fixture
def mock_bootstrap() -> Iterator[str]:
    """librdkafka's mock cluster, for what tansu answers wrongly (ListOffsets for lag)."""
    owner = Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "", "log_level": 0})
    broker = next(iter(owner.list_topics(timeout=10).brokers.values()))
    yield f"{broker.host}:{broker.port}"
    del owner


@pytest.fixture
def registry() -> Iterator[RegistryServer]:
    """A Confluent-compatible Schema Registry on a free port."""
    server = RegistryServer().start()
    yield server
    server.stop()


@contextmanager
def storm(sim: SimulatorServer, key: str) -> Iterator[None]:
    """Another integration of the brand spends the brand's budget with `key`: the connector
    meets 429s."""
    stop = threading.Event()
    headers = {"Authorization": f"Omnisend-API-Key {key}", "Omnisend-Version": API_VERSION}

    def hammer() -> None:
        with httpx.Client(headers=headers, timeout=5) as client:
            while not stop.is_set():
                # The simulator drops some; no answer may end the storm early.
                with contextlib.suppress(Exception):
                    client.get(f"{sim.api_url}/contacts", params={"limit": 1})

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
