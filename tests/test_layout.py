"""The layout shows the architecture: imports run downhill, and no module grows past a page-turn.

Layers, lowest first (a module may import its own package and any lower layer):

0. ``autosculpt/``'s basics (errors, units)
1. ``space/``: what can be searched, pruning surgery
2. ``search/``'s shared basics: ``cache``, ``onnx_io``
3. ``search/quantize``, ``search/data``, ``search/latency``
4. ``search/training``, ``search/servers``
5. ``search/study``
6. ``search/deploy``
7. ``reports/`` (reads studies and deployed samples)
8. ``search/cli``
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = {"autosculpt": "autosculpt", "space": "autosculpt.space", "search": "autosculpt.search",
       "reports": "autosculpt.reports"}
LAYERS = {
    "autosculpt": 0, "autosculpt.errors": 0, "autosculpt.units": 0,
    "autosculpt.space": 1,
    "autosculpt.search": 2, "autosculpt.search.cache": 2, "autosculpt.search.onnx_io": 2,
    "autosculpt.search.quantize": 3, "autosculpt.search.data": 3, "autosculpt.search.latency": 3,
    "autosculpt.search.training": 4, "autosculpt.search.servers": 4,
    "autosculpt.search.study": 5,
    "autosculpt.search.deploy": 6,
    "autosculpt.reports": 7,
    "autosculpt.search.cli": 8,
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Every module of the four packages, by dotted name."""
    found = {}
    for folder, package in TOP.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _unit(module: str) -> str:
    """The layout unit a module belongs to: the longest prefix named in LAYERS."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return ".".join(parts[:end])
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add its package to LAYERS")


def _imported(module: str, path: Path) -> set[str]:
    """The autosculpt modules ``module`` imports, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "autosculpt"}


def test_every_module_is_in_a_layer():
    for module in _modules():
        _unit(module)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_run_downhill(module):
    path = _modules()[module]
    unit = _unit(module)
    for target in _imported(module, path):
        target_unit = _unit(target)
        assert target_unit == unit or LAYERS[target_unit] < LAYERS[unit], (
            f"{module} (layer {LAYERS[unit]}) imports {target} (layer {LAYERS[target_unit]}): uphill")


def test_no_module_over_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in _modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}; split them by what they do"


def test_search_root_holds_only_the_shared_basics():
    """The stages live in subpackages; the root of search/ keeps what every stage uses."""
    root_modules = sorted(path.stem for path in (ROOT / "search").glob("*.py") if path.stem != "__init__")
    assert root_modules == ["cache", "onnx_io", "quantize"]
