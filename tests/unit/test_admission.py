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
from connector.core.events import Position, RawRecord
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
