"""Realistic segment events for demos, tests and benchmarks.

`events()` is a pure, seeded generator; `produce()` writes its output to a topic.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from connector.core.codec import bundled_schema_json, encode_confluent, encode_plain
from connector.kafka.clients import ensure_topic, make_producer, producer_config

FIRST = ["Ann", "Ben", "Chloe", "Dovydas", "Emma", "Farid", "Greta", "Hugo", "Ines", "Jonas"]
LAST = ["Adams", "Brown", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ivanova"]
PLACES = [
    ("LT", "Vilnius", "01100"),
    ("DE", "Berlin", "10115"),
    ("US", "Austin", "73301"),
    ("France", "Lyon", "69001"),
    ("GB", "Leeds", "LS1"),
    ("Canada", "Toronto", "M5H"),
]


@dataclass(frozen=True)
class GenerateOptions:
    count: int
    contacts: int | None = None  # distinct contacts; default: one per event
    segments: int = 3
    exit_ratio: float = 0.0  # share of events that are exits of a current member
    duplicate_ratio: float = 0.0  # share of events re-sent verbatim (same event_id)
    attribute_change_ratio: float = 0.0  # share of entries that change the contact's attributes
    invalid_ratio: float = 0.0  # share of events with an invalid email (for the DLQ)
    seed: int = 0
    start_ms: int | None = None


def profile(i: int, rng: random.Random) -> dict[str, str]:
    country, city, postal = PLACES[i % len(PLACES)]
    return {
        "email": f"contact{i}@example.com",
        "first_name": FIRST[i % len(FIRST)],
        "last_name": LAST[(i // len(FIRST)) % len(LAST)],
        "country": country,
        "city": city,
        "postal_code": postal,
        "address": f"{rng.randint(1, 200)} Main St",
    }


def events(options: GenerateOptions) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(key, event) pairs; occurred_at increases by 1 ms per event, so the log is in order."""
    rng = random.Random(options.seed)
    contacts = options.contacts or options.count
    start = (
        options.start_ms
        if options.start_ms is not None
        else int(time.time() * 1000) - options.count
    )
    members: set[tuple[int, int]] = set()
    profiles: dict[int, dict[str, str]] = {}
    previous: tuple[bytes, dict[str, Any]] | None = None
    for n in range(options.count):
        if previous is not None and rng.random() < options.duplicate_ratio:
            yield previous
            continue
        i = n if n < contacts and options.contacts is None else rng.randrange(contacts)
        segment = rng.randrange(options.segments)
        attrs = profiles.setdefault(i, profile(i, rng))
        exiting = (i, segment) in members and rng.random() < options.exit_ratio
        if not exiting and rng.random() < options.attribute_change_ratio:
            attrs["first_name"] = rng.choice(FIRST)
        if exiting:
            members.discard((i, segment))
        else:
            members.add((i, segment))
        body = dict(attrs)
        if rng.random() < options.invalid_ratio:
            body["email"] = f"not-an-email-{i}"
        event = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "occurred_at": start + n,
            "segment_id": f"seg-{segment}",
            "segment_name": f"Segment {segment}",
            "change": "EXITED" if exiting else "ENTERED",
            "profile_id": f"profile-{i}",
            "profile": body,
        }
        previous = (f"profile-{i}".encode(), event)
        yield previous


def register_schema(registry_url: str, subject: str) -> int:
    """Register the bundled schema under `subject`; the registry answers its id."""
    response = httpx.post(
        f"{registry_url.rstrip('/')}/subjects/{subject}/versions",
        json={"schema": json.dumps(bundled_schema_json())},
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        timeout=10,
    )
    response.raise_for_status()
    schema_id: int = response.json()["id"]
    return schema_id


def produce(
    bootstrap: str,
    topic: str,
    options: GenerateOptions,
    *,
    value_format: str = "avro",
    registry_url: str | None = None,
    partitions: int = 6,
    kafka: dict[str, str] | None = None,
) -> dict[int, int]:
    """Write the events; returns the end offset reached per partition."""
    kafka = kafka or {}
    ensure_topic(bootstrap, kafka, topic, partitions)
    schema_id = (
        register_schema(registry_url, f"{topic}-value")
        if value_format == "confluent" and registry_url
        else None
    )
    producer = make_producer(producer_config(bootstrap, kafka, lambda err: None))
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err.str())
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for key, event in events(options):
        value = encode_confluent(event, schema_id) if schema_id is not None else encode_plain(event)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let deliveries drain it
        producer.poll(0)
    producer.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} events were not delivered: {errors[0]}")
    return ends
