"""`omnisend-connector check`: is this deployment ready to run? The configuration, Kafka (the
topic and the dead-letter topic), the Schema Registry and the Omnisend connection, each checked
with one cheap call, reported line by line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from confluent_kafka.admin import AdminClient

from connector.config import Config, Connection
from connector.kafka.clients import admin_config
from connector.logs import shown_url
from connector.omnisend.credentials import verify_credentials
from connector.settings import Settings

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Finding:
    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}: {self.detail}"


def check_kafka(settings: Settings, kafka: dict[str, str]) -> list[Finding]:
    admin: Any = AdminClient(admin_config(settings.kafka_bootstrap_servers, kafka))
    try:
        topics = admin.list_topics(timeout=TIMEOUT_S).topics
    except Exception as exc:  # noqa: BLE001 - any failure here means "not reachable"
        return [Finding("kafka", False, f"{settings.kafka_bootstrap_servers} not reachable: {exc}")]
    findings = [Finding("kafka", True, f"{settings.kafka_bootstrap_servers} reachable")]
    roles = [("topic", settings.kafka_topic), ("dead-letter topic", settings.dlq_topic)]
    if settings.kafka_results_topic:
        roles.append(("results topic", settings.kafka_results_topic))
    for role, name in roles:
        meta = topics.get(name)
        if meta is None or meta.error is not None:
            findings.append(
                Finding(role, False, f"{name} does not exist; create it (README: Kafka setup)")
            )
        else:
            findings.append(Finding(role, True, f"{name}, {len(meta.partitions)} partitions"))
    return findings


def check_registry(settings: Settings, get: Callable[..., httpx.Response]) -> list[Finding]:
    if settings.value_format != "confluent" or not settings.schema_registry_url:
        return []
    url = settings.schema_registry_url.rstrip("/")
    auth = None
    if settings.schema_registry_user_info is not None:
        user, _, password = settings.schema_registry_user_info.get_secret_value().partition(":")
        auth = (user, password)
    shown = shown_url(url)
    try:
        response = get(f"{url}/subjects", auth=auth, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return [Finding("schema registry", False, f"{shown} not reachable: {type(exc).__name__}")]
    if response.status_code != 200:
        return [Finding("schema registry", False, f"{shown} answered {response.status_code}")]
    return [Finding("schema registry", True, f"{shown} reachable")]


def check_omnisend(connection: Connection) -> list[Finding]:
    what = f"omnisend connection {connection.label}"
    url = connection.base_url.rstrip("/")
    verdict = verify_credentials(url, connection.api_key.get_secret_value(), TIMEOUT_S)
    if verdict.ok:
        return [
            Finding(
                what,
                True,
                f"API key accepted by {url} (read access; the contacts.write scope shows at the "
                "first write)",
            )
        ]
    if verdict.ok is False:  # refused: the message says what to change
        return [Finding(what, False, verdict.detail)]
    return [Finding(what, False, f"{url} not reachable or not answering: {verdict.detail}")]


def run_checks(config: Config, get: Callable[..., httpx.Response] = httpx.get) -> list[Finding]:
    """`get` reaches the Schema Registry; Omnisend is reached through its own client."""
    settings = config.settings
    findings = [
        Finding(
            "configuration",
            True,
            f"{config.source}: topic {settings.kafka_topic}, group {settings.kafka_group_id}, "
            f"{settings.value_format} values, {len(config.connections)} connection(s), "
            f"{len(config.exports)} export(s)",
        ),
        *(
            Finding(
                f"export {e.name!r}",
                True,
                f"{'all segments' if e.segments is None else ', '.join(sorted(e.segments))} -> "
                f"connection {e.connection!r}, tag {e.mapping.tag_template!r}",
            )
            for e in config.exports
        ),
        *check_kafka(settings, config.kafka),
        *check_registry(settings, get),
    ]
    for connection in config.connections.values():
        findings.extend(check_omnisend(connection))
    return findings
