"""Decoding both value formats, schema evolution, and every way bad bytes are refused."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from typing import Any

import fastavro
import httpx
import pytest

from connector.core.codec import (
    ConfluentDecoder,
    PlainAvroDecoder,
    bundled_schema_json,
    encode_confluent,
    encode_plain,
)
from connector.core.errors import InvalidRecord, Retriable
from connector.kafka.registry import REGISTRY_DEADLINE_S, UNKNOWN_ID_RETRY_S, RegistryClient
from tests.events import event


class Schemas:
    def __init__(self, schemas: dict[int, Any]) -> None:
        self.schemas = {i: fastavro.parse_schema(s) for i, s in schemas.items()}

    def writer_schema(self, schema_id: int) -> Any:
        if schema_id not in self.schemas:
            raise InvalidRecord("unknown_schema_id", "decode", str(schema_id))
        return self.schemas[schema_id]


def evolved_added_field() -> dict[str, Any]:
    schema = copy.deepcopy(bundled_schema_json())
    schema["fields"].append({"name": "source", "type": "string", "default": "cdp"})
    return schema


def reason(decode: Any, value: bytes) -> str:
    with pytest.raises(InvalidRecord) as info:
        decode(value)
    return info.value.reason


def test_plain_avro_round_trip() -> None:
    e = event(first_name="Ann", occurred_at=1_700_000_000_123)
    change = PlainAvroDecoder().decode(encode_plain(e))
    assert change.occurred_at_ms == 1_700_000_000_123
    assert change.entered
    assert change.profile == {"email": "ann@example.com", "first_name": "Ann"}


def test_confluent_round_trip_with_evolved_writer() -> None:
    writer = evolved_added_field()
    record = {**event(change="EXITED"), "source": "crm"}
    value = encode_confluent(record, 7, fastavro.parse_schema(writer))
    change = ConfluentDecoder(Schemas({7: writer})).decode(value)
    assert not change.entered
    assert change.event_id == record["event_id"]


def test_writer_without_optional_profile_uses_reader_default() -> None:
    writer = copy.deepcopy(bundled_schema_json())
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "profile"]
    record = {k: v for k, v in event().items() if k != "profile"}
    value = encode_confluent(record, 3, fastavro.parse_schema(writer))
    assert ConfluentDecoder(Schemas({3: writer})).decode(value).profile == {}


def test_bad_inputs_have_their_reasons() -> None:
    plain = PlainAvroDecoder().decode
    good = encode_plain(event())
    assert reason(plain, good[: len(good) // 2]) == "malformed_avro"
    assert reason(plain, good + b"\x00\x01") == "trailing_bytes"
    assert reason(plain, b"") == "malformed_avro"
    bad_utf8 = good.replace(b"ann@example.com", b"ann@exampl\xff.com")
    assert reason(plain, bad_utf8) == "malformed_avro"
    confluent = ConfluentDecoder(Schemas({1: bundled_schema_json()})).decode
    assert reason(confluent, b"\x01\x00\x00\x00\x01" + good) == "invalid_magic_byte"
    assert reason(confluent, b"\x00\x00") == "invalid_magic_byte"
    assert reason(confluent, b"\x00\x00\x00\x00\x09" + good) == "unknown_schema_id"


def test_unknown_enum_symbol_and_other_schema_are_refused() -> None:
    writer = copy.deepcopy(bundled_schema_json())
    writer["fields"][4]["type"]["symbols"] = ["ENTERED", "EXITED", "PAUSED"]
    value = encode_confluent({**event(), "change": "PAUSED"}, 2, fastavro.parse_schema(writer))
    assert reason(ConfluentDecoder(Schemas({2: writer})).decode, value) == "schema_incompatible"
    other = {"type": "record", "name": "Order", "fields": [{"name": "id", "type": "long"}]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(other), {"id": 5})
    value = b"\x00\x00\x00\x00\x05" + buf.getvalue()
    assert reason(ConfluentDecoder(Schemas({5: other})).decode, value) == "schema_incompatible"


def registry(handler: Any) -> RegistryClient:
    return RegistryClient(httpx.Client(transport=httpx.MockTransport(handler)), "http://sr")


def test_registry_caches_and_maps_404_to_invalid_and_5xx_to_retriable() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/1"):
            return httpx.Response(200, json={"schema": json.dumps(bundled_schema_json())})
        if request.url.path.endswith("/2"):
            return httpx.Response(404, json={"error_code": 40403})
        return httpx.Response(503)

    client = registry(handler)
    client.writer_schema(1)
    client.writer_schema(1)
    assert calls == ["/schemas/ids/1"]
    with pytest.raises(InvalidRecord, match="unknown_schema_id"):
        client.writer_schema(2)
    with pytest.raises(Retriable):
        client.writer_schema(3)


def test_unreachable_registry_is_retriable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(Retriable, match="unreachable"):
        registry(handler).writer_schema(1)


JSON_SCHEMA = {"type": "object", "properties": {"event_id": {"type": "string"}}}
PROTOBUF = 'syntax = "proto3"; message SegmentMembershipChange { string event_id = 1; }'


def test_a_schema_that_is_not_avro_is_unsupported_and_asked_for_once() -> None:
    """JSON Schema and Protobuf subjects share the registry's ids with Avro ones; a record that
    names one is dead-lettered, and the registry's answer is remembered."""
    answers = {
        1: {"schemaType": "JSON", "schema": json.dumps(JSON_SCHEMA)},
        2: {"schemaType": "PROTOBUF", "schema": PROTOBUF},
        # A JSON Schema registered without its type would reach the Avro parser.
        3: {"schema": json.dumps(JSON_SCHEMA)},
        4: {"schema": "not json at all"},
    }
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json=answers[int(request.url.path.rsplit("/", 1)[1])])

    client = registry(handler)
    for schema_id in answers:
        for _ in range(3):
            with pytest.raises(InvalidRecord) as info:
                client.writer_schema(schema_id)
            assert info.value.reason == "unsupported_schema"
    assert sorted(calls) == [f"/schemas/ids/{i}" for i in sorted(answers)]


def referenced_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundled schema with its `change` enum moved into a schema of its own, referenced."""
    change_enum = copy.deepcopy(bundled_schema_json()["fields"][4]["type"])
    change_enum["namespace"] = "cdp.segments.v1"
    writer = copy.deepcopy(bundled_schema_json())
    writer["fields"][4]["type"] = "cdp.segments.v1.MembershipChange"
    return writer, change_enum


def test_schema_references_are_resolved_from_their_subjects() -> None:
    writer, change_enum = referenced_schemas()
    reference = {"name": "cdp.segments.v1.MembershipChange", "subject": "change", "version": 2}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/schemas/ids/8":
            return httpx.Response(
                200, json={"schema": json.dumps(writer), "references": [reference]}
            )
        if request.url.path == "/subjects/change/versions/2":
            return httpx.Response(
                200,
                json={
                    "subject": "change",
                    "version": 2,
                    "id": 5,
                    "schema": json.dumps(change_enum),
                },
            )
        return httpx.Response(404, json={"error_code": 40401})

    named: dict[str, Any] = {}
    fastavro.parse_schema(change_enum, named_schemas=named)
    value = encode_confluent(
        event(change="EXITED"), 8, fastavro.parse_schema(writer, named_schemas=named)
    )
    change = ConfluentDecoder(registry(handler)).decode(value)
    assert not change.entered


def test_a_reference_the_registry_cannot_give_is_unsupported() -> None:
    writer, _ = referenced_schemas()
    reference = {"name": "cdp.segments.v1.MembershipChange", "subject": "gone", "version": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/schemas/ids/8":
            return httpx.Response(
                200, json={"schema": json.dumps(writer), "references": [reference]}
            )
        return httpx.Response(404, json={"error_code": 40401})

    with pytest.raises(InvalidRecord) as info:
        registry(handler).writer_schema(8)
    assert info.value.reason == "unsupported_schema"

    # Without the reference resolved, the parser meets an unknown type: the same answer.
    def no_references(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"schema": json.dumps(writer)})

    with pytest.raises(InvalidRecord) as info:
        registry(no_references).writer_schema(8)
    assert info.value.reason == "unsupported_schema"


def test_a_reference_not_found_is_asked_again_later_as_an_unknown_id_is() -> None:
    """A reference registered late (or asked of a follower not caught up yet) is believed
    missing only for `UNKNOWN_ID_RETRY_S`, not for the life of the process."""
    writer, change_enum = referenced_schemas()
    reference = {"name": "cdp.segments.v1.MembershipChange", "subject": "change", "version": 2}
    registered = [False]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/schemas/ids/8":
            return httpx.Response(
                200, json={"schema": json.dumps(writer), "references": [reference]}
            )
        if request.url.path == "/subjects/change/versions/2" and registered[0]:
            return httpx.Response(200, json={"schema": json.dumps(change_enum)})
        return httpx.Response(404, json={"error_code": 40401})

    now = [1_000.0]
    client = RegistryClient(
        httpx.Client(transport=httpx.MockTransport(handler)), "http://sr", lambda: now[0]
    )
    with pytest.raises(InvalidRecord) as info:
        client.writer_schema(8)
    assert info.value.reason == "unsupported_schema"
    registered[0] = True
    with pytest.raises(InvalidRecord):
        client.writer_schema(8)  # from memory, within the minute
    now[0] += UNKNOWN_ID_RETRY_S + 1
    assert client.writer_schema(8) is not None


def test_a_registry_answer_that_is_not_the_registry_is_retried_not_dead_lettered() -> None:
    """A proxy's login page or a gateway's HTML says nothing about the schema."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, text="<html>Sign in</html>", headers={"Content-Type": "text/html"}
        )

    with pytest.raises(Retriable):
        registry(handler).writer_schema(1)


def test_a_remembered_refusal_is_raised_anew_so_it_keeps_no_record_alive() -> None:
    """An exception raised again collects every frame it passes through (and their locals, the
    records); each refusal must be a fresh one."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"schemaType": "JSON", "schema": "{}"})

    client = registry(handler)
    raised = []
    for _ in range(3):
        with pytest.raises(InvalidRecord) as info:
            client.writer_schema(1)
        raised.append(info.value)
    assert len({id(e) for e in raised}) == 3
    assert all(e.reason == "unsupported_schema" for e in raised)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, text="<html><body>404 page not found</body></html>"),
        httpx.Response(404, json={"error_code": 404, "message": "HTTP 404 Not Found"}),
        httpx.Response(404),
    ],
    ids=["a gateway's page", "a path the registry does not have", "no body"],
)
def test_a_404_that_is_not_the_registrys_answer_about_the_id_is_retriable(
    answer: httpx.Response,
) -> None:
    """Only the registry's own codes (40403 for an id, 40401/40402 for a reference) say the
    schema is unknown; a 404 from a proxy, or from a URL that misses the registry's path, says
    nothing about it. Dead-lettering on it would move valid records out of the stream."""
    with pytest.raises(Retriable, match="404"):
        registry(lambda request: answer).writer_schema(1)


NODE: dict[str, Any] = {
    "type": "record",
    "name": "Node",
    "namespace": "common",
    "fields": [{"name": "next", "type": ["null", "Node"], "default": None}],
}


def nested(depth: int) -> dict[str, Any] | None:
    node: dict[str, Any] | None = None
    for _ in range(depth):
        node = {"next": node}
    return node


@pytest.mark.parametrize("through_a_reference", [False, True], ids=["inline", "a reference"])
def test_a_recursive_writer_decodes_and_a_record_nested_too_deep_is_dead_lettered(
    through_a_reference: bool,
) -> None:
    """fastavro's compiled reader recurses natively without a limit: a record nesting a
    recursive type 20,000 deep (20 kB) crashed the process with a segmentation fault, then
    again on every restart. Writers with a recursive type are read by its Python reader,
    which stops at Python's recursion limit: that record alone is dead-lettered."""
    writer = copy.deepcopy(bundled_schema_json())
    extra = "common.Node" if through_a_reference else NODE
    writer["fields"].append({"name": "extra", "type": ["null", extra], "default": None})
    answers: dict[str, dict[str, Any]] = {"/schemas/ids/7": {"schema": json.dumps(writer)}}
    if through_a_reference:
        reference = {"name": "common.Node", "subject": "n", "version": 1}
        answers["/schemas/ids/7"]["references"] = [reference]
        answers["/subjects/n/versions/1"] = {"schema": json.dumps(NODE)}
    client = registry(lambda request: httpx.Response(200, json=answers[request.url.path]))
    decoder = ConfluentDecoder(client)
    named: dict[str, Any] = {}
    fastavro.parse_schema(NODE, named_schemas=named)
    parsed = fastavro.parse_schema(writer, named_schemas=named)
    one = event("a@x.io")
    shallow = encode_confluent({**one, "extra": nested(3)}, 7, parsed)
    assert decoder.decode(shallow).event_id == one["event_id"]
    deep = encode_confluent({**one, "extra": None}, 7, parsed)
    # The same record with `extra` nested 20,000 deep: a union branch and a `next` per level.
    deep = deep[:-1] + b"\x02" + b"\x02" * 20_000 + b"\x00"
    with pytest.raises(InvalidRecord, match="malformed_avro") as refused:
        decoder.decode(deep)
    assert "nested" in str(refused.value.detail)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (httpx.Response(401), "refused the credentials (401): check SCHEMA_REGISTRY_USER_INFO"),
        (httpx.Response(403), "refused the credentials (403): check SCHEMA_REGISTRY_USER_INFO"),
        (
            httpx.Response(301, headers={"Location": "https://sr.example/schemas/ids/1"}),
            "redirect (301): set SCHEMA_REGISTRY_URL to where it points",
        ),
    ],
    ids=["401", "403", "a redirect"],
)
def test_answers_a_human_must_act_on_are_retried_and_say_what_to_do(
    answer: httpx.Response, says: str
) -> None:
    """Retried (the records wait, `/readyz` says why), with the remedy in the message: a
    credential rotation or a registry moved to https is not fixed by waiting alone."""
    with pytest.raises(Retriable) as refused:
        registry(lambda request: answer).writer_schema(1)
    assert says in str(refused.value)


class Dripping(httpx.SyncByteStream):
    """An answer that never ends: a chunk at a time, the clock moving on by `step_s` each."""

    def __init__(self, now: list[float], step_s: float, chunk: bytes) -> None:
        self.now, self.step_s, self.chunk = now, step_s, chunk

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.now[0] += self.step_s
            yield self.chunk


@pytest.mark.parametrize(
    ("step_s", "chunk", "says"),
    [(4.0, b" ", "took longer than"), (0.0, b" " * 65536, "larger than")],
    ids=["a byte every 4 s (each read within its timeout)", "a body without end"],
)
def test_an_answer_that_never_ends_is_retriable_within_a_deadline(
    step_s: float, chunk: bytes, says: str
) -> None:
    """The read timeout bounds each read, not the answer: a registry (or a proxy) dripping a
    byte every few seconds held the loop thread for ever, and `/healthz` restarted the pod at
    the same record; an endless body filled the memory."""
    now = [0.0]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Dripping(now, step_s, chunk))

    client = RegistryClient(
        httpx.Client(transport=httpx.MockTransport(handler)), "http://sr", clock=lambda: now[0]
    )
    with pytest.raises(Retriable, match=says):
        client.writer_schema(1)
    assert now[0] <= REGISTRY_DEADLINE_S + 4.0
