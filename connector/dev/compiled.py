"""A copy of the package with its per-event core compiled by mypyc, as the image builds it
(`OMNISEND_CONNECTOR_COMPILE=1`, see setup.py), for the benchmarks and the tests that run the
compiled build beside the pure one. Works from a source checkout; needs mypy (a development
dependency) and a C compiler."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_BUILD = """
import tomllib
from setuptools import setup
from mypyc.build import mypycify
modules = tomllib.load(open("pyproject.toml", "rb"))["tool"]["omnisend-connector"]["compiled"]
setup(name="compiled", ext_modules=mypycify(modules, opt_level="3"),
      script_args=["build_ext", "--inplace", "--build-temp", "build"])
"""


def compiled_modules(root: Path = ROOT) -> list[str]:
    """The module names setup.py compiles, e.g. `connector.core.coalesce`."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    files: list[str] = config["tool"]["omnisend-connector"]["compiled"]
    return [f.removesuffix(".py").replace("/", ".") for f in files]


def build(dest: Path, root: Path = ROOT) -> Path:
    """Copy the package to `dest` and compile its core there; returns `dest`, the folder to
    run from (first on `sys.path`) for `import connector` to load the compiled build."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        root / "connector",
        dest / "connector",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        dirs_exist_ok=True,
    )
    shutil.copy(root / "pyproject.toml", dest / "pyproject.toml")  # mypy's settings, the list
    subprocess.run(  # noqa: S603 - this interpreter, a script of this module
        [sys.executable, "-c", _BUILD], cwd=dest, check=True, capture_output=True
    )
    return dest
