"""Benchmark 5, coalescing: a backlog in which each contact changes about ten times (entries,
exits and attribute changes across segments). How many API calls does it cost per 1,000 events,
against the number of distinct contacts?

    python -m bench.coalescing [--count 100000] [--contacts 10000]

Without coalescing every event would cost its own share of a batch and a tag call; with it, a
contact's changes collapse into its latest attributes and its net membership per segment.
"""

from __future__ import annotations

import argparse

from bench.common import (
    COMPRESSED_SIMULATOR,
    connector_env,
    new_topic,
    quiet,
    run_until_caught_up,
    sim_get,
    simulator,
)
from connector.dev.broker import Broker
from connector.dev.generate import GenerateOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--contacts", type=int, default=10_000)
    args = parser.parse_args()
    quiet()
    options = GenerateOptions(
        count=args.count,
        contacts=args.contacts,
        segments=5,
        exit_ratio=0.4,
        attribute_change_ratio=0.3,
        duplicate_ratio=0.02,
        seed=5,
    )
    with (
        Broker() as broker,
        simulator(*COMPRESSED_SIMULATOR) as sim,
    ):
        topic, ends = new_topic(broker, options)
        env = connector_env(broker, topic, sim, RATE_LIMIT_WINDOW_S="6")
        pipeline, _elapsed = run_until_caught_up(env, topic, ends, timeout_s=3600)
        stats = sim_get(sim, "stats")
        state = sim_get(sim, "state")["brands"]["brand-1"]["contacts"]
    calls = {e: sum(s.values()) for e, s in stats["requests"].items()}
    total = sum(calls.values())
    upserted = sum(1 for _ in state)
    print(f"events                   {args.count} over {args.contacts} contacts, 5 segments")
    print(f"contacts in Omnisend     {upserted}")
    print(f"API calls                {total}: {calls}")
    print(f"API calls per 1000 events  {1000 * total / args.count:.1f}")
    print(f"API calls per contact      {total / args.contacts:.3f}")
    print(f"events skipped (duplicate or stale)  {pipeline.stats['skipped']}")
    print(
        f"without coalescing: at least {args.count / 250 + args.count / 100:.0f} calls "
        f"({1000 / 250 + 1000 / 100:.0f} per 1000 events: a 100-contact batch and a 250-email "
        "tag call per event share)"
    )


if __name__ == "__main__":
    main()
