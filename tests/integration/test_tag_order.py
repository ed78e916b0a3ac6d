"""Omnisend applies tag calls asynchronously, and here out of order: an add and a later remove of
the same tag for the same email (and the reverse) must still end right. The connector holds the
opposite call until the earlier one has settled (TAG_SETTLE_S)."""

from __future__ import annotations

import time

import pytest

from connector.dev.broker import Broker
from connector.pipeline import Pipeline
from connector.simulator import Faults, SimulatorConfig, SimulatorServer
from tests.integration.conftest import RunConnector, connector_env, produce_events
from tests.workload import T0, actual_state, differences, expected_state, wait_for_state

EMAILS = 100
SEGMENTS_A = range(4)  # entered, then exited: the tag must end absent
SEGMENTS_B = range(4, 8)  # entered, exited, entered again: the tag must end present


def phase(change: str, segments: range, n: int) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"{n}-{s}-{i}",
            "occurred_at": T0 + n * 1000,
            "segment_id": f"seg-{s}",
            "segment_name": f"S{s}",
            "change": change,
            "profile_id": f"p{i}",
            "profile": {"email": f"t{i}@example.com", "first_name": "Ann", "city": "Riga"},
        }
        for s in segments
        for i in range(EMAILS)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("settle_s", "holds"), [("6.5", True), ("0", False)])
def test_opposite_tag_calls_applied_out_of_order(
    broker: Broker, topic: str, run_connector: RunConnector, settle_s: str, holds: bool
) -> None:
    """Each phase is produced as soon as the previous one is accepted, so the opposite call
    follows while the earlier one still waits in Omnisend's queue. Without the hold (settle 0)
    the check must fail: that is what makes the passing case mean something."""
    phases = [
        phase("ENTERED", range(8), 1),
        phase("EXITED", range(8), 2),
        phase("ENTERED", SEGMENTS_B, 3),
    ]
    events = [e for p in phases for e in p]
    # Queued tag operations wait 2 to 6 s here and overtake each other.
    config = SimulatorConfig(
        time_scale=0.1, tag_delay_s=20.0, faults=Faults(seed=3, tag_reorder=True)
    )
    with SimulatorServer(config) as sim:
        env = connector_env(broker, topic, sim, TAG_SETTLE_S=settle_s)
        pending = list(phases)
        produced = 0

        def next_phase_when_accepted(p: Pipeline) -> bool:
            nonlocal produced
            if p.stats["done"] >= produced:
                if not pending:
                    return True
                batch = pending.pop(0)
                produce_events(broker.bootstrap, topic, batch)
                produced += len(batch)
            return False

        run_connector(env, next_phase_when_accepted, timeout_s=90)
        expected = expected_state(events)
        assert {len(e.tags) for e in expected.values()} == {len(SEGMENTS_B)}
        if holds:
            diff = wait_for_state(sim.url, expected, timeout_s=15)
            assert diff == [], "\n".join(diff)
            time.sleep(7)  # and it stays right once every queued operation has applied
            diff = differences(expected, actual_state(sim.url))
            assert diff == [], "\n".join(diff)
        else:
            # Not "until it matches": a remove that overtook its add makes the state right for
            # a moment, until the add lands. Judge once every queued operation has applied.
            time.sleep(7)  # the longest queue delay here is 6 s
            assert differences(expected, actual_state(sim.url)) != []
