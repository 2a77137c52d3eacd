"""The architecture in DESIGN.md, checked on the source: layers only import downwards, methods never
import each other, and nothing hides an import cycle inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dermkit"
# Upper layers may import lower ones, never the reverse (DESIGN.md, "Layers").
RANK = {"cli": 6, "commands": 6, "api": 5, "serve": 5, "experiment": 4, "methods": 3}
LOWER = ("data", "engine", "models", "evaluate", "errors", "io", "config")


def _module(path: Path) -> str:
    return ".".join(("dermkit",) + path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every dermkit module imported anywhere in the file (top level and inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dermkit"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("dermkit"))
    return out


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return RANK.get(part, 0)


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    me = _module(path)
    if me == "dermkit" or me == "dermkit.__main__":
        return  # the package exports the API; __main__ starts the CLI
    for target in _imports(path):
        if target == "dermkit" or not (SRC / Path(*target.split(".")[1:])).exists() and not \
                (SRC / Path(*target.split(".")[1:])).with_suffix(".py").exists():
            continue  # a name imported from a module, checked through its module
        assert _layer(target) <= _layer(me), f"{me} imports {target}, a higher layer"


def test_methods_do_not_import_each_other():
    methods = {p.stem for p in (SRC / "methods").glob("*.py")} - {"__init__", "base"}
    for path in (SRC / "methods").glob("*.py"):
        if path.stem in ("__init__",):
            continue
        others = {t.split(".")[2] for t in _imports(path) if t.startswith("dermkit.methods.") and len(t.split(".")) > 2}
        bad = (others & methods) - {path.stem}
        assert not bad, f"methods/{path.name} imports methods {sorted(bad)}; move what they share below the methods"


def test_lower_layers_never_import_methods_or_above():
    for path in FILES:
        me = _module(path)
        if me.split(".")[1:2] and me.split(".")[1] in LOWER:
            upper = [t for t in _imports(path) if _layer(t) > 0]
            assert not upper, f"{me} imports {upper}"
