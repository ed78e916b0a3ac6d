"""A property of the sink as a whole: whatever Omnisend's answers do (garbage bodies, lost answers
after the request was carried out, slow drips, 5xx, failing batch items), every record gets
exactly one fate, no task dies, and Omnisend ends in the state the changes describe."""

from __future__ import annotations

import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.core.events import ContactChange
from connector.omnisend.sender import Backoff
from connector.omnisend.sink import Mailbox
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


def test_the_mailbox_says_idle_only_over_an_empty_inbox() -> None:
    mail = Mailbox()
    assert mail.wait_idle(0)
    mail.send([sink_change(0, "a@example.com")])
    mail.say_idle()  # the loop had nothing left, but changes came meanwhile
    assert not mail.wait_idle(0)
    assert [len(changes) for _, changes in mail.received()] == [1]
    mail.say_idle()
    assert mail.wait_idle(0)


def test_idle_is_never_said_over_changes_sent_while_the_loop_looked() -> None:
    """The loop finds the inbox empty and says idle while the Kafka thread sends: idle must
    never be seen over what was sent before (a drain on a rebalance or at shutdown would
    return at once, and its records be redelivered). Two threads, many rounds."""
    mail, sent, received = Mailbox(), [0], [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for _, changes in mail.received():
                received[0] += len(changes)
            mail.say_idle()

    looping = threading.Thread(target=loop, daemon=True)
    looping.start()
    change = [sink_change(0, "a@example.com")]
    try:
        for _ in range(20_000):
            mail.send(change)
            sent[0] += 1
            if mail.wait_idle(0):
                assert received[0] >= sent[0], "idle said over a change not yet received"
    finally:
        stop.set()
        looping.join()


def test_the_back_off_of_a_long_outage_stays_at_its_cap() -> None:
    """Each failed write doubled the delay with no bound on the exponent: on failure 1,025 in
    a row (an outage of an hour or more) the sink's task raised OverflowError, and the process
    exited 1 to meet the same outage again after its restart."""
    backoff = Backoff()
    for _ in range(5_000):
        backoff.failed(100.0, 0.5, 30.0)
        assert 100.0 + 15.0 <= backoff.until <= 100.0 + 45.0 or backoff.failures < 8
    assert backoff.failures == 5_000
