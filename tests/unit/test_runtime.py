"""The command line tunes the interpreter for a long-running service before anything else."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys

import pytest
import structlog.testing

from connector import cli
from connector.runtime import GC_THRESHOLDS


def test_the_command_line_collects_cycles_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    thresholds: list[tuple[int, ...]] = []
    monkeypatch.setattr(gc, "set_threshold", lambda *t: thresholds.append(t))
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert thresholds == [GC_THRESHOLDS]


def test_librdkafka_remarks_are_collapsed_to_one_then_a_count_at_warning_level() -> None:
    from connector.logs import REPEAT_EVERY_S, _ToStructlog  # noqa: PLC0415

    clock = [0.0]
    handler = _ToStructlog(now=lambda: clock[0])
    fail = "FAIL [thrd:127.0.0.1:{port}/bootstrap]: Connect failed (after {ms}ms in state CONNECT)"
    with structlog.testing.capture_logs() as lines:
        for i in range(500):
            clock[0] = i * 0.01  # 5 s of a broker that refuses
            text = fail.format(port=1, ms=i)
            handler.emit(logging.LogRecord("k", logging.ERROR, "", 0, text, (), None))
        clock[0] = REPEAT_EVERY_S + 1
        text = fail.format(port=1, ms=7)
        handler.emit(logging.LogRecord("k", logging.ERROR, "", 0, text, (), None))
    assert [line.get("repeated") for line in lines] == [None, 499]
    assert {line["log_level"] for line in lines} == {"warning"}


SIGNAL_DURING_A_LOG_WRITE = """
import io, os, signal, threading
import structlog
from connector.app import install_signal_handlers

class Output(io.StringIO):
    def write(self, text):
        if "trigger" in text:  # SIGTERM lands while the output's lock is held
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))
        return super().write(text)

output = Output()
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=output))
stop = threading.Event()
install_signal_handlers(stop)
structlog.get_logger("test").info("trigger")
assert stop.wait(5)
for _ in range(100):
    if "stopping" in output.getvalue():
        break
    threading.Event().wait(0.05)
print(output.getvalue())
"""


def test_a_stop_signal_during_a_log_write_stops_the_service_not_hangs_it() -> None:
    """The handler logged `stopping` itself: landing inside a log write, it waited for the
    output's lock its own thread held, and SIGTERM hung the process until SIGKILL."""
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_A_LOG_WRITE],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "stopping" in done.stdout
    assert "signal=SIGTERM" in done.stdout
