"""What the simulator's request path passes around: a request, its answer, a brand's state and
a queued tag operation. Plain data."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector.simulator.batches import Batch
from connector.simulator.contacts import ContactStore
from connector.simulator.problems import FieldError, validation_error
from connector.simulator.ratelimit import BrandLimits
from connector.simulator.wire import Garble

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, or None for an empty body
    delay_s: float = 0.0  # hold the answer this long (latency faults)
    drop: bool = False  # close the connection without answering
    garble: Garble | None = None  # answer with this instead of the real body (faults)
    drip_s: float = 0.0  # send the answer a byte at a time over this long (faults)


@dataclass
class TagOp:
    brand: str
    add: bool
    body: dict[str, Any]


@dataclass
class Brand:
    name: str
    limits: BrandLimits
    contacts: ContactStore = field(default_factory=ContactStore)
    batches: dict[str, Batch] = field(default_factory=dict)


Handler = Callable[[Brand, Request, list[str]], Response]


def json_body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise validation_error(
            [FieldError("body", "invalid_json", "Body is not valid JSON")]
        ) from exc
