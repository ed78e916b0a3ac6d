"""Several exports to several connections from one process, configured by a TOML file: each
brand receives only its exports' segments, mapped its way, within its own budget; events for no
export are skipped and counted; `check --config` reports each connection."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from connector.app import running
from connector.config import load_config
from connector.dev.broker import Broker
from connector.mode import DRY_RUN
from connector.pipeline import Pipeline
from connector.simulator import SimulatorConfig, SimulatorServer
from tests.events import event
from tests.integration.conftest import caught_up, produce_events

T0 = 1_790_000_000_000

CONFIG = """
kafka_bootstrap_servers = "{bootstrap}"
kafka_topic = "{topic}"
kafka_group_id = "group-{topic}"
value_format = "avro"
omnisend_base_url = "{api}"
rate_limit_window_s = {window}
metrics_port = 0
upsert_linger_s = 0.05
tag_linger_s = 0.05
tag_settle_s = 0.3

[kafka_properties]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000

[connections.eu]
display_name = "EU store"
api_key_env = "OMNISEND_KEY_EU"
privacy_acknowledged = true

[connections.us]
api_key_file = "{key_file}"
privacy_acknowledged = true
rate_limit_per_minute = 200

[[exports]]
name = "vip-to-eu"
connection = "eu"
segments = ["seg-vip"]
fields = {{ firstName = "first_name" }}
custom_properties = {{ loyaltyTier = "tier" }}

[[exports]]
name = "churn-to-both"
connection = "eu"
segments = ["Churn"]
tag_template = "churn risk"
fields = {{ city = "city" }}  # firstName belongs to vip-to-eu on this connection

[[exports]]
name = "churn-to-us"
connection = "us"
segments = ["Churn"]
"""


@pytest.fixture
def two_brands() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(time_scale=0.1, api_keys={"key-eu": "eu", "key-us": "us"})
    with SimulatorServer(config) as server:
        yield server


def write_config(tmp_path: Path, broker: Broker, topic: str, sim: SimulatorServer) -> Path:
    key_file = tmp_path / "us.key"
    key_file.write_text("key-us\n")
    path = tmp_path / "connector.toml"
    path.write_text(
        CONFIG.format(
            bootstrap=broker.bootstrap,
            topic=topic,
            api=sim.api_url,
            window=sim.simulator.config.window_s,
            key_file=key_file,
        )
    )
    return path


def brand(sim: SimulatorServer, name: str) -> dict[str, dict[str, object]]:
    time.sleep(0.3)  # queued tag operations apply after the simulator's delay
    state = httpx.get(f"{sim.url}/_sim/state").json()["brands"][name]["contacts"]
    return {c["email"]: c for c in state}


def test_each_brand_gets_its_exports(
    tmp_path: Path, broker: Broker, topic: str, two_brands: SimulatorServer
) -> None:
    sim = two_brands
    events = [
        event("ann@x.io", segment_id="seg-vip", first_name="Ann", tier="gold", occurred_at=T0),
        event(
            "bob@x.io",
            segment_id="seg-2",
            segment_name="Churn",
            first_name="Bob",
            occurred_at=T0 + 1,
            profile_id="p-2",
        ),
        event(
            "cy@x.io",
            segment_id="seg-3",
            segment_name="Newsletter",
            occurred_at=T0 + 2,
            profile_id="p-3",
        ),
    ]
    produce_events(broker.bootstrap, topic, events)
    config = load_config(write_config(tmp_path, broker, topic, sim), {"OMNISEND_KEY_EU": "key-eu"})
    registry = CollectorRegistry()
    with running(config, registry=registry) as parts:
        parts.pipeline.run(threading.Event(), until=caught_up(topic, len(events)))
        limits = {
            n: s.budget.config.requests_per_window for n, s in parts.sinks.by_connection.items()
        }
    eu, us = brand(sim, "eu"), brand(sim, "us")
    assert set(eu) == {"ann@x.io", "bob@x.io"}
    assert eu["ann@x.io"]["tags"] == ["segment: VIP"]
    assert eu["ann@x.io"]["firstName"] == "Ann"
    assert eu["ann@x.io"]["customProperties"] == {"loyaltyTier": "gold"}
    assert eu["bob@x.io"]["tags"] == ["churn risk"]
    assert set(us) == {"bob@x.io"}
    assert us["bob@x.io"]["tags"] == ["segment: Churn"]
    assert limits == {"eu": 400, "us": 200}
    skipped = registry.get_sample_value(
        "omnisend_connector_events_skipped_total", {"connection": "all", "reason": "no_export"}
    )
    assert skipped == 1  # the Newsletter event: no export wants it, yet it is committed


def test_check_reports_each_connection_and_every_mistake(
    tmp_path: Path, broker: Broker, topic: str, two_brands: SimulatorServer
) -> None:
    path = write_config(tmp_path, broker, topic, two_brands)
    env = {"PATH": os.environ["PATH"], "OMNISEND_KEY_EU": "key-eu"}
    command = [sys.executable, "-m", "connector.cli", "check", "--config", str(path)]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=90, check=False
    )
    lines = result.stdout.splitlines()
    assert "ok    omnisend connection 'eu' (EU store): API key accepted" in "\n".join(lines)
    assert any(line.startswith("ok    omnisend connection 'us'") for line in lines)
    assert any(
        line.startswith("ok    export 'churn-to-us': Churn -> connection 'us'") for line in lines
    )
    assert result.returncode == 1  # the dead-letter topic does not exist
    assert any(line.startswith("FAIL  dead-letter topic") for line in lines)

    path.write_text(path.read_text().replace("privacy_acknowledged = true\nrate", "rate"))
    result = subprocess.run(
        command,
        env={**env, "OMNISEND_KEY_EU": ""},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL  configuration")]
    assert len(fails) == 2, result.stdout  # one line a problem
    assert (
        "connections.eu.api_key_env: the environment variable OMNISEND_KEY_EU is unset"
        in result.stdout
    )
    assert "connections.us: privacy not acknowledged" in result.stdout


def test_dry_run_reports_per_connection(
    tmp_path: Path, broker: Broker, topic: str, two_brands: SimulatorServer
) -> None:
    events = [
        event("ann@x.io", segment_id="seg-vip", occurred_at=T0),
        event("bob@x.io", segment_name="Churn", occurred_at=T0 + 1, profile_id="p-2"),
    ]
    produce_events(broker.bootstrap, topic, events)
    config = load_config(
        write_config(tmp_path, broker, topic, two_brands), {"OMNISEND_KEY_EU": "key-eu"}
    )
    with running(config, mode=DRY_RUN) as parts:
        parts.pipeline.run(threading.Event(), until=caught_up_dry(len(events)))
        assert parts.dry_run is not None
        report = parts.dry_run.report()
    assert report["connections"]["eu"]["contactsByTag"] == {"churn risk": 1, "segment: VIP": 1}
    assert report["connections"]["us"]["contactsByTag"] == {"segment: Churn": 1}
    assert report["contacts"] == 3
    assert httpx.get(f"{two_brands.url}/_sim/state").json()["brands"]["eu"]["contacts"] == []


def caught_up_dry(count: int) -> Callable[[Pipeline], bool]:
    """A dry run commits nothing: done records are what counts."""
    return lambda p: sum(p.done_positions().values()) >= count and not p.in_flight


def test_two_exports_of_one_connection_each_keep_their_fields(
    tmp_path: Path, broker: Broker, topic: str, two_brands: SimulatorServer
) -> None:
    """vip-to-eu maps firstName, churn-to-both city, both on "eu": a contact in both
    segments ends with both fields, whichever change is later, in one batch or in two."""
    events = [
        # ann: both changes arrive together and share a batch
        event("ann@x.io", segment_id="seg-vip", first_name="Ann", city="Oslo", occurred_at=T0),
        event(
            "ann@x.io", segment_name="Churn", first_name="Anne", city="Vilnius", occurred_at=T0 + 5
        ),
        # bob: the later one is a second batch once the first was accepted (further below)
        event(
            "bob@x.io",
            segment_name="Churn",
            first_name="Rob",
            city="Kaunas",
            profile_id="p-2",
            occurred_at=T0 + 1,
        ),
    ]
    produce_events(broker.bootstrap, topic, events)
    config = load_config(
        write_config(tmp_path, broker, topic, two_brands), {"OMNISEND_KEY_EU": "key-eu"}
    )
    late = event(
        "bob@x.io",
        segment_id="seg-vip",
        first_name="Bob",
        city="Riga",
        profile_id="p-2",
        occurred_at=T0 + 9,
    )
    sent: list[bool] = []

    def then_late(pipeline: Pipeline) -> bool:
        if not sent and caught_up(topic, len(events))(pipeline):
            sent.append(True)
            produce_events(broker.bootstrap, topic, [late])
        return bool(sent) and caught_up(topic, len(events) + 1)(pipeline)

    with running(config) as parts:
        parts.pipeline.run(threading.Event(), until=then_late)
    eu = brand(two_brands, "eu")
    assert (eu["ann@x.io"]["firstName"], eu["ann@x.io"]["city"]) == ("Ann", "Vilnius")
    assert (eu["bob@x.io"]["firstName"], eu["bob@x.io"]["city"]) == ("Bob", "Kaunas")
    tags = eu["ann@x.io"]["tags"]
    assert isinstance(tags, list)
    assert set(tags) == {"churn risk", "segment: VIP"}
