"""Simulated asynchronous batches: accepted at once, processed item by item on the clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connector.simulator.contacts import iso, new_object_id

PENDING, IN_PROGRESS, FINISHED, STOPPED = "pending", "inProgress", "finished", "stopped"
BATCH_STATUSES = (PENDING, IN_PROGRESS, FINISHED, STOPPED)


@dataclass
class ItemResult:
    item_id: str
    request: Any
    code: int
    response: dict[str, Any] | None  # a problem body, or None to render the contact when read
    contact_id: str | None = None


@dataclass
class Batch:
    id: str
    method: str
    endpoint: str
    origin: str | None
    items: list[Any]
    created_at: float
    start_at: float
    ended_at: float | None = None
    stopped: bool = False
    item_ids: list[str] = field(default_factory=list)
    results: list[ItemResult] = field(default_factory=list)
    errors_count: int = 0

    def status(self, now: float) -> str:
        if self.ended_at is not None:
            return STOPPED if self.stopped else FINISHED
        return IN_PROGRESS if now >= self.start_at else PENDING

    def summary(self, now: float) -> dict[str, Any]:
        """The Batch representation without per-item results."""
        body: dict[str, Any] = {
            "batchID": self.id,
            "method": self.method,
            "endpoint": self.endpoint,
            "status": self.status(now),
            "createdAt": iso(self.created_at),
            "totalCount": len(self.items),
            "finishedCount": len(self.results),
            "errorsCount": self.errors_count,
        }
        if self.origin is not None:
            body["origin"] = self.origin
        if now >= self.start_at:
            body["startedAt"] = iso(self.start_at)
        if self.ended_at is not None:
            body["endedAt"] = iso(self.ended_at)
        return body


def new_batch(body: dict[str, Any], now: float, start_at: float) -> Batch:
    items = list(body["items"])
    return Batch(
        id=new_object_id(),
        method=body["method"],
        endpoint=body["endpoint"],
        origin=body.get("origin"),
        items=items,
        created_at=now,
        start_at=start_at,
        item_ids=[new_object_id() for _ in items],
    )
