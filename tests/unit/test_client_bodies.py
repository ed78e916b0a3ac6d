"""What the client puts on the wire: JSON bodies equal to what it was asked to send, whatever
the text (the bodies are encoded with orjson, not the standard library)."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core.intents import fields_hash
from connector.omnisend.client import OmnisendClient, contact_request

# Any text Avro can carry (strictly decoded UTF-8: no lone surrogates).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
FIELDS = st.dictionaries(
    st.sampled_from(["firstName", "lastName", "city", "state", "address", "postalCode"]), TEXT
) | st.builds(
    lambda f, custom: f | {"customProperties": custom},
    st.dictionaries(st.sampled_from(["firstName", "city"]), TEXT),
    st.dictionaries(TEXT, TEXT, min_size=1, max_size=3),
)


def _sent(call: Any, answer_body: Any = None) -> httpx.Request:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=answer_body or {"batchID": "b-1"})

    async def run() -> None:
        await call(OmnisendClient(httpx.MockTransport(answer), "key"))

    asyncio.run(run())
    (request,) = seen
    return request


@settings(max_examples=60, deadline=None)
@given(contacts=st.lists(st.tuples(TEXT, FIELDS), min_size=1, max_size=5))
def test_a_batch_body_is_the_json_of_its_items(contacts: list[tuple[str, dict[str, Any]]]) -> None:
    items = [contact_request(email, fields) for email, fields in contacts]
    request = _sent(lambda client: client.create_batch(items))
    assert request.headers["content-type"] == "application/json"
    assert request.headers["omnisend-version"] == "2026-03-15"
    body = json.loads(request.content.decode("utf-8"))
    assert body["items"] == items
    assert body["endpoint"] == "contacts"
    assert int(request.headers["content-length"]) == len(request.content)


@settings(max_examples=30, deadline=None)
@given(emails=st.lists(TEXT, min_size=1, max_size=5), tag=TEXT, add=st.booleans())
def test_a_tag_call_body_is_the_json_of_its_emails(emails: list[str], tag: str, add: bool) -> None:
    request = _sent(lambda client: client.change_tags(add, tag, emails))
    assert request.method == ("POST" if add else "DELETE")
    assert json.loads(request.content) == {"emails": emails, "tags": [tag]}


def test_a_read_sends_no_body() -> None:
    request = _sent(lambda client: client.list_batches(20), {"batches": []})
    assert request.content == b""
    assert "content-type" not in request.headers


def test_every_request_names_the_connector_and_accepts_compressed_answers() -> None:
    """The client sends through its transport, not an httpx.AsyncClient: what the client would
    have added must be there (a gateway may refuse a request without a User-Agent)."""
    request = _sent(lambda client: client.change_tags(True, "vip", ["a@example.com"]))
    assert request.headers["user-agent"].startswith("omnisend-connector/")
    assert "gzip" in request.headers["accept-encoding"]
    assert request.headers["host"] == "api.omnisend.com"


def test_a_compressed_answer_is_read_decoded() -> None:
    body = {"batchID": "b-7"}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201,
            content=gzip.compress(json.dumps(body).encode()),
            headers={"content-encoding": "gzip"},
        )

    async def run() -> str:
        return await OmnisendClient(httpx.MockTransport(answer), "key").create_batch([])

    assert asyncio.run(run()) == "b-7"


@settings(max_examples=200, deadline=None)
@given(fields=FIELDS, data=st.data())
def test_the_fields_fingerprint_is_that_of_the_content(fields: dict[str, Any], data: Any) -> None:
    shuffled = dict(data.draw(st.permutations(list(fields.items()))))
    assert fields_hash(shuffled) == fields_hash(fields)  # order does not matter
    if fields:
        key = data.draw(st.sampled_from(sorted(fields)))
        changed = fields | {key: "x" + str(fields[key])}
        assert fields_hash(changed) != fields_hash(fields)  # 2^-64 chance of a false failure
