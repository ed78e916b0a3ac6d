"""The readiness verdicts: a key refused after a good start makes the connector unready; with
no verdict yet, a connector that needs one is not ready and asks again soon."""

from __future__ import annotations

import time
from collections.abc import Callable

from connector.readiness import Readiness


def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_key_refused_later_makes_it_unready() -> None:
    verdicts = iter([False])
    readiness = Readiness(
        lambda: True,
        lambda: next(verdicts, False),
        broker_interval_s=0.01,
        credential_interval_s=0.05,
        credentials_ok=True,  # accepted at start
        credentials_required=True,
    )
    assert readiness.credentials_ready
    readiness.start()
    try:
        assert until(lambda: not readiness.credentials_ready)
    finally:
        readiness.stop()


def test_without_a_verdict_it_is_not_ready_and_asks_again_soon() -> None:
    asked: list[float] = []

    def check() -> bool | None:
        asked.append(time.monotonic())
        return None if len(asked) < 3 else True

    readiness = Readiness(
        lambda: True,
        check,
        broker_interval_s=0.01,
        credential_interval_s=600.0,
        credentials_required=True,
    )
    assert not readiness.credentials_ready
    readiness.start()
    try:
        assert until(lambda: readiness.credentials_ready)  # not ten minutes later
    finally:
        readiness.stop()
    assert len(asked) == 3


def test_a_dry_run_needs_no_verdict() -> None:
    assert Readiness(lambda: True, lambda: None).credentials_ready


def test_a_check_that_raises_does_not_end_the_checks() -> None:
    """An unexpected error in one turn (a CA bundle gone, no thread for the resolver) must not
    end the thread: `/readyz` would keep its last answer for ever."""
    broker_checks: list[float] = []
    fail_once = iter([RuntimeError("the CA bundle is gone")])

    def credentials() -> bool | None:
        error = next(fail_once, None)
        if error is not None:
            raise error
        return False  # the next turn's verdict

    def broker() -> bool:
        broker_checks.append(time.monotonic())
        return True

    readiness = Readiness(
        broker, credentials, broker_interval_s=0.01, credential_interval_s=0.01
    ).start()
    try:
        assert until(lambda: readiness.credentials_ok is False and len(broker_checks) > 5)
    finally:
        readiness.stop()


def test_each_check_is_guarded_on_its_own() -> None:
    """The lag update failing on every turn must not keep the credentials from being checked;
    a broker check that raises cannot say the broker is reachable (False), whatever it said
    before."""
    broker_answers = iter([True])

    def broker() -> bool:
        answer = next(broker_answers, None)
        if answer is None:
            raise RuntimeError("no thread for the resolver")
        return answer

    def lag() -> None:
        raise KeyError("a label never set")

    readiness = Readiness(
        broker,
        lambda: True,
        broker_interval_s=0.01,
        credential_interval_s=0.01,
        on_tick=lag,
        credentials_required=True,
    ).start()
    try:
        assert until(lambda: readiness.credentials_ok is True and readiness.broker_ok is False)
    finally:
        readiness.stop()
