"""Consumer lag per partition, from the broker's end offsets queried periodically.

Fetch statistics freeze while a partition is paused, and backpressure pauses partitions exactly
when lag matters, so the end offsets are asked of the broker (ListOffsets) instead.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from prometheus_client import Gauge

log = structlog.get_logger("connector.lag")

Positions = Callable[[], tuple[list[tuple[str, int]], dict[tuple[str, int], int]]]


def lag_updater(
    admin: AdminClient, positions: Positions, gauge: Gauge, timeout_s: float = 5.0
) -> Callable[[], None]:
    """A function that sets `gauge{topic, partition}` to end offset minus committed position for
    every assigned partition, and drops the partitions no longer assigned."""
    shown: set[tuple[str, int]] = set()

    def update() -> None:
        assigned, committed = positions()
        if assigned:
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            specs = {TopicPartition(t, p): latest for t, p in assigned}
            try:
                futures = admin.list_offsets(specs, request_timeout=timeout_s)
                ends = {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}
            except Exception as exc:  # noqa: BLE001 - no answer: keep the last figures
                log.debug("lag_unavailable", error=str(exc))
                return
            for tp, end in ends.items():
                gauge.labels(tp[0], str(tp[1])).set(max(0, end - committed.get(tp, 0)))
        for tp in shown - set(assigned):
            gauge.remove(tp[0], str(tp[1]))
        shown.clear()
        shown.update(assigned)

    return update
