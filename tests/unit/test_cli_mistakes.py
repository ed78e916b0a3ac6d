"""Ordinary mistakes end in one clear message and the documented exit code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

GOOD = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "VALUE_FORMAT": "avro",
    "OMNISEND_API_KEY": "k",
    "OMNISEND_PRIVACY_ACKNOWLEDGED": "true",
}


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_CFG_FETCH_MAX_BYTEZ": "1000"}, "KAFKA_CFG_FETCH_MAX_BYTEZ (librdkafka"),
        ({"KAFKA_CFG_SECURITY_PROTOCOL": "SASL_SSL"}, "No provider for SASL mechanism GSSAPI"),
        ({"OMNISEND_PRIVACY_ACKNOWLEDGED": "yes"}, "must be true or false"),
    ],
)
def test_a_bad_setting_exits_2_with_one_message(env: dict[str, str], named: str) -> None:
    done = cli("run", env={**GOOD, **env})
    assert done.returncode == 2
    assert named in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_check_prints_each_problem_as_a_fail_line_and_warns_of_near_misses() -> None:
    bad = {"OMNISEND_PRIVACY_ACKNOWLEDGED": "1", "KAFKA_CFG_FETCH_MAX_BYTEZ": "1"}
    env = {k: v for k, v in GOOD.items() if k != "KAFKA_BOOTSTRAP_SERVERS"} | bad
    done = cli("check", env=env)
    assert done.returncode == 1
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 3, done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    done = cli("run", env={**GOOD, "OMNISEND_API_KY": "x", "METRICS_PORT": "-1"})
    assert "OMNISEND_API_KY: not a setting, ignored; did you mean 'OMNISEND_API_KEY'?" in (
        done.stderr
    )
    assert done.returncode == 2


def test_a_port_in_use_is_a_configuration_error() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        done = cli("run", env={**GOOD, "METRICS_HOST": "127.0.0.1", "METRICS_PORT": port})
        assert done.returncode == 2
        assert f"METRICS_PORT {port} on 127.0.0.1: Address already in use" in done.stderr
        assert "Traceback" not in done.stderr
        done = cli("simulate", "--port", port, env={})
        assert done.returncode == 2
        assert "cannot listen on 127.0.0.1" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_job_with_an_unknown_reason_or_an_unreachable_broker_says_so() -> None:
    done = cli("replay-dlq", "--reason", "nope", env=GOOD)
    assert done.returncode == 2
    assert "invalid choice: 'nope'" in done.stderr
    done = cli("backfill", "--since", "1h", env=GOOD)
    assert done.returncode == 5
    assert "Kafka: Failed to get metadata" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("Connection refused") <= 2  # collapsed, not one line a retry


def test_generate_takes_the_broker_and_topic_from_the_environment() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KAFKA_TOPIC": "from-env"}
    done = cli("generate", "--count", "1", env=env)
    assert done.returncode == 5
    assert "cannot write to from-env on 127.0.0.1:1:" in done.stderr  # not 127.0.0.1:9092
    assert "Traceback" not in done.stderr


def test_the_broker_command_refuses_a_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        done = cli("broker", "--port", str(held.getsockname()[1]), env={})
    assert done.returncode == 2
    assert "is the port in use?" in done.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" not in done.stdout
