"""A property of the sink as a whole: whatever Omnisend's answers do (garbage bodies, lost answers
after the request was carried out, slow drips, 5xx, failing batch items), every record gets
exactly one fate, no task dies, and Omnisend ends in the state the changes describe."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.core.events import ContactChange
from connector.simulator import Faults
from tests.omnisend_fakes import Scripted, contacts, fast_sink, simulator, wait_outcomes
from tests.omnisend_fakes import change as sink_change
from tests.unit.test_coalesce import change, one_by_one

changes_st = st.lists(
    st.tuples(
        st.sampled_from(["a@x.io", "b@x.io", "c@x.io", "d@x.io"]),
        st.sampled_from(["seg: 1", "seg: 2"]),
        st.booleans(),
        st.integers(min_value=1, max_value=8),
        st.sampled_from(["A", "B", "C"]),
        st.sampled_from([0, 1]),  # the export
        st.booleans(),  # submit what came so far before this change
    ),
    min_size=1,
    max_size=40,
)
faults_st = st.builds(
    Faults,
    seed=st.integers(0, 10_000),
    error_rate=st.sampled_from([0.0, 0.1]),
    item_error_rate=st.sampled_from([0.0, 0.2]),
    garbage_rate=st.sampled_from([0.0, 0.2, 0.4]),
    lost_answer_rate=st.sampled_from([0.0, 0.1, 0.25]),
    drip_rate=st.sampled_from([0.0, 0.1]),
    drip_s=st.sampled_from([0.01, 0.5]),  # 0.5 s is past the sink's deadline for an answer
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=changes_st, faults=faults_st, latency=st.sampled_from([0.0, 0.02]))
def test_every_record_has_one_fate_and_omnisend_ends_as_the_changes_say(
    spec: list[tuple[str, str, bool, int, str, int, bool]], faults: Faults, latency: float
) -> None:
    sim = simulator(faults=faults, batch_latency_s=latency)
    sink = fast_sink(
        Scripted(sim),
        exports=(0, 1),
        max_item_attempts=10_000,  # item failures are transient here: never exhausted
        request_timeout_s=0.1,  # an answer dripping for 0.5 s is cut at 0.3 s
        batch_deadline_s=0.5,  # lost answers and stuck batches are given up on soon
    )
    try:
        events: list[ContactChange] = []
        pending: list[ContactChange] = []
        for i, (email, tag, entered, at, name, export, submit_now) in enumerate(spec):
            if submit_now:
                sink.submit(pending)
                pending = []
            event = change(i, email, tag, entered, at, name, export)
            events.append(event)
            pending.append(event)
        sink.submit(pending)
        outcomes = wait_outcomes(sink, len(events), timeout=60)
        assert sink.fatal is None
        assert sorted(o.position.offset for o in outcomes) == list(range(len(events)))
        assert [o for o in outcomes if o.reason is not None] == []
        deadline = time.monotonic() + 30
        while sink.uncertain or not sink.drain(0.1):  # ghosts of lost answers, and their redo
            assert time.monotonic() < deadline
        expected_fields, expected_tags = one_by_one(events)
        state = contacts(sim)
        assert set(state) == set(expected_fields)
        for email, fields in expected_fields.items():
            got = {k: state[email][k] for k in ("firstName", "city") if k in state[email]}
            assert got == fields, email
            assert set(state[email]["tags"]) == expected_tags[email], email
        assert sink.take_outcomes() == []  # and no record got a second fate
    finally:
        sink.stop()


def test_work_submitted_while_the_loop_says_idle_keeps_the_sink_busy() -> None:
    """The loop finds the inbox empty and is about to say idle when the Kafka thread submits
    (and clears the flag): idle must not stay said over the waiting work, or a drain on a
    rebalance or at shutdown returns at once and its records are redelivered."""
    sink = fast_sink(Scripted(simulator()))
    real = sink._mail
    injected = threading.Event()

    class Racing:
        """The real mailbox, with a submit slipped in just after the loop looked at it."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @property
        def empty(self) -> bool:
            found = real.empty
            if found and not injected.is_set():
                real.send([sink_change(0, "late@example.com", firstName="Ann")])
                sink._idle.clear()  # what `submit` does on the Kafka thread
                sink._call(sink._poke)
                injected.set()
            return found

    try:
        cast(Any, sink)._mail = Racing()
        sink.poke()
        assert injected.wait(5)
        assert sink.wait_idle(5)
        outcomes = sink.take_outcomes()
        assert [o.position.offset for o in outcomes] == [0]  # idle only once it was done
    finally:
        sink.stop()
