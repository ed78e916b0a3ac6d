"""`omnisend-connector demo`: the whole sync on this machine, with nothing to set up.

Starts the bundled broker and the Omnisend simulator on free local ports, generates events,
runs the connector until it has caught up, prints a summary and stops everything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from connector.app import running
from connector.broker import Broker, free_port
from connector.generate import GenerateOptions, produce
from connector.pipeline import Pipeline
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer

# The simulator runs Omnisend's real limits on a 6 s window (time scale 0.1) so the demo takes
# seconds; the connector is told the same window.
DEMO_TIME_SCALE = 0.1
API_KEY = "demo-key"


@dataclass
class DemoResult:
    events: int
    contacts: int
    tagged: int
    api_calls: dict[str, int]
    rate_limited: int
    dead_lettered: int
    duration_s: float
    metrics_url: str
    exit_code: int


def run_demo(
    count: int = 5000, segments: int = 3, seed: int = 0, timeout_s: float = 300
) -> DemoResult:
    with (
        Broker() as broker,
        SimulatorServer(
            SimulatorConfig(api_keys={API_KEY: "demo-brand"}, time_scale=DEMO_TIME_SCALE)
        ) as sim,
    ):
        topic = "segment-membership"
        options = GenerateOptions(
            count=count,
            segments=segments,
            seed=seed,
            exit_ratio=0.1,
            duplicate_ratio=0.01,
            invalid_ratio=0.005,
            contacts=max(1, count * 4 // 5),
        )
        ends = produce(broker.bootstrap, topic, options, partitions=6)
        port = free_port()
        settings, kafka = load_settings(
            {
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "KAFKA_TOPIC": topic,
                "VALUE_FORMAT": "avro",
                "OMNISEND_API_KEY": API_KEY,
                # Synthetic profiles to a local simulator: nothing leaves this machine.
                "OMNISEND_PRIVACY_ACKNOWLEDGED": "true",
                "OMNISEND_BASE_URL": sim.api_url,
                "RATE_LIMIT_WINDOW_S": str(sim.simulator.config.window_s),
                "METRICS_PORT": str(port),
                "METRICS_HOST": "127.0.0.1",
                "KAFKA_CFG_SESSION_TIMEOUT_MS": "6000",
                "KAFKA_CFG_HEARTBEAT_INTERVAL_MS": "1000",
            }
        )
        started = time.monotonic()
        deadline = started + timeout_s

        def caught_up(pipeline: Pipeline) -> bool:
            committed = pipeline.committed()
            done = all(committed.get((topic, p), 0) >= end for p, end in ends.items())
            return done or time.monotonic() > deadline

        with running(settings, kafka) as parts:
            code = parts.pipeline.run(threading.Event(), until=caught_up)
            stats = dict(parts.pipeline.stats)
        duration = time.monotonic() - started
        state = httpx.get(f"{sim.url}/_sim/state").json()["brands"]["demo-brand"]["contacts"]
        sim_stats = httpx.get(f"{sim.url}/_sim/stats").json()
    calls = {
        endpoint: sum(by_status.values()) for endpoint, by_status in sim_stats["requests"].items()
    }
    return DemoResult(
        events=sum(ends.values()),
        contacts=len(state),
        tagged=sum(1 for c in state if c["tags"]),
        api_calls=calls,
        rate_limited=sim_stats["rateLimitedTotal"],
        dead_lettered=stats["dead_lettered"],
        duration_s=duration,
        metrics_url=f"http://127.0.0.1:{port}/metrics",
        exit_code=code,
    )


def summary(result: DemoResult) -> str:
    lines = [
        "omnisend-connector demo: done"
        if result.exit_code == 0
        else f"demo stopped with exit code {result.exit_code}",
        f"  events consumed       {result.events}",
        f"  contacts in Omnisend  {result.contacts} ({result.tagged} with a segment tag)",
        f"  Omnisend API calls    {sum(result.api_calls.values())}",
    ]
    lines += [f"    {name:<22}{n}" for name, n in sorted(result.api_calls.items())]
    lines += [
        f"  429 answers           {result.rate_limited}",
        f"  dead-lettered         {result.dead_lettered}",
        f"  duration              {result.duration_s:.1f} s",
        f"  metrics were at       {result.metrics_url}",
    ]
    return "\n".join(lines)
