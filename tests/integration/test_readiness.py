"""/healthz and /readyz of a running connector: ready while the broker answers, not ready while
it is down, ready again after; refused credentials stop the start; an Omnisend that does not
answer at start makes it unready until it does, without a call per probe."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from connector.app import running
from connector.dev.broker import Broker, free_port
from connector.kafka.clients import ensure_topic
from connector.readiness import CredentialsRefused
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.integration.conftest import connector_env


def wait_for(url: str, status: int, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if httpx.get(url, timeout=2).status_code == status:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer {status} within {timeout_s} s")


def test_readyz_follows_the_broker(sim: SimulatorServer) -> None:
    port = free_port()
    broker = Broker(port=free_port()).start()
    ensure_topic(broker.bootstrap, {}, "ready-topic", 2)
    env = connector_env(broker, "ready-topic", sim, METRICS_PORT=str(port))
    settings, kafka = load_settings(env)
    stop = threading.Event()
    try:
        with running(settings, kafka) as parts:
            url = f"http://127.0.0.1:{port}"
            # Not ready before the group has assigned partitions, and the body says so.
            wait_for(f"{url}/readyz", 503, 30)
            assert httpx.get(f"{url}/readyz").json()["assignment_received"] is False
            runner = threading.Thread(target=parts.pipeline.run, args=(stop,))
            runner.start()
            try:
                wait_for(f"{url}/readyz", 200, 30)
                assert httpx.get(f"{url}/healthz").status_code == 200
                broker.kill()
                wait_for(f"{url}/readyz", 503, 40)
                assert httpx.get(f"{url}/healthz").status_code == 200  # alive, just not ready
                broker.start()
                wait_for(f"{url}/readyz", 200, 40)
            finally:
                stop.set()
                runner.join(timeout=60)
    finally:
        broker.stop()


def test_credential_check_is_cached(broker: Broker, sim: SimulatorServer) -> None:
    port = free_port()
    settings, kafka = load_settings(
        connector_env(broker, "cred-topic", sim, METRICS_PORT=str(port))
    )
    with running(settings, kafka):
        readyz = f"http://127.0.0.1:{port}/readyz"
        deadline = time.monotonic() + 30
        while httpx.get(readyz).json()["credentials_valid"] is not True:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for _ in range(10):
            httpx.get(f"http://127.0.0.1:{port}/readyz")
        calls = httpx.get(f"{sim.url}/_sim/stats").json()["requests"]["GET /contacts"]
        assert sum(calls.values()) == 1


def test_refused_credentials_stop_the_start(broker: Broker, sim: SimulatorServer) -> None:
    env = connector_env(broker, "cred-topic-2", sim, OMNISEND_API_KEY="wrong")
    settings, kafka = load_settings(env)
    with pytest.raises(CredentialsRefused, match="connection 'default'") as refused:  # noqa: SIM117
        with running(settings, kafka):
            pass
    assert "wrong" not in str(refused.value)


def test_omnisend_unreachable_at_start_is_not_ready_until_it_answers(broker: Broker) -> None:
    metrics, omnisend = free_port(), free_port()
    with SimulatorServer(SimulatorConfig(time_scale=0.1), port=omnisend) as sim:
        env = connector_env(broker, "cred-topic-3", sim, METRICS_PORT=str(metrics))
    # The simulator is gone: Omnisend does not answer at start.
    settings, kafka = load_settings(env)
    readyz = f"http://127.0.0.1:{metrics}/readyz"
    with running(settings, kafka):
        wait_for(readyz, 503, 30)
        assert httpx.get(readyz).json()["credentials_valid"] is None
        with SimulatorServer(SimulatorConfig(time_scale=0.1), port=omnisend):
            deadline = time.monotonic() + 30  # asked again at the next turn, not in 10 minutes
            while httpx.get(readyz).json()["credentials_valid"] is not True:
                assert time.monotonic() < deadline
                time.sleep(0.2)
