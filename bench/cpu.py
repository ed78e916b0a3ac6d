"""Benchmark 2, the CPU path: end-to-end events per second against an Omnisend simulator with no
limits and no latency, next to the raw rate of consuming and decoding the same topic alone.

    python -m bench.cpu [--count 200000]

Both rates exclude the consumer group join. The ratio says how much of the machine the sync
path costs beyond reading and decoding; the simulator shares the machine's two cores.
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Consumer

from bench.common import connector_env, new_topic, quiet, run_until_caught_up, sim_get, simulator
from connector.broker import Broker
from connector.codec import PlainAvroDecoder
from connector.generate import GenerateOptions


def consume_and_decode(bootstrap: str, topic: str, count: int) -> float:
    """Events per second of a bare consumer that decodes every value."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4()}",
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
    seen, start = 0, None
    while seen < count:
        messages = consumer.consume(500, 1.0)
        if messages and start is None:
            start = time.monotonic()
        for message in messages:
            decoder.decode(message.value())
            seen += 1
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    args = parser.parse_args()
    quiet()
    with (
        Broker() as broker,
        simulator(
            "--unlimited", "--batch-latency", "0", "--item-latency", "0", "--tag-delay", "0"
        ) as sim,
    ):
        topic, ends = new_topic(broker, GenerateOptions(count=args.count, segments=3, seed=2))
        raw = consume_and_decode(broker.bootstrap, topic, args.count)
        env = connector_env(
            broker,
            topic,
            sim,
            RATE_LIMIT_PER_MINUTE="100000000",
            TAG_RATE_LIMIT_PER_MINUTE="100000000",
            UPSERT_LINGER_S="0.05",
            TAG_LINGER_S="0.05",
        )
        pipeline, _ = run_until_caught_up(env, topic, ends, timeout_s=1800)
        assert pipeline.assigned_at is not None
        end_to_end = args.count / (time.monotonic() - pipeline.assigned_at)
        calls = sum(sum(s.values()) for s in sim_get(sim, "stats")["requests"].values())
    print(f"events                      {args.count}")
    print(f"consume + decode only       {raw:,.0f} events/s")
    print(f"end to end (to Omnisend)    {end_to_end:,.0f} events/s  ({calls} API calls)")
    print(f"ratio                       {end_to_end / raw:.2f}   (target >= 0.5)")


if __name__ == "__main__":
    main()
