"""Pytest fixtures for projects that rehearse against the Omnisend simulator.

Registered as a pytest plugin, so `omnisend_api_url` is available once the package is installed:

    def test_sync(omnisend_api_url):  # e.g. "http://127.0.0.1:41234/api"
        ...
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector.simulator.config import SimulatorConfig
from connector.simulator.server import SimulatorServer

# Tests run the one-minute window in 6 s: long enough for whole-second retryAfter values.
TEST_TIME_SCALE = 0.1


@pytest.fixture
def omnisend_simulator() -> Iterator[SimulatorServer]:
    """A simulator on a free local port, with the real limits on a 6 s window."""
    with SimulatorServer(SimulatorConfig(time_scale=TEST_TIME_SCALE)) as server:
        yield server


@pytest.fixture
def omnisend_api_url(omnisend_simulator: SimulatorServer) -> str:
    """The simulator's API base URL, ending in `/api` (API key `test-key`)."""
    return omnisend_simulator.api_url
