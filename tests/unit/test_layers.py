"""The layers point one way: the core and the headless commands never import Textual, and only
flowscope/probe/ imports bcc and pyroute2 (STYLE.md)."""

from __future__ import annotations

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
]


def imported_by(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


@pytest.mark.parametrize("module", CORE)
def test_core_does_not_import_textual_bcc_or_pyroute2(module: str) -> None:
    assert not imported_by(module) & {"textual", "bcc", "pyroute2"}


def test_only_the_probe_names_bcc_and_pyroute2() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "probe" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text()
        for lib in ("bcc", "pyroute2"):
            if f"import {lib}" in text or f"from {lib}" in text:
                offenders.append(f"{path.name}: {lib}")
    assert offenders == []
