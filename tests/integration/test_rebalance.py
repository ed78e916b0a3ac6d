"""Members joining and leaving one consumer group mid-sync: two, then three instances, then back
to one. Omnisend ends in the state the event log describes and every record is committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from connector.app import running
from connector.dev.broker import Broker
from connector.kafka.clients import ensure_topic
from connector.pipeline import Pipeline
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.integration.conftest import connector_env, produce_events
from tests.integration.processes import committed_total
from tests.workload import expected_state, wait_for_state, workload

pytestmark = pytest.mark.slow

EVENTS, CONTACTS, PARTITIONS = 20_000, 5_000, 6


@dataclass
class Member:
    pipeline: Pipeline
    stop: threading.Event
    thread: threading.Thread
    exit_code: int | None = None

    def leave(self) -> None:
        self.stop.set()
        self.thread.join(timeout=90)
        assert not self.thread.is_alive()


@pytest.fixture
def group() -> Iterator[tuple[ExitStack, list[Member]]]:
    members: list[Member] = []
    with ExitStack() as stack:
        yield stack, members
        for member in members:
            member.stop.set()
        for member in members:
            member.thread.join(timeout=90)


def join(stack: ExitStack, members: list[Member], env: dict[str, str]) -> Member:
    settings, kafka = load_settings(env)
    parts = stack.enter_context(running(settings, kafka))
    stop = threading.Event()
    member = Member(parts.pipeline, stop, threading.Thread(target=lambda: None))

    def run() -> None:
        member.exit_code = parts.pipeline.run(stop)

    member.thread = threading.Thread(target=run, name=f"member-{len(members)}")
    member.thread.start()
    members.append(member)
    return member


def wait_until(condition: object, timeout_s: float = 60) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_members_join_and_leave_mid_sync(
    broker: Broker, group: tuple[ExitStack, list[Member]]
) -> None:
    stack, members = group
    topic = f"rebalance-{time.monotonic_ns()}"
    ensure_topic(broker.bootstrap, {}, topic, PARTITIONS)
    events = workload(EVENTS, CONTACTS, seed=11)
    chunks = [events[i : i + EVENTS // 5] for i in range(0, EVENTS, EVENTS // 5)]
    produced = 0

    def produce_next() -> None:
        # Each membership change happens with a fresh chunk of the sync still in flight.
        nonlocal produced
        chunk = chunks.pop(0)
        produce_events(broker.bootstrap, topic, chunk)
        produced += len(chunk)

    sim = stack.enter_context(SimulatorServer(SimulatorConfig(time_scale=0.1)))
    env = connector_env(broker, topic, sim, UPSERT_LINGER_S="0.3", TAG_LINGER_S="0.5")
    gid = env["KAFKA_GROUP_ID"]

    def progress() -> int:
        return committed_total(broker.bootstrap, gid, topic, PARTITIONS)

    produce_next()
    a = join(stack, members, env)
    wait_until(lambda: progress() > 0)
    produce_next()
    b = join(stack, members, env)
    wait_until(lambda: len(a.pipeline.assigned) == 3 and len(b.pipeline.assigned) == 3)
    produce_next()
    c = join(stack, members, env)
    wait_until(lambda: all(len(m.pipeline.assigned) == 2 for m in (a, b, c)))
    produce_next()
    assert progress() < produced
    a.leave()
    wait_until(lambda: len(b.pipeline.assigned) == 3 and len(c.pipeline.assigned) == 3)
    produce_next()
    assert progress() < produced
    b.leave()
    wait_until(lambda: len(c.pipeline.assigned) == PARTITIONS)

    diff = wait_for_state(sim.url, expected_state(events), timeout_s=180)
    assert diff == [], "\n".join(diff)
    wait_until(lambda: progress() == EVENTS)
    c.leave()
    assert [m.exit_code for m in members] == [0, 0, 0]
