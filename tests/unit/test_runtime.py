"""The command line tunes the interpreter for a long-running service before anything else."""

from __future__ import annotations

import gc

import pytest

from connector import cli
from connector.runtime import GC_THRESHOLDS


def test_the_command_line_collects_cycles_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    thresholds: list[tuple[int, ...]] = []
    monkeypatch.setattr(gc, "set_threshold", lambda *t: thresholds.append(t))
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert thresholds == [GC_THRESHOLDS]
