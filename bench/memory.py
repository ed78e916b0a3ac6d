"""Benchmark 3, memory under a stall: a backlog of events while Omnisend answers only 429s or
hangs. Memory must be bounded by the in-flight caps, not by consumer lag.

    python -m bench.memory [--counts 100000 1000000] [--seconds 40]

For each backlog size and each kind of stall, the connector runs as its own process for
`--seconds`; its peak resident memory (VmHWM) is read from /proc.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import connector_env, new_topic, quiet, simulator
from connector.broker import Broker
from connector.generate import GenerateOptions

STALLS = {
    # One request per minute: everything after the first is answered 429 with a retryAfter.
    "429": ["--rate-limit", "1", "--tag-rate-limit", "1"],
    # Every answer held for ten minutes: each request times out after REQUEST_TIMEOUT_S.
    "hang": ["--latency", "600"],
}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(broker: Broker, topic: str, stall: str, seconds: float) -> float:
    with simulator(*STALLS[stall]) as sim:
        env = {**os.environ, **connector_env(broker, topic, sim, REQUEST_TIMEOUT_S="10")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(seconds)
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    quiet()
    results: dict[tuple[str, int], float] = {}
    with Broker() as broker:
        for count in args.counts:
            topic, _ = new_topic(broker, GenerateOptions(count=count, segments=3, seed=3))
            for stall in STALLS:
                peak = measure(broker, topic, stall, args.seconds)
                results[(stall, count)] = peak
                print(f"backlog {count:>9,}  stall {stall:<5} peak RSS {peak:6.1f} MB", flush=True)
    for stall in STALLS:
        peaks = [results[(stall, c)] for c in args.counts]
        spread = max(peaks) / min(peaks) - 1
        print(
            f"{stall:<5} peak {max(peaks):.1f} MB (target <= 200); largest vs smallest backlog "
            f"+{spread:.1%} (target <= 15 %)"
        )


if __name__ == "__main__":
    main()
