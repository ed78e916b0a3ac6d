"""A simulator on a real socket driven by a manual clock, and a client that checks every
response against the published contract."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from connector.core.clock import ManualClock
from connector.simulator.config import Faults, SimulatorConfig
from connector.simulator.server import SimulatorServer
from tests.contract import assert_matches_contract

HEADERS = {"Authorization": "Omnisend-API-Key test-key", "Omnisend-Version": "2026-03-15"}


@dataclass
class Sim:
    server: SimulatorServer
    clock: ManualClock
    api: httpx.Client

    def inspect(self, name: str) -> Any:
        return httpx.get(f"{self.server.url}/_sim/{name}").json()

    def contacts(self, brand: str = "brand-1") -> dict[str, dict[str, Any]]:
        state = self.inspect("state")["brands"][brand]["contacts"]
        return {c["email"]: c for c in state}


MakeSim = Callable[..., Sim]


def _check_contract(response: httpx.Response) -> None:
    response.read()
    assert_matches_contract(response)


@pytest.fixture
def make_sim() -> Iterator[MakeSim]:
    started: list[Sim] = []

    def make(faults: Faults | None = None, **config: Any) -> Sim:
        config.setdefault("api_keys", {"test-key": "brand-1", "other-key": "brand-2"})
        clock = ManualClock()
        server = SimulatorServer(
            SimulatorConfig(faults=faults or Faults(), **config), clock=clock
        ).start()
        api = httpx.Client(
            base_url=server.api_url, headers=HEADERS, event_hooks={"response": [_check_contract]}
        )
        sim = Sim(server, clock, api)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.api.close()
        sim.server.close()


@pytest.fixture
def sim(make_sim: MakeSim) -> Sim:
    return make_sim()


def contact(email: str, **fields: Any) -> dict[str, Any]:
    return {"identifiers": [{"type": "email", "id": email}], **fields}
