"""structlog configuration (JSON in production, console on a tty), the keyed email hash, and
URLs as logs and messages may show them.

Emails are personal data: logs carry `email_hash`, an HMAC with a per-deployment key, so one
contact's events can be correlated without the address ever being written. A URL may carry
credentials (`https://user:secret@registry`): it is shown without them (`shown_url`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog once, at start."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


# A librdkafka remark said again within this long is counted, not written.
REPEAT_EVERY_S = 30.0


class _ToStructlog(logging.Handler):
    """Hands librdkafka's own log lines to structlog, so they come out as the same JSON, at
    warning level at most (what is fatal also reaches the error callback), each remark once
    and then, while it repeats, a count every `REPEAT_EVERY_S`: an unreachable broker makes
    librdkafka say the same thing many times a second."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._now = now
        self._seen: dict[str, tuple[float, int]] = {}  # remark → (last written, held since)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        key = _VARYING.sub("#", message)
        now = self._now()
        written, held = self._seen.get(key, (-math.inf, 0))
        if now - written < REPEAT_EVERY_S:
            self._seen[key] = (written, held + 1)
            return
        if len(self._seen) > _MAX_REMARKS:
            self._seen.clear()
        self._seen[key] = (now, 0)
        extra = {"repeated": held} if held else {}
        structlog.get_logger("librdkafka").log(
            min(record.levelno, logging.WARNING), "librdkafka", message=message, **extra
        )


# Numbers (durations, counts, ports) vary between repeats of one remark.
_VARYING = re.compile(r"\d+")
_MAX_REMARKS = 1000


def kafka_logger() -> logging.Logger:
    """The logger given to librdkafka clients (their `logger` setting)."""
    logger = logging.getLogger("connector.librdkafka")
    if not logger.handlers:
        logger.addHandler(_ToStructlog())
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logger


class EmailHasher:
    """`hash(email)` is stable for one key: set EMAIL_HASH_KEY to correlate across restarts."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def __call__(self, email: str) -> str:
        return hmac.new(self._key, email.encode(), hashlib.sha256).hexdigest()[:16]


def shown_url(url: str) -> str:
    """`url` as a log line or a message may show it: without the user and password it may
    carry, nor its query (which may hold a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that does not parse)"
    host = parts.netloc.rpartition("@")[2]
    if host == parts.netloc and not parts.query:
        return url
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))
