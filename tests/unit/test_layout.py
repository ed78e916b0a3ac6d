"""The package's folders tell its architecture (README "Code map"); these checks keep them
telling it: the core imports nothing outside itself but the standard library and fastavro, and
no I/O; the Kafka edge knows nothing of Omnisend, the jobs or the command line; few modules sit
directly in `connector/`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "connector"
IO_MODULES = {"socket", "ssl", "http", "urllib", "asyncio", "selectors", "subprocess", "logging"}


def imports(folder: Path) -> dict[str, set[str]]:
    """Module file -> every module it imports (at any depth, in functions too)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(PACKAGE.parent))] = names
    return found


def test_the_core_imports_only_itself_the_standard_library_and_fastavro() -> None:
    wrong = {
        module: sorted(
            name
            for name in names
            if not name.startswith("connector.core")
            and name.split(".")[0] != "__future__"
            and (
                name.split(".")[0] in IO_MODULES
                or (
                    name.split(".")[0] not in sys.stdlib_module_names
                    and not name.startswith("fastavro")
                )
            )
        )
        for module, names in imports(PACKAGE / "core").items()
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_the_kafka_edge_knows_nothing_of_omnisend_the_jobs_or_the_command_line() -> None:
    outside = (
        *("connector.omnisend", "connector.jobs", "connector.cli", "connector.dev"),
        *("connector.app", "connector.pipeline", "connector.simulator"),
    )
    wrong = {
        module: sorted(n for n in names if n.startswith(outside))
        for module, names in imports(PACKAGE / "kafka").items()
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_at_most_fifteen_modules_directly_in_the_package() -> None:
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 15, modules


def test_the_loop_reaches_kafka_only_through_the_source() -> None:
    """confluent-kafka's untyped objects stay behind `connector/kafka/`: the loop and the sink
    see typed records, partitions and `Retriable`."""
    found = imports(PACKAGE)
    wrong = {
        module: sorted(n for n in names if n.startswith("confluent_kafka"))
        for module, names in found.items()
        if module.startswith(("connector/pipeline.py", "connector/omnisend/", "connector/core/"))
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_no_class_over_250_lines_and_no_module_over_450() -> None:
    """Sizes a newcomer can read in one sitting; past them, split by what each part owns."""
    too_big: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(PACKAGE.parent))
        if len(text.splitlines()) > 450:
            too_big.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > 250:
                    too_big.append(f"{name}: class {node.name}, {lines} lines")
    assert too_big == []
