"""Behind an egress proxy, with a private CA: the simulator serves HTTPS under a name only the
proxy knows, so every Omnisend call (the sync, the credential check, `check`) must go through
the proxy, trust SSL_CERT_FILE, and skip the proxy for NO_PROXY hosts."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.dev.broker import Broker
from connector.omnisend.credentials import verify_credentials
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import RunConnector, caught_up, connector_env, produce_events
from tests.proxy import connect_proxy

HOST = "omnisend-sim.invalid"  # resolves nowhere but in the proxy's table


@pytest.fixture
def tls_sim(tmp_path: Path) -> Iterator[tuple[SimulatorServer, Path]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}"),
            *("-addext", f"subjectAltName=DNS:{HOST}"),
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with SimulatorServer(SimulatorConfig(time_scale=0.1), tls=tls) as sim:
        yield sim, cert


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("https_proxy", "http_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    return monkeypatch


def test_every_omnisend_call_goes_through_the_proxy_and_trusts_the_private_ca(
    broker: Broker,
    topic: str,
    tls_sim: tuple[SimulatorServer, Path],
    run_connector: RunConnector,
    clean_proxy_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    sim, cert = tls_sim
    api = f"https://{HOST}:{sim.port}/api"
    with connect_proxy({HOST: ("127.0.0.1", sim.port)}) as proxy:
        clean_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        assert verify_credentials(api, "test-key", 5).ok is None  # the CA is not trusted yet
        clean_proxy_env.setenv("SSL_CERT_FILE", str(cert))
        assert verify_credentials(api, "test-key", 5).ok is True  # /readyz's check

        events = [event(f"p{i}@example.com", profile_id=f"p{i}") for i in range(20)]
        produce_events(broker.bootstrap, topic, events)
        env = connector_env(broker, topic, sim, OMNISEND_BASE_URL=api)
        run = run_connector(env, caught_up(topic, len(events)))
        assert run.exit_code == 0
        state = sim.simulator.state()["brands"]["brand-1"]["contacts"]
        assert sorted(c["email"] for c in state) == sorted(e["profile"]["email"] for e in events)
        assert all(c["tags"] == ["segment: VIP"] for c in state)
        assert len(proxy.tunnels) >= 2  # the credential check and the sync
        assert set(proxy.tunnels) == {f"{HOST}:{sim.port}"}

        result = subprocess.run(
            [sys.executable, "-m", "connector.cli", "check"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert f"ok    omnisend connection 'default': API key accepted by {api}" in result.stdout

        tunnels = len(proxy.tunnels)
        clean_proxy_env.setenv("NO_PROXY", f".{HOST.split('.', 1)[1]}")  # a domain suffix
        assert verify_credentials(api, "test-key", 5).ok is None  # directly: it cannot resolve
        assert len(proxy.tunnels) == tunnels
