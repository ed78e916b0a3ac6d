"""The Kafka edge: consumer, DLQ producer and admin client built from one configuration.

Settings the connector owns are set here and nowhere else: manual commits only, offsets stored
explicitly, `auto.offset.reset=earliest` unless overridden, and a capped prefetch so memory does
not grow with consumer lag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
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


def make_consumer(config: dict[str, Any]) -> Any:
    return Consumer(config)


def make_producer(config: dict[str, Any]) -> Any:
    return Producer(config)


def topic_partitions(consumer: Any, topic: str, timeout_s: float = 10.0) -> int:
    """How many partitions the topic has (0 if unknown)."""
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        return 0
    return len(info.partitions)


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


def tp(topic: str, partition: int, offset: int | None = None) -> TopicPartition:
    return (
        TopicPartition(topic, partition)
        if offset is None
        else TopicPartition(topic, partition, offset)
    )
