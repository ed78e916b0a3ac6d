"""`omnisend-connector demo`: the whole sync on this machine, with nothing to set up.

Starts the bundled broker and the Omnisend simulator on free local ports, generates events,
runs the connector until it has caught up, prints a summary and stops everything (or, with
`--keep-running`, leaves it all running and prints where).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from connector.app import install_signal_handlers, running
from connector.dev.broker import Broker, free_port
from connector.dev.generate import GenerateOptions, produce
from connector.metrics import Metrics, totals
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
    dead_lettered: dict[str, int]  # by reason
    duration_s: float
    exit_code: int
    # Where things run; only printed while they still do (`--keep-running`).
    urls: dict[str, str] = field(default_factory=dict)


def run_demo(
    count: int = 5000,
    segments: int = 3,
    seed: int = 0,
    timeout_s: float = 300,
    keep_running: bool = False,
    on_done: Callable[[DemoResult], None] | None = None,
) -> DemoResult:
    """Generate, sync until caught up, and return what happened. With `keep_running`, hand the
    result (with the addresses) to `on_done` once caught up and go on syncing until SIGINT or
    SIGTERM."""
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
        env = {
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
        settings, kafka = load_settings(env)
        started = time.monotonic()
        deadline = started + timeout_s
        results: list[DemoResult] = []
        stop = threading.Event()
        if keep_running:
            install_signal_handlers(stop)

        with running(settings, kafka) as parts:

            def caught_up(pipeline: Pipeline) -> bool:
                if results:
                    return False  # keeping on until stopped
                committed = pipeline.committed()
                done = all(committed.get((topic, p), 0) >= end for p, end in ends.items())
                if not done and time.monotonic() <= deadline:
                    return False
                urls = {
                    "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                    "KAFKA_TOPIC": topic,
                    "OMNISEND_BASE_URL": sim.api_url,
                    "OMNISEND_API_KEY": API_KEY,
                    "simulator-state": f"{sim.url}/_sim/state",
                    "metrics": f"http://127.0.0.1:{port}/metrics",
                }
                results.append(_result(sim.url, ends, parts.metrics, started, 0, urls))
                if keep_running and on_done is not None:
                    on_done(results[0])
                return not keep_running

            code = parts.pipeline.run(stop, until=caught_up)
        final = _result(sim.url, ends, parts.metrics, started, code, {})
        # The time it took to catch up, not the time it was kept running after.
        return dataclasses.replace(final, duration_s=results[0].duration_s) if results else final


def _result(
    sim_url: str,
    ends: dict[int, int],
    metrics: Metrics,
    started: float,
    code: int,
    urls: dict[str, str],
) -> DemoResult:
    state = httpx.get(f"{sim_url}/_sim/state").json()["brands"]["demo-brand"]["contacts"]
    sim_stats = httpx.get(f"{sim_url}/_sim/stats").json()
    calls = {
        endpoint: sum(by_status.values()) for endpoint, by_status in sim_stats["requests"].items()
    }
    dead = {r: int(n) for r, n in totals(metrics.dlq_records, "reason", "_total").items() if n}
    return DemoResult(
        events=sum(ends.values()),
        contacts=len(state),
        tagged=sum(1 for c in state if c["tags"]),
        api_calls=calls,
        rate_limited=sim_stats["rateLimitedTotal"],
        dead_lettered=dead,
        duration_s=time.monotonic() - started,
        exit_code=code,
        urls=urls,
    )


# What each reason means in a demo: its generator writes a few invalid records on purpose.
DEMO_REASONS = {
    "invalid_email": "generated on purpose with an invalid email",
    "missing_email": "generated on purpose without an email",
}


def summary(result: DemoResult) -> str:
    untagged = result.contacts - result.tagged
    lines = [
        "omnisend-connector demo: done"
        if result.exit_code == 0
        else f"demo stopped with exit code {result.exit_code}",
        f"  events consumed       {result.events}",
        f"  contacts in Omnisend  {result.contacts} ({result.tagged} with a segment tag)",
    ]
    if untagged:
        lines.append(
            f"    {untagged} without a tag: their last change was an exit from every segment "
            "they were in (the generator makes 10 % exits); Omnisend keeps the contact"
        )
    lines.append(f"  Omnisend API calls    {sum(result.api_calls.values())}")
    lines += [f"    {name:<22}{n}" for name, n in sorted(result.api_calls.items())]
    lines += [
        f"  429 answers           {result.rate_limited}",
        f"  dead-lettered         {sum(result.dead_lettered.values())}",
    ]
    lines += [
        f"    {reason:<22}{n}" + (f"  ({DEMO_REASONS[reason]})" if reason in DEMO_REASONS else "")
        for reason, n in sorted(result.dead_lettered.items())
    ]
    lines.append(f"  duration              {result.duration_s:.1f} s")
    if result.urls:
        lines.append("  still running (Ctrl-C stops everything):")
        lines += [f"    {name:<24} {url}" for name, url in result.urls.items()]
    return "\n".join(lines)
