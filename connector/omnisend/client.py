"""A small async client for the Omnisend API (version 2026-03-15).

Policy lives here (auth headers, translating answers into the connector's errors and typed
results, `connector.omnisend.answers`); the I/O is an injected httpx transport, so tests can
give it a `MockTransport` or point it at the simulator. The API key never appears in an error, a
log or a metric.

It calls the transport itself rather than through an `httpx.AsyncClient`: the client's cookie
jar, auth flow, redirect handling and URL merging have no work to do here (the connector sets
its own headers and follows no redirect) yet cost about a quarter of the CPU of a request (a
tag call of 100 emails against the simulator: about 470 µs of CPU through the client, 330 µs
without it).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from connector import __version__
from connector.core.errors import Fatal, Retriable
from connector.core.mapping import EMAIL_STATUS_FIELD
from connector.logs import shown_url
from connector.omnisend import answers
from connector.omnisend.answers import BatchItems, BatchStatus, ContactsPage, UnexpectedAnswer

API_VERSION = "2026-03-15"
USER_AGENT = f"omnisend-connector/{__version__}"
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
# Endpoints that must exist: a 404 or 405 there means the base URL (or a proxy) is wrong.
_WRITES = frozenset({"batches.create", "tags.add", "tags.remove"})
# Failures that happen before the request left: it cannot have been carried out.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
)

# httpx's own default: five seconds to connect, for each read and write, and for a connection.
DEFAULT_TIMEOUT = httpx.Timeout(5.0)
RequestObserver = Callable[[str, str, float], None]  # endpoint, status, seconds
# The largest answer read: a page of 250 contacts or batches is well under a megabyte; a body
# past this is not Omnisend's, and must not fill the memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


# Content encodings read as they come; gzip and deflate (what requests accept) are inflated here,
# any other is kept as sent (and is then no JSON: an unexpected answer).
_PLAIN = ("", "identity")
_INFLATED = ("gzip", "x-gzip", "deflate")
_INFLATE_STEP = 1 << 20


async def _read_bounded(streamed: httpx.Response, encoding: str) -> bytes:
    """The body, decoded, but never more than `MAX_ANSWER_BYTES` of it: a compressed answer is
    inflated at most that far (64 kB of gzip can hold 64 MB), so it is limited by what it
    decodes to, not by what it weighs. A corrupt or cut one is an `httpx.DecodingError`."""
    if streamed.is_stream_consumed:  # a transport that read it already (a test's MockTransport)
        if len(streamed.content) > MAX_ANSWER_BYTES:
            raise _TooLarge(streamed.status_code)
        return streamed.content
    body = bytearray()
    inflater = _Inflater(encoding) if encoding in _INFLATED else None
    weight = 0  # what came over the wire: bytes after a gzip stream's end inflate to nothing
    try:
        async for chunk in streamed.aiter_raw():
            weight += len(chunk)
            if weight > MAX_ANSWER_BYTES:
                raise _TooLarge(streamed.status_code)
            if inflater is None:
                body += chunk
            else:
                inflater.feed(chunk, body)
            if len(body) > MAX_ANSWER_BYTES:
                raise _TooLarge(streamed.status_code)
        if inflater is not None and not inflater.whole:
            raise httpx.DecodingError(f"a {encoding} answer that ends early")
    except zlib.error as exc:
        raise httpx.DecodingError(f"a corrupt {encoding} answer: {exc}") from None
    return bytes(body)


class _Inflater:
    """A gzip or deflate body inflated into `body` a megabyte at a time, and never more than
    one byte past `MAX_ANSWER_BYTES` (enough to know). `deflate` is meant with a zlib header,
    but some servers send the raw stream: tried once, if the first bytes are no zlib stream."""

    def __init__(self, encoding: str) -> None:
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a zlib or a gzip header
        self._headless = encoding == "deflate"
        self._head = b""  # deflate's first byte, until the second shows which it is
        self._received = False

    def feed(self, data: bytes, body: bytearray) -> None:
        self._received = self._received or bool(data)
        if self._headless:  # the zlib header is two bytes: judged on fewer, raw looked zlib
            data, self._head = self._head + data, b""
            if len(data) < 2:
                self._head = data
                return
        while True:
            room = min(_INFLATE_STEP, MAX_ANSWER_BYTES + 1 - len(body))
            try:
                out = self._inflate.decompress(data, room)
            except zlib.error:
                if not self._headless or body:
                    raise
                self._inflate, self._headless = zlib.decompressobj(-zlib.MAX_WBITS), False
                continue
            self._headless = False
            body += out
            data = self._inflate.unconsumed_tail
            if len(body) > MAX_ANSWER_BYTES or (not data and len(out) < room):
                return  # too much (the caller refuses the answer), or all of this piece is out

    @property
    def whole(self) -> bool:
        """The stream ended as it should (an empty body is empty whatever its encoding)."""
        return not self._received or self._inflate.eof


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class RateLimited(Retriable):
    """429: wait `retry_after_s` before the next request of this brand. `clamped_from` is the
    answer's own value when it was not usable as given (see `answers.MAX_RETRY_AFTER_S`)."""

    def __init__(self, message: str, retry_after: answers.RetryAfter) -> None:
        super().__init__(message, retry_after_s=retry_after.seconds)
        self.clamped_from = retry_after.clamped_from


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


class WrongEndpoint(Fatal):
    """404 or 405 where the API has an endpoint: the base URL (or a proxy) is wrong."""

    def __init__(self, endpoint: str, status: int, base_url: str) -> None:
        super().__init__(
            f"Omnisend answered {status} for {endpoint} at {shown_url(base_url)}: check "
            "OMNISEND_BASE_URL (it ends in /api) and any proxy between the connector and Omnisend"
        )


class Rejected(Exception):
    """Omnisend refused this request (a 4xx other than 401/403/408/410/429): retrying the same
    request cannot help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def contact_request(email: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The ContactRequest body of an upsert (an item of `create_batch`): never `tags` (they
    would replace the contact's tags), always `sendWelcomeMessage: false`, a channel status only
    when configured."""
    identifier: dict[str, Any] = {"type": "email", "id": email, "sendWelcomeMessage": False}
    body = fields.copy()  # one per contact of every batch: a copy, not a filtering comprehension
    status = body.pop(EMAIL_STATUS_FIELD, None)
    if status is not None:
        identifier["channels"] = {"email": status}
    body["identifiers"] = [identifier]
    return body


class OmnisendClient:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        observe: RequestObserver | None = None,
        deadline_s: float = 30.0,
        gate: asyncio.Semaphore | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """`timeout`: httpx's, for connecting, each read and write, and a free connection;
        `deadline_s` bounds the whole exchange."""
        self._transport = transport
        self._timeouts = {"timeout": timeout.as_dict()}
        # Requests of many clients sharing one connection pool wait here, in order and at O(1)
        # each, rather than in the pool's own queue (which it scans for every request).
        self._gate = gate
        # httpx's timeouts bound each read, not the answer: one dripping a byte at a time
        # would hold a request (and its slot) forever. This bounds the whole exchange.
        self._deadline_s = deadline_s
        self._base = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Omnisend-API-Key {api_key}",
            "Omnisend-Version": API_VERSION,
            "Accept": "application/json",
            # What an httpx.AsyncClient would add on its own: gateways may refuse a request
            # without a User-Agent, and compressed answers are decoded by httpx.
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "gzip, deflate",
        }
        self._json_headers = self._headers | {"Content-Type": "application/json"}
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
        """One request, answered 2xx; raises `RateLimited`, `Retriable` (`UnexpectedAnswer`
        among them), `FatalApiError`, `WrongEndpoint` or `Rejected`."""
        if self._gate is None:
            return await self._call(endpoint, method, path, json, params)
        try:
            # Bounded: other brands' requests hanging on the shared pool must not stall this
            # one forever; it is retried with a back-off, never sent.
            async with asyncio.timeout(self._deadline_s):
                await self._gate.acquire()
        except TimeoutError:
            self._observe(endpoint, "error", 0.0)
            raise Retriable(
                f"{endpoint}: no free connection to Omnisend within {self._deadline_s:g} s",
                maybe_applied=False,
            ) from None
        try:
            return await self._call(endpoint, method, path, json, params)
        finally:
            self._gate.release()

    async def _call(
        self, endpoint: str, method: str, path: str, json: Any, params: dict[str, Any] | None
    ) -> httpx.Response:
        start = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline_s):
                response = await self._read(method, path, json, params)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self._observe(endpoint, "error", time.monotonic() - start)
            raise Retriable(  # no URL, no key
                f"{endpoint}: {type(exc).__name__}", maybe_applied=not isinstance(exc, _NOT_SENT)
            ) from None
        except TimeoutError:
            self._observe(endpoint, "error", time.monotonic() - start)
            raise Retriable(
                f"{endpoint}: no whole answer within {self._deadline_s:g} s", maybe_applied=True
            ) from None
        except _TooLarge as exc:
            self._observe(endpoint, str(exc.status), time.monotonic() - start)
            raise UnexpectedAnswer(
                endpoint, exc.status, f"an answer over {MAX_ANSWER_BYTES} bytes"
            ) from None
        self._observe(endpoint, str(response.status_code), time.monotonic() - start)
        self._raise_for(endpoint, response)
        return response

    async def create_batch(self, items: list[dict[str, Any]]) -> str:
        body = {
            "method": "POST",
            "endpoint": "contacts",
            "items": items,
            "origin": "omnisend-connector",
        }
        response = await self.call("batches.create", "POST", "/batches", json=body)
        return answers.batch_created("batches.create", response)

    async def get_batch(self, batch_id: str) -> BatchStatus:
        response = await self.call("batches.get", "GET", f"/batches/{batch_id}")
        body = answers.json_body("batches.get", response)
        return answers.batch_status("batches.get", response.status_code, body)

    async def batch_items(self, batch_id: str) -> BatchItems:
        response = await self.call("batches.items", "GET", f"/batches/{batch_id}/items")
        return answers.batch_items("batches.items", response)

    async def list_batches(self, limit: int) -> list[BatchStatus]:
        """The newest contact batches of the brand, whatever their status."""
        params = {"endpoint": "contacts", "limit": limit}
        response = await self.call("batches.list", "GET", "/batches", params=params)
        return answers.batch_list("batches.list", response)

    async def change_tags(self, add: bool, tag: str, emails: list[str]) -> None:
        """Accepted once answered 2xx, whatever the body (Omnisend documents none)."""
        endpoint, method = ("tags.add", "POST") if add else ("tags.remove", "DELETE")
        await self.call(endpoint, method, "/contacts/tags", json={"emails": emails, "tags": [tag]})

    async def list_contacts(self, tag: str, after: str | None, limit: int) -> ContactsPage:
        params: dict[str, Any] = {"tag": tag, "limit": limit}
        if after is not None:
            params["after"] = after
        response = await self.call("contacts.list", "GET", "/contacts", params=params)
        return answers.contacts_page("contacts.list", response)

    async def check_credentials(self) -> None:
        """The cheapest authenticated call; raises `FatalApiError` for a bad key."""
        await self.call("contacts.list", "GET", "/contacts", params={"limit": 1})

    async def _read(
        self, method: str, path: str, json: Any, params: dict[str, Any] | None
    ) -> httpx.Response:
        """The answer, read whole but never past `MAX_ANSWER_BYTES`."""
        # orjson: a batch of 100 contacts encodes in ~12 µs instead of ~156 µs with `json`.
        # Bodies hold only str, bool, int, list and dict (strings decoded strictly as UTF-8).
        content, sent_headers = (
            (None, self._headers) if json is None else (orjson.dumps(json), self._json_headers)
        )
        request = httpx.Request(
            method,
            self._base + path,
            params=params,
            headers=sent_headers,
            content=content,
            extensions=self._timeouts,
        )
        streamed = await self._transport.handle_async_request(request)
        streamed.request = request
        headers = streamed.headers
        encoding = headers.get("content-encoding", "").strip().lower()
        length = headers.get("content-length", "")
        # Said how much comes, it is not too much, and nothing else frames the body (a chunked
        # body runs past its Content-Length): read it at once. Otherwise count what arrives.
        if (
            encoding in _PLAIN
            and length.isdigit()
            and int(length) <= MAX_ANSWER_BYTES
            and "transfer-encoding" not in headers
        ):
            await streamed.aread()
            return streamed
        try:
            body = await _read_bounded(streamed, encoding)
        finally:
            await streamed.aclose()
        # The body is decoded already: the headers must not say otherwise.
        kept = [
            (name, value)
            for name, value in headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(streamed.status_code, headers=kept, content=body, request=request)

    def _raise_for(self, endpoint: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if status < 400:
            # A redirect or an informational answer from something between: not Omnisend's.
            content_type = response.headers.get("content-type", "")
            raise UnexpectedAnswer(endpoint, status, "not a final answer", content_type)
        if status == 429:
            raise RateLimited(f"{endpoint}: rate limited", answers.retry_after(response))
        if status == 403 and not answers.is_json_object(response):
            # Omnisend's refusals are JSON: this page is a firewall's or a proxy's (one rule
            # matching a contact's values, say). Retried: stopping would stop again after
            # every restart, at the same record.
            content_type = response.headers.get("content-type", "")
            why = "not Omnisend's answer (a firewall or a proxy in between refuses it)"
            raise UnexpectedAnswer(endpoint, status, why, content_type)
        if status in (401, 403, 410):
            raise FatalApiError(status, response.reason_phrase)
        if status in (404, 405) and endpoint in _WRITES:
            raise WrongEndpoint(endpoint, status, self._base)
        if status == 408 or status >= 500:
            raise Retriable(
                f"{endpoint}: {status} {response.reason_phrase}", maybe_applied=status != 408
            )
        raise Rejected(status, answers.problem_detail(response))
