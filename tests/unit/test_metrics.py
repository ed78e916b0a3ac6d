"""The metric catalogue: documented in the README, primed at zero, units in the names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from connector.core.reasons import REASONS
from connector.metrics import NAMESPACE, BulkHistogram, Metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def families() -> dict[str, str]:
    registry = CollectorRegistry()
    Metrics(registry)
    return {f.name: f.type for f in registry.collect()}


def test_readme_lists_every_metric() -> None:
    section = README.split("## Monitor", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    for name, kind in families().items():
        short = name.removeprefix(f"{NAMESPACE}_")
        exposed = {"counter": f"{short}_total", "info": f"{short}_info"}.get(kind, short)
        assert exposed in documented, f"{exposed} is not in the README's Monitor section"


def test_counters_and_gauges_name_their_unit_or_what_they_count() -> None:
    units: tuple[str, ...] = ("_seconds", "_bytes", "_records", "_requests", "_ratio")
    units += ("_partitions", "_flight", "_contacts")
    for name, kind in families().items():
        if kind == "gauge" and name != f"{NAMESPACE}_ready":
            assert name.endswith(units), name


def test_prime_creates_every_closed_series_at_zero() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.prime("brand-a", "segments")
    text = generate_latest(registry).decode()
    for reason in REASONS:
        line = f'{NAMESPACE}_dlq_records_total{{connection="brand-a",reason="{reason}"}} 0.0'
        assert line in text
    assert f'{NAMESPACE}_omnisend_rate_limited_total{{connection="brand-a"}} 0.0' in text
    assert f'{NAMESPACE}_events_consumed_total{{topic="segments"}} 0.0' in text


BOUNDS = (0.5, 1, 2.5, 10, 3600)
values = st.floats(min_value=-5, max_value=1e6) | st.sampled_from(BOUNDS) | st.just(0.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(st.lists(st.tuples(st.sampled_from("ab"), st.lists(values, max_size=40)), max_size=8))
def test_a_bulk_histogram_exposes_what_a_histogram_fed_one_value_at_a_time_would(
    calls: list[tuple[str, list[float]]],
) -> None:
    """The oracle is prometheus_client's own histogram: the same buckets (a value on a bound
    counts in that bound's bucket), counts, sums and series (a call with no values makes its
    series at zero, as `labels()` does)."""
    bulk_registry, oracle_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("x_seconds", "Doc.", "connection", BOUNDS, bulk_registry)
    oracle = Histogram(
        "x_seconds", "Doc.", ["connection"], buckets=BOUNDS, registry=oracle_registry
    )
    for label, observed in calls:
        bulk.observe_many(label, observed)
        child = oracle.labels(label)
        for value in observed:
            child.observe(value)
    got, expected = samples(bulk_registry), samples(oracle_registry)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-6), key
