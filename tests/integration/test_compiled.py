"""The image's build: the per-event core compiled by mypyc (`OMNISEND_CONNECTOR_COMPILE=1`)
behaves as the pure one. The core's own tests and the loop's stream tests run again against a
compiled copy of the package, and the demo (broker, simulator, connector) syncs on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connector.dev import compiled

ROOT = Path(__file__).resolve().parents[2]
# The tests of the compiled modules (the core, the intake and the fates), and of the loop over
# them, without a broker.
SUITES = [
    "test_admission.py",
    "test_coalesce.py",
    "test_codec.py",
    "test_ledger.py",
    "test_mapping.py",
    "test_offsets.py",
    "test_recent.py",
    "test_pipeline_rebalance.py",
    "test_pipeline_reports.py",
    "test_pipeline_streams.py",
    "test_results.py",
]

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled.build(tmp_path_factory.mktemp("compiled"))


def _run(build: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=build,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_build_loads_compiled_modules(build: Path) -> None:
    modules = compiled.compiled_modules()
    assert "connector.core.coalesce" in modules
    probe = (
        "import importlib, sys\nfor m in sys.argv[1:]: print(importlib.import_module(m).__file__)"
    )
    found = _run(build, "-c", probe, *modules)
    assert found.returncode == 0, found.stderr
    files = found.stdout.split()
    assert len(files) == len(modules)
    assert all(f.startswith(str(build)) and not f.endswith(".py") for f in files), files


def test_the_core_and_loop_tests_pass_on_the_compiled_build(build: Path) -> None:
    # `append`: the tests are found from the repository, `connector` from the build first.
    paths = [str(ROOT / "tests" / "unit" / name) for name in SUITES]
    args = ["-m", "pytest", "-q", "--import-mode=append", "-p", "no:cacheprovider", *paths]
    done = _run(build, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert "failed" not in done.stdout


def test_the_demo_syncs_on_the_compiled_build(build: Path) -> None:
    done = _run(build, "-m", "connector.cli", "demo", "--count", "1000")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "omnisend-connector demo: done" in done.stdout
    assert "events consumed       1000" in done.stdout
    contacts = done.stdout.split("contacts in Omnisend")[1].split()[0]
    assert int(contacts) > 0
