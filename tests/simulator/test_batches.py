"""Batches: validation, asynchronous lifecycle on the simulator's clock, items and listing."""

from __future__ import annotations

import json
import time
from typing import Any

from connector.core.clock import ManualClock
from connector.simulator.app import Simulator
from connector.simulator.config import Faults, SimulatorConfig
from connector.simulator.messages import Request
from tests.simulator.conftest import HEADERS, MakeSim, Sim, contact

LOWER_HEADERS = {k.lower(): v for k, v in HEADERS.items()}


def _batch(n: int, start: int = 0, **extra: Any) -> dict[str, Any]:
    items = [contact(f"b{i}@example.com") for i in range(start, start + n)]
    return {"method": "POST", "endpoint": "contacts", "items": items, **extra}


def test_batch_lifecycle_pending_in_progress_finished(make_sim: MakeSim) -> None:
    sim = make_sim(batch_latency_s=2.0, item_latency_s=0.5)
    created = sim.api.post("/batches", json=_batch(4))
    assert created.status_code == 201
    assert created.json()["totalCount"] == 4
    batch_id = created.json()["batchID"]
    assert sim.api.get(f"/batches/{batch_id}").json()["status"] == "pending"
    sim.clock.advance(2.0)
    assert sim.api.get(f"/batches/{batch_id}").json()["status"] == "inProgress"
    sim.clock.advance(1.0)  # two of four items done
    half = sim.api.get(f"/batches/{batch_id}").json()
    assert (half["status"], half["finishedCount"]) == ("inProgress", 2)
    assert set(sim.contacts()) == {"b0@example.com", "b1@example.com"}
    sim.clock.advance(1.0)
    done = sim.api.get(f"/batches/{batch_id}").json()
    assert (done["status"], done["finishedCount"], done["errorsCount"]) == ("finished", 4, 0)
    assert "endedAt" in done


def test_time_scale_shrinks_batch_latency(make_sim: MakeSim) -> None:
    sim = make_sim(time_scale=0.1, batch_latency_s=10.0, item_latency_s=0.0)
    batch_id = sim.api.post("/batches", json=_batch(1)).json()["batchID"]
    sim.clock.advance(0.5)
    assert sim.api.get(f"/batches/{batch_id}").json()["status"] == "pending"
    sim.clock.advance(0.5)
    assert sim.api.get(f"/batches/{batch_id}").json()["status"] == "finished"


def test_items_report_responses_and_errors(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("b1@example.com"))
    body = _batch(2)
    body["items"].append({"identifiers": [{"type": "email", "id": "broken"}]})
    batch_id = sim.api.post("/batches", json=body).json()["batchID"]
    sim.clock.advance(10)
    items = sim.api.get(f"/batches/{batch_id}/items").json()
    assert items["errorsCount"] == 1
    codes = {r["request"]["identifiers"][0]["id"]: r["responseCode"] for r in items["responses"]}
    assert codes == {"b0@example.com": 201, "b1@example.com": 200}
    (error,) = items["errors"]
    assert error["responseCode"] == 400
    assert error["response"]["errors"][0]["field"] == "identifiers[0].id"
    assert all(len(r["itemID"]) == 24 for r in items["responses"] + items["errors"])


def test_batch_validation(sim: Sim) -> None:
    assert sim.api.post("/batches", json=_batch(0)).status_code == 400
    assert sim.api.post("/batches", json=_batch(101)).status_code == 400
    assert sim.api.post("/batches", json=_batch(1, method="GET")).status_code == 400
    assert sim.api.post("/batches", json=_batch(1, method="PUT")).status_code == 400
    missing = sim.api.post("/batches", json={"items": [contact("a@example.com")]})
    assert {e["field"] for e in missing.json()["errors"]} == {"method", "endpoint"}
    assert sim.api.post("/batches", json=_batch(100)).status_code == 201


def test_batch_stops_after_too_many_item_errors(make_sim: MakeSim) -> None:
    sim = make_sim(faults=Faults(item_error_rate=1.0), stop_after_item_errors=3)
    batch_id = sim.api.post("/batches", json=_batch(10)).json()["batchID"]
    sim.clock.advance(10)
    items = sim.api.get(f"/batches/{batch_id}/items").json()
    assert items["status"] == "stopped"
    assert items["errorsCount"] == 4
    assert len(items["errors"]) == 4  # the other six were never processed
    assert {e["responseCode"] for e in items["errors"]} <= {503, 429, 408}


def test_unknown_and_malformed_batch_ids(sim: Sim) -> None:
    assert sim.api.get("/batches/" + "f" * 24).status_code == 404
    assert sim.api.get("/batches/" + "f" * 24 + "/items").status_code == 404
    assert sim.api.get("/batches/xyz").status_code == 400


def test_list_batches_requires_endpoint_and_filters_status(sim: Sim) -> None:
    assert sim.api.get("/batches").status_code == 400
    first = sim.api.post("/batches", json=_batch(1)).json()["batchID"]
    sim.clock.advance(10)
    second = sim.api.post("/batches", json=_batch(1, start=1)).json()["batchID"]
    listed = sim.api.get("/batches", params={"endpoint": "contacts"}).json()["batches"]
    assert [b["batchID"] for b in listed] == [second, first]
    finished = sim.api.get("/batches", params={"endpoint": "contacts", "status": "finished"}).json()
    assert [b["batchID"] for b in finished["batches"]] == [first]
    pending = sim.api.get("/batches", params={"endpoint": "contacts", "status": "pending"}).json()
    assert [b["batchID"] for b in pending["batches"]] == [second]
    assert (
        sim.api.get("/batches", params={"endpoint": "contacts", "status": "odd"}).status_code == 400
    )


def test_list_batches_pages_with_offset(sim: Sim) -> None:
    ids = [sim.api.post("/batches", json=_batch(1, start=i)).json()["batchID"] for i in range(5)]
    page = sim.api.get(
        "/batches", params={"endpoint": "contacts", "limit": "2", "offset": "2"}
    ).json()
    assert [b["batchID"] for b in page["batches"]] == list(reversed(ids))[2:4]
    assert "offset=4" in page["paging"]["next"]
    assert "offset=0" in page["paging"]["previous"]
    assert (
        sim.api.get("/batches", params={"endpoint": "contacts", "limit": "251"}).status_code == 400
    )


def test_due_items_are_applied_in_the_background_in_due_order(make_sim: MakeSim) -> None:
    """The server applies work as it falls due, so no request waits behind a backlog of it; a
    request then sees the same state as when it applies that backlog itself."""
    background = make_sim(batch_latency_s=1.0, item_latency_s=0.01)
    lazy_clock = ManualClock(background.clock.now())
    lazy = Simulator(background.server.simulator.config, lazy_clock)
    for start in (0, 100, 200):
        body = json.dumps(_batch(100, start)).encode()
        background.api.post("/batches", content=body)
        lazy.handle(Request("POST", "/api/batches", headers=LOWER_HEADERS, body=body))
    background.clock.advance(10.0)
    lazy_clock.advance(10.0)
    deadline = time.monotonic() + 10
    while background.server.simulator.advance_due(limit=0) and time.monotonic() < deadline:
        time.sleep(0.01)  # limit 0 only asks whether anything due is left
    assert not background.server.simulator.advance_due(limit=0)
    lazy_state = lazy.state()  # applies all 300 items now, in one go
    assert len(lazy_state["brands"]["brand-1"]["contacts"]) == 300
    assert _by_email(background.inspect("state")) == _by_email(json.loads(json.dumps(lazy_state)))


def _by_email(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Contacts by email, without their random ids."""
    contacts = state["brands"]["brand-1"]["contacts"]
    return {c["email"]: {k: v for k, v in c.items() if k != "id"} for c in contacts}


def test_due_work_is_applied_a_chunk_at_a_time() -> None:
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(batch_latency_s=1.0, item_latency_s=0.0), clock)
    for start in (0, 100, 200):
        body = json.dumps(_batch(100, start)).encode()
        sim.handle(Request("POST", "/api/batches", headers=LOWER_HEADERS, body=body))
    assert not sim.advance_due()  # nothing is due yet
    clock.advance(2.0)
    assert sim.advance_due(limit=200)  # 100 left
    assert not sim.advance_due(limit=200)
    assert len(sim.state()["brands"]["brand-1"]["contacts"]) == 300
