"""`reconcile`: rebuild each segment's current membership from the topic, compare it with the
contacts Omnisend holds under the segment's tag (`GET /contacts?tag=…`), report the drift and,
with `--apply`, repair it through the usual sink (so within the budget).

Drift it finds: members missing in Omnisend (after an outage, a lost change), contacts tagged but
no longer members, tags left by a renamed segment (every tag the topic ever produced is
inspected), and the old address of a profile whose email changed.

The pure part is `Membership` (events in, expected tags out) and `drift`; reading the topic and
listing contacts are at the edges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry

from connector.app import make_decoder, make_sink
from connector.clock import SystemClock
from connector.config import Config, Export
from connector.dryrun import mask
from connector.errors import ConfigError, InvalidRecord, Retriable
from connector.events import ContactChange, Position, SegmentChange
from connector.kafka import tp
from connector.mapping import Mapper
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.client import OmnisendClient, RateLimited
from connector.omnisend.http import async_client
from connector.tools import Progress, job_consumer, span

log = structlog.get_logger("connector.reconcile")

PAGE = 250
SAMPLES = 5


@dataclass
class _Member:
    email: str
    entered: bool
    at: int
    fields: dict[str, Any]


@dataclass
class _Segment:
    name: str = ""
    name_at: int = -1
    profiles: dict[str, _Member] = field(default_factory=dict)


class Membership:
    """The latest state of every (export, segment, profile), from events in any order."""

    def __init__(self, exports: Iterable[Export]) -> None:
        self._mappers = [(e, Mapper(e.mapping)) for e in exports]
        self._segments: dict[tuple[str, str], _Segment] = {}  # (export, segment id)
        self._tags_seen: dict[str, set[str]] = {}  # export -> every tag the topic produced
        self.invalid = 0

    def add(self, event: SegmentChange, now_ms: int) -> None:
        for export, mapper in self._mappers:
            if not export.wants(event):
                continue
            try:
                change = mapper.map(event, Position("", 0, 0), 0, now_ms)
            except InvalidRecord:
                self.invalid += 1
                continue
            self._tags_seen.setdefault(export.name, set()).add(change.tag)
            segment = self._segments.setdefault((export.name, event.segment_id), _Segment())
            if event.occurred_at_ms >= segment.name_at:
                segment.name, segment.name_at = event.segment_name, event.occurred_at_ms
            member = segment.profiles.get(event.profile_id)
            if member is None or event.occurred_at_ms >= member.at:
                fields = change.fields if change.entered else (member.fields if member else {})
                segment.profiles[event.profile_id] = _Member(
                    change.email, change.entered, event.occurred_at_ms, fields
                )

    def expected(self, export: Export) -> dict[str, dict[str, dict[str, Any]]]:
        """tag → {email: fields} of the export's current members, for every tag the topic ever
        produced for it (a tag nobody should hold maps to no one)."""
        mapper = Mapper(export.mapping)
        out: dict[str, dict[str, dict[str, Any]]] = {
            tag: {} for tag in self._tags_seen.get(export.name, ())
        }
        for (name, segment_id), segment in self._segments.items():
            if name != export.name:
                continue
            tag = mapper.tag_of(segment_id, segment.name)
            members = out.setdefault(tag, {})
            for member in segment.profiles.values():
                if member.entered:
                    members[member.email] = member.fields
        return out


@dataclass(frozen=True)
class Drift:
    tag: str
    expected: int
    held: int
    missing: dict[str, dict[str, Any]]  # email -> fields to upsert
    stale: set[str]

    def report(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "members": self.expected,
            "inOmnisend": self.held,
            "missing": len(self.missing),
            "stale": len(self.stale),
            "missingSamples": [mask(e) for e in sorted(self.missing)[:SAMPLES]],
            "staleSamples": [mask(e) for e in sorted(self.stale)[:SAMPLES]],
        }


def drift(tag: str, expected: dict[str, dict[str, Any]], held: set[str]) -> Drift:
    missing = {email: fields for email, fields in expected.items() if email not in held}
    return Drift(tag, len(expected), len(held), missing, held - set(expected))


# ---- the edges ---------------------------------------------------------------------------------


def read_membership(config: Config, exports: list[Export], out: TextIO | None) -> Membership:
    """Every event of the topic, read with assigned partitions (no group, no commits)."""
    consumer = job_consumer(config)
    membership = Membership(exports)
    decoder = make_decoder(config.settings)
    try:
        topic_span = span(consumer, config.settings.kafka_topic)
        progress = Progress("reconcile: reading the topic", topic_span.total, out)
        consumer.assign([tp(topic_span.topic, p, s) for p, s in topic_span.starts.items()])
        positions = {(topic_span.topic, p): s for p, s in topic_span.starts.items()}
        now_ms = int(time.time() * 1000)
        while topic_span.done(positions) < topic_span.total:
            for message in consumer.consume(500, 1.0):
                if message.error() is not None:
                    continue
                positions[(message.topic(), message.partition())] = message.offset() + 1
                if message.value() is None:
                    continue
                try:
                    membership.add(decoder.decode(message.value()), now_ms)
                except InvalidRecord:
                    membership.invalid += 1
            progress.show(topic_span.done(positions))
        progress.show(topic_span.total, force=True)
    finally:
        consumer.close()
    return membership


async def _held(client: OmnisendClient, budget: Budget, tag: str) -> set[str]:
    """Emails of the contacts Omnisend holds under `tag`, page by page within the budget."""
    emails: set[str] = set()
    after: str | None = None
    while True:
        wait = budget.try_acquire(time.monotonic(), tag_call=False)
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        try:
            page = await client.list_contacts(tag, after, PAGE)
        except RateLimited as exc:
            budget.rate_limited(time.monotonic(), exc.retry_after_s)
            continue
        except Retriable:
            await asyncio.sleep(1.0)
            continue
        finally:
            Budget.answered(budget.last_slot, time.monotonic())
        emails.update(page.emails)
        if page.after is None:
            return emails
        after = page.after


def list_held(
    config: Config, connection: str, tags: list[str], share: float
) -> dict[str, set[str]]:
    conn = config.connections[connection]
    settings = config.settings
    budget = Budget(
        BudgetConfig(
            conn.rate_limit_per_minute,
            conn.tag_rate_limit_per_minute,
            settings.rate_limit_window_s,
            settings.rate_limit_headroom,
        ),
        share,
    )

    async def all_tags() -> dict[str, set[str]]:
        async with async_client(conn.base_url, settings.request_timeout_s) as http:
            client = OmnisendClient(http, conn.api_key.get_secret_value(), conn.base_url)
            return {tag: await _held(client, budget, tag) for tag in tags}

    return asyncio.run(all_tags())


def repair(config: Config, connection: str, drifts: list[Drift], share: float) -> dict[str, int]:
    """Upsert and tag the missing members, untag the stale contacts, through the sink."""
    clock = SystemClock()
    sink = make_sink(
        config.settings,
        config.connections[connection],
        Metrics(CollectorRegistry()),
        clock,
    ).start()
    sink.budget.share = share
    changes: list[ContactChange] = []
    at = int(time.time() * 1000)
    for d in drifts:
        for email, fields in sorted(d.missing.items()):
            pos = Position("reconcile", 0, len(changes))
            changes.append(
                ContactChange(pos, f"reconcile-{pos.offset}", at, email, d.tag, True, fields)
            )
        for email in sorted(d.stale):
            pos = Position("reconcile", 0, len(changes))
            changes.append(ContactChange(pos, f"reconcile-{pos.offset}", at, email, d.tag, False))
    result = {"repaired": 0, "failed": 0}
    try:
        sink.submit(changes)
        pending = len(changes)
        while pending and sink.fatal is None:
            sink.drain(5.0)
            for outcome in sink.take_outcomes():
                pending -= 1
                result["failed" if outcome.reason else "repaired"] += 1
        if sink.fatal is not None:
            raise sink.fatal
    finally:
        sink.stop()
    return result


def reconcile(
    config: Config,
    export_names: list[str],
    apply: bool,
    share: float,
    out: TextIO | None = None,
) -> dict[str, Any]:
    exports = [e for e in config.exports if not export_names or e.name in export_names]
    unknown = set(export_names) - {e.name for e in config.exports}
    if unknown:
        raise ConfigError(
            f"no export {sorted(unknown)} (known: {', '.join(e.name for e in config.exports)})"
        )
    membership = read_membership(config, exports, out)
    report: dict[str, Any] = {"exports": [], "invalidEvents": membership.invalid, "applied": apply}
    for export in exports:
        expected = membership.expected(export)
        held = list_held(config, export.connection, sorted(expected), share)
        drifts = [drift(tag, expected[tag], held[tag]) for tag in sorted(expected)]
        entry: dict[str, Any] = {
            "export": export.name,
            "connection": export.connection,
            "tags": [d.report() for d in drifts],
        }
        if apply and any(d.missing or d.stale for d in drifts):
            entry["repair"] = repair(config, export.connection, drifts, share)
        report["exports"].append(entry)
    return report
