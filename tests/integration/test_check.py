"""`omnisend-connector check` against the real broker and the simulator: a report line per
check, exit 0 when everything is ready and 1 with a pointed message otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

from connector.dev.broker import Broker, free_port
from connector.kafka.clients import ensure_topic
from connector.simulator import SimulatorServer
from tests.integration.conftest import connector_env
from tests.registry import RegistryServer

CHECK = [sys.executable, "-m", "connector.cli", "check"]


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        CHECK,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_everything_ready_exits_0(
    broker: Broker, topic: str, sim: SimulatorServer, registry: RegistryServer
) -> None:
    ensure_topic(broker.bootstrap, {}, f"{topic}.dlq", 1)
    env = connector_env(
        broker, topic, sim, VALUE_FORMAT="confluent", SCHEMA_REGISTRY_URL=registry.url
    )
    result = check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"ok    topic: {topic}, 3 partitions" in lines
    assert f"ok    dead-letter topic: {topic}.dlq, 1 partitions" in lines
    assert any(line.startswith("ok    schema registry") for line in lines)
    assert any(line.startswith("ok    omnisend connection 'default'") for line in lines)
    assert any(line.startswith("ok    export 'default': all segments") for line in lines)
    assert lines[-1] == "7 ok, 0 failed"


def test_each_problem_is_reported_and_exits_1(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    env = connector_env(
        broker, topic, sim, OMNISEND_API_KEY="wrong-key", KAFKA_RESULTS_TOPIC=f"{topic}.results"
    )
    result = check(env)
    assert result.returncode == 1
    out = result.stdout
    assert f"FAIL  dead-letter topic: {topic}.dlq does not exist" in out
    assert f"FAIL  results topic: {topic}.results does not exist" in out
    assert "FAIL  omnisend connection 'default': Omnisend answered 401" in out
    assert "wrong-key" not in out + result.stderr
    assert out.splitlines()[-1] == "4 ok, 3 failed"


def test_unreachable_broker_and_omnisend_fail(broker: Broker, topic: str) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "VALUE_FORMAT": "avro",
        "OMNISEND_API_KEY": "k",
        "OMNISEND_BASE_URL": f"http://127.0.0.1:{free_port()}/api",
        "OMNISEND_PRIVACY_ACKNOWLEDGED": "true",
    }
    result = check(env)
    assert result.returncode == 1
    assert "FAIL  kafka:" in result.stdout
    assert "FAIL  omnisend connection 'default':" in result.stdout
    assert "not reachable" in result.stdout


def test_invalid_configuration_is_reported() -> None:
    result = check(
        {"KAFKA_BOOTSTRAP_SERVERS": "x", "VALUE_FORMAT": "avro", "OMNISEND_API_KEY": "k"}
    )
    assert result.returncode == 1
    assert "FAIL  configuration:" in result.stdout
    assert "OMNISEND_PRIVACY_ACKNOWLEDGED=true" in result.stdout
