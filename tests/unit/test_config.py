"""The configuration file: connections and exports, every mistake reported with where it is,
environment variables overriding single settings, and routing of events to exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import Config, load_config
from connector.core.errors import ConfigError
from connector.core.events import Position, SegmentChange
from connector.core.routing import Router

GOOD = """
kafka_bootstrap_servers = "k:9092"
kafka_topic = "segments"
value_format = "avro"
tag_template = "segment: {segment_name}"

[kafka_properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"

[connections.eu]
display_name = "EU store"
api_key_env = "KEY_EU"
privacy_acknowledged = true
users = ["crm@example.com"]

[connections.us]
api_key_file = "KEYFILE"
privacy_acknowledged = true
rate_limit_per_minute = 200
base_url = "http://us.example/api"

[[exports]]
name = "vip-eu"
connection = "eu"
segments = ["seg-vip", "Lapsed buyers"]
fields = { firstName = "first_name", city = "town" }
custom_properties = { loyaltyTier = "tier" }

[[exports]]
name = "everything-us"
connection = "us"
segments = "all"
tag_template = "{segment_id}"
"""
# SASL credentials come from the environment (a Secret), not from the file.
SASL_ENV = {"KAFKA_CFG_SASL_USERNAME": "connector", "KAFKA_CFG_SASL_PASSWORD": "secret"}
ENV = {"KEY_EU": "secret-eu", **SASL_ENV}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    (tmp_path / "KEYFILE").write_text("secret-us\n")
    path = tmp_path / "connector.toml"
    path.write_text(text.replace('"KEYFILE"', f'"{tmp_path / "KEYFILE"}"'))
    return load_config(path, ENV if env is None else env)


def test_a_good_file(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD)
    assert config.settings.kafka_topic == "segments"
    assert config.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "connector",
        "sasl.password": "secret",
    }
    eu, us = config.connections["eu"], config.connections["us"]
    assert eu.api_key.get_secret_value() == "secret-eu"
    assert us.api_key.get_secret_value() == "secret-us"
    assert (eu.rate_limit_per_minute, us.rate_limit_per_minute) == (400, 200)
    assert us.base_url == "http://us.example/api"
    assert eu.label == "'eu' (EU store)"
    assert eu.users == ("crm@example.com",)
    vip, everything = config.exports
    assert vip.segments == frozenset({"seg-vip", "Lapsed buyers"})
    assert everything.segments is None
    assert vip.mapping.fields == {"firstName": "first_name", "city": "town"}
    assert vip.mapping.custom_properties == {"loyaltyTier": "tier"}
    assert everything.mapping.tag_template == "{segment_id}"
    assert "secret" not in repr(config)


def test_environment_overrides_single_settings(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD, {**ENV, "KAFKA_TOPIC": "other", "KAFKA_CFG_CLIENT_ID": "c"})
    assert config.settings.kafka_topic == "other"
    assert config.kafka["client.id"] == "c"
    assert config.kafka["security.protocol"] == "SASL_SSL"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('api_key_env = "KEY_EU"', 'api_key = "inline"'), "must not be written in the config"),
        (('api_key_env = "KEY_EU"', 'api_key_file = "/nonexistent"'), "No such file"),
        (('api_key_env = "KEY_EU"', 'api_key_env = "NOT_SET"'), "NOT_SET is unset"),
        (('api_key_env = "KEY_EU"', ""), "set exactly one of api_key_env or api_key_file"),
        (
            ("privacy_acknowledged = true\nusers", "users"),
            "connections.eu: privacy not acknowledged.*compliance boundary.*"
            r"privacy_acknowledged = true in \[connections.eu\]",
        ),
        (('connection = "us"', 'connection = "asia"'), r"no connection 'asia' \(known: eu, us\)"),
        (('segments = "all"', "segments = []"), 'segment ids or names, or "all"'),
        (('tag_template = "{segment_id}"', 'tag_template = "{email}"'), "may only use"),
        (('city = "town"', 'shoeSize = "shoe"'), "unknown Omnisend fields"),
        (('display_name = "EU store"', 'displayname = "EU"'), "unknown key 'displayname'"),
        (('kafka_topic = "segments"', 'kafka_topik = "segments"'), "kafka_topik: not a setting"),
        (('kafka_topic = "segments"', 'omnisend_api_key = "x"'), "belongs to a connection"),
        (('"security.protocol"', '"enable.auto.commit"'), "ENABLE_AUTO_COMMIT is not allowed"),
        (('name = "everything-us"', 'name = "vip-eu"'), "another export has the name 'vip-eu'"),
        (('value_format = "avro"', 'value_format = "json"'), "1 problem(?s:.)*value_format: Input"),
        # Wrong types were converted silently ("false" is true) or raised a traceback.
        (
            ('segments = "all"', 'segments = "all"\nemail_preserve_case = "false"'),
            "email_preserve_case",
        ),
        (('tag_template = "{segment_id}"', "tag_template = 5"), "tag_template"),
        (
            ('segments = "all"', 'segments = "all"\nemail_status_attribute = 7'),
            "email_status_attribute",
        ),
        (('segments = "all"', 'segments = "all"\nemail_attribute = ""'), "email_attribute"),
        (('connection = "us"', 'connection = ["us"]'), "connection"),
        (('connection = "us"', "connection = { a = 1 }"), "connection"),
        (('name = "everything-us"', "name = 3"), "name"),
        (('base_url = "http://us.example/api"', 'base_url = "us.example/api"'), "base_url"),
        (('display_name = "EU store"', "display_name = 1"), "display_name"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, GOOD.replace(old, new, 1))


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    bad = GOOD.replace('api_key_env = "KEY_EU"', 'api_key = "x"').replace(
        'connection = "us"', 'connection = "asia"'
    )
    with pytest.raises(ConfigError, match="2 problem") as info:
        load(tmp_path, bad)
    assert "must not be written" in str(info.value)
    assert "'asia'" in str(info.value)


def test_not_a_file_or_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.toml", {})
    (tmp_path / "bad.toml").write_text("[connections\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", {})


def test_without_a_file_the_environment_setup_is_one_export_of_everything() -> None:
    config = load_config(
        None,
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "VALUE_FORMAT": "avro",
            "OMNISEND_API_KEY": "k",
            "OMNISEND_PRIVACY_ACKNOWLEDGED": "true",
            "CONNECTION_NAME": "shop",
        },
    )
    assert list(config.connections) == ["shop"]
    (export,) = config.exports
    assert export.connection == "shop"
    assert export.segments is None


NOW = 1_700_000_100_000


def event(segment_id: str, segment_name: str, **profile: str) -> SegmentChange:
    return SegmentChange(
        "ev-1",
        1_700_000_000_000,
        segment_id,
        segment_name,
        True,
        "p-1",
        {"email": "Ann@X.io", **profile},
    )


def test_router_sends_each_event_to_the_exports_that_want_it(tmp_path: Path) -> None:
    router = Router(load(tmp_path, GOOD).exports)
    pos = Position("t", 0, 1)
    routed = router.route(event("seg-vip", "VIP", first_name="Ann", tier="gold"), pos, NOW)
    assert [(conn, c.tag) for conn, c in routed] == [("eu", "segment: VIP"), ("us", "seg-vip")]
    eu = routed[0][1]
    assert eu.fields == {"firstName": "Ann", "customProperties": {"loyaltyTier": "gold"}}
    by_name = router.route(event("seg-9", "Lapsed buyers"), pos, NOW)
    assert [conn for conn, _ in by_name] == ["eu", "us"]
    assert [conn for conn, _ in router.route(event("seg-2", "Other"), pos, NOW)] == ["us"]
    assert Router(load(tmp_path, GOOD).exports[:1]).route(event("s", "Other"), pos, NOW) == []


def test_the_readme_example_is_a_valid_configuration(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    key = tmp_path / "eu-store"
    key.write_text("k")
    path = tmp_path / "connector.toml"
    path.write_text(example.replace("/var/run/secrets/omnisend/eu-store", str(key)))
    config = load_config(path, SASL_ENV)
    assert list(config.connections) == ["eu-store"]
    assert config.exports[0].mapping.custom_properties == {"loyaltyTier": "loyalty_tier"}


def test_two_exports_of_one_connection_may_not_write_the_same_field(tmp_path: Path) -> None:
    """Each export owns the fields it maps; a write replaces customProperties whole."""
    text = (
        GOOD
        + """
[[exports]]
name = "geo-eu"
connection = "eu"
segments = ["seg-geo"]
fields = { city = "city", country = "country" }
custom_properties = { region = "region" }

[[exports]]
name = "codes-eu"
connection = "eu"
segments = ["seg-codes"]
fields = { countryCode = "iso" }
"""
    )
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, text)
    message = str(refused.value)
    assert (
        "exports[0] (vip-eu) and exports[2] (geo-eu) both write city, customProperties" in message
    )
    assert "exports[2] (geo-eu) and exports[3] (codes-eu) both write countryCode" in message
    assert "everything-us" not in message  # another connection may write the same fields


def test_exports_of_one_connection_with_disjoint_fields_route_with_their_numbers(
    tmp_path: Path,
) -> None:
    text = (
        GOOD
        + """
[[exports]]
name = "names-eu"
connection = "eu"
segments = ["seg-vip"]
fields = { lastName = "last_name" }
"""
    )
    config = load(tmp_path, text)
    assert config.exports_of("eu") == (0, 2)
    change = SegmentChange("e1", 1, "seg-vip", "VIP", True, "p", {"email": "a@x.io"})
    routed = Router(config.exports).route(change, Position("t", 0, 0), 10)
    assert [(connection, c.export) for connection, c in routed] == [("eu", 0), ("us", 1), ("eu", 2)]


def test_two_segments_making_one_tag_are_reported_once(tmp_path: Path) -> None:
    text = GOOD.replace('segments = ["seg-vip", "Lapsed buyers"]', 'segments = "all"')
    router = Router(load(tmp_path, text).exports)

    def route(segment_id: str, name: str) -> None:
        change = SegmentChange("e", 1, segment_id, name, True, "p", {"email": "a@x.io"})
        router.route(change, Position("t", 0, 0), 10)

    route("seg-vip", "VIP")
    route("seg-vip", "VIP")
    assert not router.take_collisions()
    route("seg-vip-2", "VIP")  # another segment of the same name: the same "segment: VIP" tag
    (collision,) = router.take_collisions()
    assert (collision.connection, collision.tag) == ("eu", "segment: VIP")
    assert {collision.first_segment, collision.segment_id} == {"seg-vip", "seg-vip-2"}
    route("seg-vip", "VIP")
    route("seg-vip-2", "VIP")
    assert not router.take_collisions()  # once
    route("seg-other", "Other")  # "everything-us" tags by {segment_id}: never collides
    assert not router.take_collisions()


def test_file_mistakes_use_the_files_own_names_with_near_misses_suggested(
    tmp_path: Path,
) -> None:
    bad = GOOD.replace('kafka_topic = "segments"', 'kafka_topik = "segments"\nmetrics_port = -1')
    bad = bad.replace('"sasl.mechanism" = "SCRAM-SHA-512"', '"fetch.max.bytez" = 1')
    bad = bad.replace('display_name = "EU store"', 'display_nam = "EU store"')
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, bad)
    message = str(refused.value)
    assert "kafka_topik: not a setting; did you mean 'kafka_topic'?" in message
    assert "metrics_port: Input should be greater than or equal to 0" in message
    assert "METRICS_PORT" not in message
    assert "kafka_properties.fetch.max.bytez: No such configuration property" in message
    assert "unknown key 'display_nam'; did you mean 'display_name'?" in message
    # An environment variable that overrides the file is named as the variable.
    with pytest.raises(ConfigError, match="METRICS_PORT: Input should be"):
        load(tmp_path, GOOD, {**ENV, "METRICS_PORT": "-1"})


def test_two_connections_with_one_key_are_warned_about(tmp_path: Path) -> None:
    """One key is one brand: two connections with it each take the brand's whole budget, so
    together they send twice what Omnisend allows."""
    config = load(tmp_path, GOOD, {**ENV, "KEY_EU": "secret-us"})
    (warning,) = [w for w in config.warnings if "same API key" in w]
    assert "eu" in warning
    assert "us" in warning
    assert "secret" not in warning
    assert not [w for w in load(tmp_path, GOOD).warnings if "same API key" in w]


def test_one_setting_named_twice_in_the_environment_is_refused_with_a_file_too(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="set more than once"):
        load(tmp_path, GOOD, {**ENV, "KAFKA_TOPIC": "a", "kafka_topic": "b"})
