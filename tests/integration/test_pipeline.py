"""The sync end to end: real broker, simulator over a socket, the connector as users run it."""

from __future__ import annotations

import pytest

from connector.core.codec import encode_plain
from connector.dev.broker import Broker
from connector.readiness import CredentialsRefused
from connector.simulator import SimulatorServer
from tests.events import event
from tests.integration.conftest import (
    RunConnector,
    caught_up,
    connector_env,
    produce,
    produce_events,
    read_all,
    sim_contacts,
    sim_stats,
)
from tests.integration.processes import committed_total

T0 = 1_790_000_000_000


def test_enter_exit_duplicates_out_of_order_and_attribute_updates(
    broker: Broker, topic: str, sim: SimulatorServer, run_connector: RunConnector
) -> None:
    dup = event("dup@example.com", profile_id="p-dup", occurred_at=T0)
    events = [
        event("Ann@Example.com ", profile_id="p-ann", first_name="Ann", occurred_at=T0),
        event(
            "ann@example.com",
            profile_id="p-ann",
            segment_id="s2",
            segment_name="Churn",
            first_name="Ann",
            occurred_at=T0 + 1,
        ),
        event("ann@example.com", profile_id="p-ann", change="EXITED", occurred_at=T0 + 2),
        event("bob@example.com", profile_id="p-bob", first_name="Bob", occurred_at=T0 + 10),
        # Out of order: the exit happened after the entry that arrives later.
        event(
            "bob@example.com",
            profile_id="p-bob",
            segment_id="s2",
            segment_name="Churn",
            change="EXITED",
            occurred_at=T0 + 20,
        ),
        event(
            "bob@example.com",
            profile_id="p-bob",
            segment_id="s2",
            segment_name="Churn",
            occurred_at=T0 + 15,
        ),
        event(
            "bob@example.com",
            profile_id="p-bob",
            first_name="Robert",
            city="Kaunas",
            occurred_at=T0 + 30,
        ),
        dup,
        dup,
    ]
    produce_events(broker.bootstrap, topic, events)
    run = run_connector(connector_env(broker, topic, sim), caught_up(topic, len(events)))
    assert run.exit_code == 0
    contacts = sim_contacts(sim)
    assert set(contacts) == {"ann@example.com", "bob@example.com", "dup@example.com"}
    assert contacts["ann@example.com"]["tags"] == ["segment: Churn"]
    assert contacts["ann@example.com"]["firstName"] == "Ann"
    assert contacts["bob@example.com"]["tags"] == ["segment: VIP"]
    assert (contacts["bob@example.com"]["firstName"], contacts["bob@example.com"]["city"]) == (
        "Robert",
        "Kaunas",
    )
    assert contacts["dup@example.com"]["tags"] == ["segment: VIP"]
    assert all(c["welcomeMessages"] == 0 for c in contacts.values())
    # The duplicate is skipped; the late entry of bob's Churn changes no tag, but its attributes
    # were bob's newest when it arrived (membership per segment, attributes per email).
    assert run.pipeline.stats["skipped"] >= 1


def test_bad_records_go_to_the_dlq_with_reasons_and_the_stream_goes_on(
    broker: Broker, topic: str, sim: SimulatorServer, run_connector: RunConnector
) -> None:
    good = encode_plain(event("ok@example.com"))
    bad = [
        (b"k1", good + b"\x00"),  # trailing bytes
        (b"k2", good[:10]),  # truncated
        (b"k3", encode_plain(event(None))),  # no email
        (b"k4", encode_plain(event("nope"))),  # invalid email
        (b"\xff\xfe", good),  # key is not UTF-8
        (b"k6", encode_plain(event("late@example.com", occurred_at=0))),  # zero timestamp
    ]
    produce(
        broker.bootstrap, topic, [*bad, (b"p-1", good), (b"k7", None)], headers=[("trace", b"abc")]
    )
    run = run_connector(connector_env(broker, topic, sim), caught_up(topic, len(bad) + 2))
    assert run.exit_code == 0
    dlq = read_all(broker.bootstrap, f"{topic}.dlq", len(bad))
    reasons = {m.key(): dict(m.headers())["omnisend.dlq.reason"].decode() for m in dlq}
    assert reasons == {
        b"k1": "trailing_bytes",
        b"k2": "malformed_avro",
        b"k3": "missing_email",
        b"k4": "invalid_email",
        b"\xff\xfe": "invalid_key",
        b"k6": "invalid_timestamp",
    }
    first = next(m for m in dlq if m.key() == b"k1")
    headers = dict(first.headers())
    assert first.value() == good + b"\x00"
    assert headers["trace"] == b"abc"  # the original headers travel with it
    assert headers["omnisend.dlq.stage"] == b"decode"
    assert headers["omnisend.dlq.original.topic"] == topic.encode()
    assert int(headers["omnisend.dlq.original.offset"]) >= 0
    assert "omnisend.dlq.original.timestamp" in headers
    assert sim_contacts(sim)["ok@example.com"]["tags"] == ["segment: VIP"]


def test_restart_resumes_from_committed_offsets(
    broker: Broker, topic: str, sim: SimulatorServer, run_connector: RunConnector
) -> None:
    first = [event(f"a{i}@example.com", profile_id=f"p{i}") for i in range(30)]
    produce_events(broker.bootstrap, topic, first)
    env = connector_env(broker, topic, sim)
    assert run_connector(env, caught_up(topic, 30)).exit_code == 0
    batches_before = sim_stats(sim)["requests"]["POST /batches"]["201"]
    second = [event(f"b{i}@example.com", profile_id=f"p{i}") for i in range(20)]
    produce_events(broker.bootstrap, topic, second)
    run = run_connector(env, caught_up(topic, 50))
    assert run.pipeline.stats["consumed"] == 20
    assert len(sim_contacts(sim)) == 50
    assert sim_stats(sim)["requests"]["POST /batches"]["201"] > batches_before


def test_bad_api_key_stops_the_start_and_commits_nothing(
    broker: Broker, topic: str, sim: SimulatorServer, run_connector: RunConnector
) -> None:
    produce_events(broker.bootstrap, topic, [event(f"x{i}@example.com") for i in range(5)])
    env = connector_env(broker, topic, sim, OMNISEND_API_KEY="not-the-key")
    with pytest.raises(CredentialsRefused):  # the CLI's exit 3, before the group is joined
        run_connector(env, lambda p: False)
    assert committed_total(broker.bootstrap, env["KAFKA_GROUP_ID"], topic, 3) == 0
    assert sim_contacts(sim, settle_s=0) == {}


def test_mostly_invalid_input_trips_the_dlq_limit(
    broker: Broker, topic: str, sim: SimulatorServer, run_connector: RunConnector
) -> None:
    bad = [(b"k", b"\x00garbage") for _ in range(150)]
    produce(broker.bootstrap, topic, bad)
    env = connector_env(broker, topic, sim, DLQ_WINDOW_RECORDS="100", DLQ_MAX_INVALID_SHARE="0.5")
    run = run_connector(env, lambda p: False)
    assert run.exit_code == 4
    assert "DLQ_MAX_INVALID_SHARE" in str(run.pipeline.fatal)
    assert run.pipeline.stats["dead_lettered"] <= 100  # it stopped instead of draining the topic
