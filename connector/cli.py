"""The `omnisend-connector` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from connector import __version__
from connector.config import Config, load_config
from connector.core.errors import ConfigError, ExitCode, Fatal
from connector.core.reasons import REASONS
from connector.runtime import tune_gc
from connector.simulator.config import CURRENT_VERSION, RETIRED_VERSIONS, Faults, SimulatorConfig
from connector.simulator.server import SimulatorServer


def _parse_key(value: str) -> tuple[str, str]:
    key, _, brand = value.partition("=")
    if not key:
        raise argparse.ArgumentTypeError("an API key must not be empty")
    return key, brand or "brand-1"


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a local Omnisend API simulator (version 2026-03-15)",
        description="Serve a faithful local Omnisend API under /api for rehearsals and tests, "
        "with its state, counters and fault switches under /_sim/.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=8080, help="port; 0 picks a free one (default %(default)s)"
    )
    p.add_argument(
        "--api-key",
        action="append",
        type=_parse_key,
        metavar="KEY[=BRAND]",
        help="accepted API key and the brand it belongs to; repeatable (default: test-key=brand-1)",
    )
    p.add_argument(
        "--rate-limit",
        type=int,
        default=400,
        help="requests per window per brand, all endpoints together (default %(default)s)",
    )
    p.add_argument(
        "--tag-rate-limit",
        type=int,
        default=60,
        help="/contacts/tags requests per window per brand (default %(default)s)",
    )
    p.add_argument("--unlimited", action="store_true", help="disable rate limits (CPU benchmarks)")
    p.add_argument(
        "--read-only-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an API key that may only read: writes are answered 403; repeatable",
    )
    p.add_argument(
        "--retire-version",
        action="append",
        default=[],
        metavar="VERSION",
        help=f"answer this API version 410 too, e.g. {CURRENT_VERSION}; repeatable",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the 60 s window and "
        "every latency by this; at least 0.0834 so the window stays >= 5 s "
        "(default %(default)s)",
    )
    p.add_argument(
        "--batch-latency",
        type=float,
        default=1.0,
        help="seconds from accepting a batch to starting it (default %(default)s)",
    )
    p.add_argument(
        "--item-latency",
        type=float,
        default=0.01,
        help="seconds per batch item (default %(default)s)",
    )
    p.add_argument(
        "--tag-delay",
        type=float,
        default=0.5,
        help="seconds from a 202 on "
        "/contacts/tags until the change is visible (default %(default)s)",
    )
    p.add_argument(
        "--stop-after-item-errors",
        type=int,
        default=50,
        help="a batch with more failed items than this is stopped (default %(default)s)",
    )
    f = p.add_argument_group("faults (seeded: the same requests meet the same faults)")
    f.add_argument(
        "--seed", type=int, default=0, help="seed of the fault RNG (default %(default)s)"
    )
    f.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 5xx")
    f.add_argument(
        "--item-error-rate",
        type=float,
        default=0.0,
        help="share of batch items answered 503, 429 or 408",
    )
    f.add_argument("--latency", type=float, default=0.0, help="extra seconds on every response")
    f.add_argument("--spike-rate", type=float, default=0.0, help="share of responses with a spike")
    f.add_argument("--spike", type=float, default=0.0, help="seconds a latency spike adds")
    f.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        help="share of requests whose connection is closed without an answer",
    )
    f.add_argument(
        "--outage-start",
        type=float,
        default=None,
        help="seconds after start when an outage begins (every request 503)",
    )
    f.add_argument(
        "--outage-duration", type=float, default=0.0, help="length of the outage, seconds"
    )
    f.add_argument(
        "--tag-reorder", action="store_true", help="apply queued tag operations out of order"
    )
    f.add_argument(
        "--garbage-rate",
        type=float,
        default=0.0,
        help="share of answers that are not what the contract says (HTML, truncated or empty "
        "bodies, wrong JSON types, missing fields, odd numbers, wrong content types); the "
        "request itself is carried out",
    )
    f.add_argument(
        "--lost-answer-rate",
        type=float,
        default=0.0,
        help="share of requests carried out whose connection is then reset without an answer",
    )
    f.add_argument(
        "--drip-rate", type=float, default=0.0, help="share of answers sent a byte at a time"
    )
    f.add_argument(
        "--drip", type=float, default=0.0, help="seconds a dripping answer takes (real seconds)"
    )
    p.set_defaults(func=_cmd_simulate)


def simulator_config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    faults = Faults(
        seed=args.seed,
        error_rate=args.error_rate,
        item_error_rate=args.item_error_rate,
        latency_s=args.latency,
        spike_rate=args.spike_rate,
        spike_s=args.spike,
        drop_rate=args.drop_rate,
        outage_start_s=args.outage_start,
        outage_duration_s=args.outage_duration,
        tag_reorder=args.tag_reorder,
        garbage_rate=args.garbage_rate,
        lost_answer_rate=args.lost_answer_rate,
        drip_rate=args.drip_rate,
        drip_s=args.drip,
    )
    return SimulatorConfig(
        api_keys=dict(args.api_key or [("test-key", "brand-1")]),
        requests_per_window=args.rate_limit,
        tag_requests_per_window=args.tag_rate_limit,
        time_scale=args.time_scale,
        batch_latency_s=args.batch_latency,
        item_latency_s=args.item_latency,
        tag_delay_s=args.tag_delay,
        stop_after_item_errors=args.stop_after_item_errors,
        unlimited=args.unlimited,
        read_only_keys=frozenset(args.read_only_key),
        retired_versions=RETIRED_VERSIONS | frozenset(args.retire_version),
        faults=faults,
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    try:
        config = simulator_config_from_args(args)
    except ValueError as exc:
        print(f"omnisend-connector simulate: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        server = SimulatorServer(config, host=args.host, port=args.port)
    except OSError as exc:
        print(
            f"omnisend-connector simulate: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return ExitCode.CONFIG

    print(f"Omnisend simulator listening: OMNISEND_BASE_URL={server.api_url}", flush=True)
    print(f"state: {server.url}/_sim/state  stats: {server.url}/_sim/stats", flush=True)
    return _serve_until_stopped(server.serve_forever, server.close)


def _serve_until_stopped(serve: Callable[[], object], close: Callable[[], object]) -> int:
    """Run `serve` until Ctrl-C or SIGTERM, then `close`; exit 0."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve()
    except KeyboardInterrupt:
        pass
    finally:
        close()
    return ExitCode.OK


def _settings_epilog() -> str:
    from connector.settings import SETTINGS_HELP  # noqa: PLC0415 - keeps `--version` fast

    rows = [
        f"  {name:<28} {desc}" + (f" (default: {default})" if default else "")
        for name, default, desc in SETTINGS_HELP
    ]
    codes = [
        "exit codes: 0 stopped cleanly; 1 unexpected error; 2 bad configuration;",
        "  3 Omnisend refused the credentials or API version (401, 403, 410);",
        "  4 too many invalid records (DLQ limit); 5 Kafka failure (e.g. DLQ not writable)",
    ]
    return "settings (environment variables):\n" + "\n".join(rows) + "\n\n" + "\n".join(codes)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with connections and exports (README: Connections and exports); "
        "without it, the single-export setup from environment variables",
    )


def _load(args: argparse.Namespace, command: str) -> Config | None:
    """The configuration, or None after printing what is wrong."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"omnisend-connector {command}: {exc}", file=sys.stderr)
        return None
    for warning in config.warnings:
        print(f"omnisend-connector {command}: warning: {warning}", file=sys.stderr)
    return config


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the sync: Kafka segment events to Omnisend contacts and tags",
        description="Consume segment-membership changes and keep Omnisend in sync. "
        "Configured by environment variables, or by a TOML file (--config) whose settings "
        "environment variables override.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read the topic to its end in a consumer group of its own, send nothing to "
        "Omnisend or the dead-letter topic, commit nothing, and print what would have been sent",
    )
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    import threading  # noqa: PLC0415

    from connector.app import install_signal_handlers, running, skipped_by_reason  # noqa: PLC0415
    from connector.logs import configure_logging  # noqa: PLC0415

    config = _load(args, "run")
    if config is None:
        return ExitCode.CONFIG
    configure_logging(config.settings.log_level, config.settings.log_format)
    stop = threading.Event()
    install_signal_handlers(stop)
    if args.dry_run:
        from connector.jobs.dryrun import caught_up  # noqa: PLC0415

        with running(config, dry_run=True) as parts:
            code = parts.pipeline.run(stop, until=caught_up())
            report = (
                parts.dry_run.report(skipped_by_reason(parts.metrics))
                if parts.dry_run is not None
                else {}
            )
        print(
            json.dumps({"dryRun": report, "consumed": parts.pipeline.stats["consumed"]}, indent=2)
        )
        return code
    with running(config) as parts:
        return parts.pipeline.run(stop)


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="validate the settings and reach Kafka, the registry and Omnisend; exit 0 or 1",
        description="Validate the configuration of `run` (the same environment or --config "
        "file), reach Kafka (the topic and the dead-letter topic), the Schema Registry and each "
        "Omnisend connection with one cheap authenticated call, print a report, and exit 0 if "
        "all is well, else 1.",
    )
    _add_config(p)
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from connector.jobs.check import run_checks  # noqa: PLC0415
    from connector.logs import configure_logging  # noqa: PLC0415

    configure_logging("ERROR", "console")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"FAIL  configuration: {problem}")
        return ExitCode.FAILED
    for warning in config.warnings:
        print(f"WARN  configuration: {warning}")
    findings = run_checks(config)
    for finding in findings:
        print(finding.line())
    failed = sum(not f.ok for f in findings)
    print(f"{len(findings) - failed} ok, {failed} failed")
    return ExitCode.FAILED if failed else ExitCode.OK


def _add_job_options(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="share of each brand's budget this job may use beside the live connector "
        "(default %(default)s; the live connector backs off on 429s too)",
    )


def _add_jobs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backfill",
        help="re-read the topic from a point in time and sync it again (on demand)",
        description="Re-read every partition of the topic from the first record at or after "
        "--since up to its end as of now, and send it through the pipeline to Omnisend. Reads "
        "assigned partitions outside the live consumer group (no rebalance), commits nothing, "
        "never writes to the dead-letter topic. Progress on stderr, a JSON report on stdout.",
    )
    p.add_argument(
        "--since",
        required=True,
        help="an ISO time (2026-11-01T08:00:00Z, UTC when no zone) or a duration back from now "
        "(90m, 6h, 2d)",
    )
    _add_job_options(p)
    p.set_defaults(func=_cmd_backfill)
    p = sub.add_parser(
        "replay-dlq",
        help="send dead-lettered records through the pipeline again, after a fix",
        description="Read the dead-letter topic from its start to its end as of now and send "
        "each record (or those of the given reasons) through the pipeline again. What fails "
        "again is counted by reason in the report, not written to the DLQ a second time. "
        "Outside the live consumer group; commits nothing. Exit 1 if anything failed again.",
    )
    p.add_argument(
        "--reason",
        action="append",
        default=[],
        choices=sorted(REASONS),
        metavar="REASON",
        help="replay only records dead-lettered for this reason; repeatable "
        f"({', '.join(sorted(REASONS))})",
    )
    _add_job_options(p)
    p.set_defaults(func=_cmd_replay_dlq)
    p = sub.add_parser(
        "reconcile",
        help="compare each segment's members (from the topic) with Omnisend's tags; repair",
        description="Rebuild every segment's current membership from the whole topic and "
        "compare it with the contacts Omnisend holds under the segment's tag. Reports missing "
        "members and stale tags (ex-members, renamed segments, changed emails); with --apply "
        "upserts and tags the missing and untags the stale, within the budget. Exit 1 when "
        "drift is found and not applied, or a repair failed.",
    )
    p.add_argument(
        "--export",
        action="append",
        default=[],
        help="only this export (its name in the configuration); repeatable",
    )
    p.add_argument("--apply", action="store_true", help="repair the drift")
    _add_job_options(p)
    p.set_defaults(func=_cmd_reconcile)


def _job_config(args: argparse.Namespace, command: str) -> Config | None:
    from connector.logs import configure_logging  # noqa: PLC0415

    config = _load(args, command)
    if config is not None:
        configure_logging("WARNING", config.settings.log_format)
    if not 0 < args.share <= 1:
        print(f"omnisend-connector {command}: --share must be in (0, 1]", file=sys.stderr)
        return None
    return config


def _cmd_backfill(args: argparse.Namespace) -> int:
    from connector.jobs.runner import backfill, parse_since  # noqa: PLC0415

    config = _job_config(args, "backfill")
    if config is None:
        return ExitCode.CONFIG
    try:
        since_ms = parse_since(args.since)
    except ConfigError as exc:
        print(f"omnisend-connector backfill: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    report = backfill(config, since_ms, args.share)
    return _report(
        report, int(report["exitCode"]) or (ExitCode.OK if report["complete"] else ExitCode.FAILED)
    )


def _report(report: dict[str, object], code: int) -> int:
    """Print a job's report, whose `exitCode` is the process's, and return it."""
    report["exitCode"] = code
    print(json.dumps(report, indent=2))
    return code


def _cmd_replay_dlq(args: argparse.Namespace) -> int:
    from connector.jobs.runner import replay_dlq  # noqa: PLC0415

    config = _job_config(args, "replay-dlq")
    if config is None:
        return ExitCode.CONFIG
    report = replay_dlq(config, args.reason, args.share)
    if report["exitCode"]:
        return _report(report, int(report["exitCode"]))
    return _report(
        report, ExitCode.FAILED if report["failedAgain"] or not report["complete"] else ExitCode.OK
    )


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from connector.jobs.reconcile import reconcile  # noqa: PLC0415
    from connector.omnisend.client import FatalApiError, WrongEndpoint  # noqa: PLC0415

    config = _job_config(args, "reconcile")
    if config is None:
        return ExitCode.CONFIG
    try:
        report = reconcile(config, args.export, args.apply, args.share)
    except ConfigError as exc:
        print(f"omnisend-connector reconcile: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except Fatal as exc:  # Omnisend refused the key, or kept failing
        print(f"omnisend-connector reconcile: {exc}", file=sys.stderr)
        return (
            ExitCode.OMNISEND_FATAL
            if isinstance(exc, FatalApiError | WrongEndpoint)
            else ExitCode.FAILED
        )
    drifted = any(t["missing"] or t["stale"] for e in report["exports"] for t in e["tags"])
    failed = any(e.get("repair", {}).get("failed") for e in report["exports"])
    return _report(
        report, ExitCode.FAILED if failed or (drifted and not args.apply) else ExitCode.OK
    )


def _add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "generate",
        help="write realistic segment events to a topic (demos, benchmarks)",
        description="Generate SegmentMembershipChange events, keyed by profile_id.",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka brokers (default: KAFKA_BOOTSTRAP_SERVERS if set, else 127.0.0.1:9092)",
    )
    p.add_argument(
        "--topic",
        default=os.environ.get("KAFKA_TOPIC", "segment-membership"),
        help="topic (created if missing; default: KAFKA_TOPIC if set, else segment-membership)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=6,
        help="partitions of a created topic (default %(default)s)",
    )
    p.add_argument("--count", type=int, required=True, help="number of events")
    p.add_argument(
        "--contacts", type=int, default=None, help="distinct contacts (default: one per event)"
    )
    p.add_argument(
        "--segments", type=int, default=3, help="number of segments (default %(default)s)"
    )
    p.add_argument(
        "--exit-ratio", type=float, default=0.0, help="share of exits of current members"
    )
    p.add_argument("--duplicate-ratio", type=float, default=0.0, help="share of events sent twice")
    p.add_argument(
        "--attribute-change-ratio",
        type=float,
        default=0.0,
        help="share of entries that change a name",
    )
    p.add_argument(
        "--invalid-ratio", type=float, default=0.0, help="share of events with an invalid email"
    )
    p.add_argument(
        "--value-format",
        choices=["avro", "confluent"],
        default="avro",
        help="(default %(default)s)",
    )
    p.add_argument(
        "--schema-registry-url", default=None, help="registry to register the schema in (confluent)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from connector.dev.generate import GenerateOptions, produce  # noqa: PLC0415
    from connector.settings import kafka_overrides  # noqa: PLC0415

    if args.value_format == "confluent" and not args.schema_registry_url:
        print(
            "omnisend-connector generate: --schema-registry-url is needed for confluent",
            file=sys.stderr,
        )
        return ExitCode.CONFIG
    options = GenerateOptions(
        count=args.count,
        contacts=args.contacts,
        segments=args.segments,
        exit_ratio=args.exit_ratio,
        duplicate_ratio=args.duplicate_ratio,
        attribute_change_ratio=args.attribute_change_ratio,
        invalid_ratio=args.invalid_ratio,
        seed=args.seed,
    )
    import os  # noqa: PLC0415

    from confluent_kafka import KafkaException  # noqa: PLC0415

    # Said first: from a shell with a deployment's environment this is its broker and topic.
    print(
        f"writing {args.count} synthetic events to {args.topic} on {args.bootstrap_servers}",
        file=sys.stderr,
        flush=True,
    )
    try:
        ends = produce(
            args.bootstrap_servers,
            args.topic,
            options,
            value_format=args.value_format,
            registry_url=args.schema_registry_url,
            partitions=args.partitions,
            kafka=kafka_overrides(os.environ),
        )
    except KafkaException as exc:
        print(
            f"omnisend-connector generate: cannot write to {args.topic} on "
            f"{args.bootstrap_servers}: {exc.args[0].str()}",
            file=sys.stderr,
        )
        return ExitCode.KAFKA_FATAL
    print(f"wrote {sum(ends.values())} events to {args.topic} ({len(ends)} partitions)")
    return ExitCode.OK


def _add_broker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker",
        help="run the bundled Kafka-protocol broker for a local rehearsal",
        description="Start the bundled in-memory Kafka-protocol broker on 127.0.0.1 and print "
        "its address; stop it with Ctrl-C (its data is gone then).",
    )
    p.add_argument(
        "--port", type=int, default=9092, help="port; 0 picks a free one (default %(default)s)"
    )
    p.set_defaults(func=_cmd_broker)


def _cmd_broker(args: argparse.Namespace) -> int:
    from connector.dev.broker import Broker, free_port  # noqa: PLC0415

    try:
        broker = Broker(port=args.port or free_port()).start()
    except RuntimeError as exc:
        print(f"omnisend-connector broker: {exc} (is the port in use?)", file=sys.stderr)
        return ExitCode.CONFIG

    print(f"Kafka broker listening: KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)

    def wait() -> None:
        while True:
            signal.pause()

    return _serve_until_stopped(wait, broker.stop)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a whole sync locally: bundled broker, simulator, generated events",
        description="Start the bundled Kafka broker and the Omnisend simulator on free local "
        "ports, generate events, sync them, print a summary and stop everything.",
    )
    p.add_argument(
        "--count", type=int, default=5000, help="events to generate (default %(default)s)"
    )
    p.add_argument("--segments", type=int, default=3, help="segments (default %(default)s)")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the summary, leave the broker, the simulator and the connector running "
        "(their addresses are printed) until Ctrl-C",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from connector.dev.demo import DemoResult, run_demo, summary  # noqa: PLC0415
    from connector.logs import configure_logging  # noqa: PLC0415

    configure_logging("WARNING", "console")
    print(
        f"starting a local broker and Omnisend simulator, syncing {args.count} events ...",
        flush=True,
    )

    def show(result: DemoResult) -> None:
        print(summary(result), flush=True)

    result = run_demo(
        count=args.count, segments=args.segments, keep_running=args.keep_running, on_done=show
    )
    if not args.keep_running:
        show(result)
    return result.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnisend-connector",
        description="Keep Omnisend contacts and segment tags in sync with Kafka segment events.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_check(sub)
    _add_jobs(sub)
    _add_generate(sub)
    _add_demo(sub)
    _add_broker(sub)
    _add_simulate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from confluent_kafka import KafkaException  # noqa: PLC0415 - keeps `--version` fast

    tune_gc()
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:  # found once running: a port in use, a job's missing topic
        print(f"omnisend-connector {args.command}: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except Fatal as exc:  # before the loop ran: Omnisend refused the credentials at start
        print(f"omnisend-connector {args.command}: {exc}", file=sys.stderr)
        return ExitCode.OMNISEND_FATAL
    except KafkaException as exc:  # a job's metadata or offsets could not be read
        print(f"omnisend-connector {args.command}: Kafka: {exc.args[0].str()}", file=sys.stderr)
        return ExitCode.KAFKA_FATAL
    return result


if __name__ == "__main__":
    sys.exit(main())
