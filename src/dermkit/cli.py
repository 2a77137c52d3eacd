"""dermkit command line: the typer app and its groups, the command modules (``dermkit.commands``,
one per command family) registered on it, and ``main``, the entry point that turns every user
error into one message and exit status 2 (see README.md)."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from dermkit.commands import clip, concepts, data, evaluate, export, ood, serve, train, vqa
from dermkit.commands.common import ARGV, err_console
from dermkit.errors import DermkitError

app = typer.Typer(
    name="dermkit",
    help="Skin-lesion AI toolkit: validate datasets, train classifiers, evaluate with CIs, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset cards: validate a dataset folder, make splits.", no_args_is_help=True)
app.add_typer(data_app, name="data")
concepts_app = typer.Typer(help="Concept bottlenecks (method: cbm): concept galleries, validity, interventions.",
                           no_args_is_help=True)
app.add_typer(concepts_app, name="concepts")
ood_app = typer.Typer(help="Out-of-distribution detectors: fit one into a model folder.", no_args_is_help=True)
app.add_typer(ood_app, name="ood")

# Registration order is the order of `dermkit --help` (commands first, then the groups).
COMMAND_MODULES = (train, evaluate, clip, serve, export, data, concepts, ood, vqa)
for _module in COMMAND_MODULES:
    _module.register(app, {"data": data_app, "concepts": concepts_app, "ood": ood_app})


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one clear message and exit 2, never a traceback.

    Usage errors (unknown option or command, bad value, missing option) print the usage line and
    click's one-line error (with its "Did you mean" suggestion) and exit 2; a DermkitError prints
    ``error: ...`` and exits 2; Ctrl-C exits 130.
    """
    ARGV[:] = sys.argv[1:] if argv is None else argv
    exits, click_errors, aborts = _click_exception_classes()
    try:
        result = app(args=argv, standalone_mode=False)
    except DermkitError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return _exit(2, argv)
    except exits as exc:
        return _exit(_interrupted(exc.exit_code), argv)
    except click_errors as exc:
        exc.show()  # usage + "Try 'dermkit ... --help'" + "Error: ..." on stderr
        return _exit(exc.exit_code, argv)
    except (*aborts, KeyboardInterrupt):
        return _exit(_interrupted(130), argv)
    return _exit(_interrupted(result) if isinstance(result, int) else 0, argv)


def _click_exception_classes() -> tuple[tuple, tuple, tuple]:
    """(Exit, ClickException, Abort) classes of standalone click and of typer's vendored click.

    typer 0.29 raises its own vendored copies (``typer._click.exceptions``, ``typer.exceptions``)
    that do not derive from click's; both are caught so neither a typer upgrade nor a command
    that raises a standalone ``click`` exception ends in a traceback.
    """
    import importlib

    found: dict[str, list[type]] = {"Exit": [], "ClickException": [], "Abort": []}
    for module in ("typer.exceptions", "typer._click.exceptions", "typer._click", "typer", "click.exceptions"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name, classes in found.items():
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in classes:
                classes.append(cls)
    return tuple(found["Exit"]), tuple(found["ClickException"]), tuple(found["Abort"])


def _interrupted(code: int) -> int:
    # typer turns Ctrl-C inside a command into Exit(130): say how to continue.
    if code == 130:
        err_console.print("interrupted; resume a training run with --resume")
    return code


def _exit(code: int, argv) -> int:
    if argv is None:  # called as the console script
        sys.exit(code)
    return code
