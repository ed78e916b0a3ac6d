"""Omnisend's answers, parsed at one boundary into typed results.

Whatever comes back (HTML from a gateway, truncated JSON, a batch without `batchID`, a
`retryAfter` that is an object, numbers that are strings) either parses into one of these types
or raises `UnexpectedAnswer`, a retriable failure of that request. Nothing past this module reads
a raw body, so no odd answer can raise anywhere else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from connector.core.errors import Retriable

# A `retryAfter` longer than this is taken as this: a wrong answer must not idle a connection
# for a day. Omnisend's window is a minute; two minutes covers any honest answer.
MAX_RETRY_AFTER_S = 120.0
ENDED = frozenset({"finished", "stopped"})
# Omnisend's ids are 24 hex digits; this admits any plain id, nothing a URL would read otherwise.
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A contact id longer than this is not one (it would only be copied into a result record).
MAX_CONTACT_ID_CHARS = 64


class UnexpectedAnswer(Retriable):
    """A 2xx (or 1xx, 3xx) answer that is not what the contract says. The request may have
    been carried out (a 2xx): `maybe_applied` says so."""

    def __init__(self, endpoint: str, status: int, why: str, content_type: str = "") -> None:
        super().__init__(
            f"{endpoint}: unexpected answer {status}: {why}", maybe_applied=200 <= status < 300
        )
        self.endpoint = endpoint
        self.status = status
        self.why = why
        self.content_type = content_type


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """`GET /batches/{id}` or one entry of `GET /batches`."""

    batch_id: str
    status: str  # pending, inProgress, finished, stopped; anything else counts as not ended
    errors_count: int | None  # None: not given or not a count, so the items must be read
    duration_s: float | None  # endedAt - createdAt, when Omnisend gave both

    @property
    def ended(self) -> bool:
        return self.status in ENDED


@dataclass(frozen=True, slots=True)
class BatchItems:
    """`GET /batches/{id}/items`: which emails Omnisend accepted, which it refused and why.
    An email in neither was not processed (a stopped batch)."""

    status: BatchStatus
    accepted: frozenset[str]
    refused: dict[str, tuple[int, str]]  # email -> (responseCode, problem detail)
    contact_ids: dict[str, str] = field(default_factory=dict)  # accepted email -> contactID


@dataclass(frozen=True, slots=True)
class ContactsPage:
    """`GET /contacts`: the emails of one page and the cursor of the next (None: last page)."""

    emails: list[str]
    after: str | None
    has_more: bool | None = None  # `paging.hasMore`, when it is said


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """How long a 429 asks to wait; `clamped_from` is the answer when it was not usable as
    given (too long, negative, not a finite number)."""

    seconds: float | None
    clamped_from: str | None = None


def json_body(endpoint: str, response: httpx.Response) -> Any:
    """The JSON body of a 2xx, or `UnexpectedAnswer`."""
    content_type = response.headers.get("content-type", "")
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        why = "the body is not JSON" if response.content else "the body is empty"
        raise UnexpectedAnswer(endpoint, response.status_code, why, content_type) from None


def _object(endpoint: str, status: int, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise UnexpectedAnswer(endpoint, status, f"the body is a JSON {type(body).__name__}")
    return body


def batch_created(endpoint: str, response: httpx.Response) -> str:
    body = _object(endpoint, response.status_code, json_body(endpoint, response))
    batch_id = body.get("batchID")
    if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        # It becomes part of a URL: anything but a plain id would read another resource.
        raise UnexpectedAnswer(endpoint, response.status_code, "no usable batchID")
    return batch_id


def batch_status(endpoint: str, status: int, body: Any) -> BatchStatus:
    body = _object(endpoint, status, body)
    batch_id, state = body.get("batchID"), body.get("status")
    if not isinstance(batch_id, str) or not isinstance(state, str):
        raise UnexpectedAnswer(endpoint, status, "no batchID or status")
    return BatchStatus(
        batch_id,
        state,
        _count(body.get("errorsCount")),
        _duration_s(body.get("createdAt"), body.get("endedAt")),
    )


def batch_list(endpoint: str, response: httpx.Response) -> list[BatchStatus]:
    """The batches of a list page that parse; one odd entry does not spoil the others (a batch
    missing from the page is read by its id)."""
    body = _object(endpoint, response.status_code, json_body(endpoint, response))
    entries = body.get("batches")
    if not isinstance(entries, list):
        raise UnexpectedAnswer(endpoint, response.status_code, "no batches list")
    out: list[BatchStatus] = []
    for entry in entries:
        try:
            out.append(batch_status(endpoint, response.status_code, entry))
        except UnexpectedAnswer:
            continue
    return out


def batch_items(endpoint: str, response: httpx.Response) -> BatchItems:
    status = response.status_code
    body = _object(endpoint, status, json_body(endpoint, response))
    header = batch_status(endpoint, status, body)
    accepted: set[str] = set()
    refused: dict[str, tuple[int, str]] = {}
    contact_ids: dict[str, str] = {}
    for key in ("responses", "errors"):
        items = body.get(key) or []
        if not isinstance(items, list):
            raise UnexpectedAnswer(endpoint, status, f"{key} is not a list")
        for item in items:
            email = _item_email(item)
            if email is None:
                continue  # not one of ours: the email it lacks is retried as not processed
            code = _count(item.get("responseCode")) or 0
            if 200 <= code < 300:
                accepted.add(email)
                if (contact_id := _item_contact_id(item)) is not None:
                    contact_ids[email] = contact_id
            else:
                refused[email] = (code, _item_detail(item))
    accepted -= set(refused)
    ids = {email: contact_id for email, contact_id in contact_ids.items() if email in accepted}
    return BatchItems(header, frozenset(accepted), refused, ids)


def contacts_page(endpoint: str, response: httpx.Response) -> ContactsPage:
    body = _object(endpoint, response.status_code, json_body(endpoint, response))
    contacts = body.get("contacts")
    if not isinstance(contacts, list):
        raise UnexpectedAnswer(endpoint, response.status_code, "no contacts list")
    emails = [
        c["email"] for c in contacts if isinstance(c, dict) and isinstance(c.get("email"), str)
    ]
    paging = body.get("paging")
    cursors = paging.get("cursors") if isinstance(paging, dict) else None
    after = cursors.get("after") if isinstance(cursors, dict) else None
    more = paging.get("hasMore") if isinstance(paging, dict) else None
    return ContactsPage(
        emails,
        after if isinstance(after, str) and after else None,
        more if isinstance(more, bool) else None,
    )


def retry_after(response: httpx.Response) -> RetryAfter:
    """`retryAfter` of the RateLimitProblem body, else a `Retry-After` header, clamped to
    `MAX_RETRY_AFTER_S`."""
    value: Any = None
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        value = body.get("retryAfter")
    if value is None:
        value = response.headers.get("Retry-After")
    if value is None:
        return RetryAfter(None)
    seconds = _number(value)
    if seconds is None or seconds < 0:
        return RetryAfter(None, clamped_from=str(value)[:40])
    if seconds > MAX_RETRY_AFTER_S:
        return RetryAfter(MAX_RETRY_AFTER_S, clamped_from=str(value)[:40])
    return RetryAfter(seconds)


def describe_problem(body: Any) -> str:
    """Title, detail and field errors of an RFC 9457 problem body, at most 500 characters."""
    if not isinstance(body, dict):
        return ""
    parts = [str(body.get("title") or ""), str(body.get("detail") or "")]
    errors = body.get("errors")
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            parts.append(f"{error.get('field')}: {error.get('message')}")
    return writable("; ".join(p for p in parts if p)[:500])


def writable(text: str) -> str:
    """`text` as UTF-8 can hold it: JSON may escape a lone surrogate (`"\\ud83d"`), which
    `json.loads` takes and no encoder writes; kept visible as its escape. Text from an answer
    goes into dead letters, results and logs, and one that cannot be written stops the loop
    (again on every restart, as the same answer comes back)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def is_json_object(response: httpx.Response) -> bool:
    """The body is a JSON object, as every answer of Omnisend's is (its errors are RFC 9457
    problem details); a gateway's page is not."""
    try:
        return isinstance(response.json(), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def problem_detail(response: httpx.Response) -> str:
    """A short, key-free description of an error answer, whatever its body."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        return response.reason_phrase
    return describe_problem(body) or response.reason_phrase


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):  # not a number, or an integer past any float
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    if number is None or number < 0 or number != int(number):
        return None
    return int(number)


def _duration_s(created: Any, ended: Any) -> float | None:
    if not isinstance(created, str) or not isinstance(ended, str):
        return None
    try:
        start = datetime.fromisoformat(created.replace("Z", "+00:00"))
        end = datetime.fromisoformat(ended.replace("Z", "+00:00"))
        seconds = (end - start).total_seconds()
    except (ValueError, TypeError, OverflowError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _item_email(item: Any) -> str | None:
    request = item.get("request") if isinstance(item, dict) else None
    identifiers = request.get("identifiers") if isinstance(request, dict) else None
    for ident in identifiers if isinstance(identifiers, list) else []:
        if isinstance(ident, dict) and ident.get("type") == "email":
            email = ident.get("id")
            return email if isinstance(email, str) else None
    return None


def _item_contact_id(item: dict[str, Any]) -> str | None:
    """The contact id in an accepted item's response: a ContactResponse, whose `id` it is
    (`contactID` in the older versions' answers); None when the answer does not name it
    sensibly."""
    response = item.get("response")
    if not isinstance(response, dict):
        return None
    contact_id = response.get("id") or response.get("contactID")
    if isinstance(contact_id, str) and 0 < len(contact_id) <= MAX_CONTACT_ID_CHARS:
        return contact_id if writable(contact_id) is contact_id else None
    return None


def _item_detail(item: dict[str, Any]) -> str:
    return describe_problem(item.get("response"))
