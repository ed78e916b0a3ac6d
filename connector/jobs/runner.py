"""One-off jobs beside the live connector: `backfill` (re-read the topic from a point in time)
and `replay-dlq` (send dead-lettered records through the pipeline again).

Both read assigned partitions up to the end offsets seen when they start, outside the live
consumer group (so it sees no rebalance), commit nothing, never write to the dead-letter topic
(what fails again is counted and reported), and use a share of each brand's budget.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, TopicPartition

from connector.app import running
from connector.config import Config
from connector.core.codec import Decoder
from connector.core.errors import ConfigError, Fatal, Retriable
from connector.core.events import RawRecord, SegmentChange
from connector.kafka.clients import consumer_config
from connector.kafka.dlq import HEADER_PREFIX
from connector.mode import Job, Mode, from_the_start
from connector.pipeline import Pipeline

METADATA_TIMEOUT_S = 10.0


# A job reading the topic itself waits this long for a Schema Registry that does not answer,
# asking again every REGISTRY_RETRY_S, before it gives up (exit 1, saying so).
REGISTRY_PATIENCE_S = 120.0
REGISTRY_RETRY_S = 2.0

# 9999-12-31T23:59:59Z: the last time a report can name.
LAST_MS = 253_402_300_799_000


def parse_since(text: str, now: datetime | None = None) -> int:
    """`2026-11-01T00:00:00Z`, `2026-11-01` or a duration back from now (`90m`, `6h`, `2d`)
    → epoch milliseconds; a time before the epoch is the epoch (negative timestamps mean
    "latest" and "earliest" to a broker)."""
    now = now or datetime.now(UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and re.fullmatch(r"[0-9]+(\.[0-9]+)?", text[:-1]):
        back_s = min(float(text[:-1]) * units[text[-1]], now.timestamp())
        return max(0, int((now.timestamp() - back_s) * 1000))
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: use an ISO time (2026-11-01T08:00:00Z) or a duration (6h, 2d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0, int(when.timestamp() * 1000)), LAST_MS)


def decode_waiting(
    decoder: Decoder,
    value: bytes,
    patience_s: float = REGISTRY_PATIENCE_S,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
) -> SegmentChange:
    """`decoder.decode(value)`, asked again while the Schema Registry does not answer, for at
    most `patience_s` (each ask's own timeout included); then `Fatal` (a traceback before).
    `InvalidRecord` goes to the caller."""
    deadline = now() + patience_s
    while True:
        try:
            return decoder.decode(value)
        except Retriable as exc:
            if now() >= deadline:
                raise Fatal(
                    f"the Schema Registry gave no usable answer for {patience_s:.0f} s: {exc}"
                ) from None
        sleep(REGISTRY_RETRY_S)


@dataclass(frozen=True)
class Span:
    """What a job reads: per partition, the first offset and the end (exclusive)."""

    topic: str
    starts: dict[int, int]
    ends: dict[int, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.ends[p] - self.starts[p]) for p in self.starts)

    def done(self, positions: dict[tuple[str, int], int]) -> int:
        return sum(
            max(0, min(positions.get((self.topic, p), s), self.ends[p]) - s)
            for p, s in self.starts.items()
        )


def span(consumer: Consumer, topic: str, since_ms: int | None = None) -> Span:
    """From the first record at or after `since_ms` (None: the beginning) to the current end
    of every partition. Both come from the broker and are checked against the records
    themselves: brokers that answer ListOffsets or OffsetsForTimes wrongly exist."""
    meta = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise ConfigError(f"topic {topic} does not exist")
    starts, ends = {}, {}
    for partition in sorted(meta.partitions):
        probe = _Probe(consumer, topic, partition)
        low, high = probe.watermarks()
        starts[partition], ends[partition] = low, high
        if since_ms is not None and high > low:
            starts[partition] = probe.first_at_or_after(since_ms, low, high)
    consumer.unassign()
    return Span(topic, starts, ends)


class _Probe:
    """Reads single records of one partition to find offsets by time."""

    def __init__(self, consumer: Consumer, topic: str, partition: int) -> None:
        self.consumer, self.topic, self.partition = consumer, topic, partition

    def watermarks(self) -> tuple[int, int]:
        tp = TopicPartition(self.topic, self.partition)
        low, high = self.consumer.get_watermark_offsets(tp, timeout=METADATA_TIMEOUT_S)
        if high > low and self.timestamp_at(low) is not None:
            # The high watermark a fetch response carries is right where ListOffsets may not be.
            _, cached_high = self.consumer.get_watermark_offsets(tp, cached=True)
            if cached_high >= 0:
                high = max(high, cached_high)
        return low, high

    def timestamp_at(self, offset: int) -> int | None:
        """The timestamp of the first record at or after `offset` (None: there is none)."""
        self.consumer.assign([TopicPartition(self.topic, self.partition, offset)])
        deadline = time.monotonic() + METADATA_TIMEOUT_S
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            return int(message.timestamp()[1])
        return None

    def first_at_or_after(self, since_ms: int, low: int, high: int) -> int:
        tp = TopicPartition(self.topic, self.partition, since_ms)
        (found,) = self.consumer.offsets_for_times([tp], timeout=METADATA_TIMEOUT_S)
        answer = high if found.offset < 0 else min(max(found.offset, low), high)
        if self._is_first(answer, since_ms, low, high):
            return answer
        lo, hi = low, high  # the broker's answer is wrong: search (timestamps ascending)
        while lo < hi:
            mid = (lo + hi) // 2
            ts = self.timestamp_at(mid)
            if ts is None or ts >= since_ms:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _is_first(self, offset: int, since_ms: int, low: int, high: int) -> bool:
        if offset < high and (ts := self.timestamp_at(offset)) is not None and ts < since_ms:
            return False
        if offset > low and (ts := self.timestamp_at(offset - 1)) is not None:
            return ts < since_ms
        return True


class Progress:
    """A progress bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, what: str, total: int, out: TextIO | None = None) -> None:
        self.what, self.total = what, total
        self.out = out or sys.stderr
        self._tty = self.out.isatty()
        self._last = 0.0

    def show(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self._tty else 5.0):
            return
        self._last = now
        share = done / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        line = f"{self.what} [{bar:<30}] {done:,}/{self.total:,} records ({share:.0%})"
        self.out.write(("\r" + line) if self._tty else line + "\n")
        if self._tty and force:
            self.out.write("\n")
        self.out.flush()


def run_job(
    config: Config,
    name: str,
    job_span: Span,
    share: float,
    select: Callable[[RawRecord], bool] | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Read `job_span` through the pipeline and report what happened."""
    assignment = {(job_span.topic, p): s for p, s in job_span.starts.items()}
    job = Job(name, job_span.topic, assignment, share, select)
    progress = Progress(name, job_span.total, out)

    def finished(pipeline: Pipeline) -> bool:
        done = job_span.done(pipeline.done_positions())
        progress.show(done)
        return done >= job_span.total

    started = time.monotonic()
    with running(config, mode=Mode.of(job)) as parts:
        code = 0 if job_span.total == 0 else parts.pipeline.run(stop or threading.Event(), finished)
        failed: Counter[str] = Counter()
        for letters in parts.counted_letters:
            failed.update(letters.reasons)
        stats = dict(parts.pipeline.stats)
        done = job_span.done(parts.pipeline.done_positions())
    progress.show(done, force=True)
    return {
        "job": name,
        "topic": job_span.topic,
        "records": job_span.total,
        "read": stats["consumed"],
        "sent": stats["done"],
        "skipped": stats["skipped"],
        "failedAgain" if name == "replay-dlq" else "failed": dict(sorted(failed.items())),
        "complete": done >= job_span.total,
        "exitCode": code,
        "seconds": round(time.monotonic() - started, 1),
    }


def job_consumer(config: Config) -> Consumer:
    """A consumer for metadata and offsets only: it never subscribes, so it joins no group."""
    settings = config.settings
    return Consumer(
        consumer_config(
            settings.kafka_bootstrap_servers,
            f"{settings.kafka_group_id}.offsets",
            from_the_start(config.kafka),
            lambda err: None,
        )
    )


def topic_span(config: Config, topic: str, since_ms: int | None = None) -> Span:
    """`span` of `topic`, with a consumer of its own for the metadata and offsets."""
    consumer = job_consumer(config)
    try:
        return span(consumer, topic, since_ms)
    finally:
        consumer.close()


def backfill(
    config: Config,
    since_ms: int,
    share: float,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    job_span = topic_span(config, config.settings.kafka_topic, since_ms)
    report = run_job(config, "backfill", job_span, share, out=out, stop=stop)
    report["since"] = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat()
    return report


def dlq_header(record: RawRecord, name: str) -> str | None:
    """A dead letter's `omnisend.dlq.<name>` header (`reason`, `dropped`...), if it has one."""
    for key, value in record.headers:
        if key == HEADER_PREFIX + name and value is not None:
            return value.decode(errors="replace")
    return None


def replay_dlq(
    config: Config,
    reasons: list[str],
    share: float,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    job_span = topic_span(config, config.settings.dlq_topic)
    select, dropped = replay_selector(reasons)
    report = run_job(config, "replay-dlq", job_span, share, select, out, stop)
    report["reasons"] = sorted(set(reasons)) or "all"
    report["valueDropped"] = dropped()
    return report


def replay_selector(
    reasons: list[str],
) -> tuple[Callable[[RawRecord], bool], Callable[[], int]]:
    """Which dead letters to replay (those of `reasons`, or all), and how many of them cannot
    be: a dead letter too large for its topic went without its value (`dropped` names it), and
    replayed it would read as a tombstone, skipped, as if it had been replayed."""
    wanted, dropped = set(reasons), [0]

    def select(record: RawRecord) -> bool:
        if wanted and dlq_header(record, "reason") not in wanted:
            return False
        if "value" in (dlq_header(record, "dropped") or "").split(","):
            dropped[0] += 1
            return False
        return True

    return select, lambda: dropped[0]
