"""Shared pieces of the benchmarks: the bundled broker, the simulator in its own process (so it
has the second core), event production, and running the connector until it caught up."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from connector.app import running
from connector.dev.broker import Broker, free_port
from connector.dev.generate import GenerateOptions, produce
from connector.pipeline import Pipeline
from connector.runtime import tune_gc
from connector.settings import load_settings

# Omnisend's real limits with the window and every latency compressed tenfold (a 6 s window),
# and realistic batches: 2 s to start and 10 ms an item, 3 s for a full batch, 0.3 s compressed.
COMPRESSED_SIMULATOR = (
    "--time-scale",
    "0.1",
    "--batch-latency",
    "2.0",
    "--item-latency",
    "0.01",
    "--tag-delay",
    "0.5",
)


@contextmanager
def simulator(*args: str) -> Iterator[str]:
    """`omnisend-connector simulate ARGS` in a subprocess; yields its root URL."""
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "connector.cli", "simulate", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/_sim/health", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sim_get(url: str, name: str) -> Any:
    return httpx.get(f"{url}/_sim/{name}", timeout=60).json()


def new_topic(
    broker: Broker, options: GenerateOptions, partitions: int = 6
) -> tuple[str, dict[int, int]]:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ends = produce(broker.bootstrap, topic, options, partitions=partitions)
    return topic, ends


def connector_env(broker: Broker, topic: str, sim_url: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP_ID": f"bench-{topic}",
        "VALUE_FORMAT": "avro",
        "OMNISEND_API_KEY": "test-key",
        "OMNISEND_PRIVACY_ACKNOWLEDGED": "true",
        "OMNISEND_BASE_URL": f"{sim_url}/api",
        "METRICS_PORT": "0",
        "METRICS_HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "KAFKA_CFG_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_CFG_HEARTBEAT_INTERVAL_MS": "1000",
        **extra,
    }


def run_until_caught_up(
    env: dict[str, str],
    topic: str,
    ends: dict[int, int],
    timeout_s: float,
    setup: Callable[[Any], None] | None = None,
) -> tuple[Pipeline, float]:
    """Run the connector in this process until every produced record is committed."""
    tune_gc()  # as the command line does
    settings, kafka = load_settings(env)
    deadline = time.monotonic() + timeout_s

    def done(p: Pipeline) -> bool:
        committed = p.committed()
        caught = all(committed.get((topic, part), 0) >= end for part, end in ends.items())
        return caught or time.monotonic() > deadline

    with running(settings, kafka) as parts:
        if setup is not None:
            setup(parts)
        start = time.monotonic()
        parts.pipeline.run(threading.Event(), until=done)
        elapsed = time.monotonic() - start
    if time.monotonic() > deadline:
        raise RuntimeError(f"not caught up within {timeout_s} s")
    return parts.pipeline, elapsed


def quiet() -> None:
    from connector.logs import configure_logging  # noqa: PLC0415

    configure_logging("WARNING", "console")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
