"""Benchmark 3, memory.

Stall: a backlog of events while Omnisend answers only 429s or hangs. Memory must be bounded by
the in-flight caps, not by consumer lag.

Sync: a topic of 1,000,000 fresh contacts (`generate --count 1000000 --segments 1`, one ENTERED
per new contact), all accepted by an Omnisend without limits or latency, synced to the end with
the caches at 1,000,000 entries each (the defaults): what the connector remembers must not grow
past the pod's limit. Then the jobs over the same topic: `reconcile` (reading it, against an
Omnisend that holds nothing, so every member is missing) and `backfill --since 30d`.

    python -m bench.memory [--only stall|sync] [--counts 100000 1000000] [--seconds 40]
                           [--sync-count 1000000]

Each connector runs as its own process; its peak resident memory is read from /proc (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from bench.common import connector_env, new_topic, quiet, simulator
from connector.dev.broker import Broker
from connector.dev.generate import GenerateOptions

STALLS = {
    # One request per minute: everything after the first is answered 429 with a retryAfter.
    "429": ["--rate-limit", "1", "--tag-rate-limit", "1"],
    # Every answer held for ten minutes: each request times out after REQUEST_TIMEOUT_S.
    "hang": ["--latency", "600"],
}
FAST_OMNISEND = ("--unlimited", "--batch-latency", "0", "--item-latency", "0", "--tag-delay", "0")
# ... and a connector that knows it has no limits to keep to.
UNLIMITED = {"RATE_LIMIT_PER_MINUTE": "100000000", "TAG_RATE_LIMIT_PER_MINUTE": "100000000"}
CONNECTOR = [sys.executable, "-m", "connector.cli"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(broker: Broker, topic: str, stall: str, seconds: float) -> float:
    with simulator(*STALLS[stall]) as sim:
        env = {**os.environ, **connector_env(broker, topic, sim, REQUEST_TIMEOUT_S="10")}
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [*CONNECTOR, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(seconds)
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return peak


def committed(bootstrap: str, group: str, topic: str, partitions: list[int]) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in found)


def measure_sync(broker: Broker, topic: str, ends: dict[int, int]) -> tuple[float, float]:
    """(peak MB, seconds) of `run` syncing the whole topic."""
    total = sum(ends.values())
    with simulator(*FAST_OMNISEND) as sim:
        env = {**os.environ, **connector_env(broker, topic, sim, **UNLIMITED)}
        started = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [*CONNECTOR, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while committed(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, list(ends)) < total:
                if proc.poll() is not None:
                    raise RuntimeError(f"the connector exited with {proc.returncode}")
                time.sleep(2)
            elapsed = time.monotonic() - started
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return peak, elapsed


def measure_job(broker: Broker, topic: str, *args: str) -> tuple[float, float, int]:
    """(peak MB, seconds, exit code) of a job run to its end. The peak is VmHWM, read until the
    process exits: the kernel's ru_maxrss would include the memory of this process, which the
    child had before it exec'd the job."""
    with simulator(*FAST_OMNISEND) as sim:
        env = {**os.environ, **connector_env(broker, topic, sim, **UNLIMITED)}
        started = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [*CONNECTOR, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        peak = 0.0
        while proc.poll() is None:
            try:
                peak = max(peak, peak_rss_mb(proc.pid))
            except OSError:  # it exited between the two calls
                break
            time.sleep(0.2)
    return peak, time.monotonic() - started, proc.wait()


def stalls(broker: Broker, counts: list[int], seconds: float) -> None:
    results: dict[tuple[str, int], float] = {}
    for count in counts:
        topic, _ = new_topic(broker, GenerateOptions(count=count, segments=3, seed=3))
        for stall in STALLS:
            peak = measure(broker, topic, stall, seconds)
            results[(stall, count)] = peak
            print(f"backlog {count:>9,}  stall {stall:<5} peak RSS {peak:6.1f} MB", flush=True)
    for stall in STALLS:
        peaks = [results[(stall, c)] for c in counts]
        spread = max(peaks) / min(peaks) - 1
        print(
            f"{stall:<5} peak {max(peaks):.1f} MB (target <= 200); largest vs smallest backlog "
            f"+{spread:.1%} (target <= 15 %)"
        )


def sync(broker: Broker, count: int) -> None:
    topic, ends = new_topic(broker, GenerateOptions(count=count, segments=1, seed=5))
    peak, seconds = measure_sync(broker, topic, ends)
    print(
        f"sync of {count:,} fresh contacts: peak RSS {peak:.1f} MB in {seconds:.0f} s", flush=True
    )
    peak, seconds, code = measure_job(broker, topic, "reconcile")
    print(
        f"reconcile over them: peak RSS {peak:.1f} MB in {seconds:.0f} s (exit {code})", flush=True
    )
    peak, seconds, code = measure_job(broker, topic, "backfill", "--since", "30d")
    print(f"backfill of them: peak RSS {peak:.1f} MB in {seconds:.0f} s (exit {code})", flush=True)
    print("target: each <= 300 MB (the Deployment's limit is 512 Mi)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["stall", "sync"], default=None)
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--sync-count", type=int, default=1_000_000)
    args = parser.parse_args()
    quiet()
    with Broker() as broker:
        if args.only in (None, "stall"):
            stalls(broker, args.counts, args.seconds)
        if args.only in (None, "sync"):
            sync(broker, args.sync_count)


if __name__ == "__main__":
    main()
