"""Cached answers for `/readyz`: is the broker reachable, are the Omnisend credentials valid.

A background thread refreshes them on a timer, so a probe never waits on the network and never
costs an API call: the credential check is one cheap authenticated request every
`credential_interval_s`, not one per probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from connector.omnisend.credentials import verify_credentials

log = structlog.get_logger("connector.readiness")

# librdkafka's metadata request gives up after this; a probe every few seconds is plenty.
BROKER_CHECK_TIMEOUT_S = 5.0


class Readiness:
    def __init__(
        self,
        broker_check: Callable[[], bool],
        credential_check: Callable[[], bool | None],
        broker_interval_s: float = 10.0,
        credential_interval_s: float = 600.0,
        on_broker_ok: Callable[[], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._on_broker_ok = on_broker_ok or (lambda: None)
        self._on_tick = on_tick or (lambda: None)
        self._broker_check, self._credential_check = broker_check, credential_check
        self._broker_interval, self._credential_interval = broker_interval_s, credential_interval_s
        self.broker_ok: bool | None = None  # None: not checked yet
        self.credentials_ok: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)

    def start(self) -> Readiness:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=BROKER_CHECK_TIMEOUT_S + 1)

    def _run(self) -> None:
        next_credentials = 0.0
        while not self._stop.is_set():
            self.broker_ok = self._broker_check()
            if self.broker_ok:
                self._on_broker_ok()
                self._on_tick()
            if time.monotonic() >= next_credentials:
                verdict = self._credential_check()
                if verdict is not None:  # None: Omnisend did not answer; keep the last verdict
                    self.credentials_ok = verdict
                next_credentials = time.monotonic() + self._credential_interval
            self._stop.wait(self._broker_interval)


def broker_reachable(admin: object, topic: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            admin.list_topics(topic, timeout=BROKER_CHECK_TIMEOUT_S)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - any failure to get metadata means not reachable
            return False
        return True

    return check


def omnisend_credentials(
    base_url: str, api_key: str, timeout_s: float = 10.0
) -> Callable[[], bool | None]:
    """True: accepted; False: refused (401, 403, 410); None: no verdict (network, 429, 5xx)."""

    def check() -> bool | None:
        verdict = verify_credentials(base_url, api_key, timeout_s)
        if verdict.ok is False:
            log.error("omnisend_credentials_refused", detail=verdict.detail)
        return verdict.ok

    return check
