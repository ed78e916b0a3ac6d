"""Benchmark 4, latency: a steady 100 events/s of fresh contacts entering one segment, against
Omnisend's real limits (not time-compressed) and a 0.5 s batch latency. Latency is measured per
event from `occurred_at` to Omnisend accepting its tag call (the 202).

    python -m bench.latency [--rate 100] [--seconds 90]

With 54 tag calls a minute (90 % of 60), a call leaves about every 1.1 s, so a change waits
0.55 s on average for its call after its contact exists: the floor is close to 1.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from confluent_kafka import Producer

from bench.common import connector_env, quiet, sim_get, simulator
from connector.app import running
from connector.core.codec import encode_plain
from connector.dev.broker import Broker
from connector.dev.generate import GenerateOptions, events
from connector.kafka.clients import ensure_topic
from connector.settings import load_settings


def produce_steadily(bootstrap: str, topic: str, rate: float, seconds: float) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "log.connection.close": False}
    )
    source = events(GenerateOptions(count=int(rate * seconds), segments=1, seed=4))
    start, sent = time.monotonic(), 0
    for key, event in source:
        due = start + sent / rate
        time.sleep(max(0.0, due - time.monotonic()))
        event["occurred_at"] = int(time.time() * 1000)
        producer.produce(topic, value=encode_plain(event), key=key)
        producer.poll(0)
        sent += 1
    producer.flush(30)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args()
    quiet()
    latencies: list[float] = []
    with (
        Broker() as broker,
        simulator("--batch-latency", "0.5", "--item-latency", "0", "--tag-delay", "0.5") as sim,
    ):
        topic = "latency"
        ensure_topic(broker.bootstrap, {}, topic, 6)
        settings, kafka = load_settings(connector_env(broker, topic, sim))
        stop = threading.Event()
        with running(settings, kafka) as parts:
            parts.sink.on_accepted = latencies.extend
            runner = threading.Thread(target=parts.pipeline.run, args=(stop,))
            runner.start()
            while parts.pipeline.assigned_at is None:
                time.sleep(0.1)
            sent = produce_steadily(broker.bootstrap, topic, args.rate, args.seconds)
            deadline = time.monotonic() + 60
            while len(latencies) < sent and time.monotonic() < deadline:
                time.sleep(0.2)
            stop.set()
            runner.join()
        calls = {e: sum(s.values()) for e, s in sim_get(sim, "stats")["requests"].items()}
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(f"events                 {sent} at {args.rate:.0f}/s, accepted {len(latencies)}")
    print(f"latency p50            {p50:.2f} s")
    print(f"latency p99            {p99:.2f} s   (target <= 2.5 s)")
    print(f"latency max            {ordered[-1]:.2f} s")
    print(f"API calls              {calls}")


if __name__ == "__main__":
    main()
