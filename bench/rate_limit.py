"""Benchmark 1, rate-limit efficiency: how close a sync of N fresh segment entries comes to the
floor that Omnisend's limits set, for the budget the connector was configured with.

    python -m bench.rate_limit [--only real|compressed] [--count N]

Two runs, each against the simulator with Omnisend's real limits (400 requests and 60 tag calls
per window) and a 0.5 s tag delay:

- *real*: the real 60 s window, 2 s batch processing (`--batch-latency 2 --item-latency 0`),
  45,000 fresh entries in one segment (180 tag calls): about four minutes.
- *compressed*: window and latencies compressed tenfold (a 6 s window; batches 2 s to start and
  10 ms an item, 0.3 s for a full one compressed), 200,000 entries.

Achieved time is from the connector's first batch request to Omnisend's acceptance of its last
tag call, plus the tag delay, as the simulator saw them. Two floors:

- *sliding window*: the first window's calls at once, then one window per window's worth:
  `(ceil(calls / per_window) - 1) * window + batch latency + tag delay` (the larger of the tag
  calls' and the batches' figure);
- *paced*: every request spread evenly over the windows, `calls / per_window * window`: what a
  sender that never bursts can reach.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

from bench.common import connector_env, new_topic, quiet, run_until_caught_up, sim_get, simulator
from connector.dev.broker import Broker
from connector.dev.generate import GenerateOptions
from connector.omnisend.budget import READ_RESERVE, Budget, BudgetConfig


@dataclass(frozen=True)
class Mode:
    name: str
    count: int
    time_scale: float
    batch_latency_s: float  # unscaled, as the simulator's options take them
    item_latency_s: float
    tag_delay_s: float = 0.5

    @property
    def window_s(self) -> float:
        return 60 * self.time_scale

    def simulator_args(self) -> list[str]:
        return [
            "--time-scale",
            str(self.time_scale),
            "--batch-latency",
            str(self.batch_latency_s),
            "--item-latency",
            str(self.item_latency_s),
            "--tag-delay",
            str(self.tag_delay_s),
        ]


MODES = {
    "real": Mode("real", 45_000, 1.0, 2.0, 0.0),
    "compressed": Mode("compressed", 200_000, 0.1, 2.0, 0.01),
}


def floors(mode: Mode, count: int, headroom: float) -> tuple[float, float, int, int]:
    """(sliding-window floor, paced floor, tag calls, batches) for `count` fresh entries."""
    all_limit, tag_limit = Budget(BudgetConfig(window_s=mode.window_s, headroom=headroom)).limits()
    others = all_limit - tag_limit
    batch_limit = others - math.ceil(others * READ_RESERVE)
    tag_calls, batches = math.ceil(count / 250), math.ceil(count / 100)
    latency = (
        mode.batch_latency_s + 100 * mode.item_latency_s + mode.tag_delay_s
    ) * mode.time_scale
    windows = max(math.ceil(tag_calls / tag_limit), math.ceil(batches / batch_limit))
    sliding = (windows - 1) * mode.window_s + latency
    paced = max(tag_calls / tag_limit, batches / others) * mode.window_s
    return sliding, paced, tag_calls, batches


def run(mode: Mode, count: int, headroom: float) -> None:
    with Broker() as broker, simulator(*mode.simulator_args()) as sim:
        topic, ends = new_topic(broker, GenerateOptions(count=count, segments=1, seed=1))
        env = connector_env(
            broker,
            topic,
            sim,
            RATE_LIMIT_WINDOW_S=str(mode.window_s),
            RATE_LIMIT_HEADROOM=str(headroom),
        )
        started = time.time()  # the simulator logs wall-clock times
        _, wall = run_until_caught_up(env, topic, ends, timeout_s=3600)
        log = sim_get(sim, "requests")["requests"]
        stats = sim_get(sim, "stats")
    all_limit, tag_limit = Budget(BudgetConfig(window_s=mode.window_s, headroom=headroom)).limits()
    sliding, paced, tag_calls, batches = floors(mode, count, headroom)
    first = min(r["t"] for r in log if r["endpoint"] == "POST /batches")
    last = max(r["t"] for r in log if r["endpoint"].endswith("/contacts/tags"))
    achieved = last - first + mode.tag_delay_s * mode.time_scale
    check = min(r["t"] for r in log if r["endpoint"] == "GET /contacts")
    calls = {e: sum(s.values()) for e, s in stats["requests"].items()}
    print(f"== {mode.name}: {count} fresh entries, window {mode.window_s:g} s")
    print(
        f"budget per window      {all_limit} requests, {tag_limit} tag calls "
        f"(headroom {headroom:.0%} of 400/60)"
    )
    print(f"needed                 {tag_calls} tag calls, {batches} batches")
    print(f"API calls              {calls}")
    print(f"429 answers            {stats['rateLimitedTotal']}")
    print(
        f"startup                {first - started:.2f} s from start to the first batch "
        f"(credential check answered at {check - started:.2f} s, then the group join)"
    )
    print(f"achieved               {achieved:.1f} s (wall time with group join {wall:.1f} s)")
    print(f"sliding-window floor   {sliding:.1f} s   achieved / floor {achieved / sliding:.3f}")
    print(f"paced floor            {paced:.1f} s   achieved / floor {achieved / paced:.3f}")
    print("target                 <= 1.05 x the sliding-window floor, no 429")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(MODES))
    parser.add_argument("--count", type=int, help="entries (default: the mode's own)")
    parser.add_argument("--headroom", type=float, default=0.9)
    args = parser.parse_args()
    quiet()
    for name, mode in MODES.items():
        if args.only in (None, name):
            run(mode, args.count or mode.count, args.headroom)


if __name__ == "__main__":
    main()
