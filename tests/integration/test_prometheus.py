"""A real Prometheus server scrapes a running connector: PromQL returns what happened, every
metric the dashboard and the alert rules name is in the scrape, `promtool check metrics` accepts
it, and every dashboard and alert expression evaluates. Kafka is librdkafka's mock cluster here,
so that consumer lag (from ListOffsets) is right."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from connector.app import running
from connector.core.codec import encode_plain
from connector.dev.broker import free_port
from connector.settings import load_settings
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import bootstrap_env

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "base" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "omnisend-connector.json"
CONTACTS, INVALID = 60, 7
JOB = "omnisend-connector"


@dataclass
class Scraped:
    metrics_port: int
    prometheus: str  # base URL of the Prometheus server
    text: str  # the connector's /metrics once it caught up


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


VARIABLES = ("namespace", "job", "pod", "connection")


def grafana_to_promql(expr: str, rate_interval: str = "1m") -> str:
    """A panel's query as Grafana sends it with every variable at "All"."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in VARIABLES:
        expr = expr.replace(f'"${name}"', '".*"')
    assert "$" not in expr, expr
    return expr


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", (promql, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def value(prometheus: str, promql: str) -> float | None:
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else None


def eventually(
    prometheus: str, promql: str, expected: float, timeout_s: float = 30
) -> float | None:
    deadline = time.monotonic() + timeout_s
    seen = value(prometheus, promql)
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = value(prometheus, promql)
    return seen


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    prometheus_bin = shutil.which("prometheus")
    assert prometheus_bin is not None, "prometheus is not installed: apt-get install prometheus"
    owner = Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "", "log_level": 0})
    broker = next(iter(owner.list_topics(timeout=10).brokers.values()))
    bootstrap = f"{broker.host}:{broker.port}"
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 0})
    events = [event(f"prom{i}@example.com", profile_id=f"p{i}") for i in range(CONTACTS)]
    events += [event(None, profile_id=f"x{i}") for i in range(INVALID)]
    for e in events:
        producer.produce("prom-topic", key=e["profile_id"].encode(), value=encode_plain(e))
    assert producer.flush(10) == 0

    directory = tmp_path_factory.mktemp("prometheus")
    port, web = free_port(), free_port()
    (directory / "rules.yaml").write_text(yaml.safe_dump(yaml.safe_load(RULES.read_text())["spec"]))
    (directory / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["rules.yaml"],
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": "test"}}
                        ],
                    }
                ],
            }
        )
    )
    server = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus = f"http://127.0.0.1:{web}"
    stop = threading.Event()
    # Two requests a window: the connector, told 400, meets 429s (the dashboard shows them).
    with SimulatorServer(SimulatorConfig(time_scale=0.1, requests_per_window=2)) as sim:
        settings, kafka = load_settings(
            bootstrap_env(bootstrap, "prom-topic", sim, METRICS_PORT=str(port))
        )
        with running(settings, kafka) as parts:
            runner = threading.Thread(target=parts.pipeline.run, args=(stop,))
            runner.start()
            try:
                deadline = time.monotonic() + 60
                while sum(parts.pipeline.committed().values()) < len(events):
                    assert time.monotonic() < deadline, "the connector did not catch up"
                    time.sleep(0.2)
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
                yield Scraped(port, prometheus, text)
            finally:
                stop.set()
                runner.join(timeout=60)
                server.terminate()
                server.wait(timeout=30)
    del owner


def test_promtool_accepts_the_scrape(scraped: Scraped) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=scraped.text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def scraped_names(text: str) -> set[str]:
    """Every series name the scrape can answer to, samples or not (a labelled family with no
    children yet still declares its type)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def referenced(exprs: list[str]) -> set[str]:
    return set(re.findall(r"\b(omnisend_connector_[a-z_]+)", " ".join(exprs)))


def test_every_metric_of_the_dashboard_and_the_rules_is_in_the_scrape(scraped: Scraped) -> None:
    names = scraped_names(scraped.text)
    used = referenced(dashboard_exprs() + list(rule_exprs().values()))
    assert len(used) >= 15
    assert used - names == set()


def test_prometheus_sees_what_the_connector_did(scraped: Scraped) -> None:
    p = scraped.prometheus
    total = CONTACTS + INVALID
    assert eventually(p, f'up{{job="{JOB}"}}', 1) == 1
    assert eventually(p, "sum(omnisend_connector_events_consumed_total)", total) == total
    assert eventually(p, "sum(omnisend_connector_contacts_upserted_total)", CONTACTS) == CONTACTS
    adds = 'sum(omnisend_connector_tag_changes_total{operation="add"})'
    assert eventually(p, adds, CONTACTS) == CONTACTS
    dlq = 'sum(omnisend_connector_dlq_records_total{reason="missing_email"})'
    assert eventually(p, dlq, INVALID) == INVALID
    assert eventually(p, "sum(omnisend_connector_consumer_lag_records)", 0) == 0
    assert value(p, f'omnisend_connector_ready{{job="{JOB}", namespace="test"}}') == 1
    created = (
        'sum(omnisend_connector_omnisend_requests_total{endpoint="batches.create", status=~"2.."})'
    )
    assert (value(p, created) or 0) >= 1
    latency = value(
        p,
        "histogram_quantile(0.99, sum by (le) (omnisend_connector_end_to_end_latency_seconds_bucket))",
    )
    assert latency is not None
    assert 0 < latency < 60


def test_every_dashboard_and_alert_expression_evaluates(scraped: Scraped) -> None:
    p = scraped.prometheus
    eventually(p, "sum(omnisend_connector_contacts_upserted_total)", CONTACTS)
    for expr in dashboard_exprs():
        query(p, grafana_to_promql(expr))  # asserts Prometheus accepted it
    rules = httpx.get(f"{p}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in rules for rule in group["rules"]}
    assert set(loaded) == set(rule_exprs())
    deadline = time.monotonic() + 10
    while any(r["health"] == "unknown" for r in loaded.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        rules = httpx.get(f"{p}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {rule["name"]: rule for group in rules for rule in group["rules"]}
    assert {name: r["health"] for name, r in loaded.items()} == dict.fromkeys(loaded, "ok")
    # A connector that caught up and is ready raises no alert.
    assert [r["name"] for r in loaded.values() if r["state"] != "inactive"] == []


def test_every_dashboard_panel_shows_data_after_dead_letters_and_429s(scraped: Scraped) -> None:
    """Grafana cannot run here: each panel's queries go to the real Prometheus with the
    template variables at "All", after a run that dead-lettered records and met 429s."""
    p = scraped.prometheus
    assert eventually(p, "sum(omnisend_connector_contacts_upserted_total)", CONTACTS) == CONTACTS
    assert (value(p, "sum(omnisend_connector_omnisend_rate_limited_total)") or 0) > 0
    assert (value(p, "sum(omnisend_connector_dlq_records_total)") or 0) > 0
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"connection", "pod"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["description"], f"{panel['title']} has no description"
        units = {panel["fieldConfig"]["defaults"]["unit"]}
        units |= {
            prop["value"]
            for override in panel["fieldConfig"].get("overrides", [])
            for prop in override["properties"]
            if prop["id"] == "unit"
        }
        assert len(units) == 1, f"{panel['title']} mixes units {units}"
        if panel["type"] == "stat":
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert len(steps) >= 2, f"{panel['title']} has no thresholds"
        for target in panel["targets"]:
            promql = grafana_to_promql(target["expr"], rate_interval="5m")
            series = query(p, promql)
            assert series, f"{panel['title']}: no series for {promql}"
            for one in series:
                assert one["value"][1] != "NaN", f"{panel['title']}: NaN from {promql}"
