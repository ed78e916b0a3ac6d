"""Consumer lag per partition, from the broker's end offsets queried periodically.

Fetch statistics freeze while a partition is paused, and backpressure pauses partitions exactly
when lag matters, so the end offsets are asked of the broker (ListOffsets) instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from prometheus_client import Gauge

log = structlog.get_logger("connector.lag")

TP = tuple[str, int]
# The group's committed offsets of partitions not committed here are asked again after this.
GROUP_OFFSETS_MAX_AGE_S = 60.0
Positions = Callable[[], tuple[list[TP], dict[TP, int]]]


def lag_updater(
    admin: AdminClient,
    group_id: str,
    positions: Positions,
    gauge: Gauge,
    timeout_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], None]:
    """A function that sets `gauge{topic, partition}` to end offset minus committed position for
    every assigned partition, and drops the partitions no longer assigned. Until this process
    commits a partition, its committed position is the group's, asked of the broker (after a
    restart a caught-up partition has no lag, not its end offset; asked again after a minute,
    and after this process's own commits were forgotten in a rebalance); a group without a
    commit there reads it from the start (0)."""
    shown: set[TP] = set()  # partitions with a figure
    group: dict[TP, int] = {}  # the group's committed offsets, for partitions not committed here
    asked_at = [0.0]

    def update() -> None:
        assigned, committed = positions()
        mine = set(assigned)
        for tp in [*committed, *(set(group) - mine)]:
            # This process's own figure wins (once forgotten, ask again); a partition that went
            # elsewhere may be committed there before it comes back.
            group.pop(tp, None)
        if clock() - asked_at[0] > GROUP_OFFSETS_MAX_AGE_S:
            group.clear()  # another member may have committed meanwhile
        figures: set[TP] = set()
        if assigned:
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            specs = {TopicPartition(t, p): latest for t, p in assigned}
            try:
                futures = admin.list_offsets(specs, request_timeout=timeout_s)
                ends = {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
            except Exception as exc:  # noqa: BLE001 - no answer: keep the last figures
                log.debug("lag_unavailable", error=str(exc))
                return
            unknown = [tp for tp in assigned if tp not in committed and tp not in group]
            if unknown:
                group.update(_group_offsets(admin, group_id, unknown, timeout_s))
                asked_at[0] = clock()
            for tp, end in ends.items():
                start = committed.get(tp, group.get(tp))
                if start is not None:  # else no figure rather than a wrong one: asked next turn
                    gauge.labels(tp[0], str(tp[1])).set(max(0, end - start))
                    figures.add(tp)
        for tp in shown - mine:
            gauge.remove(tp[0], str(tp[1]))
        shown.intersection_update(mine)
        shown.update(figures)

    return update


def _group_offsets(
    admin: AdminClient, group_id: str, partitions: list[TP], timeout_s: float
) -> dict[TP, int]:
    """The group's committed offset of each partition (0 where it has none); empty if the
    broker did not answer."""
    request = [
        ConsumerGroupTopicPartitions(group_id, [TopicPartition(t, p) for t, p in partitions])
    ]
    try:
        futures = admin.list_consumer_group_offsets(request, request_timeout=timeout_s)
        answered = futures[group_id].result().topic_partitions or []
    except Exception as exc:  # noqa: BLE001 - no answer: no figure this turn
        log.debug("group_offsets_unavailable", error=str(exc))
        return {}
    return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in answered if tp.error is None}
