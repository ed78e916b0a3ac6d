"""Many connections in one process: their sinks share one thread and event loop, an idle sink
does not wake until there is something to do, and every key is checked in one go."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from connector.core.clock import SystemClock
from connector.core.errors import Retriable
from connector.core.events import ContactChange, Position
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.client import OmnisendClient
from connector.omnisend.credentials import verify_all
from connector.omnisend.loop import SinkLoop
from connector.omnisend.sink import OmnisendSink
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.defaults import sink_config


def sink(loop: SinkLoop, name: str, base_url: str, **config: float) -> OmnisendSink:
    return OmnisendSink(
        api_key="test-key",
        base_url=base_url,
        budget=Budget(BudgetConfig(400, 60)),
        clock=SystemClock(),
        metrics=Metrics(CollectorRegistry()),
        connection=name,
        config=sink_config(**config),
        loop=loop,
    )


def counting(turns: Counter[str], name: str, turn: Callable[[], None]) -> Callable[[], None]:
    def counted() -> None:
        turns[name] += 1
        turn()

    return counted


def test_sinks_share_one_thread_and_an_idle_one_sleeps_until_given_work() -> None:
    with SimulatorServer(SimulatorConfig(time_scale=0.1)) as sim:
        loop = SinkLoop()
        sinks = [sink(loop, f"c{i}", sim.api_url, upsert_linger_s=0.05) for i in range(20)]
        turns: Counter[str] = Counter()
        for s in sinks:
            s._ingest = counting(turns, s.connection, s._ingest)  # type: ignore[method-assign]
        before = {t.name for t in threading.enumerate()}
        for s in sinks:
            s.start()
        try:
            time.sleep(0.5)
            assert {t.name for t in threading.enumerate()} - before == {"omnisend-sinks"}
            # Idle: one turn at start (a 20 ms tick would have made about 25).
            assert max(turns.values()) <= 2
            change = ContactChange(Position("t", 0, 0), "e", 1, "ann@x.io", "vip", True, {})
            sinks[0].submit([change])
            assert sinks[0].wait_idle(30), "the work given did not finish"
            assert turns["c0"] > 2  # woken by its work, its linger and its answers
            assert all(turns[s.connection] <= 2 for s in sinks[1:])
        finally:
            for s in sinks:
                s.stop()
            loop.stop()
        assert "omnisend-sinks" not in {t.name for t in threading.enumerate()}


def test_every_key_is_checked_and_each_verdict_goes_to_its_connection() -> None:
    keys = {f"key-{i}": f"brand-{i}" for i in range(40)}
    with SimulatorServer(SimulatorConfig(api_keys=keys, time_scale=0.1)) as sim:
        connections = {f"c{i}": (sim.api_url, f"key-{i}") for i in range(40)}
        connections["c7"] = (sim.api_url, "wrong")
        connections["away"] = ("http://127.0.0.1:9/api", "key-1")  # nothing listens there
        verdicts = verify_all(connections, timeout_s=5)
    assert list(verdicts) == list(connections)
    assert verdicts["c7"].ok is False
    assert verdicts["away"].ok is None
    assert all(v.ok is True for name, v in verdicts.items() if name not in ("c7", "away"))


def test_a_request_waiting_too_long_for_the_shared_pool_is_retried_never_sent() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"contacts": [], "paging": {}})

    async def attempt() -> Retriable:
        gate = asyncio.Semaphore(1)
        await gate.acquire()  # other brands' requests hold every connection
        client = OmnisendClient(
            httpx.MockTransport(answer),
            "key",
            "http://omnisend.test/api",
            deadline_s=0.2,
            gate=gate,
        )
        with pytest.raises(Retriable) as raised:
            await client.check_credentials()
        gate.release()
        await client.check_credentials()  # a free connection: it goes
        return raised.value

    error = asyncio.run(attempt())
    assert error.maybe_applied is False
    assert "no free connection" in str(error)
    assert len(sent) == 1
