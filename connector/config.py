"""Connections and exports: what a deployment syncs, to which Omnisend brand, and how.

Two ways to configure, one model:
- the single-export environment setup (`OMNISEND_API_KEY`, `TAG_TEMPLATE`, `FIELD_MAP`, …): one
  connection, one export of every segment;
- a TOML file (`--config`, read with the standard library) with `[connections.<name>]` tables
  and `[[exports]]`; its top-level keys are settings of `run` by their lower-case names, and
  environment variables still override single settings.

A connection is a brand: its API key (from an environment variable or a file it names, never
from the configuration file), its rate budget and its privacy acknowledgement. An export picks
segments (ids or names, or all), maps profile attributes to contact fields and
`customProperties`, and names the tag of each segment. Every mistake is reported at once, each
with where it is and what to do.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable
from collections.abc import Mapping as AnyMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from connector.config_values import did_you_mean, text_value, unknown_keys
from connector.core.errors import ConfigError
from connector.core.mapping import DEFAULT_FIELD_MAP, Mapping
from connector.core.routing import Export
from connector.kafka.clients import property_problems
from connector.settings import (
    CONNECTION_SETTINGS,
    EXPORT_SETTINGS,
    KAFKA_CFG_PREFIX,
    Settings,
    check_http_url,
    dlq_size_problem,
    kafka_overrides,
    load_settings,
    named_twice,
    settings_problems,
    settings_warnings,
)

CONNECTION_KEYS = frozenset(
    {
        "display_name",
        "api_key_env",
        "api_key_file",
        "base_url",
        "privacy_acknowledged",
        "users",
        "rate_limit_per_minute",
        "tag_rate_limit_per_minute",
    }
)
EXPORT_KEYS = frozenset(
    {
        "name",
        "connection",
        "segments",
        "tag_template",
        "email_attribute",
        "email_preserve_case",
        "email_status_attribute",
        "fields",
        "custom_properties",
    }
)
TOP_LEVEL_TABLES = frozenset({"connections", "exports", "kafka_properties"})


@dataclass(frozen=True)
class Connection:
    """One Omnisend brand, reached with one API key."""

    name: str
    api_key: SecretStr
    base_url: str
    rate_limit_per_minute: int
    tag_rate_limit_per_minute: int
    display_name: str = ""
    users: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name!r}" + (f" ({self.display_name})" if self.display_name else "")


@dataclass(frozen=True)
class Config:
    settings: Settings
    kafka: dict[str, str] = field(repr=False)  # may hold sasl.password
    connections: dict[str, Connection]
    exports: tuple[Export, ...]
    source: str = "environment"
    warnings: tuple[str, ...] = ()  # what is odd but not wrong, e.g. an unknown variable

    @classmethod
    def single(cls, settings: Settings, kafka: dict[str, str]) -> Config:
        """The single-export environment setup: one connection, every segment."""
        connection = Connection(
            name=settings.connection_name,
            api_key=SecretStr(settings.api_key()),
            base_url=settings.omnisend_base_url,
            rate_limit_per_minute=settings.rate_limit_per_minute,
            tag_rate_limit_per_minute=settings.tag_rate_limit_per_minute,
        )
        export = Export("default", connection.name, settings.mapping())
        return cls(settings, kafka, {connection.name: connection}, (export,))

    def exports_of(self, connection: str) -> tuple[int, ...]:
        """The numbers of the exports that go to `connection` (their place in `exports`)."""
        return tuple(i for i, e in enumerate(self.exports) if e.connection == connection)

    @property
    def metrics_connection(self) -> str:
        """The `connection` label of counts that belong to no single connection (records
        skipped or dead-lettered before routing): the connection's name when there is one."""
        names = list(self.connections)
        return names[0] if len(names) == 1 else "all"


def load_config(path: Path | None, environ: AnyMapping[str, str] | None = None) -> Config:
    """The deployment's configuration, or a `ConfigError` listing every mistake."""
    env = dict(os.environ if environ is None else environ)
    if path is None:
        try:
            settings, kafka = load_settings(env)
        except ConfigError as exc:
            # A near miss often explains a missing setting: say both.
            warnings = unknown_variables(env)
            if not warnings:
                raise
            raise ConfigError.listing("invalid configuration", exc.problems + warnings) from None
        config = Config.single(settings, kafka)
        return replace(config, warnings=unknown_variables(env) + settings_warnings(settings))
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _from_document(document, env, str(path))


def _from_document(document: dict[str, Any], env: dict[str, str], source: str) -> Config:
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key in TOP_LEVEL_TABLES:
            continue
        if key in CONNECTION_SETTINGS:
            problems.append(f"{key}: belongs to a connection, in [connections.<name>]")
        elif key in EXPORT_SETTINGS:
            problems.append(f"{key}: belongs to an export, in [[exports]]")
        elif key not in Settings.model_fields:
            known = [*Settings.model_fields, *TOP_LEVEL_TABLES]
            problems.append(
                f"{key}: not a setting{did_you_mean(key, known)} "
                "(see `omnisend-connector run --help`)"
            )
        else:
            values[key] = value
    # Environment variables override single settings of the file.
    values |= {
        k.lower(): v
        for k, v in env.items()
        if k.lower() in Settings.model_fields
        and k.lower() not in CONNECTION_SETTINGS | EXPORT_SETTINGS
    }
    settings, found = settings_problems(values, check_connection=False, name=_file_or_env(env))
    problems.extend([*found, *named_twice(env)])
    kafka: dict[str, str] = {}
    properties = document.get("kafka_properties", {})
    if not isinstance(properties, dict):
        problems.append("kafka_properties: must be a table of librdkafka properties")
    else:
        as_env = {"KAFKA_CFG_" + k.upper().replace(".", "_"): str(v) for k, v in properties.items()}
        from_env: dict[str, str] = {}
        try:
            from_env = kafka_overrides(env)
            kafka = kafka_overrides(as_env) | from_env
        except ConfigError as exc:
            problems.append(f"kafka_properties: {exc}")
        problems.extend(
            f"{KAFKA_CFG_PREFIX}{prop.upper().replace('.', '_')} (librdkafka {prop}): {said}"
            if prop in from_env
            else f"kafka_properties.{prop}: {said}"
            if prop in properties
            else f"kafka_properties {prop}: {said}"
            for prop, said in property_problems(kafka).items()
        )
    if settings is not None and (problem := dlq_size_problem(settings.max_value_bytes, kafka)):
        problems.append(f"kafka_properties: {problem}")
    raw_connections = document.get("connections")
    connections = _connections(raw_connections, settings, env, problems)
    declared = set(raw_connections) if isinstance(raw_connections, dict) else set()
    exports = _exports(document.get("exports"), settings, declared, problems)
    problems.extend(shared_fields(exports))
    named = {
        str(table.get("api_key_env"))
        for table in (raw_connections.values() if isinstance(raw_connections, dict) else ())
        if isinstance(table, dict)
    }
    warnings = unknown_variables(env, also_known=named) + _one_key_twice(connections)
    if settings is not None:
        warnings += settings_warnings(settings)
    if problems or settings is None:
        listed = (*problems, *warnings)
        raise ConfigError(
            f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in listed),
            listed,
        )
    return Config(settings, kafka, connections, exports, source, warnings)


# Prefixes of the connector's own environment variables: others with them are likely typos.
OWN_PREFIXES = ("OMNISEND_", "KAFKA_", "SCHEMA_")


def unknown_variables(env: AnyMapping[str, str], also_known: Iterable[str] = ()) -> tuple[str, ...]:
    """Warnings for environment variables that look like settings but are none. The names
    Kubernetes injects for Services (`KAFKA_SERVICE_HOST`, `KAFKA_PORT_9092_TCP`...) are not
    settings and not mistakes."""
    known = {name.upper() for name in Settings.model_fields} | set(also_known)
    warnings = []
    for name in sorted(env):
        upper = name.upper()
        if (
            not upper.startswith(OWN_PREFIXES)
            or upper.startswith(KAFKA_CFG_PREFIX)
            or upper in known
            or "_SERVICE_" in upper
            or "_PORT" in upper
        ):
            continue
        warnings.append(f"{name}: not a setting, ignored{did_you_mean(upper, known)}")
    return tuple(warnings)


def _file_or_env(env: dict[str, str]) -> Callable[[str], str]:
    """A setting's name as the user wrote it: the environment variable when one set it (it
    overrides the file), else the file's key."""
    return lambda field: field.upper() if field.upper() in env else field


def _connections(
    raw: Any, settings: Settings | None, env: dict[str, str], problems: list[str]
) -> dict[str, Connection]:
    if not isinstance(raw, dict) or not raw:
        problems.append("connections: at least one [connections.<name>] table is required")
        return {}
    out: dict[str, Connection] = {}
    for name, table in raw.items():
        where = f"connections.{name}"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            continue
        problems.extend(unknown_keys(where, table, CONNECTION_KEYS | {"api_key"}))
        if "api_key" in table:
            problems.append(
                f"{where}: the API key must not be written in the configuration file; "
                "name an environment variable (api_key_env) or a file (api_key_file)"
            )
        if table.get("privacy_acknowledged") is not True:
            problems.append(
                f"{where}: privacy not acknowledged. This connection sends personal data "
                "(emails, names, addresses) from your Kafka topic to Omnisend, outside your "
                "source's compliance boundary. Confirm that this transfer is permitted, then set "
                f"privacy_acknowledged = true in [{where}]"
            )
        key = None if "api_key" in table else _api_key(where, table, env, problems)
        limits = {}
        for limit in ("rate_limit_per_minute", "tag_rate_limit_per_minute"):
            value = table.get(limit, getattr(settings, limit, 1))
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{where}.{limit}: must be a whole number of at least 1")
                value = 1
            limits[limit] = value
        users = table.get("users", [])
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            problems.append(f"{where}.users: must be a list of strings")
            users = []
        default_url = getattr(settings, "omnisend_base_url", "")
        base_url = text_value(where, table, "base_url", default_url, problems)
        display_name = text_value(where, table, "display_name", "", problems, blank=True)
        try:
            base_url = base_url if base_url is None else check_http_url(base_url)
        except ValueError as exc:
            problems.append(f"{where}.base_url: {exc}")
            base_url = None
        if key is not None and settings is not None and None not in (base_url, display_name):
            out[name] = Connection(
                name=name,
                api_key=SecretStr(key),
                base_url=str(base_url),
                display_name=str(display_name),
                users=tuple(users),
                **limits,
            )
    return out


def _one_key_twice(connections: dict[str, Connection]) -> tuple[str, ...]:
    """One key is one brand: connections sharing it each take the brand's whole budget."""
    by_key: dict[str, list[str]] = {}
    for name, connection in connections.items():
        by_key.setdefault(connection.api_key.get_secret_value(), []).append(name)
    return tuple(
        f"connections {', '.join(sorted(names))} have the same API key, so the same brand: "
        "each takes the brand's whole budget, and together they exceed it (use one connection)"
        for names in by_key.values()
        if len(names) > 1
    )


def _api_key(
    where: str, table: dict[str, Any], env: dict[str, str], problems: list[str]
) -> str | None:
    variable, file = table.get("api_key_env"), table.get("api_key_file")
    if (variable is None) == (file is None):
        problems.append(f"{where}: set exactly one of api_key_env or api_key_file")
        return None
    if variable is not None:
        key = env.get(str(variable), "").strip()
        if not key:
            problems.append(f"{where}.api_key_env: the environment variable {variable} is unset")
            return None
        return key
    try:
        key = Path(str(file)).read_text().strip()
    except OSError as exc:
        problems.append(f"{where}.api_key_file: {file}: {exc.strerror}")
        return None
    if not key:
        problems.append(f"{where}.api_key_file: {file} is empty")
        return None
    return key


def _exports(
    raw: Any,
    settings: Settings | None,
    connections: set[str],
    problems: list[str],
) -> tuple[Export, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("exports: at least one [[exports]] table is required")
        return ()
    out: list[Export] = []
    names: set[str] = set()
    for index, table in enumerate(raw):
        if not isinstance(table, dict):
            problems.append(f"exports[{index}]: must be a table")
            continue
        name = text_value(f"exports[{index}]", table, "name", f"export-{index + 1}", problems)
        if name is None:
            continue
        where = f"exports[{index}] ({name})"
        if name in names:
            problems.append(f"{where}: another export has the name {name!r}")
        names.add(name)
        problems.extend(unknown_keys(where, table, EXPORT_KEYS))
        connection = table.get("connection")
        if connection is not None and not isinstance(connection, str):
            problems.append(f"{where}.connection: must be a connection's name (a string)")
            continue
        if connection is None and len(connections) == 1:
            connection = next(iter(connections))
        if connection is None:
            problems.append(f"{where}.connection: required when there are several connections")
        elif connection not in connections:
            problems.append(
                f"{where}.connection: no connection {connection!r} "
                f"(known: {', '.join(sorted(connections)) or 'none'})"
            )
        segments = _segments(where, table.get("segments", "all"), problems)
        mapping = _mapping(where, table, settings, problems)
        if mapping is not None and connection is not None:
            out.append(Export(name, str(connection), mapping, segments))
    return tuple(out)


def shared_fields(exports: tuple[Export, ...]) -> list[str]:
    """Two exports of one connection that write the same contact field: each would overwrite
    the other's (a write replaces `customProperties` and the channel status whole)."""
    problems: list[str] = []
    for i, first in enumerate(exports):
        for j in range(i + 1, len(exports)):
            second = exports[j]
            if first.connection != second.connection:
                continue
            shared = first.mapping.owned() & second.mapping.owned()
            if shared:
                problems.append(
                    f"exports[{i}] ({first.name}) and exports[{j}] ({second.name}) both write "
                    f"{', '.join(sorted(shared))} on connection {first.connection!r}: each "
                    "contact field belongs to one export; give one of them other fields "
                    "(fields = {} writes none)"
                )
    return problems


def _segments(where: str, raw: Any, problems: list[str]) -> frozenset[str] | None:
    if raw == "all":
        return None
    if isinstance(raw, list) and raw and all(isinstance(s, str) and s.strip() for s in raw):
        return frozenset(s.strip() for s in raw)
    problems.append(f'{where}.segments: a list of segment ids or names, or "all"')
    return None


def _mapping(
    where: str, table: dict[str, Any], settings: Settings | None, problems: list[str]
) -> Mapping | None:
    fields = table.get("fields", DEFAULT_FIELD_MAP)
    custom = table.get("custom_properties", {})
    for key, value in (("fields", fields), ("custom_properties", custom)):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            problems.append(f'{where}.{key}: a table of omnisendName = "profile_attribute"')
            return None
    if settings is None:
        return None
    email = text_value(where, table, "email_attribute", settings.email_attribute, problems)
    template = text_value(where, table, "tag_template", settings.tag_template, problems)
    status = text_value(
        where, table, "email_status_attribute", settings.email_status_attribute, problems
    )
    preserve = table.get("email_preserve_case", settings.email_preserve_case)
    if not isinstance(preserve, bool):  # "false" is a string, and would be true
        problems.append(f"{where}.email_preserve_case: must be true or false")
        return None
    if email is None or template is None or (status is None and "email_status_attribute" in table):
        return None
    try:
        return Mapping(
            email_attribute=email,
            fields=dict(fields),
            custom_properties=dict(custom),
            preserve_email_case=preserve,
            tag_template=template,
            email_status_attribute=status,
        )
    except ConfigError as exc:
        problems.append(f"{where}: {exc}")
        return None
