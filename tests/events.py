"""Builders of segment events for tests."""

from __future__ import annotations

import time
import uuid
from typing import Any


def event(
    email: str | None = "ann@example.com",
    *,
    change: str = "ENTERED",
    segment_id: str = "seg-1",
    segment_name: str = "VIP",
    occurred_at: int | None = None,
    profile_id: str = "p-1",
    event_id: str | None = None,
    **profile: str,
) -> dict[str, Any]:
    attributes = dict(profile)
    if email is not None:
        attributes["email"] = email
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "occurred_at": occurred_at if occurred_at is not None else int(time.time() * 1000),
        "segment_id": segment_id,
        "segment_name": segment_name,
        "change": change,
        "profile_id": profile_id,
        "profile": attributes,
    }
