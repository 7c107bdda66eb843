"""The layers point one way: the core and the headless commands never import Textual, and only
flowscope/probe/ imports bcc and pyroute2 (STYLE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "flowscope"
CORE = [
    "flowscope.abi",
    "flowscope.model",
    "flowscope.collector",
    "flowscope.errors",
    "flowscope.cli",
    "flowscope.capture",
    "flowscope.replay",
    "flowscope.recorder",
    "flowscope.detect",
    "flowscope.filter",
    "flowscope.store",
    "flowscope.sandbox",
    "flowscope.writer",
    "flowscope.when",
    # the console's plain-Python parts: its state and live query engine, tested headless
    "flowscope.ui.state",
    "flowscope.ui.view",
    "flowscope.ui.frame",
    "flowscope.ui.cells",
    "flowscope.ui.history_query",
]


def imported_by(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


@pytest.mark.parametrize("module", CORE)
def test_core_does_not_import_textual_bcc_or_pyroute2(module: str) -> None:
    assert not imported_by(module) & {"textual", "bcc", "pyroute2"}


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module a file imports, anywhere in it (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_probe_imports_bcc_and_pyroute2() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "probe" in path.relative_to(PACKAGE).parts:
            continue
        offenders += [f"{path.name}: {lib}" for lib in imports_of(path) & {"bcc", "pyroute2"}]
    assert offenders == []


def test_only_the_console_imports_textual() -> None:
    offenders = [
        path.name
        for path in PACKAGE.rglob("*.py")
        if "ui" not in path.relative_to(PACKAGE).parts
        and path.name != "cli.py"  # the `live` command imports the console lazily
        and "textual" in imports_of(path)
    ]
    assert offenders == []
