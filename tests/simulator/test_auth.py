"""Authentication, API version and RFC 9457 problem bodies."""

from __future__ import annotations

import pytest

from connector.simulator.config import CURRENT_VERSION
from tests.simulator.conftest import MakeSim, Sim, contact


def test_missing_key_is_401(sim: Sim) -> None:
    r = sim.api.get("/contacts", headers={"Authorization": ""})
    assert r.status_code == 401
    assert r.json()["type"].startswith("https://problems.omnisend.com/")


def test_unknown_key_is_401(sim: Sim) -> None:
    assert (
        sim.api.get("/contacts", headers={"Authorization": "Omnisend-API-Key nope"}).status_code
        == 401
    )


def test_bearer_token_is_accepted(sim: Sim) -> None:
    r = sim.api.get("/contacts", headers={"Authorization": "Bearer test-key"})
    assert r.status_code == 200


def test_keys_map_to_separate_brands(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("a@example.com"))
    other = sim.api.get("/contacts", headers={"Authorization": "Omnisend-API-Key other-key"})
    assert other.json()["contacts"] == []
    assert set(sim.contacts("brand-1")) == {"a@example.com"}


def test_missing_version_header_is_400(sim: Sim) -> None:
    r = sim.api.get("/contacts", headers={"Omnisend-Version": ""})
    assert r.status_code == 400
    assert "Omnisend-Version" in r.json()["detail"]


@pytest.mark.parametrize("version", ["v3", "v5", "2025-10-01"])
def test_retired_version_is_410(sim: Sim, version: str) -> None:
    r = sim.api.post("/batches", headers={"Omnisend-Version": version}, json={})
    assert r.status_code == 410


def test_garbage_version_is_400(sim: Sim) -> None:
    assert sim.api.get("/contacts", headers={"Omnisend-Version": "latest"}).status_code == 400


def test_unknown_operation_is_404_problem(sim: Sim) -> None:
    r = sim.api.put("/contacts/tags", json={})
    assert r.status_code == 404
    assert r.json()["status"] == 404


def test_read_only_key_may_read_but_not_write(make_sim: MakeSim) -> None:
    sim = make_sim(read_only_keys=frozenset({"test-key"}))
    assert sim.api.get("/contacts").status_code == 200
    r = sim.api.post("/contacts", json=contact("a@example.com"))
    assert r.status_code == 403
    assert "contacts.write" in r.json()["detail"]
    assert sim.contacts() == {}


def test_the_current_version_can_be_retired(make_sim: MakeSim) -> None:
    sim = make_sim(retired_versions=frozenset({CURRENT_VERSION}))
    assert sim.api.get("/contacts").status_code == 410
