"""Contacts: upsert by exact email, PATCH, GET and listing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.simulator import contacts as contacts_module
from connector.simulator.contacts import ContactStore
from tests.simulator.conftest import Sim, contact


def test_post_creates_then_updates(sim: Sim) -> None:
    first = sim.api.post("/contacts", json=contact("ann@example.com", firstName="Ann"))
    assert first.status_code == 201
    assert re.fullmatch(r"[0-9a-f]{24}", first.json()["id"])
    again = sim.api.post("/contacts", json=contact("ann@example.com", lastName="Lee"))
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["firstName"] == "Ann"  # fields not sent are kept
    assert again.json()["lastName"] == "Lee"


def test_email_match_is_case_sensitive(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("ann@example.com"))
    r = sim.api.post("/contacts", json=contact("Ann@example.com"))
    assert r.status_code == 201
    assert set(sim.contacts()) == {"ann@example.com", "Ann@example.com"}


def test_tags_in_post_replace_existing_tags(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("t@example.com", tags=["vip", "source: shop"]))
    r = sim.api.post("/contacts", json=contact("t@example.com", tags=["segment: new"]))
    assert r.json()["tags"] == ["segment: new"]
    kept = sim.api.post("/contacts", json=contact("t@example.com", firstName="T"))
    assert kept.json()["tags"] == ["segment: new"]  # no tags key: tags untouched


def test_custom_properties_replace(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("c@example.com", customProperties={"a": 1, "b": 2}))
    r = sim.api.post("/contacts", json=contact("c@example.com", customProperties={"c": 3}))
    assert r.json()["customProperties"] == {"c": 3}


def test_invalid_identifiers_list_every_error(sim: Sim) -> None:
    body = {
        "identifiers": [{"type": "email", "id": "not-an-email"}, {"type": "fax", "id": "1"}],
        "gender": "x",
    }
    r = sim.api.post("/contacts", json=body)
    assert r.status_code == 400
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"identifiers[0].id", "identifiers[1].type", "gender"} <= fields


@pytest.mark.parametrize(
    ("field", "value"),
    [("birthdate", "01/02/1990"), ("birthdate", "1990-02-30"), ("countryCode", "DEU")],
)
def test_a_malformed_birthdate_or_country_code_is_refused(sim: Sim, field: str, value: str) -> None:
    """The contract: `birthdate` in YYYY-MM-DD, `countryCode` ISO 3166-1 alpha-2. A simulator
    that stored them would hide the contacts Omnisend refuses."""
    r = sim.api.post("/contacts", json=contact("b@example.com", **{field: value}))
    assert r.status_code == 400
    assert [e["field"] for e in r.json()["errors"]] == [field]
    ok = {"birthdate": "1990-02-01", "countryCode": "de"}[field]
    assert sim.api.post("/contacts", json=contact("b@example.com", **{field: ok})).is_success


def test_missing_identifiers_is_400(sim: Sim) -> None:
    r = sim.api.post("/contacts", json={"firstName": "Nobody"})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "identifiers"


def test_bad_json_is_400(sim: Sim) -> None:
    r = sim.api.post("/contacts", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_send_welcome_message_defaults_to_true_and_is_recorded(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("w@example.com"))
    quiet = {"identifiers": [{"type": "email", "id": "q@example.com", "sendWelcomeMessage": False}]}
    sim.api.post("/contacts", json=quiet)
    state = sim.contacts()
    assert state["w@example.com"]["welcomeMessages"] == 1
    assert state["q@example.com"]["welcomeMessages"] == 0


def _with_status(email: str, status: str, changed: str) -> dict[str, object]:
    channel = {"status": status, "statusChangedAt": changed}
    return {"identifiers": [{"type": "email", "id": email, "channels": {"email": channel}}]}


@pytest.mark.parametrize(
    "changed", ["2026-05-02", "2026-05-02T00:00:00", "2026-05-02 00:00:00Z", "yesterday"]
)
def test_a_status_change_time_that_is_no_rfc_3339_timestamp_is_refused(
    sim: Sim, changed: str
) -> None:
    """A bare date, or a time without its zone (read in the server's zone), is no RFC 3339
    timestamp: a simulator that took them would hide a connector that sent them."""
    r = sim.api.post("/contacts", json=_with_status("z@example.com", "subscribed", changed))
    assert r.status_code == 400
    assert [e["field"] for e in r.json()["errors"]] == [
        "identifiers[0].channels.email.statusChangedAt"
    ]


def test_older_channel_status_is_ignored(sim: Sim) -> None:
    sim.api.post(
        "/contacts", json=_with_status("s@example.com", "unsubscribed", "2026-05-02T00:00:00Z")
    )
    older = sim.api.post(
        "/contacts", json=_with_status("s@example.com", "subscribed", "2026-05-01T00:00:00Z")
    )
    assert older.json()["status"] == "unsubscribed"
    newer = sim.api.post(
        "/contacts", json=_with_status("s@example.com", "subscribed", "2026-05-03T00:00:00Z")
    )
    assert newer.json()["status"] == "subscribed"


def test_country_code_wins_and_name_derives_code(sim: Sim) -> None:
    r = sim.api.post("/contacts", json=contact("k@example.com", country="Germany"))
    assert r.json()["countryCode"] == "DE"
    r = sim.api.post(
        "/contacts", json=contact("k@example.com", country="Germany", countryCode="fr")
    )
    assert r.json()["countryCode"] == "FR"


def test_get_by_id(sim: Sim) -> None:
    created = sim.api.post("/contacts", json=contact("g@example.com")).json()
    assert sim.api.get(f"/contacts/{created['id']}").json()["email"] == "g@example.com"
    assert sim.api.get("/contacts/" + "0" * 24).status_code == 404
    assert sim.api.get("/contacts/not-an-id").status_code == 400


def test_list_filters_by_email_and_tag(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("a@example.com", tags=["x"]))
    sim.api.post("/contacts", json=contact("b@example.com", tags=["y"]))
    by_email = sim.api.get("/contacts", params={"email": "b@example.com"}).json()["contacts"]
    assert [c["email"] for c in by_email] == ["b@example.com"]
    by_tag = sim.api.get("/contacts", params={"tag": "x"}).json()["contacts"]
    assert [c["email"] for c in by_tag] == ["a@example.com"]
    none = sim.api.get("/contacts", params={"email": "zzz@example.com"}).json()
    assert none["contacts"] == []


def test_list_pages_with_cursors(sim: Sim) -> None:
    emails = {f"p{i}@example.com" for i in range(7)}
    for email in sorted(emails):
        sim.clock.advance(1)
        sim.api.post("/contacts", json=contact(email))
    seen: list[str] = []
    params: dict[str, str] = {"limit": "3"}
    while True:
        page = sim.api.get("/contacts", params=params).json()
        seen += [c["email"] for c in page["contacts"]]
        if not page["paging"]["hasMore"]:
            break
        params = {"limit": "3", "after": page["paging"]["cursors"]["after"]}
    assert len(seen) == 7
    assert set(seen) == emails
    assert seen[0] == "p6@example.com"  # newest first by default


def test_list_rejects_bad_limit_and_filter_combinations(sim: Sim) -> None:
    assert sim.api.get("/contacts", params={"limit": "251"}).status_code == 400
    assert sim.api.get("/contacts", params={"limit": "0"}).status_code == 400
    both = sim.api.get("/contacts", params={"tag": "x", "status": "subscribed"})
    assert both.status_code == 400
    since = sim.api.get(
        "/contacts", params={"updatedAtFrom": "2026-01-01T00:00:00Z", "email": "a@b.co"}
    )
    assert since.status_code == 400


def test_patch_by_email(sim: Sim) -> None:
    sim.api.post("/contacts", json=contact("p@example.com", firstName="P", lastName="Q"))
    r = sim.api.patch("/contacts", params={"email": "p@example.com"}, json={"firstName": "R"})
    assert r.status_code == 200
    assert (r.json()["firstName"], r.json()["lastName"]) == ("R", "Q")
    missing = sim.api.patch(
        "/contacts", params={"email": "none@example.com"}, json={"firstName": "x"}
    )
    assert missing.status_code == 404


def test_patch_with_taken_identifier_is_409(sim: Sim) -> None:
    a = sim.api.post("/contacts", json=contact("a@example.com")).json()
    sim.api.post("/contacts", json=contact("b@example.com"))
    r = sim.api.patch(f"/contacts/{a['id']}", json=contact("b@example.com"))
    assert r.status_code == 409
    by_email = sim.api.patch(
        "/contacts", params={"email": "a@example.com"}, json=contact("b@example.com")
    )
    assert by_email.status_code == 409
    assert sim.contacts()["a@example.com"]["identifiers"] == [
        {"type": "email", "id": "a@example.com", "channels": {}}
    ]


def test_patch_by_id_unknown_is_404(sim: Sim) -> None:
    assert sim.api.patch("/contacts/" + "a" * 24, json={"firstName": "x"}).status_code == 404


def _store_with(count: int, tag_every: int) -> ContactStore:
    store = ContactStore()
    for i in range(count):
        tags = ["vip"] if i % tag_every == 0 else []
        body = {"identifiers": [{"type": "email", "id": f"c{i}@example.com"}], "tags": tags}
        store.upsert(body, float(i))
    return store


def _all_pages(store: ContactStore, query: dict[str, str]) -> list[str]:
    seen: list[str] = []
    params = dict(query)
    while True:
        page = store.list(params)
        seen += [c["email"] for c in page["contacts"]]
        if not page["paging"]["hasMore"]:
            return seen
        params = {**query, "after": page["paging"]["cursors"]["after"]}


def test_a_page_after_the_first_costs_the_page_not_every_contact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store_with(2_000, 3)
    examined = [0]
    matches = contacts_module._matches

    def counting(contact: Any, query: dict[str, str]) -> bool:
        examined[0] += 1
        return matches(contact, query)

    monkeypatch.setattr(contacts_module, "_matches", counting)
    first = store.list({"tag": "vip", "limit": "250"})
    assert examined[0] == 2_000  # the first page filters once
    cursor = first["paging"]["cursors"]["after"]
    store.list({"tag": "vip", "limit": "250", "after": cursor})
    assert examined[0] == 2_000  # the next pages do not
    store.retag(store.find("email", "c1@example.com"), ["vip"], add=True)  # type: ignore[arg-type]
    store.list({"tag": "vip", "limit": "250", "after": cursor})
    assert examined[0] == 4_000  # a change is seen at the next page


@given(
    count=st.integers(0, 60),
    tag_every=st.integers(1, 5),
    limit=st.integers(1, 7),
    changes=st.lists(st.tuples(st.integers(0, 59), st.booleans()), max_size=10),
)
def test_paging_through_a_tag_lists_exactly_its_contacts(
    count: int, tag_every: int, limit: int, changes: list[tuple[int, bool]]
) -> None:
    store = _store_with(count, tag_every)
    for index, add in changes:
        if (found := store.find("email", f"c{index}@example.com")) is not None:
            store.retag(found, ["vip"], add)
    query = {"tag": "vip", "limit": str(limit)}
    expected = {c.email for c in store.by_id.values() if "vip" in c.tags}
    seen = _all_pages(store, query)
    assert len(seen) == len(set(seen))
    assert set(seen) == expected
