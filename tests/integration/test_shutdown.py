"""SIGTERM under heavy load: the connector stops within SHUTDOWN_TIMEOUT_S, exits 0 with what
Omnisend accepted committed, and the next start redelivers exactly the records not committed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from connector.dev.broker import Broker
from connector.kafka.clients import ensure_topic
from connector.pipeline import Pipeline
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.integration.conftest import RunConnector, connector_env, produce_events
from tests.integration.processes import ConnectorProcess, committed_offsets
from tests.workload import expected_state, wait_for_state, workload

pytestmark = pytest.mark.slow

EVENTS, CONTACTS, PARTITIONS = 20_000, 8_000, 3
SHUTDOWN_TIMEOUT_S = 5


def test_sigterm_under_load_commits_what_was_accepted_and_nothing_is_redelivered_twice(
    broker: Broker, run_connector: RunConnector, tmp_path: Path
) -> None:
    topic = f"shutdown-{time.monotonic_ns()}"
    ensure_topic(broker.bootstrap, {}, topic, PARTITIONS)
    events = workload(EVENTS, CONTACTS, seed=31)
    produce_events(broker.bootstrap, topic, events)
    with SimulatorServer(SimulatorConfig(time_scale=0.1)) as sim:
        env = connector_env(
            broker,
            topic,
            sim,
            UPSERT_LINGER_S="0.3",
            TAG_LINGER_S="0.5",
            SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
        )
        log = tmp_path / "connector.log"
        process = ConnectorProcess(env, log)
        process.wait_for(lambda m: m.get("omnisend_connector_tag_changes_total", 0) > 1000)
        stopping = time.monotonic()
        code = process.stop()
        took = time.monotonic() - stopping
        assert code == 0
        # The deadline plus the time to close the consumer and flush the producer.
        assert took < SHUTDOWN_TIMEOUT_S + 5, f"took {took:.1f} s to stop"
        stopped = [
            json.loads(line) for line in log.read_text().splitlines() if '"stopped"' in line
        ][-1]
        before = committed_offsets(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, PARTITIONS)
        committed = sum(before.values())
        assert 0 < committed < EVENTS
        # Whatever was finished before the deadline is committed: records are finished in order
        # within a partition only by chance, so at most the unfinished tail is left.
        finished = stopped["done"] + stopped["skipped"] + stopped["dead_lettered"]
        assert committed <= finished <= stopped["consumed"]

        # A partition the first run finished entirely gets no record now, so the restarted
        # pipeline never learns its position: count it as the first run left it.
        def caught_up(pipeline: Pipeline) -> bool:
            now = {part: o for (t, part), o in pipeline.committed().items() if t == topic}
            return sum({**before, **now}.values()) >= EVENTS

        run = run_connector(env, caught_up, timeout_s=300)
        assert run.pipeline.stats["consumed"] == EVENTS - committed
        diff = wait_for_state(sim.url, expected_state(events))
        assert diff == [], "\n".join(diff)
