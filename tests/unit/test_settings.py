"""Configuration: validation messages, KAFKA_CFG_* pass-through, and documentation coverage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.cli.settings_help import SETTINGS_HELP
from connector.config import load_config
from connector.core.errors import ConfigError
from connector.jobs.check import check_registry
from connector.logs import shown_url
from connector.omnisend.client import WrongEndpoint
from connector.settings import Settings, load_settings, parse_field_map

BASE = {
    "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
    "VALUE_FORMAT": "avro",
    "OMNISEND_API_KEY": "secret",
    "OMNISEND_PRIVACY_ACKNOWLEDGED": "true",
}
README = Path(__file__).parents[2] / "README.md"


def test_defaults() -> None:
    settings, kafka = load_settings(BASE)
    assert settings.kafka_topic == "segment-membership"
    assert settings.dlq_topic == "segment-membership.dlq"
    assert settings.kafka_group_id == "omnisend-connector"
    assert kafka == {}
    assert "secret" not in repr(settings)


def test_kafka_cfg_passes_through_and_owned_settings_are_refused() -> None:
    sasl = {
        "KAFKA_CFG_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_CFG_SASL_MECHANISM": "PLAIN",
        "KAFKA_CFG_SASL_USERNAME": "user",
        "KAFKA_CFG_SASL_PASSWORD": "secret",
    }
    _, kafka = load_settings({**BASE, **sasl})
    assert kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "user",
        "sasl.password": "secret",
    }
    for name in ("KAFKA_CFG_ENABLE_AUTO_COMMIT", "KAFKA_CFG_GROUP_ID"):
        with pytest.raises(ConfigError, match=name):
            load_settings({**BASE, name: "x"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VALUE_FORMAT": "confluent"}, "SCHEMA_REGISTRY_URL"),
        ({"VALUE_FORMAT": "json"}, "VALUE_FORMAT"),
        ({"OMNISEND_API_KEY": ""}, "API key is empty"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
        ({"TAG_TEMPLATE": "{email}"}, "TAG_TEMPLATE"),
        ({"FIELD_MAP": "nickname=nick"}, "FIELD_MAP"),
        ({"RATE_LIMIT_HEADROOM": "1.5"}, "RATE_LIMIT_HEADROOM"),
        ({"KAFKA_RESULTS_TOPIC": "sync results"}, "KAFKA_RESULTS_TOPIC: .*not a Kafka topic"),
        ({"KAFKA_DLQ_TOPIC": "x" * 250}, "KAFKA_DLQ_TOPIC: .*not a Kafka topic"),
        ({"KAFKA_RESULTS_TOPIC": "segment-membership"}, "KAFKA_RESULTS_TOPIC: must differ"),
        ({"KAFKA_RESULTS_TOPIC": "segment-membership.dlq"}, "KAFKA_RESULTS_TOPIC: must differ"),
        ({"KAFKA_DLQ_TOPIC": "segment-membership"}, "KAFKA_DLQ_TOPIC: must differ"),
        # librdkafka aborts the process (an assertion in C) on an empty group id.
        ({"KAFKA_GROUP_ID": ""}, "KAFKA_GROUP_ID"),
        ({"KAFKA_GROUP_ID": "  "}, "KAFKA_GROUP_ID"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "  "}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"EMAIL_ATTRIBUTE": ""}, "EMAIL_ATTRIBUTE"),
        ({"CONNECTION_NAME": " "}, "CONNECTION_NAME"),
        # Infinite or astronomical durations: a wait that overflows, a sync that never moves.
        ({"SHUTDOWN_TIMEOUT_S": "inf"}, "SHUTDOWN_TIMEOUT_S"),
        ({"REVOKE_TIMEOUT_S": "1e308"}, "REVOKE_TIMEOUT_S"),
        # A revoke waits inside the poll: longer than this, the liveness probe sees a stuck loop.
        ({"REVOKE_TIMEOUT_S": "60"}, "REVOKE_TIMEOUT_S"),
        ({"COMMIT_INTERVAL_S": "inf"}, "COMMIT_INTERVAL_S"),
        ({"RATE_LIMIT_WINDOW_S": "Infinity"}, "RATE_LIMIT_WINDOW_S"),
        ({"TAG_SETTLE_S": "inf"}, "TAG_SETTLE_S"),
        ({"TAG_LINGER_S": "nan"}, "TAG_LINGER_S"),
        ({"BATCH_DEADLINE_S": "1e300"}, "BATCH_DEADLINE_S"),
        ({"REQUEST_TIMEOUT_S": "inf"}, "REQUEST_TIMEOUT_S"),
        # Not a URL the client can call: refused at start, not a pod that is never ready.
        ({"OMNISEND_BASE_URL": "htps://api.omnisend.com/api"}, "OMNISEND_BASE_URL"),
        ({"OMNISEND_BASE_URL": "not a url"}, "OMNISEND_BASE_URL"),
        ({"SCHEMA_REGISTRY_URL": "registry:8081"}, "SCHEMA_REGISTRY_URL"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({**BASE, **env})


def test_one_setting_named_twice_in_different_cases_is_refused() -> None:
    """Which of `KAFKA_TOPIC` and `kafka_topic` won depended on the environment's order."""
    with pytest.raises(ConfigError, match=r"KAFKA_TOPIC.*kafka_topic|kafka_topic.*KAFKA_TOPIC"):
        load_settings({**BASE, "KAFKA_TOPIC": "a", "kafka_topic": "b"})


def test_api_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    env = {k: v for k, v in BASE.items() if k != "OMNISEND_API_KEY"}
    settings, _ = load_settings({**env, "OMNISEND_API_KEY_FILE": str(key_file)})
    assert settings.api_key() == "from-file"
    with pytest.raises(ConfigError, match="not both"):
        load_settings({**BASE, "OMNISEND_API_KEY_FILE": str(key_file)})
    with pytest.raises(ConfigError, match="required"):
        load_settings(env)


def test_field_map_overrides_and_drops() -> None:
    fields = parse_field_map("firstName=given_name, address=")
    assert fields["firstName"] == "given_name"
    assert "address" not in fields


def test_every_setting_is_documented_in_help_and_readme() -> None:
    documented = {name for name, _, _ in SETTINGS_HELP}
    fields = {name.upper() for name in Settings.model_fields}
    assert fields <= documented
    readme = README.read_text()
    assert all(name in readme for name in documented)


@pytest.mark.parametrize("value", [None, "false", "False"])
def test_privacy_acknowledgement_is_required(value: str | None) -> None:
    env = {k: v for k, v in BASE.items() if k != "OMNISEND_PRIVACY_ACKNOWLEDGED"}
    if value is not None:
        env["OMNISEND_PRIVACY_ACKNOWLEDGED"] = value
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    message = str(refused.value)
    assert "personal data" in message
    assert "compliance boundary" in message
    assert "OMNISEND_PRIVACY_ACKNOWLEDGED=true" in message


def test_the_dlq_producer_can_carry_a_max_value_bytes_record_by_default() -> None:
    """librdkafka's own `message.max.bytes` (1,000,000) is less than MAX_VALUE_BYTES (1 MiB):
    every value between the two could not be dead-lettered."""
    from connector.kafka.clients import dlq_producer_config  # noqa: PLC0415
    from connector.settings import dlq_message_max_bytes  # noqa: PLC0415

    settings, kafka = load_settings(BASE)
    limit = dlq_message_max_bytes(settings.max_value_bytes, kafka)
    assert limit >= settings.max_value_bytes + 64 * 1024
    config = dlq_producer_config("k:9092", kafka, lambda err: None, limit)
    assert config["message.max.bytes"] == limit
    settings, kafka = load_settings({**BASE, "MAX_VALUE_BYTES": "4000000"})
    assert dlq_message_max_bytes(settings.max_value_bytes, kafka) >= 4_000_000 + 64 * 1024


def test_an_explicit_message_max_bytes_that_cannot_carry_max_value_bytes_is_refused() -> None:
    with pytest.raises(ConfigError, match="KAFKA_CFG_MESSAGE_MAX_BYTES"):
        load_settings({**BASE, "KAFKA_CFG_MESSAGE_MAX_BYTES": "1000000"})
    with pytest.raises(ConfigError, match="KAFKA_CFG_MESSAGE_MAX_BYTES"):
        load_settings({**BASE, "KAFKA_CFG_MESSAGE_MAX_BYTES": "lots"})
    _, kafka = load_settings(
        {**BASE, "MAX_VALUE_BYTES": "500000", "KAFKA_CFG_MESSAGE_MAX_BYTES": "1000000"}
    )
    assert kafka["message.max.bytes"] == "1000000"


@pytest.mark.parametrize("value", ["1", "yes", "on", "0", "", "truthy"])
def test_privacy_acknowledgement_is_a_deliberate_true_or_false(value: str) -> None:
    with pytest.raises(
        ConfigError, match=r"OMNISEND_PRIVACY_ACKNOWLEDGED: .*must be true or false"
    ):
        load_settings({**BASE, "OMNISEND_PRIVACY_ACKNOWLEDGED": value})


def test_every_mistake_of_the_environment_is_reported_at_once() -> None:
    env = {
        "VALUE_FORMAT": "confluent",  # without a registry
        "METRICS_PORT": "abc",
        "OMNISEND_PRIVACY_ACKNOWLEDGED": "yes",
        "KAFKA_CFG_FETCH_MAX_BYTEZ": "1000",
        "KAFKA_CFG_FETCH_MAX_BYTES": "many",
    }
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    message = str(refused.value)
    for named in (
        "7 problems",
        "KAFKA_BOOTSTRAP_SERVERS",
        "METRICS_PORT",
        "OMNISEND_PRIVACY_ACKNOWLEDGED",
        "SCHEMA_REGISTRY_URL",
        "OMNISEND_API_KEY",
        "KAFKA_CFG_FETCH_MAX_BYTEZ (librdkafka fetch.max.bytez): No such configuration property",
    ):
        assert named in message
    assert "fetch.max.bytes" in message.replace("fetch.max.bytez", "")


def test_a_sasl_mechanism_this_librdkafka_lacks_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"security\.protocol=SASL_SSL: No provider for SASL"):
        load_settings({**BASE, "KAFKA_CFG_SECURITY_PROTOCOL": "SASL_SSL"})
    secret = {"KAFKA_CFG_SASL_PASSWORD": "hunter2", "KAFKA_CFG_SECURITY_PROTOCOL": "SASL_SSL"}
    with pytest.raises(ConfigError) as refused:
        load_settings({**BASE, **secret, "KAFKA_CFG_SASL_MECHANISM": "SCRAM-SHA-512"})
    assert "hunter2" not in str(refused.value)


def test_a_results_topic_without_a_stable_hash_key_is_warned_about() -> None:
    env = {**BASE, "KAFKA_RESULTS_TOPIC": "segment-membership.results"}
    assert any("EMAIL_HASH_KEY" in w for w in load_config(None, env).warnings)
    keyed = load_config(None, {**env, "EMAIL_HASH_KEY": "k"})
    assert not any("EMAIL_HASH_KEY" in w for w in keyed.warnings)


def test_the_loop_and_the_sink_take_each_setting_from_the_settings() -> None:
    """Their configurations have no defaults of their own for what a setting holds: each is
    the setting's value (a distinct one per setting here, so no two can be swapped)."""
    from connector.omnisend.sink import SinkConfig  # noqa: PLC0415
    from connector.pipeline import PipelineConfig  # noqa: PLC0415

    sink = {
        "upsert_linger_s": "upsert_linger_s",
        "tag_linger_s": "tag_linger_s",
        "settle_s": "tag_settle_s",
        "request_timeout_s": "request_timeout_s",
        "batch_deadline_s": "batch_deadline_s",
        "known_cache_size": "known_contacts_cache_size",
        "applied_cache_size": "applied_changes_cache_size",
    }
    loop = {
        name: name
        for name in (
            "max_in_flight_records",
            "max_in_flight_bytes",
            "max_value_bytes",
            "commit_interval_s",
            "shutdown_timeout_s",
            "revoke_timeout_s",
            "dedupe_cache_size",
            "dlq_max_invalid_share",
            "dlq_window_records",
        )
    }
    settings_names = [*sink.values(), *loop.values()]
    values: dict[str, Any] = {setting: 1000 + i for i, setting in enumerate(settings_names)}
    settings = Settings.model_construct(None, **values)
    sink_config = SinkConfig.from_settings(settings, exports=(0, 1))
    loop_config = PipelineConfig.from_settings(settings, "segments")
    assert {f: getattr(sink_config, f) for f in sink} == {f: values[s] for f, s in sink.items()}
    assert {f: getattr(loop_config, f) for f in loop} == {f: values[s] for f, s in loop.items()}
    assert sink_config.exports == (0, 1)
    assert loop_config.topic == "segments"


@given(
    user=st.text("abcdefghij", min_size=1, max_size=8),
    password=st.text("ABCDEFGHIJ%:", min_size=4, max_size=12).filter(
        lambda p: any(c.isalpha() for c in p)
    ),
)
def test_urls_are_shown_without_their_credentials(user: str, password: str) -> None:
    """`check`'s findings, the starting line and a wrong endpoint's message name a URL: never
    with the credentials or the token it carries."""
    url = f"https://{user}:{password}@registry.example:8081/api?token=T0K3N"
    shown = shown_url(url)
    assert password not in shown
    assert "T0K3N" not in shown
    assert shown.startswith("https://registry.example:8081/api")
    assert shown_url("https://api.omnisend.com/api") == "https://api.omnisend.com/api"
    settings, _ = load_settings(
        {**BASE, "VALUE_FORMAT": "confluent", "SCHEMA_REGISTRY_URL": url.replace("%", "")}
    )

    def refused(address: str, **_: object) -> httpx.Response:
        return httpx.Response(401)

    (finding,) = check_registry(settings, refused)
    assert password.replace("%", "") not in finding.detail
    assert "401" in finding.detail
    assert password not in str(WrongEndpoint("tags.add", 404, url))
