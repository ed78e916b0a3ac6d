"""Cached answers for `/readyz`: is the broker reachable, are the Omnisend credentials valid.

A background thread refreshes them on a timer, so a probe never waits on the network and never
costs an API call: the credential check is one cheap authenticated request every
`credential_interval_s`, not one per probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import structlog

from connector.core.errors import Fatal
from connector.omnisend.credentials import verify_all

log = structlog.get_logger("connector.readiness")

T = TypeVar("T")

# Without a credential verdict yet, the longest wait before asking again.
NO_VERDICT_MAX_S = 60.0
# librdkafka's metadata request gives up after this; a probe every few seconds is plenty.
BROKER_CHECK_TIMEOUT_S = 5.0


class CredentialsRefused(Fatal):
    """Omnisend refused a connection's credentials at start: a human must act (exit 3)."""


def check_at_start(connections: dict[str, tuple[str, str]], timeout_s: float = 10.0) -> bool | None:
    """Every connection's credentials, checked at once before anything is consumed: True when
    all were accepted, None when Omnisend did not answer for some (start anyway, not ready for
    Omnisend until it does); `CredentialsRefused` naming each refused one."""
    if not connections:
        return True
    verdicts = verify_all(connections, timeout_s)
    refused = [f"connection '{name}': {v.detail}" for name, v in verdicts.items() if v.ok is False]
    if refused:
        raise CredentialsRefused("Omnisend refused the credentials: " + "; ".join(refused))
    silent = [name for name, v in verdicts.items() if v.ok is None]
    for name in silent:
        log.warning("omnisend_unreachable_at_start", connection=name, detail=verdicts[name].detail)
    return None if silent else True


class Readiness:
    def __init__(
        self,
        broker_check: Callable[[], bool],
        credential_check: Callable[[], bool | None],
        broker_interval_s: float = 10.0,
        credential_interval_s: float = 600.0,
        on_broker_ok: Callable[[], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        credentials_ok: bool | None = None,
        credentials_required: bool = False,
    ) -> None:
        self._on_broker_ok = on_broker_ok or (lambda: None)
        self._on_tick = on_tick or (lambda: None)
        self._broker_check, self._credential_check = broker_check, credential_check
        self._broker_interval, self._credential_interval = broker_interval_s, credential_interval_s
        self.broker_ok: bool | None = None  # None: not checked yet
        # The verdict of the check at start, if any; None: none yet.
        self.credentials_ok: bool | None = credentials_ok
        # Ready only with a verdict: Omnisend unreachable at start is not ready for it.
        self.credentials_required = credentials_required
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)

    @property
    def credentials_ready(self) -> bool:
        if self.credentials_required:
            return self.credentials_ok is True
        return self.credentials_ok is not False

    def start(self) -> Readiness:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=BROKER_CHECK_TIMEOUT_S + 1)

    def _run(self) -> None:
        # Checked at start already: the next check is one interval away.
        checked = self.credentials_ok is not None
        next_credentials = time.monotonic() + self._credential_interval if checked else 0.0
        silent = 0  # checks in a row without a verdict
        while not self._stop.is_set():
            # Each check on its own: one that raises (a CA bundle gone, no thread for the
            # resolver) must neither end the thread nor keep the others from running.
            self.broker_ok = _guarded("broker", self._broker_check) is True  # raised: unconfirmed
            if self.broker_ok:
                _guarded("broker_ok", self._on_broker_ok)
                _guarded("tick", self._on_tick)
            if time.monotonic() >= next_credentials:
                asked = _guarded("credentials", partial(self._check_credentials, silent))
                if asked is None:  # raised: ask again next turn
                    next_credentials = time.monotonic() + self._broker_interval
                else:
                    next_credentials, silent = asked
            self._stop.wait(self._broker_interval)

    def _check_credentials(self, silent: int) -> tuple[float, int]:
        """Ask for a verdict; when to ask next, and the checks in a row without one."""
        verdict = self._credential_check()
        if verdict is not None:  # None: Omnisend did not answer; keep the last verdict
            self.credentials_ok = verdict
        # Without any verdict yet, ask again soon (10 s, 20, 40, then every 60 s), not in ten
        # minutes, and not at every turn: Omnisend may be answering 429.
        if self.credentials_ok is None:
            waited = min(NO_VERDICT_MAX_S, self._broker_interval * 2**silent)
            return time.monotonic() + waited, silent + 1
        return time.monotonic() + self._credential_interval, 0


def _guarded(check: str, run: Callable[[], T]) -> T | None:
    """`run()`, or None (logged) if it raised."""
    try:
        return run()
    except Exception:
        log.exception("readiness_check_failed", check=check)
        return None


def broker_reachable(admin: object, topic: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            admin.list_topics(topic, timeout=BROKER_CHECK_TIMEOUT_S)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - any failure to get metadata means not reachable
            return False
        return True

    return check
