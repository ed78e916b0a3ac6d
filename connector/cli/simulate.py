"""`omnisend-connector simulate`: the Omnisend API simulator's options, next to the simulator."""

from __future__ import annotations

import argparse
import sys

from connector.cli.common import serve_until_stopped
from connector.core.errors import ExitCode
from connector.simulator.config import CURRENT_VERSION, RETIRED_VERSIONS, Faults, SimulatorConfig
from connector.simulator.server import SimulatorServer


def _parse_key(value: str) -> tuple[str, str]:
    key, _, brand = value.partition("=")
    if not key:
        raise argparse.ArgumentTypeError("an API key must not be empty")
    return key, brand or "brand-1"


def add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--refuse-email",
        action="append",
        default=[],
        metavar="EMAIL",
        help="batch items of this email are refused with a 400 (repeatable)",
    )
    f.add_argument(
        "--block-value",
        action="append",
        default=[],
        metavar="VALUE",
        help="writes whose body holds this value (an email, a tag) are answered 403 with a "
        "firewall's HTML page, as a rule in front of the API would (repeatable)",
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
        refused_emails=frozenset(args.refuse_email),
        blocked_values=frozenset(args.block_value),
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
    return serve_until_stopped(server.serve_forever, server.close)
