"""The `omnisend-connector` command line: one module per group of commands (`service`: run and
check; `jobs`; `dev`: generate, broker, demo; `simulate`, with the simulator's options)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from connector import __version__
from connector.cli.dev import add_broker, add_demo, add_generate
from connector.cli.jobs import add_jobs
from connector.cli.service import add_check, add_run
from connector.cli.simulate import add_simulate
from connector.core.errors import ConfigError, ExitCode, Fatal
from connector.runtime import tune_gc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnisend-connector",
        description="Keep Omnisend contacts and segment tags in sync with Kafka segment events.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run(sub)
    add_check(sub)
    add_jobs(sub)
    add_generate(sub)
    add_demo(sub)
    add_broker(sub)
    add_simulate(sub)
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


__all__ = ["build_parser", "main"]
