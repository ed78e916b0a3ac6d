"""Several connections: draining stops every sink's lingering before waiting for any of them."""

from __future__ import annotations

from typing import Any, cast

from connector.omnisend.sink import OmnisendSink
from connector.omnisend.sinks import Sinks


class RecordingSink:
    def __init__(self, name: str, calls: list[str], finishes: bool = True) -> None:
        self.name, self.calls, self.finishes = name, calls, finishes

    def flush(self, on: bool) -> None:
        self.calls.append(f"{self.name}.flush({on})")

    def wait_idle(self, timeout_s: float) -> bool:
        self.calls.append(f"{self.name}.wait")
        return self.finishes


def sinks(*members: RecordingSink) -> Sinks:
    by_connection: dict[str, Any] = {m.name: m for m in members}
    return Sinks(cast(dict[str, OmnisendSink], by_connection))


def test_every_sink_flushes_before_the_first_wait() -> None:
    calls: list[str] = []
    assert sinks(RecordingSink("eu", calls), RecordingSink("us", calls)).drain(1.0)
    assert calls == [
        "eu.flush(True)",
        "us.flush(True)",
        "eu.wait",
        "us.wait",
        "eu.flush(False)",
        "us.flush(False)",
    ]


def test_one_unfinished_sink_fails_the_drain_but_every_sink_is_waited_for() -> None:
    calls: list[str] = []
    drained = sinks(RecordingSink("eu", calls, finishes=False), RecordingSink("us", calls)).drain(
        1.0
    )
    assert not drained
    assert calls.count("us.wait") == 1
    assert calls[-2:] == ["eu.flush(False)", "us.flush(False)"]
