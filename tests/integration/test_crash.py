"""kill -9 at five moments of a 20,000-event sync, a restart after each: Omnisend ends in exactly
the state the event log describes, and every record is committed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connector.dev.broker import Broker
from connector.kafka.clients import ensure_topic
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.integration.conftest import connector_env, produce_events, sim_stats, storm
from tests.integration.processes import ConnectorProcess, committed_total
from tests.workload import expected_state, wait_for_state, workload

pytestmark = pytest.mark.slow

EVENTS, CONTACTS, PARTITIONS = 20_000, 5_000, 3
Metrics = dict[str, float]


def consumed(m: Metrics) -> bool:
    return m.get("omnisend_connector_events_consumed_total", 0) > 0


def batches_in_flight(m: Metrics) -> bool:
    return m.get("omnisend_connector_omnisend_batches_in_flight", 0) > 0


def upserted_not_yet_tagged(m: Metrics) -> bool:
    """Contacts upserted (by this process), their tag calls not answered yet: waited for while
    every answer comes a second late, so the tag calls that follow the first upserts are
    still on their way. (Comparing the counts of upserts and tag changes instead missed it:
    removals need no upsert, so tag changes lead from the start.)"""
    return m.get("omnisend_connector_contacts_upserted_total", 0) > 0


def just_committed(m: Metrics) -> bool:
    return m.get("omnisend_connector_offset_commits_total", 0) > 0


def rate_limited(m: Metrics) -> bool:
    return m.get("omnisend_connector_omnisend_rate_limited_total", 0) > 0


MOMENTS: list[tuple[str, Callable[[Metrics], bool]]] = [
    ("while decoding the first records", consumed),
    ("with batches in flight", batches_in_flight),
    ("between upserts and their tag calls", upserted_not_yet_tagged),
    ("right after a commit", just_committed),
    ("during a 429 storm", rate_limited),
]


def reach(
    moment: Callable[[Metrics], bool], sim: SimulatorServer, env: dict[str, str], log: Path
) -> None:
    """Start a connector, bring it to `moment` and kill -9 it there."""
    if moment is rate_limited:
        # The storm is on before the process starts: a storm started after its first records
        # could meet a process that had already sent the last of its work.
        with storm(sim, "test-key"):
            deadline = time.monotonic() + 60
            while sim_stats(sim)["rateLimitedTotal"] == 0:
                assert time.monotonic() < deadline, "the storm never spent the brand's budget"
                time.sleep(0.05)
            _kill_at(ConnectorProcess(env, log), moment)
    elif moment is upserted_not_yet_tagged:
        # Every answer a second late: the tag calls of the first contacts upserted are answered
        # at least a second after them, a window no poll misses.
        sim.simulator.set_faults({"latency_s": 1.0})
        try:
            _kill_at(ConnectorProcess(env, log), moment)
        finally:
            sim.simulator.set_faults({"latency_s": 0.0})
    else:
        _kill_at(ConnectorProcess(env, log), moment)


def _kill_at(process: ConnectorProcess, moment: Callable[[Metrics], bool]) -> None:
    try:
        process.wait_for(moment)
    finally:
        process.kill()


def test_kill_9_at_five_moments_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    topic = f"crash-{tmp_path.name[-12:]}".replace("_", "-")
    ensure_topic(broker.bootstrap, {}, topic, PARTITIONS)
    events = workload(EVENTS, CONTACTS)
    produce_events(broker.bootstrap, topic, events)
    with SimulatorServer(SimulatorConfig(time_scale=0.1)) as sim:
        env = connector_env(broker, topic, sim, UPSERT_LINGER_S="0.3", TAG_LINGER_S="0.5")
        log = tmp_path / "connector.log"
        for name, moment in MOMENTS:
            reach(moment, sim, env, log)
            done = committed_total(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, PARTITIONS)
            assert done < EVENTS, f"the sync was over before the kill {name}"
        process = ConnectorProcess(env, log)
        try:
            diff = wait_for_state(sim.url, expected_state(events), timeout_s=180)
            assert diff == [], "\n".join(diff)
            process.wait_for(
                lambda m: (
                    committed_total(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, PARTITIONS)
                    == EVENTS
                ),
                timeout_s=60,
            )
        finally:
            code = process.stop()
        assert code == 0, log.read_text()[-3000:]
