"""The Omnisend sink against the simulator over a socket: upserts before tags, item failures,
rate limits and fatal answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from connector.core.clock import SystemClock
from connector.core.events import ContactChange, Position
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.sink import OmnisendSink
from connector.simulator import Faults, SimulatorConfig, SimulatorServer
from tests.defaults import sink_config
from tests.omnisend_fakes import wait_outcomes


def change(
    i: int, email: str, tag: str = "segment: VIP", entered: bool = True, **fields: Any
) -> ContactChange:
    return ContactChange(Position("t", 0, i), f"e{i}", 1_000 + i, email, tag, entered, fields)


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    servers: list[SimulatorServer] = []

    def make(**kw: Any) -> SimulatorServer:
        kw.setdefault("time_scale", 0.1)
        server = SimulatorServer(SimulatorConfig(**kw)).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.close()


def make_sink(
    server: SimulatorServer,
    key: str = "test-key",
    transport: httpx.AsyncBaseTransport | None = None,
    **config: Any,
) -> OmnisendSink:
    config.setdefault("upsert_linger_s", 0.05)
    config.setdefault("tag_linger_s", 0.05)
    config.setdefault("settle_s", 0.2)
    config.setdefault("retry_base_s", 0.05)
    budget = Budget(BudgetConfig(window_s=server.simulator.config.window_s))
    return OmnisendSink(
        api_key=key,
        base_url=server.api_url,
        budget=budget,
        clock=SystemClock(),
        metrics=Metrics(CollectorRegistry()),
        config=sink_config(**config),
        transport=transport,
    ).start()


def contacts(server: SimulatorServer) -> dict[str, dict[str, Any]]:
    time.sleep(0.2)  # tag operations apply after the simulator's delay
    state = httpx.get(f"{server.url}/_sim/state").json()["brands"]["brand-1"]["contacts"]
    return {c["email"]: c for c in state}


def test_enter_then_exit_ends_with_contact_without_tag(sim_factory: Any) -> None:
    server = sim_factory()
    sink = make_sink(server)
    try:
        sink.submit([change(0, "a@example.com", firstName="Ann"), change(1, "b@example.com")])
        assert len(wait_outcomes(sink, 2)) == 2
        sink.submit([change(2, "a@example.com", entered=False)])
        (outcome,) = wait_outcomes(sink, 1)
        assert outcome.reason is None
        state = contacts(server)
        assert state["a@example.com"]["tags"] == []
        assert state["a@example.com"]["firstName"] == "Ann"
        assert state["b@example.com"]["tags"] == ["segment: VIP"]
        assert all(c["welcomeMessages"] == 0 for c in state.values())
        assert httpx.get(f"{server.url}/_sim/stats").json()["tagEmailsIgnored"] == 0
    finally:
        sink.stop()


def test_many_contacts_fill_batches_and_tag_calls(sim_factory: Any) -> None:
    server = sim_factory()
    sink = make_sink(server)
    try:
        sink.submit([change(i, f"c{i}@example.com") for i in range(600)])
        outcomes = wait_outcomes(sink, 600)
        assert len(outcomes) == 600
        assert all(o.reason is None for o in outcomes)
        stats = httpx.get(f"{server.url}/_sim/stats").json()["requests"]
        assert stats["POST /batches"] == {"201": 6}
        assert sum(stats["POST /contacts/tags"].values()) <= 4  # 250 emails a call
        assert sum(1 for c in contacts(server).values() if c["tags"] == ["segment: VIP"]) == 600
    finally:
        sink.stop()


class HeldBatches(httpx.AsyncBaseTransport):
    """The simulator over a socket, except that new batches wait while `hold` is set."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hold = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/batches"):
            while self.hold.is_set():
                await asyncio.sleep(0.01)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_burst_of_batches_never_takes_the_request_slots_of_tag_calls(sim_factory: Any) -> None:
    server = sim_factory()
    transport = HeldBatches()
    sink = make_sink(server, transport=transport, max_concurrent_requests=4)
    try:
        sink.submit([change(0, "known@example.com")])
        assert len(wait_outcomes(sink, 1)) == 1
        transport.hold.set()
        # Four batches that cannot finish would hold every request slot but the reserved ones.
        sink.submit([change(i, f"new{i}@example.com") for i in range(1, 401)])
        # `known` is in Omnisend already: its exit is a tag call and nothing else.
        sink.submit([change(401, "known@example.com", entered=False)])
        (outcome,) = wait_outcomes(sink, 1, timeout=10)
        assert (outcome.position.offset, outcome.reason) == (401, None)
    finally:
        transport.hold.clear()
        sink.stop()


def test_item_failures_are_retried_until_accepted(sim_factory: Any) -> None:
    server = sim_factory(faults=Faults(seed=3, item_error_rate=0.3), stop_after_item_errors=100)
    sink = make_sink(server)
    try:
        sink.submit([change(i, f"r{i}@example.com") for i in range(50)])
        outcomes = wait_outcomes(sink, 50)
        assert sorted(o.position.offset for o in outcomes) == list(range(50))
        assert all(o.reason is None for o in outcomes)
        assert len(contacts(server)) == 50
    finally:
        sink.stop()


def test_rejected_item_goes_to_dlq_with_the_problem_detail(sim_factory: Any) -> None:
    server = sim_factory()
    sink = make_sink(server)
    try:
        # The simulator refuses this email though the connector's validation let it through.
        sink.submit([change(0, "x@example.com", birthdate=5), change(1, "ok@example.com")])
        outcomes = {o.position.offset: o for o in wait_outcomes(sink, 2)}
        assert outcomes[0].reason == "rejected_by_omnisend"
        assert outcomes[0].email == "x@example.com"  # for the keyed hash in its log line
        assert "birthdate" in outcomes[0].detail
        assert outcomes[1].reason is None
    finally:
        sink.stop()


def test_429_is_honoured_and_the_sync_completes(sim_factory: Any) -> None:
    server = sim_factory(requests_per_window=12, tag_requests_per_window=3)
    sink = make_sink(server)
    sink.budget.config = BudgetConfig(
        requests_per_window=400,
        tag_requests_per_window=60,
        window_s=server.simulator.config.window_s,
    )  # unaware of the real limit
    try:
        sink.submit([change(i, f"l{i}@example.com", tag=f"t{i % 5}") for i in range(300)])
        outcomes = wait_outcomes(sink, 300, timeout=60)
        assert len(outcomes) == 300
        assert httpx.get(f"{server.url}/_sim/stats").json()["rateLimitedTotal"] > 0
    finally:
        sink.stop()


def test_bad_key_is_fatal(sim_factory: Any) -> None:
    server = sim_factory()
    sink = make_sink(server, key="wrong")
    try:
        sink.submit([change(0, "a@example.com")])
        deadline = time.monotonic() + 10
        while sink.fatal is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.fatal is not None
        assert "401" in str(sink.fatal)
        assert "wrong" not in str(sink.fatal)
        assert sink.take_outcomes() == []
    finally:
        sink.stop()
