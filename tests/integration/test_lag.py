"""Consumer lag per partition from the broker's end offsets. On librdkafka's mock cluster: tansu
answers ListOffsets(LATEST) wrongly."""

from __future__ import annotations

import threading
import time

import httpx
from confluent_kafka import Producer

from connector.app import running
from connector.core.codec import encode_plain
from connector.dev.broker import free_port
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import bootstrap_env


def lag_total(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("omnisend_connector_consumer_lag_records{")
    ]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines) if lines else -1.0


def test_lag_is_end_offset_minus_committed_while_omnisend_stalls(mock_bootstrap: str) -> None:
    producer = Producer({"bootstrap.servers": mock_bootstrap, "log_level": 0})
    for i in range(100):
        producer.produce(
            "lag-topic", key=f"p{i}".encode(), value=encode_plain(event(f"l{i}@example.com"))
        )
    assert producer.flush(10) == 0
    port = free_port()
    # One request per window: everything after the first is answered 429, so nothing commits.
    stalled = SimulatorConfig(requests_per_window=1, tag_requests_per_window=1, time_scale=0.1)
    with SimulatorServer(stalled) as sim:
        settings, kafka = load_settings(
            bootstrap_env(mock_bootstrap, "lag-topic", sim, METRICS_PORT=str(port))
        )
        stop = threading.Event()
        with running(settings, kafka) as parts:
            runner = threading.Thread(target=parts.pipeline.run, args=(stop,))
            runner.start()
            try:
                deadline = time.monotonic() + 45
                while time.monotonic() < deadline and lag_total(port) != 100:
                    time.sleep(0.5)
                assert lag_total(port) == 100
                assert sum(parts.pipeline.committed().values()) == 0
            finally:
                stop.set()
                runner.join(timeout=60)
