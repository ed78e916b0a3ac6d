"""`run --dry-run`: the pipeline reads the topic to its end, sends nothing to Omnisend or the
dead-letter topic, commits nothing (in a group of its own), and reports what it would have sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import httpx
from confluent_kafka.admin import AdminClient

from connector.dev.broker import Broker
from connector.simulator import SimulatorServer
from tests.events import event
from tests.integration.conftest import connector_env, produce, produce_events
from tests.integration.processes import committed_total


def dry_run(env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", "run", "--dry-run"],
        env={**os.environ, **env, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_dry_run_reports_and_writes_nothing(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    events = [event(f"dry{i}@example.com", profile_id=f"p{i}", first_name="Ann") for i in range(40)]
    events += [event(f"dry{i}@example.com", profile_id=f"p{i}", change="EXITED") for i in range(10)]
    events += [event(f"vip{i}@example.com", segment_name="Churn") for i in range(5)]
    produce_events(broker.bootstrap, topic, events)
    produce(broker.bootstrap, topic, [(b"k", b"\x00garbage"), (None, None)])
    # The service's reset does not apply: a dry run's new group reads from the start.
    env = connector_env(broker, topic, sim, KAFKA_CFG_AUTO_OFFSET_RESET="latest")
    result = dry_run(env, timeout_s=120)
    assert result.returncode == 0, result.stderr[-2000:]
    output = json.loads(result.stdout)
    report = output["dryRun"]
    assert output["consumed"] == len(events) + 2
    assert output["complete"] is True
    assert report["contacts"] == 45
    assert report["contactsByTag"] == {"segment: Churn": 5, "segment: VIP": 30}
    assert report["requests"]["POST /batches"] >= 1
    assert report["requests"]["POST /contacts/tags"] >= 2
    assert report["requests"]["DELETE /contacts/tags"] >= 1
    assert report["deadLettered"] == {"malformed_avro": 1}
    assert report["skipped"] == {"tombstone": 1}
    assert report["segmentsSeen"] == {"Churn": 5, "VIP": 50}
    assert report["samples"]
    masked = [sample["email"] for sample in report["samples"]]
    assert len(set(masked)) > 1  # distinguishable (all "d***@..." before)
    for email in masked:
        local = email.split("@")[0]
        assert "*" in local
        assert len(local.replace("*", "")) < len(local)
    assert "dry1@example.com" not in result.stdout + result.stderr
    # Would-be dead letters are counted in the report, not logged one line each.
    assert "dead_lettering" not in result.stderr
    # Nothing reached Omnisend, the dead-letter topic or the live group's offsets.
    assert httpx.get(f"{sim.url}/_sim/requests").json()["requests"] == []
    assert committed_total(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, 3) == 0
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert f"{topic}.dlq" not in admin.list_topics(timeout=10).topics


def test_a_dry_run_ends_at_the_end_the_topic_had_when_it_started(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    """A production topic never falls quiet for long: a dry run that waited for three quiet
    seconds never ended. It reads to the end the topic had when it started."""
    before = [event(f"was{i}@example.com", profile_id=f"p{i}") for i in range(20)]
    produce_events(broker.bootstrap, topic, before)
    stop = threading.Event()

    def busy_producer() -> None:  # an event every half second, for as long as the test runs
        i = 0
        while not stop.wait(0.5):
            produce_events(broker.bootstrap, topic, [event(f"new{i}@example.com")])
            i += 1

    feeder = threading.Thread(target=busy_producer, daemon=True)
    feeder.start()
    try:
        result = dry_run(connector_env(broker, topic, sim), timeout_s=60)
    finally:
        stop.set()
        feeder.join()
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["consumed"] >= len(before)
