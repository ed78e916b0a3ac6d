"""The composition root: builds every part from the settings and runs the pipeline."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from connector import __version__
from connector.clock import Clock, SystemClock
from connector.codec import ConfluentDecoder, Decoder, PlainAvroDecoder, RegistryClient
from connector.dlq import DeadLetters, DeadLetterSink
from connector.dryrun import (
    DRY_RUN_BASE_URL,
    DRY_RUN_KEY,
    DryDeadLetters,
    DryRun,
    SimulatorTransport,
    dry_simulator,
)
from connector.events import RawRecord
from connector.health import HealthServer
from connector.kafka import (
    admin_config,
    consumer_config,
    make_consumer,
    make_producer,
    producer_config,
)
from connector.lag import lag_updater
from connector.logs import EmailHasher
from connector.mapping import Mapper
from connector.metrics import Metrics
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.sink import OmnisendSink, SinkConfig
from connector.pipeline import Pipeline, PipelineConfig
from connector.readiness import Readiness, broker_reachable, omnisend_credentials
from connector.settings import Settings

log = structlog.get_logger("connector")

# The loop is stuck, not merely busy, when a turn has not completed for this long.
STUCK_AFTER_S = 60.0


@dataclass
class Running:
    pipeline: Pipeline
    sink: OmnisendSink
    metrics: Metrics
    health: HealthServer | None
    hasher: EmailHasher
    dry_run: DryRun | None = None


def make_decoder(settings: Settings) -> Decoder:
    if settings.value_format == "avro":
        return PlainAvroDecoder()
    auth: Any = None
    if settings.schema_registry_user_info is not None:
        user, _, password = settings.schema_registry_user_info.get_secret_value().partition(":")
        auth = (user, password)
    http = httpx.Client(auth=auth, timeout=httpx.Timeout(5.0))
    return ConfluentDecoder(RegistryClient(http, settings.schema_registry_url or ""))


def make_sink(
    settings: Settings, metrics: Metrics, clock: Clock, dry_run: DryRun | None = None
) -> OmnisendSink:
    budget = Budget(
        BudgetConfig(
            requests_per_window=settings.rate_limit_per_minute,
            tag_requests_per_window=settings.tag_rate_limit_per_minute,
            window_s=settings.rate_limit_window_s,
            headroom=settings.rate_limit_headroom,
        )
    )
    config = SinkConfig(
        upsert_linger_s=settings.upsert_linger_s,
        tag_linger_s=settings.tag_linger_s,
        settle_s=settings.tag_settle_s,
        request_timeout_s=settings.request_timeout_s,
    )
    api_key, base_url, transport = settings.api_key(), settings.omnisend_base_url, None
    if dry_run is not None:  # an in-memory Omnisend without limits
        api_key, base_url = DRY_RUN_KEY, DRY_RUN_BASE_URL
        transport = SimulatorTransport(dry_run.simulator)
        budget = Budget(BudgetConfig(1_000_000, 500_000, headroom=1.0))
    return OmnisendSink(
        api_key=api_key,
        base_url=base_url,
        budget=budget,
        clock=clock,
        metrics=metrics,
        connection=settings.connection_name,
        config=config,
        transport=transport,
    )


@contextmanager
def running(
    settings: Settings,
    kafka: dict[str, str],
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    dry_run: bool = False,
) -> Iterator[Running]:
    """Everything built and started, and stopped again on exit. A dry run sends to an
    in-memory Omnisend, writes no dead letters, commits nothing, in a group of its own."""
    clock = clock or SystemClock()
    dry = DryRun(dry_simulator(clock)) if dry_run else None
    group_id = settings.kafka_group_id
    if dry is not None:
        group_id = f"{group_id}.dry-run.{uuid.uuid4().hex[:8]}"
    metrics = Metrics(registry or CollectorRegistry())
    metrics.build.info({"version": __version__})
    metrics.prime(settings.connection_name, settings.kafka_topic)
    sink = make_sink(settings, metrics, clock, dry).start()

    def on_error(err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            pipeline.broker_down = True
            log.warning("kafka_brokers_down", error=err.str())
        elif err.fatal():
            log.error("kafka_fatal", error=err.str())
        else:
            log.debug("kafka_error", error=err.str())

    pipeline: Pipeline
    consumer = make_consumer(
        consumer_config(settings.kafka_bootstrap_servers, group_id, kafka, on_error)
    )
    producer = make_producer(producer_config(settings.kafka_bootstrap_servers, kafka, on_error))

    def dead_letters(on_delivered: Callable[[RawRecord, str], None]) -> DeadLetterSink:
        if dry is not None:
            letters = DryDeadLetters(on_delivered)
            dry.dead_letters.append(letters)
            return letters
        return DeadLetters(producer, settings.dlq_topic, on_delivered)

    pipeline = Pipeline(
        PipelineConfig(
            topic=settings.kafka_topic,
            connection=settings.connection_name,
            max_in_flight_records=settings.max_in_flight_records,
            max_in_flight_bytes=settings.max_in_flight_bytes,
            max_value_bytes=settings.max_value_bytes,
            commit_interval_s=settings.commit_interval_s,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            revoke_timeout_s=settings.revoke_timeout_s,
            dedupe_cache_size=settings.dedupe_cache_size,
            dlq_max_invalid_share=settings.dlq_max_invalid_share,
            dlq_window_records=settings.dlq_window_records,
            commit=dry is None,
        ),
        consumer,
        make_decoder(settings),
        Mapper(settings.mapping()),
        sink,
        dead_letters,
        metrics,
        clock,
    )

    def healthy() -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - pipeline.last_step_at
        return age < STUCK_AFTER_S and pipeline.fatal is None, {"last_loop_s": round(age, 3)}

    admin = AdminClient(admin_config(settings.kafka_bootstrap_servers, kafka))
    readiness = Readiness(
        broker_reachable(admin, settings.kafka_topic),
        (lambda: None)
        if dry is not None
        else omnisend_credentials(settings.omnisend_base_url, settings.api_key()),
        on_broker_ok=lambda: setattr(pipeline, "broker_down", False),
        on_tick=lag_updater(
            admin, lambda: (pipeline.assigned, pipeline.committed()), metrics.consumer_lag
        ),
    ).start()

    def ready() -> tuple[bool, dict[str, Any]]:
        # Backpressure is no reason to be unready; an unreachable broker, refused credentials
        # or a fatal error are. Not yet checked counts as ready.
        ok = readiness.broker_ok is not False and readiness.credentials_ok is not False
        ok = ok and not pipeline.broker_down and pipeline.fatal is None
        return ok, {
            "broker_reachable": readiness.broker_ok,
            "credentials_valid": readiness.credentials_ok,
            "broker_down": pipeline.broker_down,
            "assigned_partitions": len(pipeline.assigned),
        }

    metrics.ready.set_function(lambda: float(ready()[0]))
    metrics.loop_age.set_function(lambda: time.monotonic() - pipeline.last_step_at)
    health = None
    if settings.metrics_port or settings.metrics_port == 0:
        health = HealthServer(
            metrics.registry, healthy, ready, settings.metrics_host, settings.metrics_port
        ).start()
    hasher = EmailHasher(
        settings.email_hash_key.get_secret_value().encode() if settings.email_hash_key else None
    )
    try:
        yield Running(pipeline, sink, metrics, health, hasher, dry)
    finally:
        readiness.stop()
        if health is not None:
            health.close()
        producer.flush(5)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT stop polling; the pipeline then drains and commits."""

    def handler(signum: int, frame: Any) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
