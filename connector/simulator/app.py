"""The simulated Omnisend API as a pure request → response function over injected time.

No sockets here: `server.py` adapts it to HTTP. Asynchronous work (batch items, tag operations)
is scheduled on one event queue ordered by due time and applied lazily whenever the simulator is
asked anything, so the outcome depends only on the clock, never on thread timing.

Where the contract and the notes are silent, the simulator does what Omnisend most plausibly does;
each such choice is marked "assumed" below.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import re
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from connector.core.clock import Clock
from connector.simulator.batches import BATCH_STATUSES, Batch, ItemResult, new_batch
from connector.simulator.config import CURRENT_VERSION, Faults, SimulatorConfig
from connector.simulator.contacts import Contact, ContactStore, check_list_filters
from connector.simulator.problems import FieldError, ProblemError, problem_body, validation_error
from connector.simulator.ratelimit import BrandLimits
from connector.simulator.validation import validate_contact, validate_tag_call
from connector.simulator.wire import GARBLE_KINDS, Garble

_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
_VERSION_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRANSIENT_ITEM_CODES = (503, 429, 408)
_SERVER_ERROR_CODES = (500, 502, 503)
_REQUEST_LOG_SIZE = 200_000
# Due operations (batch items, tag operations) the server's background worker applies per hold
# of the lock: a request waits behind a few milliseconds of them at most.
ADVANCE_CHUNK = 200


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, or None for an empty body
    delay_s: float = 0.0  # hold the answer this long (latency faults)
    drop: bool = False  # close the connection without answering
    garble: Garble | None = None  # answer with this instead of the real body (faults)
    drip_s: float = 0.0  # send the answer a byte at a time over this long (faults)


@dataclass
class TagOp:
    brand: str
    add: bool
    body: dict[str, Any]


@dataclass
class Brand:
    name: str
    limits: BrandLimits
    contacts: ContactStore = field(default_factory=ContactStore)
    batches: dict[str, Batch] = field(default_factory=dict)


Handler = Callable[[Brand, Request, list[str]], Response]


class Simulator:
    """Thread-safe: `handle` may be called from many server threads."""

    def __init__(self, config: SimulatorConfig, clock: Clock, base_url: str = "") -> None:
        self.config = config
        self.clock = clock
        self.base_url = base_url
        self._lock = threading.RLock()
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = [
            ("GET", re.compile(r"^/contacts$"), "GET /contacts", self._list_contacts),
            ("POST", re.compile(r"^/contacts$"), "POST /contacts", self._post_contact),
            ("PATCH", re.compile(r"^/contacts$"), "PATCH /contacts", self._patch_by_email),
            ("POST", re.compile(r"^/contacts/tags$"), "POST /contacts/tags", self._add_tags),
            ("DELETE", re.compile(r"^/contacts/tags$"), "DELETE /contacts/tags", self._remove_tags),
            ("GET", re.compile(r"^/contacts/([^/]+)$"), "GET /contacts/{id}", self._get_contact),
            (
                "PATCH",
                re.compile(r"^/contacts/([^/]+)$"),
                "PATCH /contacts/{id}",
                self._patch_by_id,
            ),
            ("POST", re.compile(r"^/batches$"), "POST /batches", self._post_batch),
            ("GET", re.compile(r"^/batches$"), "GET /batches", self._list_batches),
            ("GET", re.compile(r"^/batches/([^/]+)$"), "GET /batches/{id}", self._get_batch),
            (
                "GET",
                re.compile(r"^/batches/([^/]+)/items$"),
                "GET /batches/{id}/items",
                self._get_items,
            ),
        ]
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------

    def reset(self, faults: Faults | None = None) -> None:
        """Forget every contact, batch, queued operation and counter."""
        with self._lock:
            if faults is not None:
                self.config = _replace_faults(self.config, faults)
            self._started_at = self.clock.now()
            self._rng = random.Random(self.config.faults.seed)
            self._brands = {
                name: Brand(
                    name,
                    BrandLimits(
                        self.config.requests_per_window,
                        self.config.tag_requests_per_window,
                        self.config.window_s,
                    ),
                )
                for name in set(self.config.api_keys.values())
            }
            self._events: list[tuple[float, int, Callable[[float], None]]] = []
            self._event_seq = 0
            self.requests: Counter[tuple[str, int]] = Counter()
            self.rate_limited: Counter[tuple[str, str]] = Counter()
            self.tag_emails_ignored = 0
            self.tag_ops_applied = 0
            self.answer_faults: Counter[str] = Counter()  # spoiled, lost or dripping answers
            self.request_log: deque[tuple[float, str, str, int]] = deque(maxlen=_REQUEST_LOG_SIZE)

    def set_faults(self, changes: dict[str, Any]) -> Faults:
        """Change fault settings at run time; an outage start is counted from now."""
        with self._lock:
            faults = self.config.faults.updated(changes)
            self.config = _replace_faults(self.config, faults)
            self._started_at = self.clock.now()
            self._rng = random.Random(faults.seed)
            return faults

    # ---- the request path ------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            endpoint, handler, params = self._route(request)
            brand_name = "-"
            try:
                brand = self._authenticate(request)
                brand_name = brand.name
                self._check_version(request)
                self._check_scope(request)
                response = self._admit(brand, endpoint, now) or handler(brand, request, params)
            except ProblemError as exc:
                response = Response(exc.status, problem_body(exc))
            self.requests[(endpoint, response.status)] += 1
            self.request_log.append((now, brand_name, endpoint, response.status))
            return self._with_answer_faults(self._with_latency(response))

    def _route(self, request: Request) -> tuple[str, Handler, list[str]]:
        path = request.path.removeprefix("/api")
        for method, pattern, name, handler in self._routes:
            match = pattern.match(path)
            if match and method == request.method:
                return name, handler, list(match.groups())
        return "other", self._not_found, []

    def _authenticate(self, request: Request) -> Brand:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme not in ("Omnisend-API-Key", "Bearer") or not key.strip():
            raise ProblemError(401, "Missing Authorization header: use 'Omnisend-API-Key <key>'")
        brand = self.config.api_keys.get(key.strip())
        if brand is None:
            raise ProblemError(401, "The API key is not valid")
        return self._brands[brand]

    def _check_scope(self, request: Request) -> None:
        key = request.headers.get("authorization", "").partition(" ")[2].strip()
        if key in self.config.read_only_keys and request.method != "GET":
            raise ProblemError(403, "The API key lacks the contacts.write scope")

    def _check_version(self, request: Request) -> None:
        version = request.headers.get("omnisend-version")
        if not version:
            raise ProblemError(400, "The Omnisend-Version header is required")
        if version in self.config.retired_versions or (
            _VERSION_DATE.match(version) and version < CURRENT_VERSION
        ):
            raise ProblemError(
                410, f"API version {version} has been retired; use {CURRENT_VERSION}"
            )
        # Assumed: a later date resolves to the nearest earlier supported version, as dated
        # API versions usually do.
        if not _VERSION_DATE.match(version) and version != "2026-preview":
            raise ProblemError(400, f"Unknown API version {version!r}")

    def _admit(self, brand: Brand, endpoint: str, now: float) -> Response | None:
        """Outage, rate limit and injected errors, in that order; None lets the request through."""
        faults = self.config.faults
        if faults.outage_start_s is not None:
            since = now - self._started_at - self.config.scaled(faults.outage_start_s)
            if 0 <= since < self.config.scaled(faults.outage_duration_s):
                raise ProblemError(503, "Omnisend is temporarily unavailable (simulated outage)")
        is_tag_call = endpoint.endswith("/contacts/tags")
        if not self.config.unlimited:
            retry_after = brand.limits.try_admit(now, is_tag_call)
            if retry_after is not None:
                self.rate_limited[(brand.name, "tags" if is_tag_call else "all")] += 1
                raise ProblemError(
                    429,
                    "Too many requests for this brand; retry after the given seconds",
                    retry_after=retry_after,
                )
        if faults.drop_rate and self._rng.random() < faults.drop_rate:
            return Response(0, drop=True)
        if faults.error_rate and self._rng.random() < faults.error_rate:
            status = self._rng.choice(_SERVER_ERROR_CODES)
            raise ProblemError(status, "Simulated server error")
        return None

    def _with_latency(self, response: Response) -> Response:
        faults = self.config.faults
        delay = faults.latency_s
        if faults.spike_rate and self._rng.random() < faults.spike_rate:
            delay += faults.spike_s
        response.delay_s = delay
        return response

    def _with_answer_faults(self, response: Response) -> Response:
        """What happens to an answer on its way back; the request was carried out."""
        faults = self.config.faults
        if response.drop:
            return response
        if faults.lost_answer_rate and self._rng.random() < faults.lost_answer_rate:
            response.drop = True
            self.answer_faults["lost"] += 1
            return response
        if faults.garbage_rate and self._rng.random() < faults.garbage_rate:
            response.garble = Garble(self._rng.choice(GARBLE_KINDS), self._rng.randrange(1000))
            self.answer_faults[response.garble.kind] += 1
        if faults.drip_rate and self._rng.random() < faults.drip_rate:
            response.drip_s = faults.drip_s
            self.answer_faults["drip"] += 1
        return response

    @staticmethod
    def _not_found(brand: Brand, request: Request, params: list[str]) -> Response:
        raise ProblemError(404, f"No operation {request.method} {request.path}")

    # ---- contacts --------------------------------------------------------------------------

    def _list_contacts(self, brand: Brand, request: Request, params: list[str]) -> Response:
        check_list_filters(request.query)
        return Response(200, brand.contacts.list(request.query))

    def _post_contact(self, brand: Brand, request: Request, params: list[str]) -> Response:
        body = _json_body(request)
        errors = validate_contact(body, require_identifier=True)
        if errors:
            raise validation_error(errors)
        contact, created = brand.contacts.upsert(body, self.clock.now())
        return Response(201 if created else 200, contact.render())

    def _patch_by_email(self, brand: Brand, request: Request, params: list[str]) -> Response:
        email = request.query.get("email")
        if not email:
            raise validation_error([FieldError("email", "required", "Query parameter is required")])
        return self._patch(brand, brand.contacts.find("email", email), request)

    def _patch_by_id(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return self._patch(brand, self._contact_by_id(brand, params[0]), request)

    def _patch(self, brand: Brand, contact: Contact | None, request: Request) -> Response:
        body = _json_body(request)
        errors = validate_contact(body, require_identifier=False)
        if errors:
            raise validation_error(errors)
        if contact is None:
            raise ProblemError(404, "Contact not found")
        brand.contacts.patch(contact, body, self.clock.now())
        return Response(200, contact.render())

    def _get_contact(self, brand: Brand, request: Request, params: list[str]) -> Response:
        contact = self._contact_by_id(brand, params[0])
        if contact is None:
            raise ProblemError(404, "Contact not found")
        return Response(200, contact.render())

    @staticmethod
    def _contact_by_id(brand: Brand, contact_id: str) -> Contact | None:
        if not _OBJECT_ID.match(contact_id):
            raise validation_error(
                [FieldError("id", "invalid_format", "Must be a 24-character hex id")]
            )
        return brand.contacts.by_id.get(contact_id)

    # ---- tags ------------------------------------------------------------------------------

    def _add_tags(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return self._queue_tags(brand, request, add=True)

    def _remove_tags(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return self._queue_tags(brand, request, add=False)

    def _queue_tags(self, brand: Brand, request: Request, *, add: bool) -> Response:
        body = _json_body(request)
        errors = validate_tag_call(body)
        if errors:
            raise validation_error(errors)
        delay = self.config.scaled(self.config.tag_delay_s)
        if self.config.faults.tag_reorder:
            # Queued operations overtake each other: each waits between 1 and 3 delays.
            delay *= 1.0 + 2.0 * self._rng.random()
        op = TagOp(brand.name, add, body)
        self._schedule(self.clock.now() + delay, lambda at: self._apply_tags(op))
        return Response(202)

    def _apply_tags(self, op: TagOp) -> None:
        store = self._brands[op.brand].contacts
        targets: dict[str, Contact] = {}
        for email in op.body.get("emails") or []:
            if (contact := store.find("email", email)) is None:
                self.tag_emails_ignored += 1  # unknown emails are silently ignored
            else:
                targets[contact.id] = contact
        for phone in op.body.get("phones") or []:
            if (contact := store.find("phone", phone)) is not None:
                targets[contact.id] = contact
        for contact_id in op.body.get("contactIDs") or []:
            if (contact := store.by_id.get(contact_id)) is not None:
                targets[contact.id] = contact
        for contact in targets.values():
            store.retag(contact, op.body["tags"], op.add)
        self.tag_ops_applied += 1

    # ---- batches ---------------------------------------------------------------------------

    def _post_batch(self, brand: Brand, request: Request, params: list[str]) -> Response:
        body = _json_body(request)
        _validate_batch(body)
        now = self.clock.now()
        batch = new_batch(body, now, now + self.config.scaled(self.config.batch_latency_s))
        brand.batches[batch.id] = batch
        step = self.config.scaled(self.config.item_latency_s)
        for index in range(len(batch.items)):
            due = batch.start_at + step * (index + 1)
            self._schedule(due, _bind_item(self._process_item, brand, batch, index))
        return Response(201, {"batchID": batch.id, "totalCount": len(batch.items)})

    def _process_item(self, brand: Brand, batch: Batch, index: int, at: float) -> None:
        if batch.ended_at is not None:
            return  # the batch was stopped; its remaining items are never processed
        item, item_id = batch.items[index], batch.item_ids[index]
        result = self._item_result(brand, batch, item, item_id, at)
        batch.results.append(result)
        if result.code >= 300:
            batch.errors_count += 1
        if batch.errors_count > self.config.stop_after_item_errors:
            batch.stopped, batch.ended_at = True, at
        elif len(batch.results) == len(batch.items):
            batch.ended_at = at

    def _item_result(
        self, brand: Brand, batch: Batch, item: Any, item_id: str, at: float
    ) -> ItemResult:
        rate = self.config.faults.item_error_rate
        if rate and self._rng.random() < rate:
            code = self._rng.choice(_TRANSIENT_ITEM_CODES)
            return ItemResult(
                item_id, item, code, problem_body(ProblemError(code, "Simulated item failure"))
            )
        if batch.endpoint != "contacts":
            # Assumed: other endpoints are accepted as they are; the simulator models contacts.
            return ItemResult(item_id, item, 200, {})
        errors = validate_contact(item, require_identifier=True)
        if errors:
            return ItemResult(item_id, item, 400, problem_body(validation_error(errors)))
        try:
            contact, created = brand.contacts.upsert(item, at)
        except ProblemError as exc:
            return ItemResult(item_id, item, exc.status, problem_body(exc))
        return ItemResult(item_id, item, 201 if created else 200, None, contact.id)

    def _list_batches(self, brand: Brand, request: Request, params: list[str]) -> Response:
        query, now = request.query, self.clock.now()
        errors = _list_batches_errors(query)
        if errors:
            raise validation_error(errors)
        offset, limit = int(query.get("offset", "0")), int(query.get("limit", "100"))
        matching = (
            b
            for b in reversed(brand.batches.values())  # newest first (assumed)
            if b.endpoint == query["endpoint"] and query.get("status") in (None, b.status(now))
        )
        # Only as many as the page needs, and one more to know whether there is a next page.
        batches = list(itertools.islice(matching, offset + limit + 1))
        page = batches[offset : offset + limit]
        paging: dict[str, Any] = {"offset": offset, "limit": limit}
        if offset + limit < len(batches):
            paging["next"] = self._batches_url(query, offset + limit, limit)
        if offset > 0:
            paging["previous"] = self._batches_url(query, max(0, offset - limit), limit)
        return Response(200, {"batches": [b.summary(now) for b in page], "paging": paging})

    def _batches_url(self, query: dict[str, str], offset: int, limit: int) -> str:
        args = {**query, "offset": str(offset), "limit": str(limit)}
        return f"{self.base_url}/batches?{urlencode(args)}"

    def _get_batch(self, brand: Brand, request: Request, params: list[str]) -> Response:
        return Response(200, self._batch(brand, params[0]).summary(self.clock.now()))

    def _get_items(self, brand: Brand, request: Request, params: list[str]) -> Response:
        batch = self._batch(brand, params[0])
        body = batch.summary(self.clock.now())
        rendered = [self._render_item(brand, r) for r in batch.results]
        body["responses"] = [r for r in rendered if r["responseCode"] < 300]
        body["errors"] = [r for r in rendered if r["responseCode"] >= 300]
        return Response(200, body)

    @staticmethod
    def _render_item(brand: Brand, result: ItemResult) -> dict[str, Any]:
        response = result.response
        if response is None and result.contact_id is not None:
            # Rendered when read (assumed equivalent): the contact as it is now.
            response = brand.contacts.by_id[result.contact_id].render()
        return {
            "itemID": result.item_id,
            "request": result.request,
            "responseCode": result.code,
            "response": response,
            "status": "finished",
        }

    @staticmethod
    def _batch(brand: Brand, batch_id: str) -> Batch:
        if not _OBJECT_ID.match(batch_id):
            raise validation_error(
                [FieldError("batchID", "invalid_format", "Must be a 24-character hex id")]
            )
        batch = brand.batches.get(batch_id)
        if batch is None:
            raise ProblemError(404, "Batch not found")
        return batch

    # ---- the event queue -------------------------------------------------------------------

    def _schedule(self, due: float, action: Callable[[float], None]) -> None:
        self._event_seq += 1
        heapq.heappush(self._events, (due, self._event_seq, action))

    def _advance(self, now: float, limit: int | None = None) -> bool:
        """Apply the queued operations due by `now` (at most `limit`), in due order; whether
        some that are due are left."""
        applied = 0
        while self._events and self._events[0][0] <= now:
            if limit is not None and applied >= limit:
                return True
            due, _, action = heapq.heappop(self._events)
            action(due)
            applied += 1
        return False

    def advance_due(self, limit: int = ADVANCE_CHUNK) -> bool:
        """Apply up to `limit` operations that are due by now; True if more are due.

        The server calls this in the background, so that work is done as it falls due instead
        of all at once by whichever request comes next (a request would wait behind thousands
        of batch items that Omnisend processes on its own). Outcomes do not change: operations
        apply in due order, and a request sees everything due by its time."""
        with self._lock:
            return self._advance(self.clock.now(), limit)

    # ---- inspection ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            self._advance(self.clock.now())
            return {
                "brands": {
                    name: {
                        "contacts": [
                            {**c.render(), "welcomeMessages": c.welcome_messages}
                            for c in brand.contacts.by_id.values()
                        ],
                        "batches": len(brand.batches),
                    }
                    for name, brand in self._brands.items()
                },
                "pendingOperations": len(self._events),
            }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._advance(self.clock.now())
            by_endpoint: dict[str, dict[str, int]] = {}
            for (endpoint, status), count in sorted(self.requests.items()):
                by_endpoint.setdefault(endpoint, {})[str(status)] = count
            return {
                "requests": by_endpoint,
                "requestsTotal": sum(self.requests.values()),
                "rateLimited": {f"{b}:{bucket}": n for (b, bucket), n in self.rate_limited.items()},
                "rateLimitedTotal": sum(self.rate_limited.values()),
                "tagEmailsIgnored": self.tag_emails_ignored,
                "tagOperationsApplied": self.tag_ops_applied,
                "answerFaults": dict(sorted(self.answer_faults.items())),
                "pendingOperations": len(self._events),
                "config": {
                    "requestsPerWindow": self.config.requests_per_window,
                    "tagRequestsPerWindow": self.config.tag_requests_per_window,
                    "windowSeconds": self.config.window_s,
                    "timeScale": self.config.time_scale,
                    "unlimited": self.config.unlimited,
                },
            }

    def request_times(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"t": t, "brand": b, "endpoint": e, "status": s} for t, b, e, s in self.request_log
            ]


def _bind_item(
    fn: Callable[[Brand, Batch, int, float], None], brand: Brand, batch: Batch, index: int
) -> Callable[[float], None]:
    return lambda at: fn(brand, batch, index, at)


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise validation_error(
            [FieldError("body", "invalid_json", "Body is not valid JSON")]
        ) from exc


def _validate_batch(body: Any) -> None:
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        raise validation_error([FieldError("body", "invalid_type", "Must be a JSON object")])
    if body.get("method") not in ("POST", "PUT"):
        errors.append(FieldError("method", "invalid_value", "Must be one of: POST, PUT"))
    if body.get("endpoint") not in ("products", "contacts", "events", "categories"):
        errors.append(
            FieldError(
                "endpoint",
                "invalid_value",
                "Must be one of: products, contacts, events, categories",
            )
        )
    elif body.get("endpoint") == "contacts" and body.get("method") == "PUT":
        errors.append(FieldError("method", "invalid_value", "Contacts support POST batches only"))
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= 100:
        errors.append(FieldError("items", "invalid_value", "Must be an array of 1 to 100 items"))
    if errors:
        raise validation_error(errors)


def _list_batches_errors(query: dict[str, str]) -> list[FieldError]:
    errors: list[FieldError] = []
    if query.get("endpoint") not in ("products", "contacts", "events"):
        errors.append(
            FieldError("endpoint", "required", "endpoint is required: products, contacts or events")
        )
    if "status" in query and query["status"] not in BATCH_STATUSES:
        errors.append(
            FieldError("status", "invalid_value", "Must be one of: " + ", ".join(BATCH_STATUSES))
        )
    offset, limit = query.get("offset", "0"), query.get("limit", "100")
    if not offset.isdigit():
        errors.append(FieldError("offset", "invalid_value", "Must be 0 or more"))
    if not limit.isdigit() or not 1 <= int(limit) <= 250:
        errors.append(FieldError("limit", "out_of_range", "Must be between 1 and 250"))
    return errors


def _replace_faults(config: SimulatorConfig, faults: Faults) -> SimulatorConfig:
    return replace(config, faults=faults)
