"""Seeded, reproducible fault injection: 5xx, item errors, latency, dropped connections, outages."""

from __future__ import annotations

import time

import httpx
import pytest

from connector.core.clock import ManualClock
from connector.simulator.app import Simulator
from connector.simulator.config import Faults, SimulatorConfig
from connector.simulator.messages import Request
from tests.simulator.conftest import HEADERS, MakeSim, Sim, contact


def _statuses(sim: Sim, n: int = 40) -> list[int]:
    return [sim.api.get("/contacts").status_code for _ in range(n)]


def test_error_rate_is_reproducible_with_a_seed(make_sim: MakeSim) -> None:
    first = _statuses(make_sim(faults=Faults(seed=7, error_rate=0.3)))
    again = _statuses(make_sim(faults=Faults(seed=7, error_rate=0.3)))
    other = _statuses(make_sim(faults=Faults(seed=8, error_rate=0.3)))
    assert first == again
    assert first != other
    assert 0 < sum(s >= 500 for s in first) < len(first)
    assert set(first) <= {200, 500, 502, 503}


def test_item_errors_are_transient_codes_and_reproducible(make_sim: MakeSim) -> None:
    def run(seed: int) -> list[int]:
        sim = make_sim(faults=Faults(seed=seed, item_error_rate=0.3))
        items = [contact(f"i{i}@example.com") for i in range(40)]
        batch_id = sim.api.post(
            "/batches", json={"method": "POST", "endpoint": "contacts", "items": items}
        ).json()["batchID"]
        sim.clock.advance(30)
        result = sim.api.get(f"/batches/{batch_id}/items").json()
        by_email = {
            r["request"]["identifiers"][0]["id"]: r["responseCode"]
            for r in result["responses"] + result["errors"]
        }
        return [by_email[f"i{i}@example.com"] for i in range(40)]

    first = run(3)
    assert first == run(3)
    assert {c for c in first if c >= 300} <= {503, 429, 408}
    assert any(c >= 300 for c in first)


def test_outage_window_answers_503_then_recovers(make_sim: MakeSim) -> None:
    sim = make_sim(faults=Faults(outage_start_s=10, outage_duration_s=60))
    assert _statuses(sim, 1) == [200]
    sim.clock.advance(10)
    assert _statuses(sim, 1) == [503]
    sim.clock.advance(59.5)
    assert _statuses(sim, 1) == [503]
    sim.clock.advance(0.5)
    assert _statuses(sim, 1) == [200]


def test_faults_can_be_switched_at_run_time(sim: Sim) -> None:
    r = httpx.post(
        f"{sim.server.url}/_sim/faults", json={"outage_start_s": 0, "outage_duration_s": 5}
    )
    assert r.status_code == 200
    assert _statuses(sim, 1) == [503]
    sim.clock.advance(5)
    assert _statuses(sim, 1) == [200]
    bad = httpx.post(f"{sim.server.url}/_sim/faults", json={"no_such_fault": 1})
    assert bad.status_code == 400
    refusing = httpx.post(f"{sim.server.url}/_sim/faults", json={"refused_emails": ["r@x.io"]})
    assert refusing.json()["faults"]["refused_emails"] == ["r@x.io"]


def test_dropped_connections(make_sim: MakeSim) -> None:
    sim = make_sim(faults=Faults(seed=1, drop_rate=1.0))
    with pytest.raises(httpx.RemoteProtocolError):
        sim.api.get("/contacts")


def test_fixed_latency_is_added(make_sim: MakeSim) -> None:
    sim = make_sim(faults=Faults(latency_s=0.3))
    start = time.monotonic()
    sim.api.get("/contacts")
    assert time.monotonic() - start >= 0.3


def test_spikes_follow_the_seed(make_sim: MakeSim) -> None:
    def delays(seed: int) -> list[float]:
        config = SimulatorConfig(faults=Faults(seed=seed, spike_rate=0.5, spike_s=2.0))
        simulator = Simulator(config, ManualClock())
        headers = {"authorization": "Omnisend-API-Key test-key", "omnisend-version": "2026-03-15"}
        return [
            simulator.handle(Request("GET", "/api/contacts", headers=headers)).delay_s
            for _ in range(20)
        ]

    assert delays(4) == delays(4)
    assert set(delays(4)) == {0.0, 2.0}


def test_bad_fault_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="window below 5 s"):
        SimulatorConfig(time_scale=0.05)


def test_reset_forgets_everything(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("r@example.com"))
    httpx.post(f"{sim.server.url}/_sim/reset")
    assert sim.contacts() == {}
    assert sim.inspect("stats")["requestsTotal"] == 0


def test_garbage_answers_come_in_every_kind_and_the_request_was_carried_out(
    make_sim: MakeSim,
) -> None:
    """A spoiled answer still means the request happened: the contacts exist."""
    sim = make_sim(faults=Faults(seed=11, garbage_rate=1.0))
    seen: set[str] = set()
    for i in range(60):
        response = httpx.post(
            f"{sim.server.api_url}/contacts",
            headers=HEADERS,
            json=contact(f"g{i}@example.com"),
        )
        kind = response.headers.get("content-type", "")
        try:
            body = response.json()
        except ValueError:
            seen.add(f"not json ({kind or 'no content type'})")
            continue
        if not isinstance(body, dict):
            seen.add("wrong type")
        elif "email" not in body or kind == "text/html":
            seen.add("missing fields or wrong content type")
        else:
            seen.add("looks right")
    assert {"not json (text/html)", "not json (no content type)", "wrong type"} <= seen
    assert len(sim.contacts()) == 60  # the inspection API is never spoiled


def test_a_lost_answer_was_carried_out(make_sim: MakeSim) -> None:
    sim = make_sim(faults=Faults(seed=1, lost_answer_rate=1.0))
    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"{sim.server.api_url}/contacts", headers=HEADERS, json=contact("lost@example.com")
        )
    assert "lost@example.com" in sim.contacts()


def test_a_dripping_answer_takes_its_time_and_arrives_whole(make_sim: MakeSim) -> None:
    sim = make_sim(faults=Faults(seed=1, drip_rate=1.0, drip_s=0.5))
    started = time.monotonic()
    response = httpx.get(f"{sim.server.api_url}/contacts", headers=HEADERS, timeout=0.2)
    assert time.monotonic() - started >= 0.45  # no read waited 0.2 s, yet the whole took 0.5
    assert response.json()["contacts"] == []


def test_a_blocked_value_is_answered_by_a_gateway_and_never_reaches_omnisend(
    make_sim: MakeSim,
) -> None:
    sim = make_sim(faults=Faults(blocked_values=frozenset({"blocked@example.com", "Zoë"})))
    api = sim.server.api_url

    def post(path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{api}{path}", headers=HEADERS, json=body)  # no contract check

    for email in ("blocked@example.com", "other@example.com"):
        answer = post("/contacts", contact(email, firstName="Zoë"))
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "text/html"
        assert b"Access denied" in answer.content
    assert post("/contacts/tags", {"tag": "vip", "emails": ["blocked@example.com"]}).is_error
    passed = sim.api.post("/contacts", json=contact("free@example.com"))
    assert passed.status_code == 201, passed.text
    assert sim.api.get("/contacts", params={"email": "blocked@example.com"}).status_code == 200
    assert set(sim.contacts()) == {"free@example.com"}
    assert sim.inspect("stats")["answerFaults"] == {"blocked": 3}
