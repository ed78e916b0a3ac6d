"""How a simulated answer goes on the wire: its status, content type and body bytes, and how the
answer faults spoil it (`Faults.garbage_rate`). Shared by the HTTP server and the in-process
transport, so both spoil answers the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# The ways an answer is not what the contract says.
GARBLE_KINDS = (
    "html",  # a gateway's error page, with a 2xx
    "truncated",  # JSON cut in the middle
    "empty",  # no body at all
    "wrong_type",  # JSON, but a list or a string instead of an object
    "missing_fields",  # the fields a client needs are gone
    "odd_numbers",  # numbers as strings, negative or huge; retryAfter of a day or an object
    "wrong_content_type",  # the right JSON, labelled text/html
)
ODD_RETRY_AFTER: tuple[Any, ...] = (
    86400,
    "Infinity",
    {"seconds": 5},
    -3,
    "soon",
    1e308,
    None,
    10**400,  # past any float
)
# Odd values for a batch's fields, by variant.
_ODD_COUNTS: tuple[Any, ...] = ("many", -1, 10**400, 1e308, None, [], "7")
_ODD_TIMES: tuple[Any, ...] = (
    12345,
    ("2000-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),  # thirty years for one batch
    ("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"),  # ended before it began
    "yesterday",
)
_ODD_BATCH_IDS: tuple[Any, ...] = ("abc\t", "../contacts", 42, "")
_NEEDED = ("batchID", "status", "responses", "errors", "contacts", "batches", "paging")
_HTML = b"<html><head><title>502 Bad Gateway</title></head><body>upstream error</body></html>"
# A web application firewall's refusal (`Faults.blocked_values`), not one of the odd answers.
_BLOCKED = b"<html><head><title>Access denied</title></head><body>Request blocked</body></html>"


@dataclass(frozen=True)
class Garble:
    kind: str
    variant: int = 0  # which odd value, for kinds that have several


def render(status: int, body: Any, garble: Garble | None = None) -> tuple[str, bytes]:
    """(content type, body bytes) of an answer; an empty body has no content type."""
    payload = b"" if body is None else json.dumps(body).encode()
    content_type = "application/json"
    if status >= 400 and isinstance(body, dict) and "title" in body:
        content_type = "application/problem+json"
    if garble is None:
        return (content_type if payload else ""), payload
    return _garbled(garble, body, payload, content_type)


def _garbled(garble: Garble, body: Any, payload: bytes, content_type: str) -> tuple[str, bytes]:
    whole = {
        "html": ("text/html", _HTML),
        "truncated": (content_type, (payload or b'{"batchID": "')[: max(1, len(payload) // 2)]),
        "empty": ("", b""),
        "wrong_type": (content_type, json.dumps([body] if body is not None else "ok").encode()),
        "wrong_content_type": ("text/html", payload),
        "blocked": ("text/html", _BLOCKED),
    }
    if garble.kind in whole:
        return whole[garble.kind]
    if not isinstance(body, dict):
        return content_type, payload
    if garble.kind == "missing_fields":
        return content_type, json.dumps(
            {k: v for k, v in body.items() if k not in _NEEDED}
        ).encode()
    return content_type, json.dumps(_odd_numbers(body, garble.variant)).encode()


def _odd_numbers(body: dict[str, Any], variant: int) -> dict[str, Any]:
    """Numbers, times and ids of the wrong kind; each `variant` picks other odd values."""
    odd = dict(body)
    for name in ("errorsCount", "totalCount", "finishedCount"):
        if name in odd:
            odd[name] = _ODD_COUNTS[variant % len(_ODD_COUNTS)]
    if "createdAt" in odd:
        times = _ODD_TIMES[variant % len(_ODD_TIMES)]
        if isinstance(times, tuple):
            odd["createdAt"], odd["endedAt"] = times
        else:
            odd["createdAt"] = times
    if "batchID" in odd and variant % 3 == 0:
        odd["batchID"] = _ODD_BATCH_IDS[variant % len(_ODD_BATCH_IDS)]
    if "retryAfter" in odd:
        odd["retryAfter"] = ODD_RETRY_AFTER[variant % len(ODD_RETRY_AFTER)]
    return odd
