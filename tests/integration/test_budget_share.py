"""Replicas of one consumer group share the brand's budget by the partitions each owns."""

from __future__ import annotations

import threading
import time

import httpx

from connector.app import running
from connector.broker import Broker
from connector.kafka import ensure_topic
from connector.settings import load_settings
from connector.simulator import SimulatorServer
from tests.events import event
from tests.integration.conftest import connector_env, produce_events


def test_two_replicas_together_stay_within_the_brand_budget(
    broker: Broker, sim: SimulatorServer
) -> None:
    topic = f"shared-{time.monotonic_ns()}"
    ensure_topic(broker.bootstrap, {}, topic, 4)
    env = connector_env(broker, topic, sim, TAG_LINGER_S="0.5")
    stop = threading.Event()
    pipelines = []
    threads = []
    for _ in range(2):
        settings, kafka = load_settings(env)
        ctx = running(settings, kafka)
        parts = ctx.__enter__()
        pipelines.append((ctx, parts.pipeline))
        threads.append(threading.Thread(target=parts.pipeline.run, args=(stop,)))
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(len(p.assigned) == 2 for _, p in pipelines):
            time.sleep(0.2)
        assert all(len(p.assigned) == 2 for _, p in pipelines), "the group did not split 2 + 2"
        count = (
            24_000  # 96 full tag calls: alone, either replica would send 54 of them in one window
        )
        produce_events(
            broker.bootstrap,
            topic,
            [
                event(f"s{i}@example.com", profile_id=f"p{i}", segment_name=f"S{i % 4}")
                for i in range(count)
            ],
        )
        while time.monotonic() < deadline + 60:
            tagged = sum(
                1
                for c in httpx.get(f"{sim.url}/_sim/state").json()["brands"]["brand-1"]["contacts"]
                if c["tags"]
            )
            if tagged == count:
                break
            time.sleep(0.5)
        assert tagged == count
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        for ctx, _ in pipelines:
            ctx.__exit__(None, None, None)
    log = httpx.get(f"{sim.url}/_sim/requests").json()["requests"]
    window = sim.simulator.config.window_s
    tag_times = [r["t"] for r in log if r["endpoint"].endswith("/contacts/tags")]
    busiest = max(sum(1 for u in tag_times if t - window < u <= t) for t in tag_times)
    assert busiest <= 54  # 90 % of 60, split 27 + 27; alone each would take 54
    assert httpx.get(f"{sim.url}/_sim/stats").json()["rateLimitedTotal"] == 0
