"""The parse boundary itself: whatever a body holds, it parses or raises `UnexpectedAnswer`,
never anything else (which would escape as a crash)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core.errors import Retriable
from connector.omnisend import answers
from connector.omnisend.answers import UnexpectedAnswer
from connector.omnisend.client import MAX_ANSWER_BYTES, FatalApiError, OmnisendClient, Rejected
from tests.omnisend_fakes import BASE_URL

KEYS = [
    "batchID", "status", "errorsCount", "createdAt", "endedAt", "responses", "errors", "request",
    "identifiers", "type", "id", "responseCode", "response", "batches", "contacts", "email",
    "paging", "cursors", "after", "retryAfter", "title", "detail", "contactID",
]  # fmt: skip
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([10**400, -(10**400), 2**63, 1e308, -1, 0, "Infinity", "NaN", "1e999"])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    # JSON may escape a lone surrogate ("\\ud83d"), which `json.loads` takes: no UTF-8 has it.
    | st.text(
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=8
    )
)
nested = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=6)
    ),
    max_leaves=20,
)
# Mostly objects with the contract's own keys, holding anything.
json_values = st.fixed_dictionaries({}, optional=dict.fromkeys(KEYS, nested)) | nested
PARSERS = [
    lambda r: answers.batch_created("e", r),
    lambda r: answers.batch_status("e", r.status_code, answers.json_body("e", r)),
    lambda r: answers.batch_list("e", r),
    lambda r: answers.batch_items("e", r),
    lambda r: answers.contacts_page("e", r),
    answers.retry_after,
    answers.problem_detail,
]


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from strings_in(getattr(value, field.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from strings_in(item)


@settings(max_examples=500, deadline=None)
@given(body=json_values, parser=st.sampled_from(PARSERS))
def test_any_json_body_parses_or_is_an_unexpected_answer(body: Any, parser: Any) -> None:
    """And whatever text it gives can be written (a dead letter's header, a result, a log
    line): text that is not UTF-8 would stop the loop on every restart."""
    response = httpx.Response(200, content=json.dumps(body).encode())
    with contextlib.suppress(UnexpectedAnswer):
        for text in strings_in(parser(response)):
            text.encode()


@settings(max_examples=300, deadline=None)
@given(value=nested)
def test_any_retry_after_is_a_bounded_number_or_none(value: Any) -> None:
    # As JSON on the wire: a lone surrogate travels escaped.
    body = json.dumps({"retryAfter": value}).encode()
    seconds = answers.retry_after(httpx.Response(429, content=body)).seconds
    assert seconds is None or 0 <= seconds <= answers.MAX_RETRY_AFTER_S


@settings(max_examples=300, deadline=None)
@given(extra=st.fixed_dictionaries({}, optional=dict.fromkeys(KEYS, nested)))
def test_a_batch_status_with_odd_fields_parses(extra: dict[str, Any]) -> None:
    body = {**extra, "batchID": "b1", "status": "finished"}
    status = answers.batch_status("batches.get", 200, body)
    assert status.errors_count is None or status.errors_count >= 0
    assert status.duration_s is None or status.duration_s >= 0


@pytest.mark.parametrize(
    "content", [b"", b"<html>", b'{"batchID": "', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"]
)
def test_bodies_that_are_not_json_are_unexpected_answers(content: bytes) -> None:
    response = httpx.Response(200, content=content)
    with pytest.raises(UnexpectedAnswer):
        answers.batch_items("batches.items", response)
    assert answers.retry_after(httpx.Response(429, content=content)).seconds is None


@pytest.mark.parametrize("batch_id", ["abc\t", "../contacts", "a?b", "a#b", "", "x" * 65, 7])
def test_a_batch_id_that_would_read_another_resource_is_refused(batch_id: Any) -> None:
    with pytest.raises(UnexpectedAnswer):
        answers.batch_created("batches.create", httpx.Response(201, json={"batchID": batch_id}))


def test_huge_numbers_are_not_numbers() -> None:
    huge = 10**400
    status = answers.batch_status(
        "e", 200, {"batchID": "b1", "status": "finished", "errorsCount": huge}
    )
    assert status.errors_count is None  # so the items are read
    later = answers.retry_after(httpx.Response(429, json={"retryAfter": huge}))
    assert later.seconds is None
    assert later.clamped_from is not None


class Streamed(httpx.AsyncByteStream):
    """A body that arrives in pieces, as from the network (not read in advance)."""

    def __init__(self, body: bytes, piece: int = 65_536) -> None:
        self.pieces = [body[i : i + piece] for i in range(0, len(body), piece)]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def _answered(
    body: bytes,
    encoding: str,
    status: int = 200,
    endpoint: str = "batches.get",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """The answer the client makes of `body`, sent with this content encoding."""

    def answer(request: httpx.Request) -> httpx.Response:
        sent = {"content-encoding": encoding, **(headers or {})}
        return httpx.Response(status, stream=Streamed(body), headers=sent)

    client = OmnisendClient(httpx.MockTransport(answer), "key", BASE_URL)
    return asyncio.run(client.call(endpoint, "GET", "/batches/b1"))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity", ""])
@pytest.mark.parametrize("status", [200, 202, 204])
def test_an_empty_answer_is_empty_whatever_its_encoding_says(encoding: str, status: int) -> None:
    """A 202 with no body (a tag call accepted) and a `Content-Encoding` header is accepted, not
    a cut compressed stream that would make every accepted call look lost."""
    answer = _answered(b"", encoding, status, "tags.add", {"content-length": "0"})
    assert answer.content == b""


def test_an_empty_refusal_whatever_its_encoding_is_still_a_refusal() -> None:
    with pytest.raises(Rejected):
        _answered(b"", "gzip", 400, "tags.add")
    with pytest.raises(FatalApiError):
        _answered(b"", "gzip", 401, "tags.add")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><title>Access denied</title></html>", "text/html"),
        (b"", ""),
        (b"Forbidden", "text/plain"),
        (b'["blocked"]', "application/json"),
    ],
    ids=["an HTML page", "no body", "text", "JSON, not an object"],
)
def test_a_403_that_is_not_omnisends_answer_is_retried_not_fatal(
    body: bytes, content_type: str
) -> None:
    """A firewall in front of Omnisend (a rule matching one contact's values, say) answers 403
    with its own page: taken for a key lacking a scope, it stopped the connector with exit 3,
    and the same record stopped it again after every restart."""
    headers = {"content-type": content_type} if content_type else {}
    with pytest.raises(UnexpectedAnswer, match="not Omnisend's answer") as raised:
        _answered(body, "identity", 403, "batches.create", headers)
    assert not raised.value.maybe_applied


def test_omnisends_own_403_still_stops_the_connector() -> None:
    problem = b'{"type": "about:blank", "title": "Forbidden", "status": 403}'
    with pytest.raises(FatalApiError):
        _answered(
            problem, "identity", 403, "batches.create", {"content-type": "application/problem+json"}
        )
    with pytest.raises(FatalApiError):  # an older answer's shape, still Omnisend's
        _answered(
            b'{"error": "Forbidden"}',
            "",
            403,
            "contacts.list",
            {"content-type": "application/json"},
        )


def test_a_small_content_length_does_not_lift_the_limit_on_what_arrives() -> None:
    """A body framed otherwise (chunked, or up to the close) may run past its Content-Length:
    what is read is counted, not what was announced."""
    body = b"x" * (MAX_ANSWER_BYTES + 1)
    framed = {"content-length": "2", "transfer-encoding": "chunked"}
    for encoding in ("identity", ""):
        with pytest.raises(UnexpectedAnswer, match="over"):
            _answered(body, encoding, headers=framed)


def test_a_compressed_answer_is_limited_by_what_it_decodes_to_not_by_its_length() -> None:
    """A proxy's gzip of 64 MB weighs 64 kB: read whole, it would fill the memory the limit
    protects. It is refused once the decoded bytes pass the limit, never decoded further."""
    bomb = gzip.compress(b" " * (4 * MAX_ANSWER_BYTES))
    assert len(bomb) < MAX_ANSWER_BYTES // 64
    tracemalloc.start()
    try:
        with pytest.raises(UnexpectedAnswer, match="over"):
            _answered(bomb, "gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_ANSWER_BYTES


@settings(max_examples=12, deadline=None)
@given(
    size=st.sampled_from([0, 1, MAX_ANSWER_BYTES - 1, MAX_ANSWER_BYTES, MAX_ANSWER_BYTES + 1]),
    encoding=st.sampled_from(["gzip", "deflate", "GZIP", "identity"]),
)
def test_a_compressed_answer_up_to_the_limit_is_read_whole_and_past_it_refused(
    size: int, encoding: str
) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    compress: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
    }
    sent = compress.get(encoding.lower(), bytes)(body)
    if size > MAX_ANSWER_BYTES:
        with pytest.raises(UnexpectedAnswer, match="over"):
            _answered(sent, encoding)
    else:
        assert _answered(sent, encoding).content == body


def test_a_deflate_answer_without_its_zlib_header_is_read_too() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = b'{"batchID": "b1"}' * 1000
    assert _answered(raw.compress(body) + raw.flush(), "deflate").content == body


@pytest.mark.parametrize("piece", [1, 2, 3, 65_536])
@pytest.mark.parametrize("zlib_header", [True, False])
def test_a_deflate_answer_is_read_whatever_pieces_it_comes_in(
    zlib_header: bool, piece: int
) -> None:
    """Its first piece a single byte: raw deflate was judged a zlib stream on that one byte,
    and the next piece failed the zlib header check."""
    squeeze = zlib.compressobj(wbits=zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
    body = b'{"batchID": "b1"}' * 50
    sent = squeeze.compress(body) + squeeze.flush()

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-encoding": "deflate"}
        return httpx.Response(200, stream=Streamed(sent, piece), headers=headers)

    client = OmnisendClient(httpx.MockTransport(answer), "key", BASE_URL)
    assert asyncio.run(client.call("batches.get", "GET", "/batches/b1")).content == body


def test_bytes_after_the_end_of_a_gzip_answer_are_counted_against_the_limit() -> None:
    """They inflate to nothing, so the decoded size never grew while zlib kept every one of
    them: a proxy sending on after the stream's end filled the memory at line speed."""
    with pytest.raises(UnexpectedAnswer, match="over"):
        _answered(gzip.compress(b"{}") + b"x" * (MAX_ANSWER_BYTES + 1), "gzip")


def test_a_corrupt_compressed_answer_is_a_transient_failure() -> None:
    """A proxy that cut or mangled the stream: the request may have been carried out."""
    with pytest.raises(Retriable) as raised:
        _answered(gzip.compress(b'{"batchID": "b1"}')[:-9] + b"garbage!!", "gzip")
    assert raised.value.maybe_applied


def test_text_that_no_utf_8_holds_is_made_writable_or_dropped() -> None:
    """A problem's detail or a contact id with a lone surrogate (valid JSON, `"\\ud83d"`)."""
    lone = "\ud83d"
    refused = {"title": f"bad {lone}", "detail": lone, "errors": [{"field": lone, "message": "x"}]}
    detail = answers.describe_problem(refused)
    detail.encode()
    assert "bad" in detail
    items = [
        {"request": {"identifiers": [{"type": "email", "id": "a@x.io"}]}, "responseCode": 400,
         "response": refused},
        {"request": {"identifiers": [{"type": "email", "id": "b@x.io"}]}, "responseCode": 200,
         "response": {"id": f"65f0{lone}"}},
    ]  # fmt: skip
    body = {"batchID": "b" * 24, "status": "finished", "responses": items, "errors": []}
    parsed = answers.batch_items("e", httpx.Response(200, content=json.dumps(body).encode()))
    assert "b@x.io" not in parsed.contact_ids  # not sensible: no id of Omnisend's
    for text in strings_in(parsed):
        text.encode()


def test_an_answer_larger_than_the_limit_is_unexpected_and_not_kept() -> None:
    async def call() -> None:
        def huge(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=b"x" * (MAX_ANSWER_BYTES + 1))

        await OmnisendClient(httpx.MockTransport(huge), "key", BASE_URL).get_batch("b1")

    with pytest.raises(UnexpectedAnswer, match="over"):
        asyncio.run(call())
