"""Omnisend refusing the credentials (401, 403, 410) stops the connector with a clear error and
nothing unfinished committed; the API key never appears in logs, metrics, dead-letter records or
error text, and emails are never logged in clear."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.dev.broker import Broker
from connector.omnisend.client import API_VERSION
from connector.simulator import Faults, SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import connector_env, produce, produce_events, read_all
from tests.integration.processes import ConnectorProcess, committed_total

KEY = "omni-Sk7f3a9cQx21-secret"


@pytest.mark.parametrize(
    ("status", "config", "cause"),
    [
        (401, {"api_keys": {"another-key": "brand-1"}}, "not valid"),
        (403, {"read_only_keys": frozenset({KEY})}, "scope"),
        (410, {"retired_versions": frozenset({API_VERSION})}, "retired"),
    ],
)
def test_refused_credentials_stop_with_exit_3_committing_nothing(
    broker: Broker, topic: str, tmp_path: Path, status: int, config: dict[str, Any], cause: str
) -> None:
    produce_events(broker.bootstrap, topic, [event(f"f{i}@example.com") for i in range(20)])
    sim_config = SimulatorConfig(**{"api_keys": {KEY: "brand-1"}, "time_scale": 0.1, **config})
    with SimulatorServer(sim_config) as sim:
        env = connector_env(broker, topic, sim, OMNISEND_API_KEY=KEY)
        log = tmp_path / "connector.log"
        process = ConnectorProcess(env, log)
        code = process.wait()
        logs = log.read_text()
        requests = httpx.get(f"{sim.url}/_sim/requests").json()["requests"]
    assert code == 3, logs[-2000:]
    assert status in {r["status"] for r in requests}
    assert cause in logs  # the error says what is wrong
    assert "Traceback" not in logs
    assert KEY not in logs
    assert "f1@example.com" not in logs
    assert committed_total(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, 3) == 0
    if status != 403:
        # Refused at start, before the group was joined: nothing consumed, nothing written.
        # (A key lacking only contacts.write reads fine: it is found at the first write.)
        assert {r["endpoint"] for r in requests} == {"GET /contacts"}
        assert read_all(broker.bootstrap, f"{topic}.dlq", expected=1, timeout_s=3) == []
        assert '"event": "assigned"' not in logs


def test_the_api_key_and_emails_stay_out_of_every_output(
    broker: Broker, topic: str, tmp_path: Path
) -> None:
    good = [event(f"private{i}@example.com", profile_id=f"p{i}") for i in range(30)]
    produce_events(broker.bootstrap, topic, good)
    bad_email = [event("not-an-email", profile_id="bad")]
    produce_events(broker.bootstrap, topic, bad_email)
    produce(broker.bootstrap, topic, [(b"garbage", b"\x00\x00\x00\x00\x07junk")])
    with SimulatorServer(SimulatorConfig(api_keys={KEY: "brand-1"}, time_scale=0.1)) as sim:
        env = connector_env(broker, topic, sim, OMNISEND_API_KEY=KEY, LOG_LEVEL="DEBUG")
        log = tmp_path / "connector.log"
        process = ConnectorProcess(env, log)
        try:
            process.wait_for(
                lambda m: (
                    m.get("omnisend_connector_tag_changes_total", 0) == len(good)
                    and m.get("omnisend_connector_dlq_records_total", 0) == 2
                )
            )
            base = f"http://127.0.0.1:{process.port}"
            outputs = [
                httpx.get(f"{base}{path}").text for path in ("/metrics", "/readyz", "/healthz")
            ]
            deadline = time.monotonic() + 30
            while (
                committed_total(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, 3) < len(good) + 2
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            assert committed_total(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, 3) == 32
        finally:
            assert process.stop() == 0
        dead = read_all(broker.bootstrap, f"{topic}.dlq", expected=2)
    assert len(dead) == 2
    for message in dead:
        outputs.append(repr(message.value()))
        outputs += [f"{k}={v!r}" for k, v in message.headers() or []]
    logs = log.read_text()
    assert '"event": "stopped"' in logs  # the logs are really there, at DEBUG
    for text in [logs, *outputs]:
        assert KEY not in text
    for i in range(len(good)):
        assert f"private{i}@example.com" not in logs


def test_a_contact_omnisend_refused_is_named_in_the_log_by_its_keyed_hash(
    broker: Broker, topic: str, tmp_path: Path
) -> None:
    # Omnisend refuses this contact for a reason the connector cannot see.
    produce_events(broker.bootstrap, topic, [event("refused@example.com")])
    hash_key = "correlate-me"
    faults = Faults(refused_emails=frozenset({"refused@example.com"}))
    with SimulatorServer(SimulatorConfig(time_scale=0.1, faults=faults)) as sim:
        env = connector_env(broker, topic, sim, EMAIL_HASH_KEY=hash_key)
        log = tmp_path / "connector.log"
        process = ConnectorProcess(env, log)
        try:
            process.wait_for(lambda m: m.get("omnisend_connector_dlq_records_total", 0) == 1)
        finally:
            assert process.stop() == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    dead = [line for line in lines if line.get("event") == "dead_lettering"]
    assert [line["reason"] for line in dead] == ["rejected_by_omnisend"]
    expected = hmac.new(hash_key.encode(), b"refused@example.com", hashlib.sha256).hexdigest()
    assert dead[0]["email_hash"] == expected[:16]
    assert "refused@example.com" not in log.read_text()
