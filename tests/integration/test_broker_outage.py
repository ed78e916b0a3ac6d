"""The broker goes away mid-sync and comes back with its data (librdkafka's mock cluster, taken
down and up in place): the connector keeps running, reports not ready while disconnected, and
resumes, losing nothing. The tansu restart case is in test_readiness."""

from __future__ import annotations

import threading
import time

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition

from connector.app import running
from connector.core.codec import encode_plain
from connector.dev.broker import free_port
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import bootstrap_env
from tests.integration.test_readiness import wait_for
from tests.mockcluster import MockCluster
from tests.workload import actual_state

TOPIC = "outage"


def produce(bootstrap: str, start: int, count: int) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "log_level": 0, "message.timeout.ms": 120_000}
    )
    for i in range(start, start + count):
        producer.produce(
            TOPIC, key=f"p{i}".encode(), value=encode_plain(event(f"o{i}@example.com"))
        )
    return producer


def test_mock_cluster_smoke() -> None:
    with MockCluster() as cluster:
        cluster.create_topic("smoke", 3)
        producer = produce(cluster.bootstrap, 0, 3)
        assert producer.flush(10) == 0
        consumer = Consumer(
            {"bootstrap.servers": cluster.bootstrap, "group.id": "g", "log_level": 0}
        )
        low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
        assert high >= low >= 0
        assert len(consumer.list_topics("smoke", timeout=10).topics["smoke"].partitions) == 3
        consumer.close()


def test_connector_survives_a_broker_outage_and_resumes() -> None:
    port = free_port()
    with MockCluster() as cluster, SimulatorServer(SimulatorConfig(time_scale=0.1)) as sim:
        cluster.create_topic(TOPIC, 3)
        assert produce(cluster.bootstrap, 0, 50).flush(10) == 0
        settings, kafka = load_settings(
            bootstrap_env(cluster.bootstrap, TOPIC, sim, METRICS_PORT=str(port))
        )
        stop = threading.Event()
        exit_code: list[int] = []
        url = f"http://127.0.0.1:{port}"
        with running(settings, kafka) as parts:
            runner = threading.Thread(target=lambda: exit_code.append(parts.pipeline.run(stop)))
            runner.start()
            try:
                deadline = time.monotonic() + 60
                while sum(parts.pipeline.committed().values()) < 50:
                    assert time.monotonic() < deadline, "the first 50 were not synced"
                    time.sleep(0.2)
                wait_for(f"{url}/readyz", 200, 10)
                # Mid-sync: records consumed and on their way to Omnisend when it goes down.
                assert produce(cluster.bootstrap, 100, 3000).flush(10) == 0
                while sum(parts.pipeline.committed().values()) <= 50:
                    assert time.monotonic() < deadline, "the second part did not start"
                    time.sleep(0.05)
                cluster.broker_down()
                wait_for(f"{url}/readyz", 503, 30)
                assert runner.is_alive()
                assert httpx.get(f"{url}/healthz").status_code == 200
                queued = produce(cluster.bootstrap, 50, 50)  # waits in the producer meanwhile
                time.sleep(3)
                cluster.broker_up()
                assert queued.flush(60) == 0
                wait_for(f"{url}/readyz", 200, 40)
                assert sum(parts.pipeline.committed().values()) < 3100
                while sum(parts.pipeline.committed().values()) < 3100:
                    assert time.monotonic() < deadline + 120, "the connector did not resume"
                    time.sleep(0.2)
            finally:
                stop.set()
                runner.join(timeout=60)
        assert exit_code == [0]
        contacts = actual_state(sim.url)
        assert set(contacts) == {f"o{i}@example.com" for i in range(3100)}
