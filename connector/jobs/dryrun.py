"""`run --dry-run`: the whole pipeline against an in-memory Omnisend (the simulator's core, no
rate limits, no latency) instead of the real one, with no dead-letter writes and no commits, in a
consumer group of its own. The report says what a real run would have sent."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.core.clock import Clock
from connector.core.errors import Fatal
from connector.core.events import RawRecord
from connector.simulator import Simulator, SimulatorConfig

if TYPE_CHECKING:  # the jobs' runner imports the app, which imports this module
    from connector.jobs.runner import Span

DRY_RUN_BASE_URL = "http://omnisend.dry-run.invalid/api"
SAMPLES = 5


class DryDeadLetters:
    """Counts what would go to the dead-letter topic; each is delivered at once."""

    def __init__(self) -> None:
        self._delivered: list[tuple[RawRecord, str]] = []
        self.reasons: Counter[str] = Counter()
        self.pending = 0
        self.failure: Fatal | None = None

    def send(
        self, record: RawRecord, reason: str, stage: str, detail: str, error_class: str
    ) -> None:
        self.reasons[reason] += 1
        self._delivered.append((record, reason))

    def poll(self) -> None:
        pass  # nothing is written

    def flush(self, timeout_s: float) -> bool:
        return True

    def delivered(self) -> list[tuple[RawRecord, str]]:
        taken, self._delivered = self._delivered, []
        return taken


def dry_run_key(connection: str) -> str:
    """The in-memory Omnisend's key of a connection: each connection is a brand of its own."""
    return f"dry-run:{connection}"


def dry_simulator(clock: Clock, connections: list[str]) -> Simulator:
    return Simulator(
        SimulatorConfig(
            api_keys={dry_run_key(name): name for name in connections},
            unlimited=True,
            batch_latency_s=0.0,
            item_latency_s=0.0,
            tag_delay_s=0.0,
        ),
        clock,
    )


@dataclass
class DryRun:
    simulator: Simulator
    dead_letters: list[DryDeadLetters] = field(default_factory=list)
    segments: Counter[str] = field(default_factory=Counter)  # events per segment name

    def report(self, skipped: dict[str, int] | None = None) -> dict[str, Any]:
        """Counts and a few masked samples of what a real run would have sent: in total, and
        per connection; with the records skipped by reason and the segments seen (events per
        segment name)."""
        log = self.simulator.request_times()
        brands = self.simulator.state()["brands"]
        per = {name: _brand_report(name, brand, log) for name, brand in sorted(brands.items())}
        dlq: Counter[str] = Counter()
        for letters in self.dead_letters:
            dlq.update(letters.reasons)
        total: dict[str, Any] = {"contacts": 0, "contactsByTag": Counter(), "requests": Counter()}
        for part in per.values():
            total["contacts"] += part["contacts"]
            total["contactsByTag"].update(part["contactsByTag"])
            total["requests"].update(part["requests"])
        return {
            "contacts": total["contacts"],
            "contactsByTag": dict(sorted(total["contactsByTag"].items())),
            "requests": dict(sorted(total["requests"].items())),
            "deadLettered": dict(sorted(dlq.items())),
            "skipped": dict(sorted((skipped or {}).items())),
            "segmentsSeen": dict(sorted(self.segments.items())),
            "samples": [s for part in per.values() for s in part["samples"]][:SAMPLES],
            "connections": per,
        }


def _brand_report(name: str, brand: dict[str, Any], log: list[dict[str, Any]]) -> dict[str, Any]:
    calls = Counter(
        r["endpoint"] for r in log if r["brand"] == name and r["endpoint"] != "GET /contacts"
    )
    contacts = brand["contacts"]
    tags: Counter[str] = Counter(tag for c in contacts for tag in c["tags"])
    return {
        "contacts": len(contacts),
        "contactsByTag": dict(sorted(tags.items())),
        "requests": dict(sorted(calls.items())),
        "samples": [_sample(c) for c in contacts[:SAMPLES]],
    }


def _sample(contact: dict[str, Any]) -> dict[str, Any]:
    keep = ("firstName", "lastName", "city", "country", "state", "postalCode", "tags")
    return {"email": mask(contact["email"]), **{k: contact[k] for k in keep if contact.get(k)}}


def mask(email: str) -> str:
    """`jo***n@example.com`: the first two and the last character of the local part (fewer of
    a short one: never more than half of it), three stars for the rest whatever its length:
    samples stay distinguishable, the address stays unreadable."""
    local, _, domain = email.partition("@")
    if len(local) <= 3:  # too short to show more than its first character
        return f"{local[:1]}***@{domain}"
    if len(local) <= 5:  # the first and the last: never more than half of it
        return f"{local[:1]}***{local[-1]}@{domain}"
    return f"{local[:2]}***{local[-1]}@{domain}"


class CaughtUp:
    """For `Pipeline.run(until=…)`: true once partitions are assigned, nothing is in flight,
    and `span` is done: the span the topic had when the dry run started (a busy topic never
    falls quiet), past a transaction's last marker once the consumer has read over it. A
    pause in the records (a broker restarting, a slow first fetch) is not the end. `reached`
    says afterwards whether the run got there or was stopped before."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.reached = False

    def __call__(self, pipeline: Any) -> bool:
        if pipeline.in_flight or not pipeline.assigned:
            return False
        self.reached = self.span.done(pipeline.done_positions()) >= self.span.total
        return self.reached
