"""What the commands share: loading the configuration, serving until stopped."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from connector.config import Config, load_config
from connector.core.errors import ConfigError, ExitCode


def serve_until_stopped(serve: Callable[[], object], close: Callable[[], object]) -> int:
    """Run `serve` until Ctrl-C or SIGTERM, then `close`; exit 0."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: started in the background by a script, a process inherits SIGINT ignored,
    # and Python then never raises KeyboardInterrupt; Ctrl-C (or `kill -INT`) must stop it.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        serve()
    except KeyboardInterrupt:
        pass
    finally:
        close()
    return ExitCode.OK


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with connections and exports (README: Connections and exports); "
        "without it, the single-export setup from environment variables",
    )


def load_or_say(args: argparse.Namespace, command: str) -> Config | None:
    """The configuration, or None after printing what is wrong."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"omnisend-connector {command}: {exc}", file=sys.stderr)
        return None
    for warning in config.warnings:
        print(f"omnisend-connector {command}: warning: {warning}", file=sys.stderr)
    return config
