"""Ordinary mistakes end in one clear message and the documented exit code, never a traceback."""

from __future__ import annotations

import os
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
