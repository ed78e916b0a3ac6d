"""RFC 9457 problem bodies, shaped like Omnisend's `Problem`, `ValidationProblem` and
`RateLimitProblem` schemas."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

PROBLEM_BASE = "https://problems.omnisend.com/"

_TITLES = {
    400: ("validation-failed", "Request contains invalid or missing fields"),
    401: ("unauthorized", "Authentication is missing or invalid"),
    403: ("forbidden", "Insufficient permissions for this operation"),
    404: ("not-found", "Resource not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Contact identifier already exists"),
    410: ("version-retired", "API version has been retired"),
    429: ("rate-limit-exceeded", "Rate limit exceeded"),
    500: ("internal-error", "Unexpected error occurred"),
    502: ("bad-gateway", "Bad gateway"),
    503: ("service-unavailable", "Service temporarily unavailable"),
}


@dataclass(frozen=True)
class FieldError:
    field: str
    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class ProblemError(Exception):
    """Raised inside a handler to answer with a problem body."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[FieldError] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.retry_after = retry_after


def problem_body(exc: ProblemError) -> dict[str, Any]:
    slug, title = _TITLES.get(exc.status, ("problem", "Problem"))
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": f"urn:omnisend:request:{uuid.uuid4()}",
    }
    if exc.errors is not None:
        body["errors"] = [e.as_json() for e in exc.errors]
    if exc.retry_after is not None:
        body["retryAfter"] = exc.retry_after
    return body


def validation_error(errors: list[FieldError]) -> ProblemError:
    count = len(errors)
    return ProblemError(400, f"{count} field{'s' if count != 1 else ''} failed validation", errors)
