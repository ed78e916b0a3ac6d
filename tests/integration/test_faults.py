"""Omnisend misbehaving in every way at once: 10 % server errors, failing batch items (503, 429,
408), latency spikes, dropped connections, answers that are not what the contract says, answers
lost after the request was carried out, answers dripping past the connector's deadline, a 60 s
outage (time-compressed) and a 429 storm from another integration of the brand. The connector
neither crashes nor loses a change, and its own requests never exceed its budget."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from connector.app import running
from connector.core.codec import encode_plain
from connector.dev.broker import Broker
from connector.kafka.clients import ensure_topic
from connector.pipeline import Pipeline
from connector.settings import load_settings
from connector.simulator import Faults, SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import (
    connector_env,
    produce_events,
    read_all,
    sim_stats,
    storm,
)
from tests.workload import expected_state, wait_for_state, workload

pytestmark = pytest.mark.slow

EVENTS, CONTACTS = 6_000, 2_000
FAULTS = Faults(
    seed=5,
    error_rate=0.1,
    item_error_rate=0.05,
    spike_rate=0.05,
    spike_s=1.5,
    drop_rate=0.02,
    garbage_rate=0.03,
    lost_answer_rate=0.02,
    drip_rate=0.005,
    drip_s=12.0,  # past the connector's deadline for a whole answer (3 x REQUEST_TIMEOUT_S)
)


def busiest_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    start, busiest = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window_s:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


def test_everything_going_wrong_at_once_loses_nothing(broker: Broker) -> None:
    topic = f"faults-{time.monotonic_ns()}"
    ensure_topic(broker.bootstrap, {}, topic, 3)
    events = workload(EVENTS, CONTACTS, seed=23)
    config = SimulatorConfig(
        time_scale=0.1, api_keys={"test-key": "brand-1", "other-key": "brand-1"}, faults=FAULTS
    )
    with SimulatorServer(config) as sim:
        env = connector_env(broker, topic, sim, UPSERT_LINGER_S="0.3", TAG_LINGER_S="0.5")
        env |= {"REQUEST_TIMEOUT_S": "3"}
        settings, kafka = load_settings(env)
        stop = threading.Event()
        exit_code: list[int] = []
        with running(settings, kafka) as parts:
            runner = threading.Thread(target=lambda: exit_code.append(parts.pipeline.run(stop)))
            runner.start()
            try:
                produce_events(broker.bootstrap, topic, events[: EVENTS // 2])
                deadline = time.monotonic() + 60
                while parts.pipeline.stats["done"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                # A 60 s outage (6 s at this time scale), then a 429 storm, with more changes
                # arriving all along.
                sim.simulator.set_faults({"outage_start_s": 0.0, "outage_duration_s": 60.0})
                produce_events(broker.bootstrap, topic, events[EVENTS // 2 :])
                time.sleep(7)
                with storm(sim, "other-key"):
                    # Until the brand is rate limited (slow machines take longer to get there),
                    # then a little longer so the connector meets it too.
                    until = time.monotonic() + 60
                    while sim_stats(sim)["rateLimitedTotal"] == 0 and time.monotonic() < until:
                        time.sleep(0.2)
                    time.sleep(3)
                diff = wait_for_state(sim.url, expected_state(events), timeout_s=240)
                assert diff == [], "\n".join(diff)
                while sum(parts.pipeline.committed().values()) < EVENTS:
                    assert time.monotonic() < deadline + 300, "not everything was committed"
                    time.sleep(0.2)
            finally:
                stop.set()
                runner.join(timeout=90)
        assert exit_code == [0]
        stats = sim_stats(sim)
        log = httpx.get(f"{sim.url}/_sim/requests").json()["requests"]
    statuses = {r["status"] for r in log}
    assert {429, 503} <= statuses  # the storm and the outage happened
    assert statuses & {500, 502}
    assert stats["rateLimitedTotal"] > 0
    faults = stats["answerFaults"]
    assert faults["lost"] > 0
    assert faults["drip"] > 0
    assert sum(n for kind, n in faults.items() if kind not in ("lost", "drip")) > 0
    # The connector's own requests (the storm only lists contacts) within its 90 % budget.
    window = config.window_s
    ours = [r for r in log if r["endpoint"] != "GET /contacts"]
    assert busiest_window([r["t"] for r in ours], window) <= 360
    tags = [r["t"] for r in ours if r["endpoint"].endswith("/contacts/tags")]
    assert busiest_window(tags, window) <= 54


def _produce_to(
    bootstrap: str, topic: str, partition: int, events: list[dict[str, object]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "log.connection.close": False})
    for e in events:
        producer.produce(topic, encode_plain(e), str(e["profile_id"]).encode(), partition)
    assert producer.flush(30) == 0


def _fine(prefix: str, n: int) -> list[dict[str, object]]:
    return [
        event(f"{prefix}{i}@example.com", segment_name="Fine", profile_id=f"{prefix}{i}")
        for i in range(n)
    ]


def test_what_a_firewall_always_refuses_is_isolated_and_holds_back_its_partition_alone(
    broker: Broker, topic: str
) -> None:
    """A firewall in front of Omnisend answers 403 (its HTML page) to every call carrying the
    tag of segment "Quarantine", and to every batch carrying one contact's email. The connector
    does not stop (that 403 is not Omnisend's): the other contacts of those batches sync, the
    two records are isolated (retried alone, never dropped) and never finish, their partition
    shows how long, is paused alone once 100 records finished behind them, and reads nothing
    more; the other partitions commit to their ends."""
    poison = "poison@example.com"
    blocked = Faults(blocked_values=frozenset({"Quarantine", poison}))
    with SimulatorServer(SimulatorConfig(time_scale=0.1, faults=blocked)) as sim:
        stuck = event("stuck@example.com", segment_name="Quarantine", profile_id="p-stuck")
        produce_events(broker.bootstrap, topic, [stuck])
        (first,) = read_all(broker.bootstrap, topic, 1)
        held = first.partition()
        others = [p for p in range(3) if p != held]
        poisoned = [event(poison, segment_name="Fine", profile_id="p-poison")]
        _produce_to(broker.bootstrap, topic, held, poisoned + _fine(f"h{held}-", 150))
        for p in others:
            _produce_to(broker.bootstrap, topic, p, _fine(f"o{p}-", 50))
        env = connector_env(broker, topic, sim, MAX_IN_FLIGHT_RECORDS="100")
        env |= {"COMMIT_INTERVAL_S": "0.2", "SHUTDOWN_TIMEOUT_S": "1"}
        settings, kafka = load_settings(env)
        registry = CollectorRegistry()

        def gauge(name: str, **labels: str) -> float:
            return registry.get_sample_value(f"omnisend_connector_{name}", labels) or 0.0

        def blocked_s(partition: int) -> float:
            return gauge("partition_blocked_seconds", topic=topic, partition=str(partition))

        def isolated(request: str) -> float:
            return gauge("omnisend_isolated_contacts", connection="default", request=request)

        deadline = time.monotonic() + 90
        phase: list[float] = []  # when more records went to the held-back partition

        def watched(pipeline: Pipeline) -> bool:
            assert time.monotonic() < deadline, "the partition was not held back in time"
            committed = pipeline.committed()
            others_done = all(committed.get((topic, p), 0) == 50 for p in others)
            if not phase:
                if others_done and gauge("paused_partitions") == 1 and blocked_s(held) > 1:
                    _produce_to(broker.bootstrap, topic, held, _fine(f"late{held}-", 200))
                    phase.append(time.monotonic())
                return False
            if time.monotonic() - phase[0] < 3 or isolated("tag_call") + isolated("batch") < 2:
                return False
            seen.update({str(p): blocked_s(p) for p in range(3)})
            seen["consumed"] = pipeline.stats["consumed"]
            seen["dead_lettered"] = pipeline.stats["dead_lettered"]
            seen["committed"] = committed.get((topic, held), 0)
            seen["batch"], seen["tag_call"] = isolated("batch"), isolated("tag_call")
            return True

        seen: dict[str, float] = {}
        with running(settings, kafka, registry=registry) as parts:
            exit_code = parts.pipeline.run(threading.Event(), until=watched)
        contacts = httpx.get(f"{sim.url}/_sim/state").json()["brands"]["brand-1"]["contacts"]
    assert exit_code == 0, parts.pipeline.fatal
    assert seen["consumed"] == 2 + 150 + 2 * 50  # nothing of the late 200 was read
    assert seen["dead_lettered"] == 0
    assert seen["committed"] == 0
    assert (seen["batch"], seen["tag_call"]) == (1, 1)
    assert all(seen[str(p)] == 0 for p in others)
    assert seen[str(held)] > 3
    emails = {c["email"] for c in contacts}
    assert poison not in emails
    assert len(emails) == 1 + 150 + 2 * 50  # stuck@ is upserted; only its tag call is refused
