"""A mixed segment-change workload and the Omnisend state it must end in.

The oracle is computed from the event log alone, by the rule `tests/unit/test_coalesce.py`'s
`one_by_one` states too: membership per (email, segment tag) by `occurred_at`; attributes per
email (per export: here there is one) by `occurred_at`, from entries only; a contact exists once
it entered any segment (ties: the later event wins). So a contact's fields are those of its
latest entry, and it carries a segment's tag when its latest event for that segment is an
entry. Resilience tests compare the simulator's final state with it, contact by contact, field
by field, tag by tag."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from connector.core.mapping import DEFAULT_TAG_TEMPLATE

T0 = 1_790_000_000_000
SEGMENTS = [("seg-vip", "VIP"), ("seg-churn", "Churn"), ("seg-new", "New"), ("seg-b2b", "B2B")]


@dataclass(frozen=True)
class Expected:
    fields: dict[str, str]
    tags: frozenset[str]


def workload(n_events: int, n_contacts: int, seed: int = 7) -> list[dict[str, Any]]:
    """Entries, exits, re-entries with new attributes and redelivered duplicates, in
    `occurred_at` order per contact (a late event after a crash can only be judged with state the
    connector does not keep across restarts; late events are tested without crashes)."""
    rng = random.Random(seed)
    clock = {i: T0 + i for i in range(n_contacts)}
    member: dict[tuple[int, str], bool] = {}
    events: list[dict[str, Any]] = []
    while len(events) < n_events:
        i = rng.randrange(n_contacts)
        if events and rng.random() < 0.03:
            events.append(dict(rng.choice(events[-500:])))  # a redelivered duplicate
            continue
        segment_id, segment_name = rng.choice(SEGMENTS)
        inside = member.get((i, segment_id), False)
        change = "EXITED" if inside and rng.random() < 0.6 else "ENTERED"
        member[(i, segment_id)] = change == "ENTERED"
        clock[i] += rng.randint(1, 5000)
        events.append(
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "occurred_at": clock[i],
                "segment_id": segment_id,
                "segment_name": segment_name,
                "change": change,
                "profile_id": f"p{i}",
                "profile": {
                    "email": f"c{i}@example.com",
                    "first_name": rng.choice(["Ann", "Bob", "Cleo", "Dan", "Eve"]),
                    "city": rng.choice(["Vilnius", "Kaunas", "Riga", "Tallinn"]),
                },
            }
        )
    return events


def expected_state(events: list[dict[str, Any]]) -> dict[str, Expected]:
    latest_entry: dict[str, tuple[int, dict[str, str]]] = {}
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    for e in events:
        email = e["profile"]["email"].strip().lower()
        t = e["occurred_at"]
        if e["change"] == "ENTERED" and t >= latest_entry.get(email, (-1, {}))[0]:
            fields = {"firstName": e["profile"]["first_name"], "city": e["profile"]["city"]}
            latest_entry[email] = (t, fields)
        tag = DEFAULT_TAG_TEMPLATE.format(segment_name=e["segment_name"])
        if t >= latest.get((email, tag), (-1, ""))[0]:
            latest[(email, tag)] = (t, e["change"])
    return {
        email: Expected(
            fields,
            frozenset(tag for (m, tag), (_, c) in latest.items() if m == email and c == "ENTERED"),
        )
        for email, (_, fields) in latest_entry.items()
    }


def actual_state(sim_url: str, brand: str = "brand-1") -> dict[str, Expected]:
    contacts = httpx.get(f"{sim_url}/_sim/state", timeout=30).json()["brands"][brand]["contacts"]
    return {
        c["email"]: Expected(
            {"firstName": c.get("firstName"), "city": c.get("city")}, frozenset(c["tags"])
        )
        for c in contacts
    }


def differences(expected: dict[str, Expected], actual: dict[str, Expected]) -> list[str]:
    """What differs, one line per contact, at most 20 lines."""
    lines = [f"missing contact {email}" for email in expected.keys() - actual.keys()]
    lines += [f"unexpected contact {email}" for email in actual.keys() - expected.keys()]
    for email in sorted(expected.keys() & actual.keys()):
        want, got = expected[email], actual[email]
        if want != got:
            lines.append(f"{email}: expected {want}, got {got}")
    return lines[:20]


def wait_for_state(sim_url: str, expected: dict[str, Expected], timeout_s: float = 30) -> list[str]:
    """The differences once the simulator matches, or those left at the deadline (queued tag
    operations apply after the simulator's delay)."""
    deadline = time.monotonic() + timeout_s
    diff = differences(expected, actual_state(sim_url))
    while diff and time.monotonic() < deadline:
        time.sleep(0.5)
        diff = differences(expected, actual_state(sim_url))
    return diff
