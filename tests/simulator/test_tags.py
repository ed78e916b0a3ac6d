"""POST and DELETE /contacts/tags: validation, delayed application, unknown emails, reordering."""

from __future__ import annotations

from typing import Any

import pytest

from connector.simulator.config import Faults
from tests.simulator.conftest import MakeSim, Sim, contact


def _tags(sim: Sim, method: str, emails: list[str], tags: list[str]) -> int:
    r = sim.api.request(method, "/contacts/tags", json={"emails": emails, "tags": tags})
    return r.status_code


def test_add_is_applied_after_the_delay(make_sim: MakeSim) -> None:
    sim = make_sim(tag_delay_s=2.0)
    sim.api.post("/contacts", json=contact("a@example.com", tags=["other tool"]))
    assert _tags(sim, "POST", ["a@example.com"], ["segment: vip"]) == 202
    assert sim.contacts()["a@example.com"]["tags"] == ["other tool"]
    sim.clock.advance(2.0)
    assert sim.contacts()["a@example.com"]["tags"] == ["other tool", "segment: vip"]


def test_remove_keeps_other_tags_and_repeating_is_harmless(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("a@example.com", tags=["keep", "segment: vip"]))
    for _ in range(2):
        assert _tags(sim, "DELETE", ["a@example.com"], ["segment: vip"]) == 202
        assert _tags(sim, "POST", ["a@example.com"], ["x"]) == 202
    sim.clock.advance(5)
    assert sim.contacts()["a@example.com"]["tags"] == ["keep", "x"]


def test_unknown_emails_are_silently_ignored_and_counted(sim: Sim) -> None:
    assert _tags(sim, "POST", ["ghost@example.com"], ["t"]) == 202
    sim.clock.advance(5)
    assert sim.inspect("stats")["tagEmailsIgnored"] == 1


def test_tag_before_contact_exists_is_lost(sim: Sim) -> None:
    """Why the connector tags only after the upsert batch finished."""
    _tags(sim, "POST", ["late@example.com"], ["t"])
    sim.clock.advance(5)
    sim.api.post("/contacts", json=contact("late@example.com"))
    assert sim.contacts()["late@example.com"]["tags"] == []


def test_contact_ids_and_phones_select_too(sim: Sim) -> None:
    a = sim.api.post("/contacts", json=contact("a@example.com")).json()
    sim.api.post("/contacts", json={"identifiers": [{"type": "phone", "id": "+37060000000"}]})
    body = {"contactIDs": [a["id"]], "phones": ["+37060000000"], "tags": ["t"]}
    assert sim.api.post("/contacts/tags", json=body).status_code == 202
    sim.clock.advance(5)
    tagged = sim.api.get("/contacts", params={"tag": "t"}).json()["contacts"]
    assert len(tagged) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"emails": ["a@example.com"]}, "tags"),
        ({"emails": ["a@example.com"], "tags": []}, "tags"),
        ({"emails": ["a@example.com"], "tags": [f"t{i}" for i in range(101)]}, "tags"),
        ({"tags": ["t"]}, "contactIDs"),
        ({"emails": [f"e{i}@example.com" for i in range(251)], "tags": ["t"]}, "emails"),
        ({"phones": ["+1"] * 251, "tags": ["t"]}, "phones"),
        ({"contactIDs": ["x"] * 251, "tags": ["t"]}, "contactIDs"),
    ],
)
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_tag_call_validation(sim: Sim, method: str, body: dict[str, Any], field: str) -> None:
    r = sim.api.request(method, "/contacts/tags", json=body)
    assert r.status_code == 400
    assert field in {e["field"] for e in r.json()["errors"]}


def test_250_emails_and_segment_selector_are_accepted(sim: Sim) -> None:
    emails = [f"e{i}@example.com" for i in range(250)]
    assert _tags(sim, "POST", emails, ["t"]) == 202
    assert (
        sim.api.post("/contacts/tags", json={"segmentID": "s1", "tags": ["t"]}).status_code == 202
    )


def _final_tags(sim: Sim, ops: list[tuple[str, str]]) -> list[str]:
    sim.api.post("/contacts", json=contact("o@example.com"))
    for method, tag in ops:
        _tags(sim, method, ["o@example.com"], [tag])
        sim.clock.advance(0.25)
    sim.clock.advance(30)
    tags: list[str] = sim.contacts()["o@example.com"]["tags"]
    return tags


def test_in_order_application_without_the_fault(make_sim: MakeSim) -> None:
    ops = [("POST", "t"), ("DELETE", "t")] * 10
    assert _final_tags(make_sim(tag_delay_s=1.0), ops) == []


def test_reorder_fault_applies_operations_out_of_order(make_sim: MakeSim) -> None:
    ops = [("POST", "t"), ("DELETE", "t")] * 10
    outcomes = {
        tuple(_final_tags(make_sim(tag_delay_s=1.0, faults=Faults(seed=s, tag_reorder=True)), ops))
        for s in range(6)
    }
    assert ("t",) in outcomes  # some seed applied a POST after the final DELETE
