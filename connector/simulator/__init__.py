"""A faithful local Omnisend API (version 2026-03-15) for rehearsals and tests."""

from connector.simulator.app import Simulator
from connector.simulator.config import Faults, SimulatorConfig
from connector.simulator.messages import Request, Response
from connector.simulator.server import SimulatorServer

__all__ = ["Faults", "Request", "Response", "Simulator", "SimulatorConfig", "SimulatorServer"]
