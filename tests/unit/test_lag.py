"""The lag gauge when this process has not committed yet: after a restart, or a partition newly
assigned, the group's committed offset is the broker's, not zero."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from connector.kafka.lag import lag_updater

TOPIC = "segments"


def done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class Admin:
    """End offsets, and the group's committed offsets as the broker keeps them (-1001: none)."""

    def __init__(self, ends: dict[int, int], group: dict[int, int], fail: bool = False) -> None:
        self.ends, self.group, self.fail = ends, group, fail
        self.group_asks = 0

    def list_offsets(self, specs: dict[TopicPartition, Any], **_: Any) -> dict[Any, Any]:
        out = {}
        for tp in specs:
            answer = TopicPartition(tp.topic, tp.partition, self.ends[tp.partition])
            out[tp] = done(answer)
        return out

    def list_consumer_group_offsets(
        self, request: list[ConsumerGroupTopicPartitions], **_: Any
    ) -> dict[str, Future[Any]]:
        self.group_asks += 1
        if self.fail:
            raise RuntimeError("the coordinator is loading")
        (asked,) = request
        answered = [
            TopicPartition(tp.topic, tp.partition, self.group.get(tp.partition, -1001))
            for tp in asked.topic_partitions or []
        ]
        return {asked.group_id: done(ConsumerGroupTopicPartitions(asked.group_id, answered))}


def lags(gauge: Gauge) -> dict[int, float]:
    return {
        int(s.labels["partition"]): s.value for metric in gauge.collect() for s in metric.samples
    }


def test_a_restarted_connector_reads_the_groups_committed_offsets_until_it_commits() -> None:
    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=CollectorRegistry())
    admin = Admin(ends={0: 1_000_000, 1: 500, 2: 40}, group={0: 1_000_000, 1: 480})
    mine: dict[tuple[str, int], int] = {}
    assigned = [(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)]
    update = lag_updater(admin, "connector", lambda: (assigned, mine), gauge)  # type: ignore[arg-type]
    update()
    # Caught up before the restart: no lag, not the end offset. A group without a commit for
    # partition 2 reads it from the start.
    assert lags(gauge) == {0: 0, 1: 20, 2: 40}
    update()
    assert admin.group_asks == 1  # asked once, not on every turn
    mine[(TOPIC, 1)] = 495  # this process committed: its own figure wins
    update()
    assert lags(gauge)[1] == 5


def test_without_the_groups_offsets_a_partition_keeps_no_figure_rather_than_a_wrong_one() -> None:
    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=CollectorRegistry())
    admin = Admin(ends={0: 1_000_000}, group={0: 1_000_000}, fail=True)
    update = lag_updater(admin, "connector", lambda: ([(TOPIC, 0)], {}), gauge)  # type: ignore[arg-type]
    update()
    assert lags(gauge) == {}
    admin.fail = False
    update()
    assert lags(gauge) == {0: 0}


def test_after_a_rebalance_the_groups_offsets_are_asked_again() -> None:
    """A partition revoked and assigned again (within one tick, as an eager rebalance does)
    forgets this process's commits; the group's offset read at start-up is stale by then."""
    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=CollectorRegistry())
    admin = Admin(ends={0: 1_000}, group={})
    mine: dict[tuple[str, int], int] = {}
    assigned = [(TOPIC, 0)]
    update = lag_updater(admin, "connector", lambda: (assigned, mine), gauge)  # type: ignore[arg-type]
    update()
    assert lags(gauge) == {0: 1_000}  # a new group, nothing committed: from the start
    mine[(TOPIC, 0)] = 1_000  # caught up, committed here (and so in the group)
    admin.group[0] = 1_000
    update()
    assert lags(gauge) == {0: 0}
    mine.clear()  # revoked and assigned again between two ticks: the commits are forgotten
    update()
    assert lags(gauge) == {0: 0}  # not 1,000 of phantom lag


def test_the_groups_offsets_are_asked_again_after_a_minute() -> None:
    """A partition this process never commits (idle) keeps the group's offset only a minute:
    another member may have committed it meanwhile (a rebalance there and back)."""
    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=CollectorRegistry())
    admin = Admin(ends={0: 100}, group={0: 40})
    now = [1_000.0]
    update = lag_updater(
        admin,  # type: ignore[arg-type]
        "connector",
        lambda: ([(TOPIC, 0)], {}),
        gauge,
        clock=lambda: now[0],
    )
    update()
    admin.group[0] = 100
    now[0] += 30
    update()
    assert (lags(gauge), admin.group_asks) == ({0: 60}, 1)
    now[0] += 31
    update()
    assert (lags(gauge), admin.group_asks) == ({0: 0}, 2)


def test_a_partition_that_went_elsewhere_is_asked_again_when_it_comes_back() -> None:
    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=CollectorRegistry())
    admin = Admin(ends={0: 100}, group={0: 40})
    assigned = [(TOPIC, 0)]
    update = lag_updater(admin, "connector", lambda: (assigned, {}), gauge)  # type: ignore[arg-type]
    update()
    assigned.clear()  # to another member, which commits it
    update()
    admin.group[0] = 100
    assigned.append((TOPIC, 0))  # back, within the minute
    update()
    assert lags(gauge) == {0: 0}
