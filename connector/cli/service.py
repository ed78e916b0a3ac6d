"""`omnisend-connector run` and `check`: the service and its pre-flight check."""

from __future__ import annotations

import argparse
import json
import sys

from confluent_kafka import KafkaException

from connector.cli.common import add_config, load_or_say
from connector.config import load_config
from connector.core.errors import ConfigError, ExitCode


def _settings_epilog() -> str:
    from connector.cli.settings_help import SETTINGS_HELP  # noqa: PLC0415 - keeps `--version` fast

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


def add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the sync: Kafka segment events to Omnisend contacts and tags",
        description="Consume segment-membership changes and keep Omnisend in sync. "
        "Configured by environment variables, or by a TOML file (--config) whose settings "
        "environment variables override.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(p)
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
    from connector.mode import DRY_RUN  # noqa: PLC0415

    config = load_or_say(args, "run")
    if config is None:
        return ExitCode.CONFIG
    configure_logging(config.settings.log_level, config.settings.log_format)
    stop = threading.Event()
    install_signal_handlers(stop)
    if args.dry_run:
        from connector.jobs.dryrun import CaughtUp  # noqa: PLC0415
        from connector.jobs.runner import topic_span  # noqa: PLC0415

        try:
            span = topic_span(config, config.settings.kafka_topic)
        except ConfigError as exc:  # the topic does not exist
            print(f"omnisend-connector run --dry-run: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
        except KafkaException as exc:  # no broker answered
            print(f"omnisend-connector run --dry-run: {exc}", file=sys.stderr)
            return ExitCode.KAFKA_FATAL
        with running(config, mode=DRY_RUN) as parts:
            caught_up = CaughtUp(span)
            code = parts.pipeline.run(stop, until=caught_up)
            report = (
                parts.dry_run.report(skipped_by_reason(parts.metrics))
                if parts.dry_run is not None
                else {}
            )
        # Stopped (SIGTERM, Ctrl-C) before the end: what it says is about part of the topic.
        complete = caught_up.reached
        consumed = parts.pipeline.stats["consumed"]
        print(json.dumps({"dryRun": report, "consumed": consumed, "complete": complete}, indent=2))
        return code or (ExitCode.OK if complete else ExitCode.FAILED)
    with running(config) as parts:
        return parts.pipeline.run(stop)


def add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="validate the settings and reach Kafka, the registry and Omnisend; exit 0 or 1",
        description="Validate the configuration of `run` (the same environment or --config "
        "file), reach Kafka (the topic and the dead-letter topic), the Schema Registry and each "
        "Omnisend connection with one cheap authenticated call, print a report, and exit 0 if "
        "all is well, else 1.",
    )
    add_config(p)
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
