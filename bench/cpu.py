"""Benchmark 2, CPU per event: the connector's CPU time per event beside a bare consumer's that
only consumes and decodes the same topic, each in a process of its own, in one run.

    python -m bench.cpu [--count 100000] [--reconcile-count 1000000 | --no-reconcile] [--pin]

CPU time is user + system of the measured process (every thread), from its first consumed
record to its last commit (the bare consumer: to its last decoded record), divided by the
events. The simulator runs in a third process without limits or latency and is not counted;
lingers are at their defaults. Two streams, each the `generate` call that makes it:

- *duplicate-heavy*: `GenerateOptions(count=N, contacts=N // 5, segments=3, exit_ratio=0.2,
  attribute_change_ratio=0.3, duplicate_ratio=0.05)`, about five events per contact;
- *fresh*: `GenerateOptions(count=N, segments=1)`, one ENTERED per new contact.

The connector runs twice per stream: as installed for development (pure Python) and as the
image builds it (the per-event core compiled by mypyc, `OMNISEND_CONNECTOR_COMPILE=1`; built
into a temporary copy by `connector.dev.compiled`). Targets, for the image's build:
duplicate-heavy at most 3 x the bare consumer's CPU per event, fresh at most 6 x.
Then the jobs' read rate: `reconcile` without `--apply` over a topic of `--reconcile-count`
fresh events (events/s and CPU per event of its process).

`--pin` runs the broker and the simulator on the first CPU and each measured process on the
second, so that they do not take turns on the same core: identical runs then vary by about
±6 % instead of ±15 % on a 2-core machine, which makes a change of a few per cent visible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer

from bench.common import connector_env, new_topic, quiet, simulator
from connector.core.codec import PlainAvroDecoder
from connector.dev import compiled
from connector.dev.broker import Broker
from connector.dev.generate import GenerateOptions
from connector.runtime import tune_gc

TARGETS = {"duplicate-heavy": 3.0, "fresh": 6.0}


def streams(count: int) -> dict[str, GenerateOptions]:
    return {
        "duplicate-heavy": GenerateOptions(
            count=count,
            contacts=max(1, count // 5),
            segments=3,
            exit_ratio=0.2,
            attribute_change_ratio=0.3,
            duplicate_ratio=0.05,
            seed=3,
        ),
        "fresh": GenerateOptions(count=count, segments=1, seed=4),
    }


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the measured processes ----------------------------------------------------------------


def bare(bootstrap: str, topic: str, count: int) -> dict[str, float]:
    """Consume and decode every record; CPU from the first record to the last."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bare-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "queued.max.messages.kbytes": 8192,
            "log.connection.close": False,
        }
    )
    consumer.subscribe([topic])
    decoder = PlainAvroDecoder()
    seen, started, wall = 0, 0.0, 0.0
    while seen < count:
        messages = consumer.consume(500, 1.0)
        if messages and not seen:
            started, wall = cpu_s(), time.monotonic()
        for message in messages:
            decoder.decode(message.value() or b"")
            seen += 1
    result = {"cpu_s": cpu_s() - started, "wall_s": time.monotonic() - wall, "events": seen}
    consumer.close()
    return result


def connector(env: dict[str, str], topic: str, ends: dict[int, int]) -> dict[str, float]:
    """The whole connector in this process; CPU from its first consumed record to the commit
    that covers every record."""
    from connector.app import running  # noqa: PLC0415
    from connector.pipeline import Pipeline  # noqa: PLC0415
    from connector.settings import load_settings  # noqa: PLC0415

    tune_gc()  # as the command line does
    settings, kafka = load_settings(env)
    marks: dict[str, float] = {}

    def done(p: Pipeline) -> bool:
        if "cpu" not in marks and p.stats["consumed"]:
            marks["cpu"], marks["wall"] = cpu_s(), time.monotonic()
        committed = p.committed()
        if all(committed.get((topic, part), 0) >= end for part, end in ends.items()):
            marks["cpu_end"], marks["wall_end"] = cpu_s(), time.monotonic()
            return True
        return False

    with running(settings, kafka) as parts:
        parts.pipeline.run(threading.Event(), until=done)
    return {
        "cpu_s": marks["cpu_end"] - marks["cpu"],
        "wall_s": marks["wall_end"] - marks["wall"],
        "events": float(sum(ends.values())),
        "compiled": float(_loaded_compiled()),
    }


def _loaded_compiled() -> bool:
    from connector.core import coalesce  # noqa: PLC0415

    return not coalesce.__file__ or not coalesce.__file__.endswith(".py")


def worker(argv: list[str]) -> None:
    """`python -m bench.cpu --worker KIND JSON`: one measured process; prints its figures."""
    kind, spec = argv[0], json.loads(argv[1])
    quiet()
    if kind == "bare":
        result = bare(spec["bootstrap"], spec["topic"], spec["count"])
    else:
        ends = {int(p): e for p, e in spec["ends"].items()}
        result = connector(spec["env"], spec["topic"], ends)
    print(json.dumps(result))


def _pinned(cpus: Sequence[int]) -> list[str]:
    """The command prefix that runs a process on `cpus` only (none: anywhere)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def measure(
    kind: str, spec: dict[str, Any], build: Path | None = None, cpus: Sequence[int] = ()
) -> dict[str, float]:
    """In a process of its own (on `cpus`, if any); with `build`, run from there (a compiled
    copy of the package)."""
    done = subprocess.run(  # noqa: S603 - this module, in a process of its own
        [*_pinned(cpus), sys.executable, "-m", "bench.cpu", "--worker", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
        cwd=build,
        env=None if build is None else _env_with_bench(),
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


# ---- the run ---------------------------------------------------------------------------------


def _env_with_bench() -> dict[str, str]:
    """`bench` importable from the compiled copy's folder (which comes first on the path)."""
    root = str(Path(__file__).resolve().parents[1])
    return os.environ | {"PYTHONPATH": root}


@dataclass
class Row:
    stream: str
    events: int
    bare_us: float
    connector_us: float  # pure Python
    compiled_us: float  # the image's build
    compiled_rate: float

    @property
    def ratio(self) -> float:
        return self.connector_us / self.bare_us

    @property
    def compiled_ratio(self) -> float:
        return self.compiled_us / self.bare_us


def run_stream(
    broker: Broker, sim: str, name: str, options: GenerateOptions, build: Path, cpus: list[int]
) -> Row:
    topic, ends = new_topic(broker, options)
    count = sum(ends.values())
    bare_spec = {"bootstrap": broker.bootstrap, "topic": topic, "count": count}
    base = measure("bare", bare_spec, cpus=cpus)
    env = connector_env(
        broker,
        topic,
        sim,
        RATE_LIMIT_PER_MINUTE="100000000",
        TAG_RATE_LIMIT_PER_MINUTE="100000000",
    )
    httpx.post(f"{sim}/_sim/reset").raise_for_status()  # each run syncs into an empty brand
    pure = measure("connector", {"env": env, "topic": topic, "ends": ends}, cpus=cpus)
    assert not pure["compiled"], "the pure run loaded a compiled core"
    # The same topic again from the start, in a consumer group of its own.
    env = env | {"KAFKA_GROUP_ID": f"{env['KAFKA_GROUP_ID']}-compiled"}
    httpx.post(f"{sim}/_sim/reset").raise_for_status()
    fast = measure("connector", {"env": env, "topic": topic, "ends": ends}, build, cpus)
    assert fast["compiled"], "the compiled run loaded the pure core"
    return Row(
        stream=name,
        events=count,
        bare_us=base["cpu_s"] / count * 1e6,
        connector_us=pure["cpu_s"] / count * 1e6,
        compiled_us=fast["cpu_s"] / count * 1e6,
        compiled_rate=count / fast["wall_s"],
    )


def reconcile_rate(broker: Broker, sim: str, count: int, cpus: list[int]) -> tuple[float, float]:
    """(events/s, µs of CPU per event) of `reconcile` without --apply over `count` events."""
    topic, ends = new_topic(broker, GenerateOptions(count=count, segments=1, seed=5))
    env = connector_env(broker, topic, sim)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(  # noqa: S603 - this interpreter, the connector's own command
        [*_pinned(cpus), sys.executable, "-m", "connector.cli", "reconcile"],
        env=env | {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=3600,
        check=False,  # exit 1: drift found, as expected against an empty Omnisend
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    events = sum(ends.values())
    return events / wall, cpu / events * 1e6


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--reconcile-count", type=int, default=1_000_000)
    parser.add_argument("--no-reconcile", action="store_true")
    parser.add_argument(
        "--pin", action="store_true", help="broker and simulator on CPU 0, the measured on 1"
    )
    args = parser.parse_args()
    quiet()
    cpus: list[int] = []
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin needs two CPUs")
        first, second = sorted(os.sched_getaffinity(0))[:2]
        os.sched_setaffinity(0, {first})  # the broker and the simulator start from here
        cpus = [second]
    with (
        Broker() as broker,
        simulator(
            "--unlimited", "--batch-latency", "0", "--item-latency", "0", "--tag-delay", "0"
        ) as sim,
    ):
        build = compiled.build(Path(tempfile.mkdtemp(prefix="compiled-")))
        rows = [run_stream(broker, sim, n, o, build, cpus) for n, o in streams(args.count).items()]
        read = (
            None if args.no_reconcile else reconcile_rate(broker, sim, args.reconcile_count, cpus)
        )
    print(
        f"{'stream':<17}{'events':>9}{'bare µs/ev':>12}{'pure µs/ev':>12}{'ratio':>7}"
        f"{'compiled µs/ev':>16}{'ratio':>7}{'target':>8}{'ev/s':>9}"
    )
    for row in rows:
        print(
            f"{row.stream:<17}{row.events:>9}{row.bare_us:>12.1f}{row.connector_us:>12.1f}"
            f"{row.ratio:>7.2f}{row.compiled_us:>16.1f}{row.compiled_ratio:>7.2f}"
            f"{'<= ' + format(TARGETS[row.stream], 'g'):>8}{row.compiled_rate:>9,.0f}"
        )
    if read is not None:
        rate, us = read
        print(
            f"reconcile (read only) over {args.reconcile_count:,} events: "
            f"{rate:,.0f} events/s, {us:.1f} µs of CPU per event"
        )


if __name__ == "__main__":
    main()
