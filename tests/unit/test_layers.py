"""The layers point one way (STYLE.md, README "Architecture"), and no module imports itself
back through others.

import-linter is not in this machine's package index, so the contracts are here: every import
of every module, lazy ones included, is checked against the order of the layers below, and
the whole import closure of each headless module is checked for Textual, bcc and pyroute2 in
a fresh interpreter (a test of the source text alone missed ``ui/state.py`` importing Textual
through a module it imported)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "flowscope"

LAYERS: list[list[str]] = [
    ["flowscope.abi", "flowscope.errors"],
    ["flowscope.model", "flowscope.when", "flowscope.packets"],
    ["flowscope.vocab"],
    ["flowscope.kernel"],
    ["flowscope.collect"],
    ["flowscope.query"],
    ["flowscope.history"],
    ["flowscope.export"],
    ["flowscope.pipeline"],
    ["flowscope.ui"],
    ["flowscope.doctor", "flowscope.demo", "flowscope.bench"],
    ["flowscope.cli"],
    ["flowscope.__main__"],
]
"""Lowest first. A module may import its own package and anything in a lower layer; two
packages of one layer are independent of each other."""

FORBIDDEN = [
    ("flowscope.ui", "flowscope.kernel", "the console learns about the kernel from the pipeline"),
    ("flowscope.ui.", "flowscope.ui.app", "a screen gets a ConsoleContext, never the app"),
]

TEXTUAL_ALLOWED = ("flowscope.ui", "flowscope.bench.console", "flowscope.__main__")
KERNEL_LIBS_ALLOWED = ("flowscope.kernel",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _resolve(name: str) -> str:
    """The flowscope module ``name`` names: ``from flowscope.kernel import libbpf`` imports
    ``flowscope.kernel.libbpf``, ``from flowscope.abi import X`` imports ``flowscope.abi``."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: Path, top_level_only: bool = False) -> list[str]:
    """flowscope modules a file imports (anywhere, or only when it is imported)."""
    tree = ast.parse(path.read_text())
    nodes: list[ast.AST] = []
    if top_level_only:
        nodes = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    else:
        nodes = list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [f"{node.module}.{a.name}" for a in node.names]
    return [_resolve(n) for n in out if n.startswith("flowscope")]


def _layer(module: str) -> tuple[int, str]:
    for i, layer in enumerate(LAYERS):
        for package in layer:
            if module == package or module.startswith(package + "."):
                return i, package
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_every_import_points_down() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module == "flowscope":
            continue
        level, package = _layer(module)
        for target in _imports(path):
            if target == "flowscope":
                continue
            t_level, t_package = _layer(target)
            if t_level > level or (t_level == level and t_package != package):
                offenders.append(f"{module} -> {target}")
            for low, high, why in FORBIDDEN:
                if module.startswith(low) and target.startswith(high) and module != high:
                    offenders.append(f"{module} -> {target} ({why})")
    assert offenders == []


def test_no_import_cycle() -> None:
    graph = {
        _module_name(p): set(_imports(p, top_level_only=True)) - {"flowscope"}
        for p in PACKAGE.rglob("*.py")
    }
    cycles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from history up into ui is reported."""
    assert _layer("flowscope.history.store")[0] < _layer("flowscope.ui.cells")[0]
    assert _resolve("flowscope.ui.cells.clip") == "flowscope.ui.cells"


def _loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith(TEXTUAL_ALLOWED)])
def test_headless_modules_never_load_textual(module: str) -> None:
    """Whatever they import, in turn: the record path, the CLI's headless commands and the
    console's state (ui/state.py) run where Textual is not loaded."""
    loaded = _loaded_by(module)
    assert "textual" not in loaded
    if not module.startswith(KERNEL_LIBS_ALLOWED):
        assert not loaded & {"bcc"}, "bcc is imported by flowscope/kernel/ only, when it compiles"


def test_only_the_kernel_package_imports_bcc_and_pyroute2() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path).startswith(KERNEL_LIBS_ALLOWED):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in ("bcc", "pyroute2")
            ]
    assert offenders == []
