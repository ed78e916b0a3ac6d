"""`omnisend-connector generate`, `broker` and `demo`: for trying the connector locally."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from connector.cli.common import serve_until_stopped
from connector.core.errors import ExitCode


def add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def add_broker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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

    return serve_until_stopped(wait, broker.stop)


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
