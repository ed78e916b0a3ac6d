"""Replicas of one consumer group share the brand's budget by the partitions each owns; a member
that joins mid-burst does not spend its share while the old owner's calls are in the window."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx

from connector.app import running
from connector.dev.broker import Broker
from connector.kafka.clients import ensure_topic
from connector.pipeline import Pipeline
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import connector_env, produce_events
from tests.unit.test_budget import max_in_window


@contextmanager
def replica(env: dict[str, str], stop: threading.Event) -> Iterator[Pipeline]:
    """One member of the group, running on its own thread until `stop`."""
    settings, kafka = load_settings(env)
    with running(settings, kafka) as parts:
        thread = threading.Thread(target=parts.pipeline.run, args=(stop,))
        thread.start()
        try:
            yield parts.pipeline
        finally:
            stop.set()
            thread.join(timeout=60)


def tagged(sim: SimulatorServer) -> int:
    state = httpx.get(f"{sim.url}/_sim/state").json()["brands"]["brand-1"]["contacts"]
    return sum(1 for c in state if c["tags"])


def tag_calls(sim: SimulatorServer) -> list[float]:
    log = httpx.get(f"{sim.url}/_sim/requests").json()["requests"]
    return [r["t"] for r in log if r["endpoint"].endswith("/contacts/tags")]


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def produce_entries(broker: Broker, topic: str, count: int) -> None:
    produce_events(
        broker.bootstrap,
        topic,
        [
            event(f"s{i}@example.com", profile_id=f"p{i}", segment_name=f"S{i % 4}")
            for i in range(count)
        ],
    )


def assert_within_the_brand_window(sim: SimulatorServer) -> None:
    busiest = max_in_window(tag_calls(sim), sim.simulator.config.window_s)
    assert busiest <= 54  # 90 % of 60, whoever sent them
    assert httpx.get(f"{sim.url}/_sim/stats").json()["rateLimitedTotal"] == 0


def test_two_replicas_together_stay_within_the_brand_budget(
    broker: Broker, sim: SimulatorServer
) -> None:
    topic = f"shared-{time.monotonic_ns()}"
    ensure_topic(broker.bootstrap, {}, topic, 4)
    env = connector_env(broker, topic, sim, TAG_LINGER_S="0.5")
    stop = threading.Event()
    with ExitStack() as stack:
        pipelines = [stack.enter_context(replica(env, stop)) for _ in range(2)]
        wait_for(lambda: all(len(p.assigned) == 2 for p in pipelines), 60, "a 2 + 2 split")
        count = 24_000  # 96 full tag calls: alone, either replica would send 54 in one window
        produce_entries(broker, topic, count)
        wait_for(lambda: tagged(sim) == count, 120, "every contact tagged")
    assert_within_the_brand_window(sim)


def test_a_member_joining_mid_burst_does_not_spend_the_old_owners_window(
    broker: Broker,
) -> None:
    topic = f"joined-{time.monotonic_ns()}"
    ensure_topic(broker.bootstrap, {}, topic, 4)
    count = 24_000  # 96 full tag calls: the first replica alone sends 54 in its first window
    produce_entries(broker, topic, count)
    stop = threading.Event()
    with ExitStack() as stack:
        # An 18 s window, longer than a rebalance, and a short revoke: the first replica leaves
        # work unfinished, so the second has calls to make while the first one's are still in
        # the window.
        sim = stack.enter_context(SimulatorServer(SimulatorConfig(time_scale=0.3)))
        env = connector_env(broker, topic, sim, REVOKE_TIMEOUT_S="0.5")
        first = stack.enter_context(replica(env, stop))
        wait_for(lambda: len(tag_calls(sim)) >= 20, 120, "the first replica's burst")
        second = stack.enter_context(replica(env, stop))
        wait_for(lambda: len(second.assigned) == 2, 60, "the second replica's partitions")
        assert len(first.assigned) == 2
        wait_for(lambda: tagged(sim) == count, 180, "every contact tagged")
        assert_within_the_brand_window(sim)
