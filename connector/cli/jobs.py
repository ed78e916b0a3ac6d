"""`omnisend-connector backfill`, `replay-dlq` and `reconcile`: jobs over a topic beside the service."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from connector.cli.common import add_config, load_or_say
from connector.config import Config
from connector.core.errors import ConfigError, ExitCode, Fatal
from connector.core.reasons import REASONS


def _add_job_options(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="share of each brand's budget this job may use beside the live connector "
        "(default %(default)s; the live connector backs off on 429s too)",
    )


def add_jobs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "drift is found and not applied, a repair failed, or a missing member was left as it "
        "was (notFound, notRepairedUnsure).",
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


def _stop_on_signals() -> threading.Event:
    """SIGTERM (a Job deleted, a node drained) and SIGINT stop a job: what it sent so far is
    drained, and its report says it is not complete (exit 1)."""
    from connector.app import install_signal_handlers  # noqa: PLC0415

    stop = threading.Event()
    install_signal_handlers(stop)
    return stop


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT during `reconcile`: it ends where it is (nothing it holds needs
    finishing: a repair not sent is found again by the next run). A `KeyboardInterrupt`, so
    no `except Exception` on the way (a schema being parsed, an asyncio callback) takes it
    for an error of its own."""


def _raise_on_signals() -> None:
    def handler(signum: int, frame: Any) -> None:
        _ignore_signals()  # once: a second signal must not interrupt the report
        raise _Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _ignore_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _job_config(args: argparse.Namespace, command: str) -> Config | None:
    from connector.logs import configure_logging  # noqa: PLC0415

    config = load_or_say(args, command)
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
    report = backfill(config, since_ms, args.share, stop=_stop_on_signals())
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
    report = replay_dlq(config, args.reason, args.share, stop=_stop_on_signals())
    if report["exitCode"]:
        return _report(report, int(report["exitCode"]))
    failed = report["failedAgain"] or report["valueDropped"] or not report["complete"]
    return _report(report, ExitCode.FAILED if failed else ExitCode.OK)


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from connector.jobs.reconcile import reconcile  # noqa: PLC0415
    from connector.omnisend.client import FatalApiError, WrongEndpoint  # noqa: PLC0415

    config = _job_config(args, "reconcile")
    if config is None:
        return ExitCode.CONFIG
    _raise_on_signals()
    try:
        report = reconcile(config, args.export, args.apply, args.share)
        _ignore_signals()
    except _Stopped as exc:
        print(f"omnisend-connector reconcile: stopped by {exc}", file=sys.stderr)
        stopped = {"job": "reconcile", "complete": False, "stoppedBy": str(exc)}
        return _report(stopped, ExitCode.FAILED)
    except ConfigError as exc:
        print(f"omnisend-connector reconcile: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except Fatal as exc:  # Omnisend refused the key, kept failing; the registry never answered
        _ignore_signals()
        print(f"omnisend-connector reconcile: {exc}", file=sys.stderr)
        code = (
            ExitCode.OMNISEND_FATAL
            if isinstance(exc, FatalApiError | WrongEndpoint)
            else ExitCode.FAILED
        )
        return _report({"job": "reconcile", "complete": False, "error": str(exc)}, code)
    return _report(report, reconcile_exit_code(report, args.apply))


def reconcile_exit_code(report: dict[str, Any], applied: bool) -> int:
    """1 when drift was found and not applied, a repair failed, or a missing member was left
    as it was: not known to be safe (the topic past the span unread), or its entry gone from
    the topic between the two reads. A nightly CronJob then fails where it must."""
    exports = report["exports"]
    drifted = any(t["missing"] or t["stale"] for e in exports for t in e["tags"])
    failed = any(
        e.get("repair", {}).get("failed") or e.get("notRepairedUnsure") or e.get("notFound")
        for e in exports
    )
    return ExitCode.FAILED if failed or (drifted and not applied) else ExitCode.OK
