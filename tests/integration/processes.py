"""The connector as a real process (`omnisend-connector run`), watched through its metrics port,
killed or stopped like Kubernetes would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connector.dev.broker import free_port

CLI = [sys.executable, "-m", "connector.cli", "run"]


class ConnectorProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            CLI,
            env={**os.environ, **env, "METRICS_PORT": str(self.port), "LOG_FORMAT": "json"},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def metrics(self) -> dict[str, float]:
        """Sample name → sum over its label sets; empty while the port is not up yet."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        sums: dict[str, float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                sums[sample.name] += sample.value
        return sums

    def wait_for(
        self, condition: Callable[[dict[str, float]], bool], timeout_s: float = 60
    ) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the connector exited with {self.proc.returncode}"
            m = self.metrics()
            if m and condition(m):
                return m
            time.sleep(0.02)
        raise AssertionError("the condition was not reached in time")

    def wait(self, timeout_s: float = 60) -> int:
        """Until it exits by itself."""
        code = self.proc.wait(timeout=timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        self._log.close()
        return code


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (0 where nothing was committed)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "log.connection.close": False}
    )
    try:
        offsets = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in offsets}


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    return sum(committed_offsets(bootstrap, group, topic, partitions).values())
