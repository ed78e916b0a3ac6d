"""`reconcile`: rebuild each segment's current membership from the topic, compare it with the
contacts Omnisend holds under the segment's tag (`GET /contacts?tag=…`), report the drift and,
with `--apply`, repair it through the usual sink (so within the budget).

Drift it finds: members missing in Omnisend (after an outage, a lost change), contacts tagged but
no longer members, tags left by a renamed segment (every tag the topic ever produced is
inspected), and the old address of a profile whose email changed. A missing member is repaired
with the contact's latest fields by `occurred_at` across all the export's segments, not those of
the segment whose tag was lost.

Memory: a topic may hold millions of changes of millions of contacts, so the first read keeps
fingerprints, not strings (`connector.core.recent.IntTable`): per (export, segment) the latest change
of each profile (its email's fingerprint, when, in or out), and per (export, email) where the
latest entry is in the topic. Omnisend's contacts are compared by fingerprint, page by page. What
is missing is found again by a second read of the topic, at the record holding each missing
contact's latest entry, and repaired (or sampled for the report) from there: addresses and
fields are never all in memory at once.

It runs beside the live connector: what comes in after the span it read is the live connector's,
so while repairing it follows the topic past that span (`Tail`) and repairs no contact with a
change there.

The pure parts are in `connector.jobs.drift`: `Membership` (events in, expected fingerprints
out), `Drift` and `Finder`; reading the topic and listing contacts are here, at the edges.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, closing
from typing import Any, TextIO

import httpx
import structlog
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from connector.app import make_decoder, make_sink
from connector.config import Config
from connector.core.clock import SystemClock
from connector.core.errors import ConfigError, Fatal, InvalidRecord, Retriable
from connector.core.events import ContactChange, Position, SegmentChange
from connector.core.mapping import Mapper
from connector.core.recent import fingerprint
from connector.core.routing import Export
from connector.jobs.drift import Drift, Finder, Membership, shared_members
from connector.jobs.runner import Progress, Span, decode_waiting, job_consumer, topic_span
from connector.kafka.source import KafkaSource
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.client import OmnisendClient, RateLimited, Rejected
from connector.omnisend.http import async_transport
from connector.omnisend.sink import OmnisendSink

log = structlog.get_logger("connector.reconcile")

PAGE = 250
# How often the topic past the span is read while repairing, and how long it may take.
TAIL_EVERY_S = 1.0
TAIL_TIMEOUT_S = 30.0
# Repairs are handed to the sink this many at a time, when it has room for them.
_REPAIR_CHUNK = 500
# Failed list reads in a row after which the job gives up on Omnisend.
MAX_LIST_FAILURES = 10
# Empty pages in a row, each with a cursor to another, after which the listing is not believed.
MAX_EMPTY_PAGES = 20

Visit = Callable[[int, int, SegmentChange], bool]  # partition, offset, event -> go on?


# ---- the edges ---------------------------------------------------------------------------------


def read_topic(
    config: Config, topic_span: Span, what: str, visit: Visit, out: TextIO | None
) -> int:
    """Every record of `topic_span`, decoded, to `visit` until it says stop; records that do not
    decode are counted and skipped. Assigned partitions: no group, no commits."""
    source = KafkaSource(job_consumer(config))
    decoder = make_decoder(config.settings)
    invalid = 0
    try:
        progress = Progress(what, topic_span.total, out)
        positions = {(topic_span.topic, p): s for p, s in topic_span.starts.items()}
        source.assign(positions)
        going = True
        while going and topic_span.done(positions) < topic_span.total:
            for raw in source.poll(500, 1.0):
                topic, partition, offset = (
                    raw.position.topic,
                    raw.position.partition,
                    raw.position.offset,
                )
                positions[(topic, partition)] = offset + 1
                if raw.value is None or offset >= topic_span.ends[partition]:
                    continue
                try:
                    event = decode_waiting(decoder, raw.value)
                except InvalidRecord:
                    invalid += 1
                    continue
                if not visit(partition, offset, event):
                    going = False
                    break
            # Past a transaction's markers, which no record reaches.
            for tp, at in source.positions(list(positions)).items():
                positions[tp] = max(positions[tp], at)
            progress.show(topic_span.done(positions))
        progress.show(topic_span.done(positions), force=True)
    finally:
        source.close()
    return invalid


async def _hold(client: OmnisendClient, budget: Budget, found: Drift) -> None:
    """The contacts Omnisend holds under the drift's tag, page by page within the budget. A
    listing that comes back to a page it read, pages on with nothing in it, or says there is
    more without saying where, ends the job (`Fatal`) rather than looping forever."""
    after: str | None = None
    failures = empty = limited = 0
    seen: set[str] = set()
    while True:
        wait = budget.try_acquire(time.monotonic(), tag_call=False)
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        try:
            page = await client.list_contacts(found.tag, after, PAGE)
        except RateLimited as exc:
            budget.rate_limited(time.monotonic(), exc.retry_after_s)
            limited += 1
            if limited in (1, 10) or limited % 100 == 0:  # a 429 storm is said, not in silence
                log.warning("listing_rate_limited", tag=found.tag, answers_429=limited)
            continue
        except Retriable as exc:
            failures += 1
            if failures >= MAX_LIST_FAILURES:
                raise Fatal(
                    f"listing the contacts tagged {found.tag!r} kept failing: {exc}"
                ) from None
            await asyncio.sleep(min(30.0, 2.0**failures))
            continue
        except Rejected as exc:  # an expired or unknown cursor, a limit refused
            raise Fatal(f"listing the contacts tagged {found.tag!r}: {exc}") from None
        finally:
            Budget.answered(budget.last_slot, time.monotonic())
        failures = 0
        found.hold(page.emails)
        listing = f"listing the contacts tagged {found.tag!r}"
        if not (page.after is not None if page.has_more is None else page.has_more):
            return
        if page.after is None:
            raise Fatal(f"{listing}: Omnisend said there is more, with no cursor to it")
        if page.after in seen or page.after == after:
            raise Fatal(f"{listing}: the pages came back to one already read")
        empty = 0 if page.emails else empty + 1
        if empty >= MAX_EMPTY_PAGES:
            raise Fatal(f"{listing}: {empty} empty pages in a row, each with a next one")
        seen.add(page.after)
        after = page.after


def list_held(config: Config, connection: str, drifts: list[Drift], share: float) -> None:
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

    async def all_tags() -> None:
        async with async_transport(conn.base_url) as transport:
            client = OmnisendClient(
                transport,
                conn.api_key.get_secret_value(),
                conn.base_url,
                timeout=httpx.Timeout(settings.request_timeout_s),
            )
            for found in drifts:
                await _hold(client, budget, found)

    asyncio.run(all_tags())


def shares(share: float, apply: bool) -> tuple[float, float]:
    """(listing, repairs): with `apply`, the stale are untagged while the tags are listed, each
    through a budget of its own, so each gets half of `--share`."""
    return (share / 2, share / 2) if apply else (share, share)


class Tail:
    """The topic past the span the job read, followed while it repairs: the emails whose
    changes came in since (kept as fingerprints) are the live connector's. A repair of them,
    made from the older picture, could undo what it did (untag a contact who entered since,
    tag one who left). Changes of every export of the connection count: two may make one
    tag."""

    def __init__(self, config: Config, exports: list[Export], starts: dict[int, int]) -> None:
        self._consumer = job_consumer(config)
        self._topic = config.settings.kafka_topic
        self._decoder = make_decoder(config.settings)
        self._mappers = [(e, Mapper(e.mapping)) for e in exports]
        self._positions = dict(starts)
        self._consumer.assign([TopicPartition(self._topic, p, o) for p, o in starts.items()])
        self._changed: set[int] = set()
        self._caught_up = self._blind = False
        self._read_at = -math.inf
        self.changed_since = 0  # repairs left out: their contact changed since the span
        self.unsure = 0  # repairs left out: the topic past the span could not be read

    def changed(self, email: str) -> bool:
        """Whether a change of `email` came in after the span (the topic read up to its end at
        most once a second). When the topic cannot be read as far as its end, or a record of
        it not decoded, every email counts as changed: no repair rather than a wrong one."""
        if time.monotonic() - self._read_at >= TAIL_EVERY_S and not self._blind:
            self._caught_up = self._catch_up()
            self._read_at = time.monotonic()  # from its end: a slow read is not read again
        if not self._caught_up or self._blind:
            self.unsure += 1
            return True
        found = fingerprint(email) in self._changed
        self.changed_since += found
        return found

    def _catch_up(self) -> bool:
        tps = [TopicPartition(self._topic, p) for p in self._positions]
        ends = {
            tp.partition: self._consumer.get_watermark_offsets(tp, timeout=TAIL_TIMEOUT_S)[1]
            for tp in tps
        }
        deadline = time.monotonic() + TAIL_TIMEOUT_S
        while any(self._positions[p] < end for p, end in ends.items()):
            if time.monotonic() >= deadline:
                return False
            for message in self._consumer.consume(500, 0.2):
                error = message.error()
                if error is None:
                    self._note(message.value())
                elif error.code() != KafkaError._PARTITION_EOF:
                    self._blind = True  # a fetch failed: the position may be past a record
            # The consumer's own positions: past a transaction's markers, which never arrive.
            for tp in self._consumer.position(tps):
                if tp.offset >= 0:
                    self._positions[tp.partition] = tp.offset
        return True

    def _note(self, value: bytes | None) -> None:
        try:
            event = self._decoder.decode(value or b"")
        except InvalidRecord:
            return  # the live connector dead-letters it: no change of anyone's
        except Retriable:
            self._blind = True  # the registry is away: whose change it was is not known
            return
        for export, mapper in self._mappers:
            if export.wants(event):
                try:
                    self._changed.add(fingerprint(mapper.map(event, event.occurred_at_ms).email))
                except InvalidRecord:
                    continue

    def close(self) -> None:
        self._consumer.close()


class _Repairs:
    """Changes handed to a sink as it has room for them, and their outcomes counted. The sink
    starts with the first change. A change of a contact the live connector changed since the
    span was read (`changed`) is dropped as it is handed over."""

    def __init__(self, make: Callable[[], OmnisendSink], changed: Callable[[str], bool]) -> None:
        self._make = make
        self._changed = changed
        self.sink: OmnisendSink | None = None
        self.waiting: list[ContactChange] = []
        self.pending = 0
        self.count = 0
        self.result = {"repaired": 0, "failed": 0}

    def untag(self, tag: str, email: str) -> None:
        self.count += 1
        position = Position("reconcile-stale", 0, self.count)
        at = int(time.time() * 1000)
        self.add([ContactChange(position, f"untag-{self.count}", at, email, tag, False)])

    def add(self, changes: Iterable[ContactChange]) -> None:
        self.waiting.extend(changes)
        if len(self.waiting) >= _REPAIR_CHUNK:
            self._hand_over()

    def _hand_over(self) -> None:
        self.waiting = [c for c in self.waiting if not self._changed(c.email)]
        if not self.waiting:
            return
        if self.sink is None:
            self.sink = self._make().start()
        while self.sink.saturated() and self.sink.fatal is None:
            self._collect()
            time.sleep(0.05)
        self.pending += len(self.waiting)
        self.sink.submit(self.waiting)
        self.waiting = []

    def _collect(self) -> None:
        if self.sink is None:
            return
        for outcome in self.sink.take_outcomes():
            self.pending -= 1
            self.result["failed" if outcome.reason else "repaired"] += 1

    def finish(self) -> dict[str, int] | None:
        """The counts (None: nothing needed repair)."""
        self._hand_over()
        if self.sink is None:
            return None
        try:
            while self.pending and self.sink.fatal is None:
                self.sink.drain(5.0)
                self._collect()
            if self.sink.fatal is not None:
                raise self.sink.fatal
        finally:
            self.sink.stop()
        return self.result


def reconcile_export(
    config: Config,
    export: Export,
    topic_span: Span,
    membership: Membership,
    apply: bool,
    share: float,
    out: TextIO | None,
) -> dict[str, Any]:
    """List what Omnisend holds under each of the export's tags, compare, and find the
    missing again (their samples; with `apply`, their repairs, as the stale are untagged
    while they are listed)."""
    expected = membership.expected(export)
    siblings = [e for e in config.exports if e.connection == export.connection]
    shared = shared_members(membership, export, expected, siblings)
    drifts = [Drift(tag, expected[tag], others=shared.get(tag, [])) for tag in sorted(expected)]
    listing_share, repair_share = shares(share, apply)

    def make() -> OmnisendSink:
        sink = make_sink(
            config.settings,
            config.connections[export.connection],
            Metrics(CollectorRegistry()),
            SystemClock(),
        )
        sink.budget.share = repair_share
        return sink

    with ExitStack() as closing_tail:
        tail = (
            closing_tail.enter_context(closing(Tail(config, siblings, topic_span.ends)))
            if apply
            else None
        )
        repairs = _Repairs(make, tail.changed if tail is not None else lambda e: False)
        if apply:
            for found in drifts:
                found.on_stale = repairs.untag
        list_held(config, export.connection, drifts, listing_share)
        finder = Finder(export, membership, drifts)
        if any(d.missing for d in drifts):
            if apply:

                def visit(partition: int, offset: int, event: SegmentChange) -> bool:
                    repairs.add(finder.visit(partition, offset, event))
                    return repairs.sink is None or repairs.sink.fatal is None

                read_topic(config, topic_span, "reconcile: repairing", visit, out)
            else:
                read_topic(config, topic_span, "reconcile: sampling", _sampler(finder), out)
        entry: dict[str, Any] = {
            "export": export.name,
            "connection": export.connection,
            "tags": [d.report() for d in drifts],
        }
        if tail is not None:
            repaired = repairs.finish()  # None: nothing needed repair
            if repaired is not None:
                entry["repair"] = repaired
            entry["changedSince"], entry["notRepairedUnsure"] = tail.changed_since, tail.unsure
            entry["notFound"] = finder.not_found
    return entry


def _sampler(finder: Finder) -> Visit:
    def visit(partition: int, offset: int, event: SegmentChange) -> bool:
        finder.visit(partition, offset, event)
        return not finder.sampled()

    return visit


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
    whole = topic_span(config, config.settings.kafka_topic)
    # Every export of the connections reconciled: a tag two of them make is both's.
    connections = {e.connection for e in exports}
    membership = Membership(e for e in config.exports if e.connection in connections)
    now_ms = int(time.time() * 1000)

    def add(partition: int, offset: int, event: SegmentChange) -> bool:
        membership.add(event, now_ms, partition, offset)
        return True

    undecodable = read_topic(config, whole, "reconcile: reading the topic", add, out)
    report: dict[str, Any] = {
        "exports": [],
        "invalidEvents": membership.invalid + undecodable,
        "applied": apply,
    }
    for export in exports:
        entry = reconcile_export(config, export, whole, membership, apply, share, out)
        report["exports"].append(entry)
    return report
