"""Usage errors on the command line: usage + one-line error on stderr, exit 2, never a traceback.

Every command and sub-command is found by walking the typer app, so a command added later is
covered without editing this file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main

from dermkit import cli
from dermkit.cli import app, main
from dermkit.errors import DermkitError

MAX_ERROR_LINES = 8  # usage line, "Try ... --help", blank line, "Error: ..." (plus wrapping)


def _walk(command, path=()):
    """(path, click command) for the app and every command and group below it."""
    yield path, command
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(typer.main.get_command(app)))
PATHS = [path for path, _ in COMMANDS]


def _label(path) -> str:
    return " ".join(path) or "dermkit"


def _is_int_option(param) -> bool:
    if getattr(param, "param_type_name", None) != "option" or getattr(param, "is_flag", False):
        return False
    descriptor = getattr(param, "type_descriptor", None)  # typer's own parameter classes
    if descriptor is not None and getattr(descriptor, "annotation", None) is int:
        return True
    return getattr(getattr(param, "type", None), "name", None) == "integer"  # click's


def _required(command) -> list:
    return [p for p in getattr(command, "params", []) if getattr(p, "required", False)]


INT_OPTIONS = [
    (path, param.opts[0])
    for path, command in COMMANDS
    for param in getattr(command, "params", [])
    if _is_int_option(param)
]
NEEDS_ARGS = [path for path, command in COMMANDS if path and _required(command)]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(code, out, err, expected: str):
    text = out + err
    assert code == 2, text
    assert "Traceback" not in text, text
    assert expected in err, text
    assert len(err.strip().splitlines()) <= MAX_ERROR_LINES, err
    assert "Usage:" in err, err


def test_walk_finds_the_commands():
    assert len(PATHS) > 5
    for path in [("train",), ("evaluate",), ("predict",), ("data",), ("data", "check")]:
        assert path in PATHS


@pytest.mark.parametrize("path", PATHS, ids=_label)
def test_unknown_option(path, capsys):
    code, out, err = run([*path, "--bogus-option"], capsys)
    assert_usage_error(code, out, err, "No such option: --bogus-option")


def test_misspelt_option_suggests_the_right_one(capsys):
    code, out, err = run(["train", "--epoch", "3"], capsys)
    assert_usage_error(code, out, err, "No such option: --epoch")
    assert "--epochs" in err  # "(Possible options: --epochs)" / "Did you mean --epochs?"


def test_usage_names_the_command_and_help(capsys):
    code, out, err = run(["data", "check", "ph2", "--bogus"], capsys)
    assert_usage_error(code, out, err, "No such option: --bogus")
    assert "data check" in err and "--help" in err


def test_bad_value(capsys):
    code, out, err = run(["predict", "--top-k", "abc", "--model", "m", "x.jpg"], capsys)
    assert_usage_error(code, out, err, "Invalid value for '--top-k'")


@pytest.mark.parametrize("path,option", INT_OPTIONS, ids=lambda v: _label(v) if isinstance(v, tuple) else v)
def test_bad_int_value_everywhere(path, option, capsys):
    code, out, err = run([*path, option, "abc"], capsys)
    assert_usage_error(code, out, err, "Invalid value")


def test_missing_required_option(capsys):
    code, out, err = run(["evaluate"], capsys)
    assert_usage_error(code, out, err, "Missing option '--out'")


@pytest.mark.parametrize("path", NEEDS_ARGS, ids=_label)
def test_missing_required_everywhere(path, capsys):
    code, out, err = run(list(path), capsys)  # only commands with a required parameter run bare
    assert_usage_error(code, out, err, "Missing")


def test_unknown_command(capsys):
    code, out, err = run(["bogus"], capsys)
    assert_usage_error(code, out, err, "No such command 'bogus'")
    code, out, err = run(["data", "bogus"], capsys)
    assert_usage_error(code, out, err, "No such command 'bogus'")


def test_help_exits_0(capsys):
    code, out, err = run(["--help"], capsys)
    assert code == 0 and "Usage" in out and "Traceback" not in out + err


def test_no_arguments_shows_help_without_traceback(capsys):
    code, out, err = run([], capsys)
    assert code == 2 and "Traceback" not in out + err and "train" in out + err


def _module_run(*args):
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**__import__("os").environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "dermkit", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_console_entry_point_exits_2():
    proc = _module_run("train", "--epoch", "3")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "No such option: --epoch" in proc.stderr and "--epochs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= MAX_ERROR_LINES


# ------------------------------------------------- main()'s handling, independent of the commands
def _toy_app(exc_factory):
    toy = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @toy.command()
    def go(n: int = 1) -> None:
        raise exc_factory()

    @toy.command()
    def other() -> None:
        pass

    return toy


@pytest.mark.parametrize(
    "factory,code,expected",
    [
        (lambda: DermkitError("the dataset is broken; fix it"), 2, "error: the dataset is broken"),
        (lambda: KeyboardInterrupt(), 130, "interrupted"),
        (lambda: typer.Exit(3), 3, ""),
        (lambda: typer.Abort(), 130, "interrupted"),
    ],
    ids=["dermkit-error", "ctrl-c", "exit", "abort"],
)
def test_main_handles(monkeypatch, capsys, factory, code, expected):
    monkeypatch.setattr(cli, "app", _toy_app(factory))
    got, out, err = run(["go"], capsys)
    assert got == code and expected in err and "Traceback" not in out + err


def test_main_handles_standalone_click_errors(monkeypatch, capsys):
    """A command raising standalone click's exceptions (not typer's vendored copies)."""
    import click

    monkeypatch.setattr(cli, "app", _toy_app(lambda: click.UsageError("bad combination")))
    got, out, err = run(["go"], capsys)
    assert got == 2 and "bad combination" in err and "Traceback" not in out + err
    monkeypatch.setattr(cli, "app", _toy_app(lambda: click.exceptions.Exit(4)))
    assert run(["go"], capsys)[0] == 4
    monkeypatch.setattr(cli, "app", _toy_app(lambda: click.exceptions.Abort()))
    assert run(["go"], capsys)[0] == 130


def test_main_handles_vendored_click_errors(monkeypatch, capsys):
    vendored = pytest.importorskip("typer._click.exceptions")
    monkeypatch.setattr(cli, "app", _toy_app(lambda: vendored.BadParameter("no good")))
    got, out, err = run(["go"], capsys)
    assert got == 2 and "no good" in err and "Traceback" not in out + err
    got, out, err = run(["go", "--n", "x"], capsys)
    assert got == 2 and "Invalid value" in err
