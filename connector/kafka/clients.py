"""The Kafka edge: consumer, DLQ producer and admin client built from one configuration.

Settings the connector owns are set here and nowhere else: manual commits only, offsets stored
explicitly, `auto.offset.reset=earliest` unless overridden, and a capped prefetch so memory does
not grow with consumer lag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connector.logs import kafka_logger

ErrorCallback = Callable[[KafkaError], None]

# librdkafka prefetches up to 64 MiB per consumer by default; that would dwarf our own in-flight
# cap under lag. 8 MiB keeps several fetches' worth ready without growing with the backlog.
DEFAULT_PREFETCH_KBYTES = 8192


def consumer_config(
    bootstrap: str, group_id: str, overrides: dict[str, str], on_error: ErrorCallback
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "log.connection.close": False,  # brokers close idle connections; that is not news
        "auto.offset.reset": "earliest",
        "queued.max.messages.kbytes": DEFAULT_PREFETCH_KBYTES,
        # A resumed partition is fetched again from scratch; don't let the broker hold that
        # first fetch for librdkafka's default 500 ms.
        "fetch.wait.max.ms": 100,
        "partition.assignment.strategy": "range",
    }
    config.update(overrides)
    config.update(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "error_cb": on_error,
            "logger": kafka_logger(),
        }
    )
    return config


def producer_config(
    bootstrap: str, overrides: dict[str, str], on_error: ErrorCallback
) -> dict[str, Any]:
    consumer_only = {
        "auto.offset.reset",
        "queued.max.messages.kbytes",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "fetch.min.bytes",
        "fetch.wait.max.ms",
        "isolation.level",
    }
    config: dict[str, Any] = {
        "log.connection.close": False,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 20,
    }
    config.update({k: v for k, v in overrides.items() if k not in consumer_only})
    config.update({"bootstrap.servers": bootstrap, "error_cb": on_error, "logger": kafka_logger()})
    return config


def dlq_producer_config(
    bootstrap: str, overrides: dict[str, str], on_error: ErrorCallback, message_max_bytes: int
) -> dict[str, Any]:
    """The dead-letter producer's: able to carry a MAX_VALUE_BYTES record and its headers."""
    return producer_config(bootstrap, overrides, on_error) | {
        "message.max.bytes": message_max_bytes
    }


def admin_config(bootstrap: str, overrides: dict[str, str]) -> dict[str, Any]:
    producer_only = {"acks", "enable.idempotence", "linger.ms", "compression.type"}
    return {
        k: v
        for k, v in producer_config(bootstrap, overrides, lambda e: None).items()
        if k not in producer_only and k != "error_cb"
    }


def make_consumer(config: dict[str, Any]) -> Consumer:
    return Consumer(config)


def make_producer(config: dict[str, Any]) -> Producer:
    return Producer(config)


def ensure_topic(bootstrap: str, overrides: dict[str, str], topic: str, partitions: int) -> None:
    """Create the topic if it does not exist (demo and generate)."""
    admin = AdminClient(admin_config(bootstrap, overrides))
    existing = admin.list_topics(timeout=10).topics
    if topic in existing:
        return
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    for future in futures.values():
        try:
            future.result(timeout=15)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def property_problems(overrides: dict[str, str]) -> dict[str, str]:
    """librdkafka's word on each override it refuses (property → what it said), found before
    anything connects: each property alone (so every unknown name or bad value is named), then
    all together as the consumer and the dead-letter producer would use them (so a combination
    such as SASL without a mechanism this build has is found too)."""
    quiet = _quiet_logger()
    problems: dict[str, str] = {}
    for prop, value in overrides.items():
        refusal = _refusal(Consumer, {"group.id": "validate", "logger": quiet, prop: value})
        # A name or value refused as it is set; not one that only other properties complete.
        if refusal is not None and not refusal.startswith(_CREATE_FAILED):
            problems[prop] = refusal
    if problems:
        return problems
    for build, config in (
        (Consumer, consumer_config("", "validate", overrides, _ignore)),
        (Producer, producer_config("", overrides, _ignore)),
    ):
        refusal = _refusal(build, config | {"logger": quiet})
        if refusal is not None:
            together = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()) if _shown(k))
            return {together or "(defaults)": refusal.split(": ", 1)[-1]}
    return problems


_CREATE_FAILED = "Failed to create"


def _shown(prop: str) -> bool:
    """Whether a property's value may be printed (not a secret)."""
    return not any(word in prop for word in ("password", "secret", "key", "token"))


def _refusal(build: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> str | None:
    try:
        client = build(config)
    except KafkaException as exc:
        return str(exc.args[0].str())
    if isinstance(client, Consumer):
        client.close()
    return None


def _ignore(error: KafkaError) -> None:
    return None


def _quiet_logger() -> logging.Logger:
    """A logger that drops librdkafka's remarks about a client that will never connect."""
    logger = logging.getLogger("connector.kafka.validate")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger
