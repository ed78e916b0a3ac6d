"""The simulated Omnisend API as a pure request → response function over injected time.

No sockets here: `server.py` adapts it to HTTP. Asynchronous work (batch items, tag operations)
is scheduled on one event queue ordered by due time and applied lazily whenever the simulator is
asked anything, so the outcome depends only on the clock, never on thread timing.

Where the contract and the notes are silent, the simulator does what Omnisend most plausibly does;
each such choice is marked "assumed" where it is made (here and in the endpoint modules).
"""

from __future__ import annotations

import heapq
import json
import random
import re
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from connector.core.clock import Clock
from connector.simulator.batches_api import BatchesApi
from connector.simulator.config import CURRENT_VERSION, Faults, SimulatorConfig
from connector.simulator.contacts_api import ContactsApi
from connector.simulator.messages import Brand, Handler, Request, Response
from connector.simulator.problems import ProblemError, problem_body
from connector.simulator.ratelimit import BrandLimits
from connector.simulator.wire import GARBLE_KINDS, Garble

_VERSION_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SERVER_ERROR_CODES = (500, 502, 503)
_REQUEST_LOG_SIZE = 200_000
# Due operations (batch items, tag operations) the server's background worker applies per hold
# of the lock: a request waits behind a few milliseconds of them at most.
ADVANCE_CHUNK = 200


class Simulator:
    """Thread-safe: `handle` may be called from many server threads."""

    def __init__(self, config: SimulatorConfig, clock: Clock, base_url: str = "") -> None:
        self.config = config
        self.clock = clock
        self.base_url = base_url
        self._lock = threading.RLock()
        contacts, batches = ContactsApi(self), BatchesApi(self)
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = [
            ("GET", re.compile(r"^/contacts$"), "GET /contacts", contacts.list_contacts),
            ("POST", re.compile(r"^/contacts$"), "POST /contacts", contacts.post),
            ("PATCH", re.compile(r"^/contacts$"), "PATCH /contacts", contacts.patch_by_email),
            ("POST", re.compile(r"^/contacts/tags$"), "POST /contacts/tags", contacts.add_tags),
            (
                "DELETE",
                re.compile(r"^/contacts/tags$"),
                "DELETE /contacts/tags",
                contacts.remove_tags,
            ),
            ("GET", re.compile(r"^/contacts/([^/]+)$"), "GET /contacts/{id}", contacts.get),
            (
                "PATCH",
                re.compile(r"^/contacts/([^/]+)$"),
                "PATCH /contacts/{id}",
                contacts.patch_by_id,
            ),
            ("POST", re.compile(r"^/batches$"), "POST /batches", batches.post),
            ("GET", re.compile(r"^/batches$"), "GET /batches", batches.list_batches),
            ("GET", re.compile(r"^/batches/([^/]+)$"), "GET /batches/{id}", batches.get),
            (
                "GET",
                re.compile(r"^/batches/([^/]+)/items$"),
                "GET /batches/{id}/items",
                batches.items,
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
            self.rng = random.Random(self.config.faults.seed)
            self.brands = {
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
            self.rng = random.Random(faults.seed)
            return faults

    # ---- the request path ------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._lock:
            now = self.clock.now()
            self._advance(now)
            endpoint, handler, params = self._route(request)
            if _blocked(request, self.config.faults.blocked_values):  # in front of Omnisend
                self.requests[(endpoint, 403)] += 1
                self.answer_faults["blocked"] += 1
                return Response(403, garble=Garble("blocked"))
            brand_name = "-"
            try:
                brand = self._authenticate(request)
                brand_name = brand.name
                _check_version(request, self.config)
                _check_scope(request, self.config)
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
        return self.brands[brand]

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
        if faults.drop_rate and self.rng.random() < faults.drop_rate:
            return Response(0, drop=True)
        if faults.error_rate and self.rng.random() < faults.error_rate:
            status = self.rng.choice(_SERVER_ERROR_CODES)
            raise ProblemError(status, "Simulated server error")
        return None

    def _with_latency(self, response: Response) -> Response:
        faults = self.config.faults
        delay = faults.latency_s
        if faults.spike_rate and self.rng.random() < faults.spike_rate:
            delay += faults.spike_s
        response.delay_s = delay
        return response

    def _with_answer_faults(self, response: Response) -> Response:
        """What happens to an answer on its way back; the request was carried out."""
        faults = self.config.faults
        if response.drop:
            return response
        if faults.lost_answer_rate and self.rng.random() < faults.lost_answer_rate:
            response.drop = True
            self.answer_faults["lost"] += 1
            return response
        if faults.garbage_rate and self.rng.random() < faults.garbage_rate:
            response.garble = Garble(self.rng.choice(GARBLE_KINDS), self.rng.randrange(1000))
            self.answer_faults[response.garble.kind] += 1
        if faults.drip_rate and self.rng.random() < faults.drip_rate:
            response.drip_s = faults.drip_s
            self.answer_faults["drip"] += 1
        return response

    @staticmethod
    def _not_found(brand: Brand, request: Request, params: list[str]) -> Response:
        raise ProblemError(404, f"No operation {request.method} {request.path}")

    # ---- the event queue -------------------------------------------------------------------

    def schedule(self, due: float, action: Callable[[float], None]) -> None:
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
                    for name, brand in self.brands.items()
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


def _blocked(request: Request, values: frozenset[str]) -> bool:
    """A write holding one of `values` in its body, as a JSON body holds it (non-ASCII
    characters escaped or not)."""
    if not values or request.method == "GET":
        return False
    body = request.body
    return any(v.encode() in body or json.dumps(v)[1:-1].encode() in body for v in values)


def _replace_faults(config: SimulatorConfig, faults: Faults) -> SimulatorConfig:
    return replace(config, faults=faults)


def _check_scope(request: Request, config: SimulatorConfig) -> None:
    key = request.headers.get("authorization", "").partition(" ")[2].strip()
    if key in config.read_only_keys and request.method != "GET":
        raise ProblemError(403, "The API key lacks the contacts.write scope")


def _check_version(request: Request, config: SimulatorConfig) -> None:
    version = request.headers.get("omnisend-version")
    if not version:
        raise ProblemError(400, "The Omnisend-Version header is required")
    if version in config.retired_versions or (
        _VERSION_DATE.match(version) and version < CURRENT_VERSION
    ):
        raise ProblemError(410, f"API version {version} has been retired; use {CURRENT_VERSION}")
    # Assumed: a later date resolves to the nearest earlier supported version, as dated
    # API versions usually do.
    if not _VERSION_DATE.match(version) and version != "2026-preview":
        raise ProblemError(400, f"Unknown API version {version!r}")
