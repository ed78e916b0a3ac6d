"""Admission without a broker: each kind of record gets its verdict, an event is a duplicate
only once it was admitted, and a rebalance forgets what was seen."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.core.admission import Admission, Verdict
from connector.core.codec import PlainAvroDecoder, encode_plain
from connector.core.errors import InvalidRecord
from connector.core.events import Position, RawRecord, records_of
from connector.core.mapping import Mapping
from connector.core.routing import Export, Router
from tests.events import event

NOW_MS = int(time.time() * 1000)


def raw(value: bytes | None, offset: int = 0, key: bytes | None = b"p-1") -> RawRecord:
    return RawRecord(Position("t", 0, offset), key, value, [], NOW_MS)


class Admit:
    """`decode`, then `route`, as the loop does (beside the admission, not a subclass: the
    image's build compiles it, and compiled classes take no interpreted subclasses)."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def admit(self, raw: RawRecord, now_ms: int) -> Verdict:
        event = self.admission.decode(raw)
        if isinstance(event, str):
            return Verdict([], event)
        return self.admission.route(event, raw.position, now_ms)

    def forget(self) -> None:
        self.admission.forget()


def admission(segments: frozenset[str] | None = None, **kwargs: object) -> Admit:
    router = Router((Export("vip", "default", Mapping(), segments),))
    return Admit(Admission(PlainAvroDecoder(), router, 10_000, 100, **kwargs))  # type: ignore[arg-type]


def test_each_kind_of_record_gets_its_verdict() -> None:
    admit = admission(frozenset({"seg-1"}))
    assert admit.admit(raw(None), NOW_MS).skipped == "tombstone"
    with pytest.raises(InvalidRecord, match="oversized_value"):
        admit.admit(raw(b"x" * 10_001), NOW_MS)
    with pytest.raises(InvalidRecord, match="invalid_key"):
        admit.admit(raw(encode_plain(event()), key=b"\xff"), NOW_MS)
    with pytest.raises(InvalidRecord):
        admit.admit(raw(b"not avro"), NOW_MS)
    other = admit.admit(raw(encode_plain(event(segment_id="seg-2", segment_name="x"))), NOW_MS)
    assert other.skipped == "no_export"
    assert other.event is not None
    admitted = admit.admit(raw(encode_plain(event("ann@example.com"))), NOW_MS)
    assert admitted.skipped is None
    assert [(c, change.email) for c, change in admitted.changes] == [("default", "ann@example.com")]
    selective = admission(select=lambda record: record.position.offset == 1)
    assert selective.admit(raw(encode_plain(event()), 0), NOW_MS).skipped == "not_selected"
    assert selective.admit(raw(encode_plain(event()), 1), NOW_MS).skipped is None


@given(
    emails=st.lists(
        st.sampled_from(["a@example.com", "not-an-email", "b@example.com"]), max_size=8
    ),
    forget_at=st.integers(0, 8),
)
def test_a_duplicate_is_an_event_admitted_before_and_a_rebalance_forgets(
    emails: list[str], forget_at: int
) -> None:
    """The same event id again: a duplicate only if it was admitted (an invalid one is invalid
    again, not a duplicate), and not after `forget`."""
    admit = admission()
    admitted: set[str] = set()
    for number, email in enumerate(emails):
        if number == forget_at:
            admit.forget()
            admitted.clear()
        value = encode_plain(event(email, event_id=email))  # one event id per email
        try:
            verdict = admit.admit(raw(value, number), NOW_MS)
        except InvalidRecord:
            assert email == "not-an-email"
            continue
        if email in admitted:
            assert verdict.skipped == "duplicate"
            assert verdict.changes == []
        else:
            assert verdict.skipped is None
            admitted.add(email)


class Message:
    """A consumed message as confluent-kafka gives it: accessors, an error for error events."""

    def __init__(
        self,
        offset: int | None,
        error: object = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        key: bytes | None = b"k",
    ) -> None:
        self._offset, self._error, self._headers, self._key = offset, error, headers, key

    def error(self) -> object:
        return self._error

    def topic(self) -> str | None:
        return None if self._offset is None else "t"

    def partition(self) -> int | None:
        return None if self._offset is None else 3

    def offset(self) -> int | None:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return None if self._offset is None else b"v%d" % self._offset

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_790_000_000_000)


def test_consumed_messages_become_records_and_error_events_are_set_apart() -> None:
    eof, broken = Message(None, error="partition EOF"), Message(None, error="broker down")
    messages = [
        Message(5, headers=[("trace", b"abc"), ("empty", None)]),
        eof,
        Message(6, key=None),
        Message(None),  # no position and no error: nothing to keep
        broken,
    ]
    records, errors = records_of(messages)
    assert errors == [eof, broken]
    assert [r.position for r in records] == [Position("t", 3, 5), Position("t", 3, 6)]
    assert [r.key for r in records] == [b"k", None]
    assert [r.value for r in records] == [b"v5", b"v6"]
    assert list(records[0].headers) == [("trace", b"abc"), ("empty", None)]
    assert list(records[1].headers) == []  # none: the shared empty tuple
    assert [r.timestamp_ms for r in records] == [1_790_000_000_000] * 2
    assert [r.size for r in records] == [3, 2]
