"""Errors named by what the caller must do.

- `InvalidRecord`: the record can never be processed; send it to the DLQ and move on.
- `Retriable`: try again later (with backoff); while it lasts, apply backpressure.
- `Fatal`: stop without committing unfinished work; a human must act.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """How the process ends (README "Exit codes"): what the operator must look at."""

    OK = 0
    # An unexpected failure (the logs say where); for `check` and the jobs also: a check
    # failed, drift was found, or records were left unfinished.
    FAILED = 1
    CONFIG = 2  # the configuration or the command line is wrong
    OMNISEND_FATAL = 3  # Omnisend refused the key or the API version, or the URL is wrong
    DLQ_LIMIT = 4  # too large a share of the records went to the dead-letter topic
    KAFKA_FATAL = 5  # a topic cannot be written or the cluster refuses the connector


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
    """A transient failure: the same call may succeed later. `maybe_applied`: the request may
    have been carried out all the same (its answer was lost: a timeout, a reset connection, a
    gateway's 5xx), so its effect must be assumed as well as retried."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, maybe_applied: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.maybe_applied = maybe_applied


class Fatal(ConnectorError):
    """Nothing will succeed until a human changes something (credentials, version, config)."""


class OffsetsWentBack(Fatal):
    """A partition's offsets went back without a rebalance (log truncation after an unclean
    leader election, a topic deleted and made again): records in flight can no longer be told
    apart by offset. Stop (exit 1), committing only finished work; the next start resumes
    from the committed position."""


class Crashed(Fatal):
    """A bug: something failed that no answer or input should make fail. Stop (exit 1) without
    committing unfinished work, rather than leave records unfinished forever."""


class ConfigError(Fatal):
    """The configuration is invalid; the message names the setting and what is wrong, and
    `problems` lists each problem on its own (one line each in `check`)."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)

    @classmethod
    def listing(cls, what: str, problems: list[str] | tuple[str, ...]) -> ConfigError:
        """One problem on one line; several as a list under `what`."""
        if len(problems) == 1:
            return cls(f"{what}: {problems[0]}", tuple(problems))
        lines = "\n".join(f"  - {p}" for p in problems)
        return cls(f"{what}: {len(problems)} problems:\n{lines}", tuple(problems))
