"""Benchmark 1, rate-limit efficiency: how close a sync of N fresh segment entries comes to the
floor that Omnisend's limits set, for the budget the connector was configured with.

    python -m bench.rate_limit [--count 200000]

The simulator runs the real limits (400 requests and 60 tag calls per window) with the window
and every latency compressed tenfold (a 6 s window) and realistic batches (2 s to start, 10 ms
per item, so 3 s for a full batch, compressed to 0.3 s). The floor for N entries into one segment
is the larger of ceil(N/250) tag calls at the tag budget and ceil(N/100) batch requests at the
rest of the budget; achieved time is from the connector's first sync request (not its credential
check, which precedes the group join) to Omnisend's acceptance
of its last tag call, measured by the simulator.
"""

from __future__ import annotations

import argparse
import math

from bench.common import (
    COMPRESSED_SIMULATOR,
    connector_env,
    new_topic,
    quiet,
    run_until_caught_up,
    sim_get,
    simulator,
)
from connector.broker import Broker
from connector.generate import GenerateOptions
from connector.omnisend.budget import Budget, BudgetConfig

TIME_SCALE = 0.1
WINDOW_S = 60 * TIME_SCALE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--headroom", type=float, default=0.9)
    parser.add_argument("--dump", help="write the simulator's request log to this JSON file")
    args = parser.parse_args()
    quiet()
    with (
        Broker() as broker,
        simulator(*COMPRESSED_SIMULATOR) as sim,
    ):
        topic, ends = new_topic(broker, GenerateOptions(count=args.count, segments=1, seed=1))
        env = connector_env(
            broker,
            topic,
            sim,
            RATE_LIMIT_WINDOW_S=str(WINDOW_S),
            RATE_LIMIT_HEADROOM=str(args.headroom),
        )
        _, wall = run_until_caught_up(env, topic, ends, timeout_s=3600)
        log = sim_get(sim, "requests")["requests"]
        if args.dump:
            import json  # noqa: PLC0415

            with open(args.dump, "w") as f:
                json.dump(log, f)
        stats = sim_get(sim, "stats")
    all_limit, tag_limit = Budget(BudgetConfig(window_s=WINDOW_S, headroom=args.headroom)).limits()
    tag_calls, batches = math.ceil(args.count / 250), math.ceil(args.count / 100)
    floor = max(tag_calls / tag_limit, batches / (all_limit - tag_limit)) * WINDOW_S
    # From the first request of the sync: the credential check (`GET /contacts`) goes out at
    # start, before the consumer group is joined, and would count the join as sync time.
    first = min(r["t"] for r in log if r["endpoint"] != "GET /contacts")
    last = max(r["t"] for r in log if r["endpoint"].endswith("/contacts/tags"))
    achieved = last - first
    calls = {e: sum(s.values()) for e, s in stats["requests"].items()}
    print(f"events                 {args.count}")
    print(
        f"budget per window      {all_limit} requests, {tag_limit} tag calls "
        f"(headroom {args.headroom:.0%} of 400/60, window {WINDOW_S:.0f} s)"
    )
    print(f"API calls              {calls}")
    print(f"429 answers            {stats['rateLimitedTotal']}")
    print(
        f"floor                  {floor:.1f} s (= {floor / TIME_SCALE / 60:.1f} min at real time)"
    )
    print(f"achieved               {achieved:.1f} s (wall time with group join {wall:.1f} s)")
    print(f"achieved / floor       {achieved / floor:.3f}   (target <= 1.05)")


if __name__ == "__main__":
    main()
