"""Every Prometheus metric of the connector, in one place.

Names follow `omnisend_connector_<what>_<unit>`; label sets are closed (reasons come from
`reasons.REASONS`, endpoints from `omnisend.client.ENDPOINTS`). Every metric that concerns an
Omnisend connection carries the `connection` label. The registry is injected so tests can use a
fresh one.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from connector.core.reasons import REASONS
from connector.omnisend.client import ENDPOINTS

# Why a record needed no Omnisend call (the `reason` label of events_skipped).
SKIP_REASONS = ("duplicate", "superseded", "tombstone", "no_export", "not_selected")

NAMESPACE = "omnisend_connector"


class Metrics:
    """The connector's metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ns, r = NAMESPACE, registry
        self.events_consumed = Counter(
            "events_consumed", "Kafka records consumed.", ["topic"], namespace=ns, registry=r
        )
        self.events_skipped = Counter(
            "events_skipped",
            "Records that needed no Omnisend call: " + ", ".join(SKIP_REASONS) + ".",
            ["connection", "reason"],
            namespace=ns,
            registry=r,
        )
        self.invalid_records = Counter(
            "invalid_records",
            "Records refused while decoding or validating, by reason.",
            ["stage", "reason"],
            namespace=ns,
            registry=r,
        )
        self.dlq_records = Counter(
            "dlq_records",
            "Records delivered to the dead-letter topic, by reason.",
            ["connection", "reason"],
            namespace=ns,
            registry=r,
        )
        self.contacts_upserted = Counter(
            "contacts_upserted",
            "Contacts Omnisend confirmed as created or updated.",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.tags_changed = Counter(
            "tag_changes",
            "Contact-tag changes Omnisend accepted, by operation (add, remove).",
            ["connection", "operation"],
            namespace=ns,
            registry=r,
        )
        self.requests = Counter(
            "omnisend_requests",
            "Omnisend API requests by endpoint and HTTP status ('error' when no answer came).",
            ["connection", "endpoint", "status"],
            namespace=ns,
            registry=r,
        )
        self.request_seconds = Histogram(
            "omnisend_request_duration_seconds",
            "Omnisend API request latency.",
            ["connection", "endpoint"],
            namespace=ns,
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.rate_limited = Counter(
            "omnisend_rate_limited",
            "429 answers from Omnisend.",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.rate_limit_wait = Counter(
            "omnisend_rate_limit_wait_seconds",
            "Time work was ready to send but the brand's budget (or a retryAfter) held it back.",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.budget_used = Gauge(
            "omnisend_budget_used_requests",
            "Requests counted in the current sliding window, by window (all, tags).",
            ["connection", "window"],
            namespace=ns,
            registry=r,
        )
        self.budget_limit = Gauge(
            "omnisend_budget_limit_requests",
            "Requests this replica may send per window now: the brand's limit x headroom x "
            "partition share x the slow-down after 429s.",
            ["connection", "window"],
            namespace=ns,
            registry=r,
        )
        self.budget_share = Gauge(
            "omnisend_budget_share_ratio",
            "This replica's share of the brand's budget (its share of the assigned partitions).",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.batches_in_flight = Gauge(
            "omnisend_batches_in_flight",
            "Omnisend batches sent and not yet finished.",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.batches_stuck = Counter(
            "omnisend_batches_stuck",
            "Batches not finished by BATCH_DEADLINE_S: their contacts were sent again.",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.batches_split = Counter(
            "omnisend_batches_split",
            "Batches Omnisend refused as a whole, sent again as two halves to find the item "
            "it refused.",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.tag_calls_split = Counter(
            "omnisend_tag_calls_split",
            "Tag calls Omnisend refused as a whole, sent again as two halves to find the email "
            "it refuses.",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.unexpected_answers = Counter(
            "omnisend_unexpected_answers",
            "Answers that were not what Omnisend's contract says (not JSON, fields missing, "
            "a redirect), retried as failures, by endpoint.",
            ["connection", "endpoint"],
            namespace=ns,
            registry=r,
        )
        self.retry_after_clamped = Counter(
            "omnisend_retry_after_clamped",
            "429 answers whose retryAfter was not usable as given (over the maximum, negative, "
            "not a number).",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.tag_collisions = Counter(
            "tag_collisions",
            "Segments whose tag another segment already makes: an exit of one would remove the "
            "other's tag (use {segment_id} in the tag template).",
            ["connection"],
            namespace=ns,
            registry=r,
        )
        self.end_to_end_latency = BulkHistogram(
            f"{ns}_end_to_end_latency_seconds",
            "From a change's occurred_at to Omnisend accepting its tag call.",
            "connection",
            (0.5, 1, 1.5, 2, 2.5, 3, 5, 10, 30, 60, 300, 900, 3600),
            registry,
        )
        self.offsets_committed = Counter(
            "offset_commits",
            "Successful offset commits.",
            namespace=ns,
            registry=r,
        )
        self.last_commit = Gauge(
            "last_commit_timestamp_seconds",
            "Unix time of the last successful offset commit.",
            namespace=ns,
            registry=r,
        )
        self.in_flight_records = Gauge(
            "in_flight_records",
            "Consumed records whose fate is not known yet.",
            namespace=ns,
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "in_flight_bytes",
            "Bytes of the records in flight.",
            namespace=ns,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_records",
            "Records between the committed position and the end of each "
            "assigned partition, from the broker's end offsets.",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.contacts_isolated = Gauge(
            "omnisend_isolated_contacts",
            "Contacts whose batches (or tag calls) kept failing even alone: retried alone.",
            ["connection", "request"],
            namespace=ns,
            registry=r,
        )
        self.paused_partitions = Gauge(
            "paused_partitions",
            "Assigned partitions paused: for backpressure, or held back behind a record that "
            "does not finish.",
            namespace=ns,
            registry=r,
        )
        self.partition_blocked = Gauge(
            "partition_blocked_seconds",
            "Seconds each assigned partition's commit has stood at the same unfinished record "
            "(0 when none is unfinished).",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.ready = Gauge(
            "ready",
            "1 when /readyz answers ready: broker reachable, credentials valid, no fatal error.",
            namespace=ns,
            registry=r,
        )
        self.loop_age = Gauge(
            "loop_age_seconds",
            "Seconds since the Kafka loop last went round; grows only when it is stuck.",
            namespace=ns,
            registry=r,
        )
        self.build = Info("build", "Version of the running connector.", namespace=ns, registry=r)

    def prime(self, connection: str, topic: str) -> None:
        """Create the series of every closed label set at zero, so that `rate()` in alerts and
        dashboards sees a 0 before the first increment instead of no series at all."""
        self.events_consumed.labels(topic)
        for reason, (stage, _) in REASONS.items():
            self.dlq_records.labels(connection, reason)
            if stage != "omnisend":
                self.invalid_records.labels(stage, reason)
        for why in SKIP_REASONS:
            self.events_skipped.labels(connection, why)
        for operation in ("add", "remove"):
            self.tags_changed.labels(connection, operation)
        self.contacts_upserted.labels(connection)
        self.rate_limited.labels(connection)
        self.rate_limit_wait.labels(connection)
        self.batches_in_flight.labels(connection)
        self.batches_stuck.labels(connection)
        self.batches_split.labels(connection)
        for request in ("batch", "tag_call"):
            self.contacts_isolated.labels(connection, request)
        self.tag_calls_split.labels(connection)
        self.retry_after_clamped.labels(connection)
        self.tag_collisions.labels(connection)
        for endpoint in ENDPOINTS:
            self.unexpected_answers.labels(connection, endpoint)
        self.end_to_end_latency.observe_many(connection, ())


class BulkHistogram(Collector):
    """A histogram by one label whose values come many at a time: a tag call's latencies, one
    per email. `prometheus_client`'s `Histogram` takes a lock and walks its buckets in Python for
    every value, which cost more than the rest of the bookkeeping of a tag change; here a call's
    values are bucketed by bisection and added under one lock. Exposed as the same histogram
    (`_bucket` with `le`, `_count`, `_sum`), without the `_created` sample."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._bounds = sorted(float(b) for b in buckets)
        les: list[str] = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._les = [*les, "+Inf"]
        # label value -> (count per bucket, the last one over every bound; sum of the values)
        self._series: dict[str, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, value: str, observed: Sequence[float]) -> None:
        """Add `observed` to the series of label `value` (created at zero if new)."""
        bounds = self._bounds
        found = [bisect_left(bounds, v) for v in observed]
        total = float(sum(observed))
        with self._lock:
            series = self._series.get(value)
            if series is None:
                series = self._series[value] = ([0] * (len(bounds) + 1), [0.0])
            counts, sums = series
            for index in found:
                counts[index] += 1
            sums[0] += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            snapshot = [(v, list(c), s[0]) for v, (c, s) in self._series.items()]
        for value, counts, total in snapshot:
            cumulative, buckets = 0, []
            for le, count in zip(self._les, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric([value], buckets, total)
        yield family


def totals(metric: Counter | Gauge, label: str | None = None, suffix: str = "") -> dict[str, float]:
    """A metric's current value summed over its label sets, by `label` (one "" key without),
    over the samples whose name ends in `suffix` (a counter's "_total")."""
    sums: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                key = sample.labels.get(label, "") if label else ""
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums
