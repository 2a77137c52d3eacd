"""What several command modules share: the consoles, this invocation's arguments (and running the
command again under torchrun), the per-method config dialect, and printing a frame as a table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from dermkit.errors import ConfigError

console = Console()
err_console = Console(stderr=True)
ARGV: list[str] = []  # this invocation's arguments, set by dermkit.cli.main (``--nproc`` re-runs them under torchrun)


def relaunch(nproc: int) -> int:
    """Re-run this very command (``ARGV``) on ``nproc`` processes through torchrun (without ``--nproc``);
    returns torchrun's exit status."""
    from dermkit.engine.distributed import launch  # torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--nproc inside a torchrun process: drop --nproc, torchrun already starts the processes")
    argv, skip = [], False
    for arg in ARGV:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    return launch(nproc, argv)


def config_for(method: str, out: Path, config: Optional[Path], resume: bool, overrides: dict) -> dict:
    """One config dialect for the per-method commands: the YAML (or, with --resume, the run's own
    config.yaml) with ``method`` checked, then the command-line options (``overrides``, None = not
    given) on top."""
    from dermkit.experiment import load_config  # torch, pandas

    given = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        raw = load_config(out / "config.yaml") if (out / "config.yaml").is_file() else {}
        extra = sorted(set(given) - {"epochs"})
        if extra:
            raise ConfigError(f"--resume continues the saved run; drop {extra} (only --epochs may change; to continue "
                              f"under other values, edit {out / 'config.yaml'} and add --allow-config-change)")
        if config is not None:
            raise ConfigError("--resume reads the run's own config.yaml; drop --config")
    else:
        raw = load_config(config) if config is not None else {}
    if raw.get("method", method) != method:
        raise ConfigError(f"{config or out / 'config.yaml'} is a `method: {raw['method']}` config; run it with "
                          f"`dermkit run {config or out / 'config.yaml'} --out {out}`")
    raw["method"] = method
    if "epochs" in given:  # engine keys may sit at the top level or under engine:
        raw.setdefault("engine", {})
        raw["engine"] = {**(raw["engine"] or {}), "epochs": given.pop("epochs")}
    engine_keys = {"lr", "select_metric", "patience", "precision", "device", "seed", "grad_accum"}
    for key in list(given):
        if key in engine_keys and isinstance(raw.get("engine"), dict):
            raw["engine"][key] = given.pop(key)
    raw.update(given)
    if config is None and not resume:
        raw.setdefault("name", out.name)
    return raw


def print_frame(frame, title: str) -> None:
    """Print a data frame as a table: floats with 3 decimals, None as an empty cell."""
    table = Table(*[str(c) for c in frame.columns], title=title)
    for row in frame.itertuples(index=False):
        table.add_row(*["" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
