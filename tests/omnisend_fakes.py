"""An in-process Omnisend for sink tests: the simulator behind an httpx transport (no socket),
with scripted answers in front of it: a rule may answer in the simulator's place, or let the
request through and spoil, lose or delay its answer."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from connector.core.clock import Clock, SystemClock
from connector.core.events import ContactChange, Position
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.sink import OmnisendSink
from connector.simulator import Simulator, SimulatorConfig
from connector.simulator.transport import SimulatorTransport
from tests.defaults import sink_config

BASE_URL = "http://omnisend.test/api"
Answer = Callable[[httpx.Request, SimulatorTransport], Awaitable[httpx.Response]]


@dataclass
class Rule:
    method: str
    path: str  # a regular expression over the path after /api
    answer: Answer
    times: int = 1  # how many requests it answers; -1: all
    when: Callable[[httpx.Request], bool] = lambda request: True

    def matches(self, request: httpx.Request) -> bool:
        path = request.url.path.removeprefix("/api")
        return (
            self.times != 0
            and request.method == self.method
            and re.fullmatch(self.path, path) is not None
            and self.when(request)
        )


@dataclass
class Scripted(httpx.AsyncBaseTransport):
    simulator: Simulator
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[float, str, str, str]] = field(default_factory=list)  # t, method, path, status

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = SimulatorTransport(self.simulator)
        path = request.url.path.removeprefix("/api")
        rule = next((r for r in self.rules if r.matches(request)), None)
        try:
            if rule is None:
                response = await inner.handle_async_request(request)
            else:
                rule.times -= 1
                response = await rule.answer(request, inner)
        except httpx.HTTPError as exc:
            self.log.append((time.monotonic(), request.method, path, type(exc).__name__))
            raise
        self.log.append((time.monotonic(), request.method, path, str(response.status_code)))
        return response

    def count(self, method: str, path: str) -> int:
        return sum(1 for _, m, p, _ in self.log if m == method and re.fullmatch(path, p))


def forward_then(
    spoil: Callable[[httpx.Response], httpx.Response] | None = None,
    lose: type[httpx.TransportError] | None = None,
) -> Answer:
    """Let the simulator carry the request out, then spoil its answer or lose it."""

    async def answer(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        response = await inner.handle_async_request(request)
        if lose is not None:
            raise lose("the answer was lost", request=request)
        return response if spoil is None else spoil(response)

    return answer


def instead(status: int, content: bytes = b"", content_type: str = "application/json") -> Answer:
    """Answer this without the simulator ever seeing the request."""

    async def answer(request: httpx.Request, inner: SimulatorTransport) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"Content-Type": content_type})

    return answer


def simulator(clock: Clock | None = None, **config: Any) -> Simulator:
    config.setdefault("unlimited", True)
    config.setdefault("batch_latency_s", 0.0)
    config.setdefault("item_latency_s", 0.0)
    config.setdefault("tag_delay_s", 0.0)
    return Simulator(SimulatorConfig(**config), clock or SystemClock(), BASE_URL)


def fast_sink(
    transport: httpx.AsyncBaseTransport,
    clock: Clock | None = None,
    budget: Budget | None = None,
    **config: Any,
) -> OmnisendSink:
    """A sink tuned to finish in milliseconds against an Omnisend without limits or latency."""
    defaults: dict[str, Any] = {
        "upsert_linger_s": 0.01,
        "tag_linger_s": 0.01,
        "settle_s": 0.05,
        "retry_base_s": 0.01,
        "retry_max_s": 0.05,
        "first_poll_s": 0.01,
        "tick_s": 0.005,
        "request_timeout_s": 2.0,
    }
    return OmnisendSink(
        api_key="test-key",
        base_url=BASE_URL,
        budget=budget or Budget(BudgetConfig(1_000_000, 500_000, headroom=1.0)),
        clock=clock or SystemClock(),
        metrics=Metrics(CollectorRegistry()),
        config=sink_config(**{**defaults, **config}),
        transport=transport,
    ).start()


def change(
    i: int,
    email: str,
    tag: str = "segment: VIP",
    entered: bool = True,
    at: int | None = None,
    export: int = 0,
    **fields: Any,
) -> ContactChange:
    occurred = 1_000 + i if at is None else at
    return ContactChange(
        Position("t", 0, i), f"e{i}", occurred, email, tag, entered, fields, export
    )


def wait_outcomes(sink: OmnisendSink, n: int, timeout: float = 20) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline and sink.fatal is None:
        got += sink.take_outcomes()
        time.sleep(0.005)
    return got


def contacts(sim: Simulator, brand: str = "brand-1") -> dict[str, dict[str, Any]]:
    return {c["email"]: c for c in sim.state()["brands"][brand]["contacts"]}


def metric(sink: OmnisendSink, name: str, **labels: str) -> float:
    value = sink.metrics.registry.get_sample_value(
        f"omnisend_connector_{name}", {"connection": sink.connection, **labels}
    )
    return 0.0 if value is None else value
