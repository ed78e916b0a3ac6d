"""Authentication, API version and RFC 9457 problem bodies."""

from __future__ import annotations

import pytest

from tests.simulator.conftest import Sim, contact


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
