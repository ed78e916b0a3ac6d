"""The metric catalogue: documented in the README, primed at zero, units in the names."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from connector.core.reasons import REASONS
from connector.metrics import NAMESPACE, Metrics

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
    units = ("_seconds", "_bytes", "_records", "_requests", "_ratio", "_partitions", "_flight")
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
