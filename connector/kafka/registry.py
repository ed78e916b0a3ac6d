"""The Schema Registry client: writer schemas by id, for the Confluent wire format.

Every answer is remembered: ids are immutable, so a schema the connector can read is parsed once,
and one it cannot read (a JSON Schema or Protobuf subject, invalid Avro) is refused once and then
from memory, so a stream of such records costs no requests. An id the registry does not know
(404), or one whose reference it does not know, is asked again after `UNKNOWN_ID_RETRY_S`: it
may be registered late. What says nothing about the schema (the registry unreachable, a 5xx, a
proxy's HTML page) is `Retriable`: the pipeline holds the records and asks again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import fastavro
import httpx

from connector.core.codec import strip_logical_types
from connector.core.errors import InvalidRecord, Retriable

# How long a 404 for a schema id is believed before the registry is asked again.
UNKNOWN_ID_RETRY_S = 60.0
# Schema references deeper than this are refused rather than followed (a cycle, or abuse).
MAX_REFERENCE_DEPTH = 16
# Refused and unknown ids remembered at most (a stream of random ids must not grow memory).
MAX_REMEMBERED_REFUSALS = 10_000
# One answer of the registry, read whole within this (each read has its own 5 s timeout) and
# at most this large; beyond either it is no usable answer (`Retriable`).
REGISTRY_DEADLINE_S = 15.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# The registry's own error codes for what is not there: a subject, a version, a schema id.
_NOT_FOUND = frozenset({40401, 40402, 40403})


def _unsupported(schema_id: int, why: str) -> InvalidRecord:
    return InvalidRecord("unsupported_schema", "decode", f"schema id {schema_id}: {why}")


class _MissingReference(InvalidRecord):
    """A reference the registry does not have (yet): believed as long as an unknown id."""


class RegistryClient:
    """Fetches writer schemas by id from a Confluent-compatible Schema Registry. Raises
    `InvalidRecord` (unknown id, unsupported schema) or `Retriable` (no usable answer)."""

    def __init__(
        self,
        http: httpx.Client,
        base_url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http  # injected so tests can use a MockTransport
        self._base = base_url.rstrip("/")
        self._clock = clock
        self._schemas: dict[int, Any] = {}
        # What was refused: (reason, detail), raised anew each time (an exception raised again
        # would keep every frame it passed through, and their records, alive).
        self._refused: dict[int, tuple[str, str]] = {}
        # Ids not found, or whose reference was not: until when, reason, detail.
        self._unknown: dict[int, tuple[float, str, str]] = {}

    def writer_schema(self, schema_id: int) -> Any:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        refused = self._refused.get(schema_id)
        if refused is not None:
            raise InvalidRecord(refused[0], "decode", refused[1])
        unknown = self._unknown.get(schema_id)
        if unknown is not None and self._clock() < unknown[0]:
            raise InvalidRecord(unknown[1], "decode", unknown[2])
        try:
            parsed = self._parse(schema_id, self._get(f"/schemas/ids/{schema_id}", schema_id))
        except InvalidRecord as exc:
            if exc.reason == "unknown_schema_id" or isinstance(exc, _MissingReference):
                until = self._clock() + UNKNOWN_ID_RETRY_S
                _remember(self._unknown, schema_id, (until, exc.reason, exc.detail))
            else:
                _remember(self._refused, schema_id, (exc.reason, exc.detail))
            raise
        self._unknown.pop(schema_id, None)
        self._schemas[schema_id] = parsed
        return parsed

    def _parse(self, schema_id: int, answer: dict[str, Any]) -> Any:
        named: dict[str, Any] = {}
        self._resolve_references(schema_id, answer, named, depth=0)
        return _parse_avro(schema_id, answer, named)

    def _resolve_references(
        self, schema_id: int, answer: dict[str, Any], named: dict[str, Any], depth: int
    ) -> None:
        """Parse every schema `answer` references (depth first) into `named`."""
        references = answer.get("references") or []
        if not isinstance(references, list):
            raise _unsupported(schema_id, "its references are not a list")
        if references and depth >= MAX_REFERENCE_DEPTH:
            raise _unsupported(schema_id, f"references nested deeper than {MAX_REFERENCE_DEPTH}")
        for reference in references:
            subject = reference.get("subject") if isinstance(reference, dict) else None
            version = reference.get("version") if isinstance(reference, dict) else None
            if not isinstance(subject, str) or not isinstance(version, int | str):
                raise _unsupported(schema_id, "a reference without subject and version")
            path = f"/subjects/{quote(subject, safe='')}/versions/{quote(str(version), safe='')}"
            try:
                referenced = self._get(path, schema_id)
            except InvalidRecord:
                why = f"schema id {schema_id}: the registry has no {subject!r} version {version}"
                raise _MissingReference("unsupported_schema", "decode", why) from None
            self._resolve_references(schema_id, referenced, named, depth + 1)
            _parse_avro(schema_id, referenced, named)

    def _get(self, path: str, schema_id: int) -> dict[str, Any]:
        try:
            with self._http.stream("GET", self._base + path) as response:
                content = self._read_bounded(response)
        except httpx.HTTPError as exc:
            raise Retriable(f"Schema Registry unreachable: {type(exc).__name__}") from exc
        status, body = response.status_code, _json(content)
        code = body.get("error_code") if isinstance(body, dict) else None
        if status == 404 and code in _NOT_FOUND:
            raise InvalidRecord("unknown_schema_id", "decode", f"schema id {schema_id} not found")
        if status == 404:
            # A proxy's page, or a URL that misses the registry's path: nothing about the id.
            raise Retriable(
                "Schema Registry answered 404 without saying the schema is unknown "
                "(check SCHEMA_REGISTRY_URL, including any path before /schemas)"
            )
        if status in (401, 403):
            raise Retriable(
                f"Schema Registry refused the credentials ({status}): "
                "check SCHEMA_REGISTRY_USER_INFO"
            )
        if response.is_redirect:
            raise Retriable(
                f"Schema Registry answered a redirect ({status}): "
                "set SCHEMA_REGISTRY_URL to where it points"
            )
        if status != 200:
            raise Retriable(f"Schema Registry answered {status}")
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            kind = response.headers.get("content-type", "no content type")
            raise Retriable(f"Schema Registry answered 200 without a schema ({kind})")
        return body

    def _read_bounded(self, response: httpx.Response) -> bytes:
        """The answer's body, read within `REGISTRY_DEADLINE_S` and `MAX_ANSWER_BYTES`: the
        client's timeout bounds each read, not the answer, and the ask runs on the loop's
        thread."""
        deadline = self._clock() + REGISTRY_DEADLINE_S
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise Retriable(f"Schema Registry answer larger than {MAX_ANSWER_BYTES} bytes")
            if self._clock() > deadline:
                raise Retriable(f"Schema Registry answer took longer than {REGISTRY_DEADLINE_S} s")
            chunks.append(chunk)
        return b"".join(chunks)


def _json(content: bytes) -> Any:
    """The body as JSON; None if it is not JSON (a proxy's page, a cut answer)."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


def _remember(cache: dict[int, Any], schema_id: int, value: Any) -> None:
    if len(cache) >= MAX_REMEMBERED_REFUSALS:
        del cache[next(iter(cache))]  # the oldest
    cache[schema_id] = value


def _parse_avro(schema_id: int, answer: dict[str, Any], named: dict[str, Any]) -> Any:
    kind = answer.get("schemaType") or "AVRO"
    if kind != "AVRO":
        raise _unsupported(schema_id, f"a {kind} schema, not Avro")
    try:
        schema = json.loads(answer["schema"])
    except (ValueError, RecursionError):
        raise _unsupported(schema_id, "the schema is not JSON, so not Avro") from None
    try:
        return fastavro.parse_schema(strip_logical_types(schema), named_schemas=named)
    # fastavro raises its own SchemaParseException and UnknownType, and plain errors on odd
    # shapes; whatever it raises, this schema cannot be read.
    except Exception as exc:  # noqa: BLE001
        raise _unsupported(schema_id, f"not a usable Avro schema ({type(exc).__name__})") from None
