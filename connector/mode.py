"""What a run of the loop is for: the service, a dry run, or a job over a topic (backfill, DLQ
replay), and how each behaves."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from connector.core.events import RawRecord


@dataclass(frozen=True)
class Job:
    """A one-off run beside the live connector: `topic`'s partitions read from the given
    offsets, outside the consumer group, using `share` of each brand's budget."""

    name: str
    topic: str
    assignment: dict[tuple[str, int], int]
    share: float = 0.5
    select: Callable[[RawRecord], bool] | None = None


@dataclass(frozen=True)
class Mode:
    """What a run of the loop is for, and so how it behaves: the service (`LIVE`), a dry run
    (`DRY_RUN`), or a job (`Mode.of(job)`: backfill, DLQ replay). Each behaviour that differs
    is asked by name here, never worked out from flags where it is used."""

    name: str  # "live", "dry-run", or the job's name
    job: Job | None = None

    @classmethod
    def of(cls, job: Job) -> Mode:
        return cls(job.name, job)

    @property
    def live(self) -> bool:
        """The service: it commits, writes dead letters and results, and checks every key
        before joining its group."""
        return self.name == "live"

    @property
    def dry_run(self) -> bool:
        """An in-memory Omnisend, nothing written or committed, a report of what would go."""
        return self.name == "dry-run"

    def group_id(self, configured: str) -> str:
        """The service's own group; any other run reads in a group of its own."""
        return configured if self.live else f"{configured}.{self.name}.{uuid.uuid4().hex[:8]}"

    def consumer_overrides(self, kafka: dict[str, str]) -> dict[str, str]:
        """Any run but the service reads its span from the start: an offset reset (before the
        first read of a new group, or past records retention removed) goes to the earliest
        record, whatever the service's `auto.offset.reset` says (`latest` would read nothing,
        `error` would stall)."""
        return kafka if self.live else from_the_start(kafka)

    @property
    def serves_probes(self) -> bool:
        return self.job is None  # a job needs neither readiness checks nor a port


def from_the_start(kafka: dict[str, str]) -> dict[str, str]:
    """The librdkafka properties of a consumer that reads a span from its start: an offset
    reset goes to the earliest record."""
    return {**kafka, "auto.offset.reset": "earliest"}


LIVE = Mode("live")
DRY_RUN = Mode("dry-run")
