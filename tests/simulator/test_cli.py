"""`omnisend-connector simulate` as users start it, and the pytest fixture tests use."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from tests.simulator.conftest import HEADERS


def test_simulate_command_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "simulate",
            "--port",
            "0",
            "--api-key",
            "k1=shop",
            "--rate-limit",
            "2",
            "--time-scale",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        api_url = first.strip().split("OMNISEND_BASE_URL=")[1]
        assert api_url.endswith("/api")
        headers = {**HEADERS, "Authorization": "Omnisend-API-Key k1"}
        statuses = [httpx.get(f"{api_url}/contacts", headers=headers).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        too_soon = httpx.get(f"{api_url}/contacts", headers=headers).json()["retryAfter"]
        assert 1 <= too_soon <= 6  # the window is 6 s at time scale 0.1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0


def test_simulate_refuses_a_window_under_five_seconds() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector.cli", "simulate", "--time-scale", "0.01"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "window below 5 s" in result.stderr


def test_fixture_yields_a_live_api_url(omnisend_api_url: str) -> None:
    assert omnisend_api_url.endswith("/api")
    r = httpx.post(
        f"{omnisend_api_url}/contacts",
        headers=HEADERS,
        json={"identifiers": [{"type": "email", "id": "f@example.com"}]},
    )
    assert r.status_code == 201
