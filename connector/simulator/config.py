"""Settings of the Omnisend API simulator: limits, latencies, time scale and faults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CURRENT_VERSION = "2026-03-15"
# Versions Omnisend has published and retired; a request pinned to one of them gets 410.
RETIRED_VERSIONS = frozenset({"v3", "v4", "v5", "2025-06-15", "2025-10-01"})
# The real window is one minute; a time scale shrinks it, but never below 5 s so that a
# whole-second `retryAfter` still tells the client something useful.
REAL_WINDOW_S = 60.0
MIN_WINDOW_S = 5.0


@dataclass(frozen=True)
class Faults:
    """Injected faults. Each decision is drawn from one RNG seeded with `seed`, so the same
    sequence of requests meets the same faults on every run."""

    seed: int = 0
    error_rate: float = 0.0  # share of API requests answered 500/502/503
    item_error_rate: float = 0.0  # share of batch items answered 503/429/408
    latency_s: float = 0.0  # fixed extra latency per response (real seconds, not scaled)
    spike_rate: float = 0.0  # share of responses that get `spike_s` more
    spike_s: float = 0.0
    drop_rate: float = 0.0  # share of requests whose connection is closed without an answer
    outage_start_s: float | None = None  # seconds after start (or after a reset of faults)
    outage_duration_s: float = 0.0
    tag_reorder: bool = False  # apply queued tag operations out of order
    # Answers that are not what the contract says: HTML, truncated or empty bodies, the wrong
    # JSON type, fields missing, odd numbers (a retryAfter of a day, or an object), the wrong
    # content type. The request itself was carried out.
    garbage_rate: float = 0.0
    lost_answer_rate: float = 0.0  # carried out, then the connection is reset: no answer
    drip_rate: float = 0.0  # share of answers sent a byte at a time over `drip_s`
    drip_s: float = 0.0
    # Batch items of these emails are refused (400), as Omnisend refuses a contact for reasons
    # the connector cannot see: to rehearse how a refused contact shows up.
    refused_emails: frozenset[str] = frozenset()
    # Writes whose body holds one of these values are answered 403 with a firewall's HTML page
    # and never reach Omnisend, as a rule in front of the API matching a value would: to
    # rehearse a request that always fails as a whole.
    blocked_values: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        rates = ("error_rate", "item_error_rate", "spike_rate", "drop_rate", "garbage_rate")
        for name in (*rates, "lost_answer_rate", "drip_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("latency_s", "spike_s", "outage_duration_s", "drip_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with `changes` applied; unknown names are refused."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        for name in ("refused_emails", "blocked_values"):
            if name in changes:  # a JSON list
                changes = {**changes, name: frozenset(changes[name])}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated Omnisend behaves. Durations are in real-API seconds and are multiplied
    by `time_scale`; rate limits are per window."""

    api_keys: dict[str, str] = field(default_factory=lambda: {"test-key": "brand-1"})
    requests_per_window: int = 400  # every endpoint of one brand together
    tag_requests_per_window: int = 60  # POST and DELETE /contacts/tags together
    time_scale: float = 1.0
    batch_latency_s: float = 1.0  # from accepted to inProgress
    item_latency_s: float = 0.01  # per batch item while inProgress
    tag_delay_s: float = 0.5  # from 202 to the tags being visible
    stop_after_item_errors: int = 50  # a batch with more failed items than this is `stopped`
    unlimited: bool = False  # no rate limits at all (CPU benchmarks)
    # Keys whose scopes allow reading only: writes are answered 403 (a key created without
    # contacts.write, as a brand admin might).
    read_only_keys: frozenset[str] = frozenset()
    # API versions answered 410; add CURRENT_VERSION to rehearse the day Omnisend retires it.
    retired_versions: frozenset[str] = RETIRED_VERSIONS
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not self.api_keys:
            raise ValueError("at least one API key is needed")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.window_s < MIN_WINDOW_S:
            raise ValueError(
                f"time_scale {self.time_scale} shrinks the rate-limit window below "
                f"{MIN_WINDOW_S:.0f} s; use at least {MIN_WINDOW_S / REAL_WINDOW_S:.4f}"
            )
        if self.requests_per_window < 1 or self.tag_requests_per_window < 1:
            raise ValueError("rate limits must be at least 1 request per window")

    @property
    def window_s(self) -> float:
        return REAL_WINDOW_S * self.time_scale

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale
