"""`backfill`, `replay-dlq` and `reconcile` as users run them: against the real broker and the
simulator, outside the live consumer group, committing nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connector.config import Config, load_config
from connector.core.codec import encode_plain
from connector.dev.broker import Broker
from connector.jobs import reconcile as reconcile_job
from connector.jobs.runner import Span, topic_span
from connector.kafka.clients import ensure_topic
from connector.simulator import SimulatorServer
from tests.events import event
from tests.integration.conftest import (
    RunConnector,
    connector_env,
    produce,
    produce_events,
    read_all,
    sim_contacts,
)

T0 = 1_790_000_000_000


def cli(
    env: dict[str, str], *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def job(env: dict[str, str], *args: str, timeout_s: float = 120) -> tuple[int, dict[str, Any], str]:
    result = cli(env, *args, timeout_s=timeout_s)
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def committed(bootstrap: str, group: str, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        return [tp.offset for tp in consumer.committed(parts, timeout=10)]
    finally:
        consumer.close()


def test_backfill_resyncs_the_topic_without_the_live_group(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    events = [event(f"p{i}@x.io", profile_id=f"p{i}", occurred_at=T0 + i) for i in range(30)]
    produce_events(broker.bootstrap, topic, events)
    env = connector_env(broker, topic, sim)
    code, report, progress = job(env, "backfill", "--since", "2d")
    assert code == 0, progress
    assert report["records"] == 30
    assert report["read"] == 30
    assert report["complete"] is True
    assert "backfill [" in progress
    assert "30/30 records (100%)" in progress
    contacts = sim_contacts(sim)
    assert len(contacts) == 30
    assert all(c["tags"] == ["segment: VIP"] for c in contacts.values())
    assert committed(broker.bootstrap, env["KAFKA_GROUP_ID"], topic) == [-1001] * 3


def test_backfill_starts_at_the_first_record_of_its_time(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    """Records of three days ago, then of now: `--since 1d` reads only the recent ones, whatever
    the broker answers to OffsetsForTimes (the test broker answers 0)."""
    now_ms = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "log.connection.close": False})
    for i in range(40):
        old = i < 25
        e = event(f"{'old' if old else 'new'}{i}@x.io", profile_id=f"p{i}", occurred_at=T0 + i)
        stamp = now_ms - (3 * 86_400_000 if old else 0) + i
        producer.produce(topic, value=encode_plain(e), key=b"k", partition=i % 3, timestamp=stamp)
    assert producer.flush(30) == 0
    code, report, progress = job(connector_env(broker, topic, sim), "backfill", "--since", "1d")
    assert code == 0, progress
    assert report["records"] == 15
    assert report["read"] == 15
    assert all(email.startswith("new") for email in sim_contacts(sim))


def test_replay_dlq_by_reason_reports_what_failed_again(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    dlq = f"{topic}.dlq"
    ensure_topic(broker.bootstrap, {}, dlq, 1)
    fixed = [event(f"f{i}@x.io", profile_id=f"f{i}", occurred_at=T0 + i) for i in range(5)]
    rejected: list[tuple[str, str | bytes | None]] = [
        ("omnisend.dlq.reason", b"rejected_by_omnisend")
    ]
    produce(broker.bootstrap, dlq, [(b"k", encode_plain(e)) for e in fixed], headers=rejected)
    poison: list[tuple[str, str | bytes | None]] = [("omnisend.dlq.reason", b"malformed_avro")]
    produce(broker.bootstrap, dlq, [(b"k", b"\x00not avro")], headers=poison)
    env = connector_env(broker, topic, sim)

    code, report, progress = job(env, "replay-dlq", "--reason", "rejected_by_omnisend")
    assert code == 0, progress
    assert report["sent"] == 5
    assert report["skipped"] == 1  # the malformed record: not selected
    assert report["failedAgain"] == {}
    assert set(sim_contacts(sim)) == {f"f{i}@x.io" for i in range(5)}

    code, report, _ = job(env, "replay-dlq")
    assert code == 1
    assert report["failedAgain"] == {"malformed_avro": 1}
    assert len(read_all(broker.bootstrap, dlq, 6)) == 6  # nothing written back to the DLQ


def tag(sim: SimulatorServer, email: str, tags: list[str]) -> None:
    """Another integration of the brand writes a contact with these tags."""
    response = httpx.post(
        f"{sim.api_url}/contacts",
        headers={"Authorization": "Omnisend-API-Key test-key", "Omnisend-Version": "2026-03-15"},
        json={"identifiers": [{"type": "email", "id": email}], "tags": tags},
    )
    assert response.status_code in (200, 201), response.text


def test_reconcile_finds_and_repairs_drift(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    events = [
        # ann: a member; missing in Omnisend (as after an outage).
        event("ann@x.io", profile_id="p-ann", first_name="Ann", occurred_at=T0),
        # bob: entered then left; Omnisend still has the tag.
        event("bob@x.io", profile_id="p-bob", occurred_at=T0 + 1),
        event("bob@x.io", profile_id="p-bob", change="EXITED", occurred_at=T0 + 2),
        # cy changed address: the old one keeps the tag.
        event("cy@x.io", profile_id="p-cy", occurred_at=T0 + 3),
        event("cy.new@x.io", profile_id="p-cy", occurred_at=T0 + 4),
        # The segment was renamed: its members' old tag is stale.
        event(
            "dee@x.io", profile_id="p-dee", segment_id="s2", segment_name="Old", occurred_at=T0 + 5
        ),
        event(
            "dee@x.io", profile_id="p-dee", segment_id="s2", segment_name="New", occurred_at=T0 + 6
        ),
    ]
    produce_events(broker.bootstrap, topic, events)
    tag(sim, "bob@x.io", ["segment: VIP"])
    tag(sim, "cy@x.io", ["segment: VIP"])
    tag(sim, "cy.new@x.io", ["segment: VIP"])
    tag(sim, "dee@x.io", ["segment: Old", "segment: New"])
    tag(sim, "zed@x.io", ["segment: VIP"])  # never a member at all
    env = connector_env(broker, topic, sim)

    code, report, _ = job(env, "reconcile")
    assert code == 1  # drift found, not applied
    by_tag = {t["tag"]: t for t in report["exports"][0]["tags"]}
    assert set(by_tag) == {"segment: VIP", "segment: Old", "segment: New"}
    vip = by_tag["segment: VIP"]
    assert (vip["members"], vip["missing"], vip["stale"]) == (2, 1, 3)  # ann; bob, cy, zed
    assert (by_tag["segment: Old"]["stale"], by_tag["segment: New"]["stale"]) == (1, 0)
    assert "ann@x.io" not in json.dumps(report)  # samples are masked

    code, report, _ = job(env, "reconcile", "--apply")
    assert code == 0
    assert report["exports"][0]["repair"] == {"repaired": 5, "failed": 0}
    time.sleep(0.3)
    contacts = sim_contacts(sim)
    assert contacts["ann@x.io"]["tags"] == ["segment: VIP"]
    assert contacts["ann@x.io"]["firstName"] == "Ann"
    for email in ("bob@x.io", "cy@x.io", "zed@x.io"):
        assert contacts[email]["tags"] == [], email
    assert contacts["dee@x.io"]["tags"] == ["segment: New"]

    code, report, _ = job(env, "reconcile")
    assert code == 0, report
    assert committed(broker.bootstrap, env["KAFKA_GROUP_ID"], topic) == [-1001] * 3


def test_reconcile_does_not_undo_what_the_live_connector_did_after_its_read(
    broker: Broker, topic: str, sim: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nightly job runs beside the live connector. Changes that come in after the job
    fixed the span it reads are the live connector's: a contact who entered since is tagged,
    not stale; one who left since is untagged, not missing. Repairing them from the older
    picture would undo the live sync."""
    before = [
        event("ann@x.io", profile_id="p-ann", occurred_at=T0),  # leaves after the read
        event("old@x.io", profile_id="p-old", occurred_at=T0 + 1),  # a member, missing
    ]
    produce_events(broker.bootstrap, topic, before)
    after = [
        event("ann@x.io", profile_id="p-ann", change="EXITED", occurred_at=T0 + 10),
        event("new@x.io", profile_id="p-new", occurred_at=T0 + 11),
    ]

    def span_then_live_changes(config: Config, name: str, since_ms: int | None = None) -> Span:
        found = topic_span(config, name, since_ms)
        produce_events(broker.bootstrap, topic, after)  # the live connector syncs them:
        tag(sim, "new@x.io", ["segment: VIP"])  # new@ is tagged, ann@ has no tag
        return found

    monkeypatch.setattr(reconcile_job, "topic_span", span_then_live_changes)
    config = load_config(None, connector_env(broker, topic, sim))
    report = reconcile_job.reconcile(config, [], apply=True, share=1.0)
    (entry,) = report["exports"]
    assert entry["repair"]["failed"] == 0
    assert entry["changedSince"] == 2  # ann@ (missing at the read), new@ (stale at the read)
    time.sleep(0.3)
    contacts = sim_contacts(sim)
    assert contacts["new@x.io"]["tags"] == ["segment: VIP"]  # not untagged
    assert "ann@x.io" not in contacts or contacts["ann@x.io"]["tags"] == []  # not re-added
    assert contacts["old@x.io"]["tags"] == ["segment: VIP"]  # the real drift is repaired


def test_reconcile_repairs_a_lost_tag_with_the_contact_s_latest_fields(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    """Entered A in Vilnius, later B in Kaunas; Omnisend lost only A's tag: the repair adds A's
    tag and leaves the city Kaunas, for every such contact."""
    events = []
    for i in range(32):
        profile, email = f"p{i}", f"c{i}@x.io"
        events.append(
            event(
                email,
                profile_id=profile,
                segment_id="sa",
                segment_name="A",
                city="Vilnius",
                occurred_at=T0 + 10 * i,
            )
        )
        events.append(
            event(
                email,
                profile_id=profile,
                segment_id="sb",
                segment_name="B",
                city="Kaunas",
                occurred_at=T0 + 10 * i + 5,
            )
        )
    produce_events(broker.bootstrap, topic, events)
    for i in range(32):
        response = httpx.post(
            f"{sim.api_url}/contacts",
            headers={
                "Authorization": "Omnisend-API-Key test-key",
                "Omnisend-Version": "2026-03-15",
            },
            json={
                "identifiers": [{"type": "email", "id": f"c{i}@x.io"}],
                "city": "Kaunas",
                "tags": ["segment: B"],
            },
        )
        assert response.status_code in (200, 201)
    code, report, _ = job(connector_env(broker, topic, sim), "reconcile", "--apply")
    assert code == 0, report
    by_tag = {t["tag"]: t for t in report["exports"][0]["tags"]}
    assert (by_tag["segment: A"]["missing"], by_tag["segment: B"]["missing"]) == (32, 0)
    time.sleep(0.3)
    contacts = sim_contacts(sim)
    for i in range(32):
        contact = contacts[f"c{i}@x.io"]
        assert sorted(contact["tags"]) == ["segment: A", "segment: B"]
        assert contact["city"] == "Kaunas"


def test_a_job_whose_topic_does_not_exist_is_a_configuration_error(
    broker: Broker, sim: SimulatorServer
) -> None:
    env = connector_env(broker, f"missing-{time.monotonic_ns()}", sim)
    for args in (("backfill", "--since", "1h"), ("replay-dlq",), ("reconcile",)):
        result = cli(env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "does not exist" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_job_reports_the_exit_code_of_its_process(broker: Broker, sim: SimulatorServer) -> None:
    topic = f"jobs-{time.monotonic_ns()}"
    ensure_topic(broker.bootstrap, {}, topic, 3)
    produce_events(broker.bootstrap, topic, [event("a@example.com", segment_name="vip")])
    code, report, _ = job(connector_env(broker, topic, sim), "reconcile")
    assert code == 1  # drift found, not repaired
    assert report["exitCode"] == code


def produce_in_transactions(
    bootstrap: str, topic: str, events: list[dict[str, Any]]
) -> dict[int, int]:
    """Each half in a transaction of its own: every partition's last offset is a commit
    marker, which no consumer receives. Returns each partition's last record's offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    last: dict[int, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        last[message.partition()] = max(last.get(message.partition(), -1), message.offset())

    half = len(events) // 2
    for part in (events[:half], events[half:]):
        producer.begin_transaction()
        for e in part:
            key = e["profile_id"].encode()
            producer.produce(topic, value=encode_plain(e), key=key, on_delivery=delivered)
        producer.commit_transaction(30)
    assert producer.flush(10) == 0
    return last


def test_a_transactional_topic_is_committed_past_its_last_marker(
    broker: Broker, topic: str, sim: SimulatorServer, run_connector: RunConnector
) -> None:
    """Else the lag never reaches zero and the jobs below would never end."""
    events = [event(f"p{i}@x.io", profile_id=f"p{i}", occurred_at=T0 + i) for i in range(30)]
    last = produce_in_transactions(broker.bootstrap, topic, events)
    want = {(topic, p): offset + 2 for p, offset in last.items()}  # the marker's, plus one
    env = connector_env(broker, topic, sim)
    run = run_connector(env, lambda p: p.committed() == want)
    assert run.pipeline.stats["done"] == 30


def test_jobs_end_on_a_topic_whose_last_offsets_are_transaction_markers(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    events = [event(f"p{i}@x.io", profile_id=f"p{i}", occurred_at=T0 + i) for i in range(30)]
    produce_in_transactions(broker.bootstrap, topic, events)
    env = connector_env(broker, topic, sim)
    code, report, progress = job(env, "backfill", "--since", "2d", timeout_s=60)
    assert code == 0, progress
    assert (report["read"], report["complete"]) == (30, True)
    assert len(sim_contacts(sim)) == 30
    code, _, progress = job(env, "reconcile", timeout_s=60)
    assert code == 0, progress


def stopped_at_first_progress(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run a job, SIGTERM it at its first progress line; its exit code and report."""
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", *args],
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = ""
    for _ in range(50):  # warnings may come first
        seen += process.stderr.readline()
        if "records" in seen:
            break
    assert "records" in seen, seen
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert out.strip(), seen + err
    return process.returncode, json.loads(out)


def test_jobs_stopped_by_sigterm_say_they_are_not_complete(
    broker: Broker, topic: str, sim: SimulatorServer
) -> None:
    """A Job deleted or a node drained: the job ends promptly with its report, exit 1 (it
    was killed without a word, or ended in a traceback on Ctrl-C)."""
    events = [event(f"t{i}@x.io", profile_id=f"t{i}", occurred_at=T0 + i) for i in range(2000)]
    produce_events(broker.bootstrap, topic, events)
    sim.simulator.set_faults({"latency_s": 2.0})  # every answer late: the jobs are mid-way
    env = connector_env(broker, topic, sim, SHUTDOWN_TIMEOUT_S="3")
    code, report = stopped_at_first_progress(env, "backfill", "--since", "2d")
    assert (code, report["complete"], report["exitCode"]) == (1, False, 1)
    assert report["sent"] < len(events)
    code, report = stopped_at_first_progress(env, "reconcile", "--apply")
    assert (code, report["complete"], report["stoppedBy"]) == (1, False, "SIGTERM")
