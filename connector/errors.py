"""Errors named by what the caller must do.

- `InvalidRecord`: the record can never be processed; send it to the DLQ and move on.
- `Retriable`: try again later (with backoff); while it lasts, apply backpressure.
- `Fatal`: stop without committing unfinished work; a human must act.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of the connector's own errors."""


class InvalidRecord(ConnectorError):
    """A record that must go to the dead-letter topic. `reason` is a code from `dlq.REASONS`."""

    def __init__(self, reason: str, stage: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.stage = stage
        self.detail = detail


class Retriable(ConnectorError):
    """A transient failure: the same call may succeed later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Fatal(ConnectorError):
    """Nothing will succeed until a human changes something (credentials, version, config)."""


class ConfigError(Fatal):
    """The configuration is invalid; the message names the setting and what is wrong."""
