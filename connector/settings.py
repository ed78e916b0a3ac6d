"""Typed, validated, immutable configuration, read once at start from the environment.

Every setting is documented in the README and in `omnisend-connector run --help`. Bad values are
refused with a message naming the setting and what is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from collections.abc import Mapping as AnyMapping
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connector.core.errors import ConfigError
from connector.core.mapping import (
    DEFAULT_FIELD_MAP,
    DEFAULT_TAG_TEMPLATE,
    Mapping,
    check_tag_template,
)
from connector.kafka.clients import property_problems
from connector.kafka.dlq import DLQ_HEADER_ROOM
from connector.omnisend.client import DEFAULT_BASE_URL

KAFKA_CFG_PREFIX = "KAFKA_CFG_"
# What Kafka accepts as a topic name.
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
# librdkafka properties the connector owns: changing them would break its delivery guarantees.
OWNED_KAFKA_PROPERTIES = {
    "enable.auto.commit": "offsets are committed only after Omnisend has the change",
    "enable.auto.offset.store": "offsets are committed explicitly",
    "group.id": "use KAFKA_GROUP_ID",
    "bootstrap.servers": "use KAFKA_BOOTSTRAP_SERVERS",
}


# Settings of the single-export environment setup that a configuration file puts in its
# connections and exports instead.
CONNECTION_SETTINGS = frozenset(
    {
        "omnisend_api_key",
        "omnisend_api_key_file",
        "connection_name",
        "omnisend_privacy_acknowledged",
    }
)
EXPORT_SETTINGS = frozenset({"field_map"})

PRIVACY_REFUSAL = (
    "OMNISEND_PRIVACY_ACKNOWLEDGED is not set: this connector sends personal data (emails, "
    "names, addresses) from your Kafka topic to Omnisend, outside your source's compliance "
    "boundary. Confirm that this transfer is permitted for these profiles, then set "
    "OMNISEND_PRIVACY_ACKNOWLEDGED=true"
)


HOUR_S = 3600.0
DAY_S = 86400.0
# The Kafka loop is stuck, not merely busy (`/healthz` fails), once a turn has not completed
# for this long.
STUCK_AFTER_S = 60.0
# A rebalance's wait for unfinished work happens inside a poll: it must end well before then.
MAX_REVOKE_TIMEOUT_S = STUCK_AFTER_S - 15.0


def check_http_url(value: str) -> str:
    """An http(s) URL with a host, or a `ValueError` saying what it is not."""
    try:
        url = httpx.URL(value.strip())
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.strip()


class Settings(BaseSettings):
    """The `run` command's settings (environment variables of the same name, upper case)."""

    # No infinite durations or NaN: a wait of `inf` overflows, a window of `inf` never moves.
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, allow_inf_nan=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load_settings` reads the environment itself (it also needs the KAFKA_CFG_* names), so
        # only the values it passes count: a test's own environment is all the settings see.
        return (init_settings,)

    kafka_bootstrap_servers: str = Field(min_length=1)
    kafka_topic: str = "segment-membership"
    kafka_group_id: str = "omnisend-connector"
    kafka_dlq_topic: str | None = None
    kafka_results_topic: str | None = None
    value_format: Literal["confluent", "avro"] = "confluent"
    schema_registry_url: str | None = None
    schema_registry_user_info: SecretStr | None = None

    omnisend_api_key: SecretStr | None = None
    omnisend_api_key_file: Path | None = None
    omnisend_base_url: str = DEFAULT_BASE_URL
    connection_name: str = "default"
    omnisend_privacy_acknowledged: bool = False

    tag_template: str = DEFAULT_TAG_TEMPLATE
    email_attribute: str = "email"
    field_map: str | None = None
    email_preserve_case: bool = False
    email_status_attribute: str | None = None

    metrics_port: int = Field(9400, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a pod's metrics port must be reachable
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    email_hash_key: SecretStr | None = None

    shutdown_timeout_s: float = Field(30.0, gt=0, le=HOUR_S)
    revoke_timeout_s: float = Field(15.0, gt=0, le=MAX_REVOKE_TIMEOUT_S)
    commit_interval_s: float = Field(1.0, gt=0, le=HOUR_S)
    max_in_flight_records: int = Field(50_000, ge=100)
    max_in_flight_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    max_value_bytes: int = Field(1024 * 1024, ge=1024)
    dedupe_cache_size: int = Field(200_000, ge=0)
    known_contacts_cache_size: int = Field(1_000_000, ge=0)
    applied_changes_cache_size: int = Field(1_000_000, ge=0)
    dlq_max_invalid_share: float = Field(0.5, gt=0, le=1)
    dlq_window_records: int = Field(1000, ge=1)

    rate_limit_per_minute: int = Field(400, ge=1)
    tag_rate_limit_per_minute: int = Field(60, ge=1)
    rate_limit_headroom: float = Field(0.9, gt=0, le=1)
    rate_limit_window_s: float = Field(60.0, ge=1, le=HOUR_S)
    request_timeout_s: float = Field(10.0, gt=0, le=HOUR_S)
    upsert_linger_s: float = Field(0.3, ge=0, le=HOUR_S)
    tag_linger_s: float = Field(0.5, ge=0, le=HOUR_S)
    tag_settle_s: float = Field(2.0, ge=0, le=HOUR_S)
    batch_deadline_s: float = Field(600.0, gt=0, le=DAY_S)

    @field_validator("omnisend_privacy_acknowledged", mode="before")
    @classmethod
    def _true_or_false(cls, value: Any) -> Any:
        # An acknowledgement is a deliberate word: not `1`, `yes` or `on`.
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError("must be true or false")

    @field_validator("kafka_topic", "kafka_dlq_topic", "kafka_results_topic")
    @classmethod
    def _topic_name(cls, value: str | None) -> str | None:
        if value is not None and not TOPIC_NAME.fullmatch(value):
            raise ValueError("not a Kafka topic name (1-249 of the characters a-z A-Z 0-9 . _ -)")
        return value

    @field_validator("tag_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_tag_template(value)

    @field_validator(
        "kafka_bootstrap_servers", "kafka_group_id", "email_attribute", "connection_name"
    )
    @classmethod
    def _not_blank(cls, value: str) -> str:
        # librdkafka aborts the process on an empty group id; an empty email attribute would
        # dead-letter every record.
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("omnisend_base_url", "schema_registry_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @property
    def dlq_topic(self) -> str:
        return self.kafka_dlq_topic or f"{self.kafka_topic}.dlq"

    def api_key(self) -> str:
        """The Omnisend API key, from OMNISEND_API_KEY or the file OMNISEND_API_KEY_FILE names."""
        if self.omnisend_api_key is not None and self.omnisend_api_key_file is not None:
            raise ConfigError("set OMNISEND_API_KEY or OMNISEND_API_KEY_FILE, not both")
        if self.omnisend_api_key is not None:
            key = self.omnisend_api_key.get_secret_value().strip()
        elif self.omnisend_api_key_file is not None:
            try:
                key = self.omnisend_api_key_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"OMNISEND_API_KEY_FILE {self.omnisend_api_key_file}: {exc.strerror}"
                ) from None
        else:
            raise ConfigError("OMNISEND_API_KEY or OMNISEND_API_KEY_FILE is required")
        if not key:
            raise ConfigError("the Omnisend API key is empty")
        return key

    def mapping(self) -> Mapping:
        return Mapping(
            email_attribute=self.email_attribute,
            fields=parse_field_map(self.field_map),
            preserve_email_case=self.email_preserve_case,
            tag_template=self.tag_template,
            email_status_attribute=self.email_status_attribute,
        )


def parse_field_map(raw: str | None) -> dict[str, str]:
    """`FIELD_MAP=firstName=given_name,city=town`: Omnisend field = profile attribute, merged
    over the defaults; `field=` (empty) drops a default."""
    fields = dict(DEFAULT_FIELD_MAP)
    if not raw:
        return fields
    for pair in raw.split(","):
        target, sep, attribute = pair.strip().partition("=")
        if not sep or not target:
            raise ConfigError(
                f"FIELD_MAP entry {pair!r} must look like omnisendField=profile_attribute"
            )
        if attribute.strip():
            fields[target.strip()] = attribute.strip()
        else:
            fields.pop(target.strip(), None)
    return fields


def kafka_overrides(environ: AnyMapping[str, str]) -> dict[str, str]:
    """`KAFKA_CFG_<NAME>` → librdkafka property `<name>` (lower case, `_` → `.`)."""
    out: dict[str, str] = {}
    for name, value in environ.items():
        if not name.upper().startswith(KAFKA_CFG_PREFIX):
            continue
        prop = name[len(KAFKA_CFG_PREFIX) :].lower().replace("_", ".")
        if prop in OWNED_KAFKA_PROPERTIES:
            raise ConfigError(f"{name} is not allowed: {OWNED_KAFKA_PROPERTIES[prop]}")
        if prop == "partition.assignment.strategy" and "cooperative" in value:
            raise ConfigError(
                f"{name}={value} is not supported: the connector finishes all work "
                "on every rebalance; use range or roundrobin"
            )
        out[prop] = value
    return out


def dlq_message_max_bytes(max_value_bytes: int, kafka: dict[str, str]) -> int:
    """The DLQ producer's `message.max.bytes`: as set, or room for a MAX_VALUE_BYTES value and
    its headers (librdkafka's own default, 1,000,000, is less than the default MAX_VALUE_BYTES)."""
    explicit = kafka.get("message.max.bytes")
    return int(explicit) if explicit is not None else max_value_bytes + DLQ_HEADER_ROOM


def dlq_size_problem(max_value_bytes: int, kafka: dict[str, str]) -> str | None:
    """What is wrong with an explicit `message.max.bytes` that cannot carry a record of
    MAX_VALUE_BYTES to the dead-letter topic (None: nothing)."""
    explicit = kafka.get("message.max.bytes")
    if explicit is None:
        return None
    needed = max_value_bytes + DLQ_HEADER_ROOM
    if not explicit.strip().isdigit():
        return f"KAFKA_CFG_MESSAGE_MAX_BYTES={explicit!r} is not a whole number of bytes"
    if int(explicit) < needed:
        return (
            f"KAFKA_CFG_MESSAGE_MAX_BYTES={explicit} cannot carry a record of "
            f"MAX_VALUE_BYTES={max_value_bytes} and its headers to the dead-letter topic: "
            f"set it to at least {needed} (MAX_VALUE_BYTES + {DLQ_HEADER_ROOM}) or lower "
            "MAX_VALUE_BYTES"
        )
    return None


def _topic_problems(settings: Settings, name: Callable[[str], str]) -> list[str]:
    """The connector writes to the dead-letter and results topics: writing to the topic it
    reads would feed its own records back to it."""
    problems = []
    if settings.dlq_topic == settings.kafka_topic:
        problems.append(f"{name('kafka_dlq_topic')}: must differ from {name('kafka_topic')}")
    results = settings.kafka_results_topic
    if results is not None and results in (settings.kafka_topic, settings.dlq_topic):
        problems.append(
            f"{name('kafka_results_topic')}: must differ from {name('kafka_topic')} and "
            f"{name('kafka_dlq_topic')}"
        )
    return problems


def settings_warnings(settings: Settings) -> tuple[str, ...]:
    """What is allowed but probably not meant."""
    if settings.kafka_results_topic and settings.email_hash_key is None:
        return (
            "KAFKA_RESULTS_TOPIC without EMAIL_HASH_KEY: the results' email_hash changes at "
            "every restart (a random key); set EMAIL_HASH_KEY to look contacts up by email",
        )
    return ()


def named_twice(env: AnyMapping[str, str]) -> list[str]:
    """A setting given under two spellings (`KAFKA_TOPIC` and `kafka_topic`): which one won
    would depend on the order of the environment."""
    names: dict[str, list[str]] = {}
    for key in env:
        if key.lower() in Settings.model_fields:
            names.setdefault(key.lower(), []).append(key)
    return [
        f"{field.upper()}: set more than once ({' and '.join(sorted(spelt))}); keep one"
        for field, spelt in names.items()
        if len(spelt) > 1
    ]


def load_settings(environ: AnyMapping[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    """Settings and librdkafka overrides, or a `ConfigError` naming every bad setting at once."""
    env = dict(os.environ if environ is None else environ)
    # Validated from exactly this environment (tests pass their own), not from os.environ.
    settings, problems = settings_problems(
        {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
    )
    problems.extend(named_twice(env))
    kafka: dict[str, str] = {}
    try:
        kafka = kafka_overrides(env)
    except ConfigError as exc:
        problems.append(str(exc))
    problems.extend(
        f"{KAFKA_CFG_PREFIX}{prop.upper().replace('.', '_')} (librdkafka {prop}): {said}"
        if prop in kafka
        else f"librdkafka properties {prop}: {said}"
        for prop, said in property_problems(kafka).items()
    )
    if settings is not None and (problem := dlq_size_problem(settings.max_value_bytes, kafka)):
        problems.append(problem)
    if problems or settings is None:
        raise ConfigError.listing("invalid configuration", problems)
    return settings, kafka


def settings_from(values: dict[str, Any], check_connection: bool = True) -> Settings:
    """Validated settings, or a `ConfigError` with every problem (see `settings_problems`)."""
    settings, problems = settings_problems(values, check_connection)
    if problems or settings is None:
        raise ConfigError.listing("invalid configuration", problems)
    return settings


def settings_problems(
    values: dict[str, Any],
    check_connection: bool = True,
    name: Callable[[str], str] = str.upper,
) -> tuple[Settings | None, list[str]]:
    """The settings and every problem found in them, each named by `name(field)`: with
    `check_connection`, also the single-export connection's (API key, mapping, privacy
    acknowledgement), which a configuration file's connections replace. Fields that fail are
    put back to their defaults to look at the rest, so one run reports them all."""
    problems: list[str] = []
    settings: Settings | None = None
    failed: set[str] = set()  # fields put back to their defaults
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            failed.add(field)
            problems.append(f"{name(field) if field else 'settings'}: {err['msg']}")
        rest = {k: v for k, v in values.items() if k not in failed}
        rest.setdefault("kafka_bootstrap_servers", "unset")  # reported above if missing
        try:
            settings = Settings.model_validate(rest)
        except ValidationError:
            return None, problems
    if (
        settings.value_format == "confluent"
        and not settings.schema_registry_url
        and "value_format" not in failed
    ):
        problems.append(
            f"{name('schema_registry_url')} is required with {name('value_format')}=confluent "
            f"(or set {name('value_format')}=avro for plain Avro with the bundled schema)"
        )
    problems.extend(_topic_problems(settings, name))
    if check_connection:
        for check in (settings.api_key, settings.mapping):
            try:
                check()
            except ConfigError as exc:
                problems.append(str(exc))
        privacy = "omnisend_privacy_acknowledged"
        if not settings.omnisend_privacy_acknowledged and privacy not in failed:
            problems.append(PRIVACY_REFUSAL)
    return settings, problems
