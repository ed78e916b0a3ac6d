"""The composition root: builds every part from the settings and runs the pipeline."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import structlog
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from connector import __version__
from connector.config import Config, Connection
from connector.core.clock import Clock, SystemClock
from connector.core.codec import ConfluentDecoder, Decoder, PlainAvroDecoder
from connector.core.errors import ExitCode, Fatal
from connector.core.routing import Router
from connector.health import HealthServer
from connector.jobs.dryrun import (
    DRY_RUN_BASE_URL,
    DryDeadLetters,
    DryRun,
    dry_run_key,
    dry_simulator,
)
from connector.kafka.clients import (
    admin_config,
    consumer_config,
    dlq_producer_config,
    make_consumer,
    make_producer,
)
from connector.kafka.dlq import DeadLetters, DeadLetterSink
from connector.kafka.lag import lag_updater
from connector.kafka.registry import RegistryClient
from connector.kafka.results import Results
from connector.kafka.source import KafkaSource, Producer
from connector.logs import EmailHasher, shown_url
from connector.metrics import Metrics, totals
from connector.mode import LIVE, Mode
from connector.omnisend.budget import Budget, BudgetConfig
from connector.omnisend.credentials import verify_all
from connector.omnisend.loop import SinkLoop
from connector.omnisend.sink import OmnisendSink, SinkConfig
from connector.omnisend.sinks import Sinks
from connector.pipeline import Pipeline, PipelineConfig
from connector.readiness import (
    Readiness,
    broker_reachable,
    check_at_start,
)
from connector.settings import STUCK_AFTER_S, Settings, dlq_message_max_bytes
from connector.simulator.transport import SimulatorTransport

log = structlog.get_logger("connector")


@dataclass
class Running:
    pipeline: Pipeline
    sinks: Sinks
    metrics: Metrics
    health: HealthServer | None
    dry_run: DryRun | None = None
    # A job's records that would have gone to the DLQ (a job never writes there).
    counted_letters: list[DryDeadLetters] = field(default_factory=list)

    @property
    def sink(self) -> OmnisendSink:
        """The first connection's sink (the only one in the single-export setup)."""
        return next(iter(self.sinks.by_connection.values()))


def make_decoder(settings: Settings) -> Decoder:
    if settings.value_format == "avro":
        return PlainAvroDecoder()
    auth: Any = None
    if settings.schema_registry_user_info is not None:
        user, _, password = settings.schema_registry_user_info.get_secret_value().partition(":")
        auth = (user, password)
    http = httpx.Client(auth=auth, timeout=httpx.Timeout(5.0))
    return ConfluentDecoder(RegistryClient(http, settings.schema_registry_url or ""))


def brand_budget(settings: Settings, connection: Connection) -> Budget:
    """A connection's budget: its brand's limits, the window and the headroom."""
    return Budget(
        BudgetConfig(
            requests_per_window=connection.rate_limit_per_minute,
            tag_requests_per_window=connection.tag_rate_limit_per_minute,
            window_s=settings.rate_limit_window_s,
            headroom=settings.rate_limit_headroom,
        )
    )


def make_sink(
    settings: Settings,
    connection: Connection,
    metrics: Metrics,
    clock: Clock,
    dry_run: DryRun | None = None,
    exports: tuple[int, ...] = (0,),
    loop: SinkLoop | None = None,
) -> OmnisendSink:
    """The sink of one connection: its own client and its own share of its brand's budget."""
    budget = brand_budget(settings, connection)
    config = SinkConfig.from_settings(settings, exports)
    api_key, base_url = connection.api_key.get_secret_value(), connection.base_url
    transport = None
    if dry_run is not None:  # an in-memory Omnisend without limits
        api_key, base_url = dry_run_key(connection.name), DRY_RUN_BASE_URL
        transport = SimulatorTransport(dry_run.simulator)
        budget = Budget(BudgetConfig(1_000_000, 500_000, headroom=1.0))
    return OmnisendSink(
        api_key=api_key,
        base_url=base_url,
        budget=budget,
        clock=clock,
        metrics=metrics,
        connection=connection.name,
        config=config,
        transport=transport,
        loop=loop,
    )


def _sinks(config: Config, metrics: Metrics, clock: Clock, dry: DryRun | None) -> Sinks:
    """Every connection's sink, on one loop with one connection pool per Omnisend host."""
    loop = SinkLoop(connections=SinkConfig.max_concurrent_requests * len(config.connections))
    return Sinks(
        {
            name: make_sink(
                config.settings, connection, metrics, clock, dry, config.exports_of(name), loop
            )
            for name, connection in config.connections.items()
        },
        loop,
    )


@contextmanager
def running(
    settings: Settings | Config,
    kafka: dict[str, str] | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    mode: Mode = LIVE,
) -> Iterator[Running]:
    """Everything built and started, and stopped again on exit: from a `Config`, or from the
    settings of the single-export setup. A dry run sends to an in-memory Omnisend, writes no
    dead letters, commits nothing, in a group of its own. A job (backfill, DLQ replay) reads
    assigned partitions, commits nothing, counts instead of dead-lettering, serves no port."""
    config = settings if isinstance(settings, Config) else Config.single(settings, kafka or {})
    settings, kafka = config.settings, config.kafka
    # A refused key stops the start before the group is joined: nothing consumed, nothing
    # dead-lettered. Jobs check theirs as they go; a dry run sends nothing.
    job = mode.job
    credentials = check_at_start(_keys(config)) if mode.live else None
    clock = clock or SystemClock()
    dry = DryRun(dry_simulator(clock, list(config.connections))) if mode.dry_run else None
    group_id = mode.group_id(settings.kafka_group_id)
    metrics = Metrics(registry or CollectorRegistry())
    metrics.build.info({"version": __version__})
    metrics.prime(config.metrics_connection, settings.kafka_topic)
    for name in config.connections:
        metrics.prime(name, settings.kafka_topic)
    sinks = _sinks(config, metrics, clock, dry).start()
    if job is not None:
        sinks.set_budget_share(job.share)
    counted: list[DryDeadLetters] = []

    pipeline: Pipeline
    on_error = kafka_error_handler(lambda: pipeline)
    source = KafkaSource(
        make_consumer(
            consumer_config(
                settings.kafka_bootstrap_servers, group_id, mode.consumer_overrides(kafka), on_error
            )
        )
    )
    dlq_max_bytes = dlq_message_max_bytes(settings.max_value_bytes, kafka)
    producer = make_producer(
        dlq_producer_config(settings.kafka_bootstrap_servers, kafka, on_error, dlq_max_bytes)
    )

    dead_letters: DeadLetterSink
    if mode.live:
        dead_letters = DeadLetters(producer, settings.dlq_topic, dlq_max_bytes)
    else:  # counted, never written
        letters = DryDeadLetters()
        (dry.dead_letters if dry is not None else counted).append(letters)
        dead_letters = letters

    key = settings.email_hash_key
    hasher = EmailHasher(key.get_secret_value().encode() if key else None)
    pipeline = Pipeline(
        _loop_config(settings, config, mode),
        source,
        make_decoder(settings),
        Router(config.exports, seen=None if dry is None else dry.segments),
        sinks,
        dead_letters,
        metrics,
        clock,
        email_hash=hasher,
        # A dry run and the jobs write no results, as they write no dead letters.
        results=_results(producer, settings.kafka_results_topic if mode.live else None),
    )

    _announce(config, group_id, pipeline, metrics, mode)
    readiness = (
        _readiness(config, pipeline, metrics, mode.live, credentials)
        if mode.serves_probes
        else None
    )
    health = None if readiness is None else _health(settings, pipeline, metrics, readiness)
    try:
        yield Running(pipeline, sinks, metrics, health, dry, counted)
    finally:
        if readiness is not None:
            readiness.stop()
        if health is not None:
            health.close()
        producer.flush(5)


def _loop_config(settings: Settings, config: Config, mode: Mode) -> PipelineConfig:
    loop = replace(
        PipelineConfig.from_settings(settings, settings.kafka_topic),
        connection=config.metrics_connection,
        commit=mode.live,
        log_dead_letters=not mode.dry_run,
    )
    if mode.job is None:
        return loop
    # A job reads its own partitions and records; invalid ones never stop it.
    job = mode.job
    return replace(
        loop,
        topic=job.topic,
        dlq_max_invalid_share=1.0,
        assignment=job.assignment,
        select=job.select,
    )


def _results(producer: Producer, topic: str | None) -> Results | None:
    return None if topic is None else Results(producer, topic)


def _announce(
    config: Config, group_id: str, pipeline: Pipeline, metrics: Metrics, mode: Mode
) -> None:
    """The start banner (not for a job), and the progress line's fields."""
    pipeline.progress_fields = lambda: _progress_fields(metrics)
    if mode.job is None:
        _banner(config, group_id, mode.dry_run)


def kafka_error_handler(loop: Callable[[], Pipeline]) -> Callable[[KafkaError], None]:
    """The Kafka clients' error callback (served inside their polls, on the Kafka thread): all
    brokers down marks the loop's broker as down; a fatal error (a static member fenced, an
    idempotent producer's fatal state) stops the loop with exit 5, since the client never
    works again; anything else librdkafka retries itself."""

    def on_error(err: KafkaError) -> None:
        pipeline = loop()
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            pipeline.broker_down = True
            log.warning("kafka_brokers_down", error=err.str())
        elif err.fatal():
            log.error("kafka_fatal", error=err.str())
            pipeline.stop_for(Fatal(f"Kafka: {err.str()}"), ExitCode.KAFKA_FATAL)
        else:
            log.debug("kafka_error", error=err.str())

    return on_error


def _banner(config: Config, group_id: str, dry_run: bool) -> None:
    """What this process is about to do, in one line."""
    settings = config.settings
    connections = []
    for name, c in config.connections.items():
        requests, tag_calls = brand_budget(settings, c).limits()
        connections.append(
            {
                "name": name,
                "base_url": shown_url(c.base_url),
                "budget": f"{requests} requests, {tag_calls} tag calls "
                f"per {settings.rate_limit_window_s:g} s before sharing",
            }
        )
    log.info(
        "starting",
        version=__version__,
        mode="dry run" if dry_run else "live",
        topic=settings.kafka_topic,
        group=group_id,
        value_format=settings.value_format,
        connections=connections,
        exports=[
            {
                "name": e.name,
                "connection": e.connection,
                "segments": "all" if e.segments is None else sorted(e.segments),
            }
            for e in config.exports
        ],
    )


def skipped_by_reason(metrics: Metrics) -> dict[str, int]:
    """Records skipped so far, by reason, over every connection."""
    counts = totals(metrics.events_skipped, "reason", "_total")
    return {reason: int(n) for reason, n in counts.items() if n}


def _progress_fields(metrics: Metrics) -> dict[str, Any]:
    """Lag, budget use and 429s for the minutely `progress` line, from the metrics."""
    used = totals(metrics.budget_used, "window")
    limit = totals(metrics.budget_limit, "window")
    return {
        "lag": int(totals(metrics.consumer_lag).get("", 0)),
        "budget_used": {w: f"{int(used[w])}/{int(limit.get(w, 0))}" for w in sorted(used)},
        "rate_limited": int(totals(metrics.rate_limited, suffix="_total").get("", 0)),
    }


def _keys(config: Config) -> dict[str, tuple[str, str]]:
    return {
        name: (c.base_url, c.api_key.get_secret_value()) for name, c in config.connections.items()
    }


def _readiness(
    config: Config,
    pipeline: Pipeline,
    metrics: Metrics,
    check_credentials: bool,
    credentials: bool | None,
) -> Readiness:
    settings = config.settings
    admin = AdminClient(admin_config(settings.kafka_bootstrap_servers, config.kafka))
    return Readiness(
        broker_reachable(admin, settings.kafka_topic),
        all_credentials(config) if check_credentials else (lambda: None),
        on_broker_ok=lambda: setattr(pipeline, "broker_down", False),
        on_tick=lag_updater(
            admin,
            settings.kafka_group_id,
            lambda: (pipeline.assigned, pipeline.committed()),
            metrics.consumer_lag,
        ),
        credentials_ok=credentials,
        credentials_required=check_credentials,
    ).start()


def _health(
    settings: Settings, pipeline: Pipeline, metrics: Metrics, readiness: Readiness
) -> HealthServer:
    """/healthz, /readyz and /metrics, and the `ready` and `loop_age_seconds` gauges."""

    def healthy() -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - pipeline.last_step_at
        return age < STUCK_AFTER_S and pipeline.fatal is None, {"last_loop_s": round(age, 3)}

    def ready() -> tuple[bool, dict[str, Any]]:
        # Backpressure is no reason to be unready; an unreachable broker, refused credentials
        # or a fatal error are. Not yet checked counts as ready.
        ok = readiness.broker_ok is not False and readiness.credentials_ready
        ok = ok and not pipeline.broker_down and pipeline.fatal is None
        ok = ok and pipeline.assignment_seen  # the group has answered (an empty answer counts)
        # What the registry answered while records wait for it (not whether the held list
        # is empty: it is while they are asked for again, most of an outage).
        registry_error = pipeline.intake.registry_error
        ok = ok and registry_error is None
        detail: dict[str, Any] = {
            "assignment_received": pipeline.assignment_seen,
            "broker_reachable": readiness.broker_ok,
            "credentials_valid": readiness.credentials_ok,
            "broker_down": pipeline.broker_down,
            "schema_registry_available": registry_error is None,
            "assigned_partitions": len(pipeline.assigned),
        }
        if registry_error is not None:
            detail["schema_registry_error"] = registry_error
        return ok, detail

    metrics.ready.set_function(lambda: float(ready()[0]))
    metrics.loop_age.set_function(lambda: time.monotonic() - pipeline.last_step_at)
    return HealthServer(
        metrics.registry, healthy, ready, settings.metrics_host, settings.metrics_port
    ).start()


def all_credentials(config: Config) -> Callable[[], bool | None]:
    """Every connection's key is accepted (None: some could not be checked just now), all
    checked at once."""
    keys = _keys(config)

    def check() -> bool | None:
        verdicts = verify_all(keys)
        for name, verdict in verdicts.items():
            if verdict.ok is False:
                log.error("omnisend_credentials_refused", connection=name, detail=verdict.detail)
        oks = [verdict.ok for verdict in verdicts.values()]
        if False in oks:
            return False
        return None if None in oks else True

    return check


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT stop polling; the pipeline then drains and commits."""

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        # Said from a thread of its own: the handler runs on the main thread between two of
        # its bytecodes, perhaps inside a log write that holds the output's (not reentrant)
        # lock, which a log call here would wait for for ever.
        name = signal.Signals(signum).name
        threading.Thread(target=log.info, args=("stopping",), kwargs={"signal": name}).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
