"""Benchmark 4, many brands in one process: N connections (one Omnisend brand and key each) and N
exports (segment `seg-i` to connection i), one process, for N = 1, 50, 200.

    python -m bench.brands [--brands 1 50 200] [--count 100000] [--idle-s 10]

The stream is `GenerateOptions(count=COUNT, segments=N, seed=6)`: one ENTERED per new contact,
spread over the N segments. The simulator runs in its own process without limits or latency
(`--unlimited`, one key per brand). Each N runs the connector in a process of its own and reads:

- start: from entering the composition (clients built, every key checked) to consuming;
- events/s end to end and CPU per event (user + system of the whole process, first consumed
  record to the commit covering the last), as in `bench.cpu`;
- idle RSS: resident memory once started, every sink waiting, before the first record;
- then, caught up and idle for `--idle-s`: CPU as a share of one core, the process's threads
  (every OS thread, librdkafka's too, from /proc) and its resident memory after the sync (the
  high-water mark of up to MAX_IN_FLIGHT_RECORDS records in flight, which the allocator keeps).

Targets at N = 200: idle CPU <= 5 % of a core, threads <= 30, idle RSS <= 150 MB, start <= 3 s,
events/s >= 0.5 x N = 1's, CPU per event <= 2 x N = 1's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import new_topic, quiet, simulator
from bench.cpu import cpu_s
from connector.dev.broker import Broker
from connector.dev.generate import GenerateOptions
from connector.runtime import tune_gc

UNLIMITED = "100000000"


def config_text(brands: int, bootstrap: str, topic: str, sim_url: str) -> str:
    lines = [
        f'kafka_bootstrap_servers = "{bootstrap}"',
        f'kafka_topic = "{topic}"',
        f'kafka_group_id = "bench-{topic}"',
        'value_format = "avro"',
        f'omnisend_base_url = "{sim_url}/api"',
        "metrics_port = 0",
        'metrics_host = "127.0.0.1"',
        'log_level = "WARNING"',
        f"rate_limit_per_minute = {UNLIMITED}",
        f"tag_rate_limit_per_minute = {UNLIMITED}",
        "",
        "[kafka_properties]",
        '"session.timeout.ms" = "6000"',
        '"heartbeat.interval.ms" = "1000"',
    ]
    for i in range(brands):
        lines += [
            "",
            f"[connections.brand-{i}]",
            f'api_key_env = "BENCH_KEY_{i}"',
            "privacy_acknowledged = true",
            "",
            "[[exports]]",
            f'name = "export-{i}"',
            f'connection = "brand-{i}"',
            f'segments = ["seg-{i}"]',
        ]
    return "\n".join(lines) + "\n"


def keys(brands: int) -> dict[str, str]:
    return {f"BENCH_KEY_{i}": f"key-{i}" for i in range(brands)}


def proc_status() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Threads", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def connector(spec: dict[str, Any]) -> dict[str, float]:
    from connector.app import running  # noqa: PLC0415
    from connector.config import load_config  # noqa: PLC0415

    tune_gc()
    config = load_config(Path(spec["config"]), spec["env"])
    ends = {int(p): e for p, e in spec["ends"].items()}
    topic = spec["topic"]
    marks: dict[str, float] = {}
    started = time.monotonic()
    with running(config) as parts:
        marks["start_s"] = time.monotonic() - started
        time.sleep(1.0)  # every sink on its loop, waiting
        at_start = proc_status()
        stop = threading.Event()
        pipeline = parts.pipeline

        def done(p: Any) -> bool:
            if "cpu" not in marks and p.stats["consumed"]:
                marks["cpu"], marks["wall"] = cpu_s(), time.monotonic()
            committed = p.committed()
            if "cpu_end" not in marks and all(
                committed.get((topic, part), 0) >= end for part, end in ends.items()
            ):
                marks["cpu_end"], marks["wall_end"] = cpu_s(), time.monotonic()
            return False

        runner = threading.Thread(target=lambda: pipeline.run(stop, until=done))
        runner.start()
        deadline = time.monotonic() + 1800
        while "cpu_end" not in marks:
            if time.monotonic() > deadline or not runner.is_alive():
                raise RuntimeError("not caught up")
            time.sleep(0.1)
        idle_from = cpu_s()
        time.sleep(spec["idle_s"])
        idle = (cpu_s() - idle_from) / spec["idle_s"]
        status = proc_status()
        stop.set()
        runner.join(60)
    events = float(sum(ends.values()))
    return {
        "start_s": marks["start_s"],
        "events_per_s": events / (marks["wall_end"] - marks["wall"]),
        "cpu_us": (marks["cpu_end"] - marks["cpu"]) / events * 1e6,
        "idle_core": idle,
        "threads": status["Threads"],
        "rss_start_mb": at_start["VmRSS"] / 1024,
        "rss_mb": status["VmRSS"] / 1024,
    }


def measure(brands: int, broker: Broker, sim: str, count: int, idle_s: float) -> dict[str, float]:
    topic, ends = new_topic(broker, GenerateOptions(count=count, segments=brands, seed=6))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "brands.toml"
        path.write_text(config_text(brands, broker.bootstrap, topic, sim))
        spec = {
            "config": str(path),
            "env": keys(brands) | {"PATH": "/usr/bin:/bin"},
            "topic": topic,
            "ends": ends,
            "idle_s": idle_s,
        }
        done = subprocess.run(  # noqa: S603 - this module, in a process of its own
            [sys.executable, "-m", "bench.brands", "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        quiet()
        print(json.dumps(connector(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--brands", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    quiet()
    most = max(args.brands)
    key_args = [a for i in range(most) for a in ("--api-key", f"key-{i}=brand-{i}")]
    fast = ("--unlimited", "--batch-latency", "0", "--item-latency", "0", "--tag-delay", "0")
    rows: dict[int, dict[str, float]] = {}
    with Broker() as broker, simulator(*fast, *key_args) as sim:
        for brands in args.brands:
            rows[brands] = measure(brands, broker, sim, args.count, args.idle_s)
    first = rows[min(rows)]
    print(
        f"{'brands':>6}{'start s':>9}{'events/s':>10}{'x N=1':>7}{'CPU µs/ev':>11}{'x N=1':>7}"
        f"{'idle core':>11}{'threads':>9}{'RSS MB: idle':>14}{'after sync':>12}"
    )
    for brands, row in rows.items():
        print(
            f"{brands:>6}{row['start_s']:>9.2f}{row['events_per_s']:>10,.0f}"
            f"{row['events_per_s'] / first['events_per_s']:>7.2f}{row['cpu_us']:>11.1f}"
            f"{row['cpu_us'] / first['cpu_us']:>7.2f}{row['idle_core']:>10.1%}"
            f"{row['threads']:>9.0f}{row['rss_start_mb']:>14.1f}{row['rss_mb']:>12.1f}"
        )
    print(
        "targets at N = 200: start <= 3 s, events/s >= 0.5 x N = 1, CPU per event <= 2 x N = 1, "
        "idle <= 5 % of a core, threads <= 30, idle RSS <= 150 MB"
    )


if __name__ == "__main__":
    main()
