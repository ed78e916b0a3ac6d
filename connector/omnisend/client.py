"""A small async client for the Omnisend API (version 2026-03-15).

Policy lives here (auth headers, timeouts, translating answers into the connector's errors); the
I/O is an injected `httpx.AsyncClient`, so tests can give it a `MockTransport` or point it at the
simulator. The API key never appears in an error, a log or a metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from connector.errors import Fatal, Retriable

API_VERSION = "2026-03-15"
DEFAULT_BASE_URL = "https://api.omnisend.com/api"
ENDPOINTS = (
    "batches.create",
    "batches.get",
    "batches.items",
    "batches.list",
    "tags.add",
    "tags.remove",
    "contacts.list",
)

RequestObserver = Callable[[str, str, float], None]  # endpoint, status, seconds


class RateLimited(Retriable):
    """429: wait `retry_after_s` before the next request of this brand."""


class FatalApiError(Fatal):
    """401, 403 or 410: the key is wrong, lacks a scope, or the API version is retired."""

    def __init__(self, status: int, title: str) -> None:
        hints = {
            401: "the API key is missing or not valid (OMNISEND_API_KEY)",
            403: "the API key lacks a scope the connector needs (contacts.read, contacts.write)",
            410: f"Omnisend retired API version {API_VERSION}; upgrade the connector",
        }
        super().__init__(f"Omnisend answered {status} {title}: {hints.get(status, '')}".strip())
        self.status = status


class Rejected(Exception):
    """Omnisend refused this request (a 4xx other than 401/403/408/410/429): retrying the same
    request cannot help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def problem_detail(response: httpx.Response) -> str:
    """A short, key-free description of an RFC 9457 problem body."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if not isinstance(body, dict):
        return response.reason_phrase
    return describe_problem(body)


def describe_problem(body: dict[str, Any]) -> str:
    """Title, detail and field errors of a problem body, at most 500 characters."""
    parts = [str(body.get("title") or ""), str(body.get("detail") or "")]
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            parts.append(f"{error.get('field')}: {error.get('message')}")
    return "; ".join(p for p in parts if p)[:500]


class OmnisendClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        observe: RequestObserver | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Omnisend-API-Key {api_key}",
            "Omnisend-Version": API_VERSION,
            "Accept": "application/json",
        }
        self._observe = observe or (lambda endpoint, status, seconds: None)

    async def call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """One request; raises `RateLimited`, `Retriable`, `FatalApiError` or `Rejected`."""
        start = time.monotonic()
        try:
            response = await self._http.request(
                method, self._base + path, json=json, params=params, headers=self._headers
            )
        except httpx.HTTPError as exc:
            self._observe(endpoint, "error", time.monotonic() - start)
            raise Retriable(f"{endpoint}: {type(exc).__name__}") from None  # no URL, no key
        self._observe(endpoint, str(response.status_code), time.monotonic() - start)
        _raise_for(endpoint, response)
        return response

    async def create_batch(self, items: list[dict[str, Any]]) -> str:
        body = {
            "method": "POST",
            "endpoint": "contacts",
            "items": items,
            "origin": "omnisend-connector",
        }
        response = await self.call("batches.create", "POST", "/batches", json=body)
        batch_id: str = response.json()["batchID"]
        return batch_id

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        response = await self.call("batches.get", "GET", f"/batches/{batch_id}")
        body: dict[str, Any] = response.json()
        return body

    async def batch_items(self, batch_id: str) -> dict[str, Any]:
        response = await self.call("batches.items", "GET", f"/batches/{batch_id}/items")
        body: dict[str, Any] = response.json()
        return body

    async def list_batches(self, limit: int) -> list[dict[str, Any]]:
        """The newest contact batches of the brand, whatever their status."""
        params = {"endpoint": "contacts", "limit": limit}
        response = await self.call("batches.list", "GET", "/batches", params=params)
        batches: list[dict[str, Any]] = response.json().get("batches") or []
        return batches

    async def change_tags(self, add: bool, tag: str, emails: list[str]) -> None:
        endpoint, method = ("tags.add", "POST") if add else ("tags.remove", "DELETE")
        await self.call(endpoint, method, "/contacts/tags", json={"emails": emails, "tags": [tag]})

    async def check_credentials(self) -> None:
        """The cheapest authenticated call; raises `FatalApiError` for a bad key."""
        await self.call("contacts.list", "GET", "/contacts", params={"limit": 1})


def _raise_for(endpoint: str, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    if status == 429:
        raise RateLimited(f"{endpoint}: rate limited", retry_after_s=_retry_after(response))
    if status in (401, 403, 410):
        raise FatalApiError(status, response.reason_phrase)
    if status == 408 or status >= 500:
        raise Retriable(f"{endpoint}: {status} {response.reason_phrase}")
    raise Rejected(status, problem_detail(response))


def _retry_after(response: httpx.Response) -> float | None:
    """`retryAfter` from the RateLimitProblem body, else a `Retry-After` header."""
    try:
        value = response.json().get("retryAfter")
    except (ValueError, AttributeError):
        value = None
    if value is None:
        value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
