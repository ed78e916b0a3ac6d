"""`omnisend-connector run` and `demo` as processes: configuration errors, SIGTERM, the demo."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from connector.dev.broker import Broker, free_port
from connector.simulator import SimulatorServer
from tests.events import event
from tests.integration.conftest import connector_env, produce_events, sim_contacts

CLI = [sys.executable, "-m", "connector.cli"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            {"OMNISEND_PRIVACY_ACKNOWLEDGED": "true", "KAFKA_CFG_ENABLE_AUTO_COMMIT": "true"},
            ["KAFKA_CFG_ENABLE_AUTO_COMMIT"],
        ),
        # Without the privacy acknowledgement: refused, saying why and what to set.
        ({}, ["personal data", "OMNISEND_PRIVACY_ACKNOWLEDGED=true"]),
    ],
)
def test_bad_configuration_exits_2_saying_what_is_wrong(
    extra: dict[str, str], says: list[str]
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BOOTSTRAP_SERVERS": "x",
        "OMNISEND_API_KEY": "k",
        "VALUE_FORMAT": "avro",
        **extra,
    }
    result = subprocess.run(
        [*CLI, "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    for text in says:
        assert text in result.stderr


def test_run_help_documents_every_setting() -> None:
    out = subprocess.run(
        [*CLI, "run", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "OMNISEND_API_KEY_FILE",
        "TAG_TEMPLATE",
        "SHUTDOWN_TIMEOUT_S",
    ):
        assert name in out


def test_sigterm_drains_commits_and_exits_0(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    produce_events(
        broker.bootstrap, topic, [event(f"s{i}@example.com", profile_id=f"p{i}") for i in range(40)]
    )
    port = free_port()
    env = {
        **os.environ,
        **connector_env(broker, topic, sim, METRICS_PORT=str(port), LOG_FORMAT="json"),
    }
    proc = subprocess.Popen(
        [*CLI, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(sim_contacts(sim, settle_s=0)) < 40:
            time.sleep(0.3)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "omnisend_connector_events_consumed_total" in metrics
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert proc.stderr is not None
        logs = proc.stderr.read().decode()
        proc.stderr.close()
    assert code == 0, logs
    assert '"event": "stopped"' in logs
    assert "test-key" not in logs  # never the API key
    assert "s1@example.com" not in logs  # never an email in clear


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        [*CLI, "demo", "--count", "600"], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "events consumed       600" in result.stdout
    assert "POST /contacts/tags" in result.stdout
    # Its dead letters are explained by reason, its untagged contacts too; no URL of a
    # process that is gone is printed.
    assert "(generated on purpose with an invalid email)" in result.stdout
    assert "without a tag: their last change was an exit" in result.stdout
    assert "http://" not in result.stdout


def test_demo_keeps_running_with_its_addresses_until_stopped() -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--count", "300", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if "metrics" in line and "http://" in line:
                break
        text = "".join(lines)
        assert "still running" in text, text
        after = lines[next(i for i, line in enumerate(lines) if "still running" in line) + 1 :]
        urls = dict(line.split() for line in after)
        state = httpx.get(urls["simulator-state"], timeout=10).json()
        assert state["brands"]["demo-brand"]["contacts"]
        assert "omnisend_connector_events_consumed_total" in httpx.get(urls["metrics"]).text
        assert urls["KAFKA_BOOTSTRAP_SERVERS"].startswith("127.0.0.1:")
    finally:
        code = _interrupt(proc)
    assert code == 0


def _interrupt(proc: subprocess.Popen[str], timeout_s: float = 60) -> int | None:
    """Ctrl-C, and its exit code; None if it did not exit in time (then it is killed with
    what it started, if it runs in a session of its own, so no process or pipe outlives the
    test and troubles the next one)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)  # the broker it started, too
        proc.kill()
        proc.wait()
        return None
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_the_broker_command_serves_a_rehearsal_until_stopped() -> None:
    # Started as a script's background job is: with SIGINT ignored (`trap "" INT` is kept
    # across `exec`), which Python then never turns into KeyboardInterrupt. SIGINT must stop
    # it all the same.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", *CLI, "broker", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Kafka broker listening: KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:")
        bootstrap = line.strip().split("=", 1)[1]
        done = subprocess.run(
            [*CLI, "generate", "--count", "50"],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": "rehearsal"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "wrote 50 events to rehearsal" in done.stdout
    finally:
        code = _interrupt(proc)
    assert code == 0
