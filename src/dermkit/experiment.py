"""YAML config -> run -> output folder, and suites of runs compared in one table.

A config names its ``method`` and holds that method's keys::

    method: prompt_learning        # supervised | prompt_learning | fusion
    name: cgcoop_ift               # optional; default: the file name
    data: derm7pt
    ...

Each method module has ``run_config(raw: dict, out_dir, resume=False, progress=True) -> summary``
where ``summary`` carries ``test`` (metric -> value) and ``test_ci`` (metric -> {low, high}), the
shape ``train_classifier`` writes to ``summary.json``. A new method plugs in with one line in
:data:`METHODS`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from dermkit.errors import ConfigError
from dermkit.io import write_csv, write_json, write_text

__all__ = ["METHODS", "load_config", "run_experiment", "run_suite", "suite_table"]

METHODS = {
    "supervised": "dermkit.methods.supervised",
    "prompt_learning": "dermkit.methods.prompt_learning",
    "fusion": "dermkit.methods.fusion",
}
TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
HEADERS = {"accuracy": "ACC", "balanced_accuracy": "BACC", "macro_f1": "F1", "macro_auc": "AUC"}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A config mapping from YAML; ``name`` defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping (method: ..., data: ..., ...)")
    raw.setdefault("name", path.stem)
    return raw


def _method_module(raw: dict[str, Any]):
    method = raw.get("method")
    if method not in METHODS:
        raise ConfigError(f"config {raw.get('name', '?')!r}: method must be one of {', '.join(METHODS)}, got {method!r}")
    return importlib.import_module(METHODS[method])


def run_experiment(raw: dict[str, Any], out_dir: str | os.PathLike, resume: bool = False, progress: bool = True) -> dict:
    """Run one config (a mapping with ``method``) into ``out_dir``; returns its summary."""
    raw = dict(raw)
    module = _method_module(raw)
    method, name = raw.pop("method"), raw.pop("name", None)
    summary = module.run_config(raw, Path(out_dir), resume=resume, progress=progress)
    summary = {"name": name or Path(out_dir).name, "method": method, **summary}
    write_json(Path(out_dir) / "summary.json", summary)
    return summary


def run_suite(configs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, rerun: bool = False,
              progress: bool = True, overrides: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run every config into ``out_dir/<name>/`` and write the comparison table.

    A config whose folder already has ``summary.json`` is not rerun (so an interrupted suite
    continues where it stopped) unless ``rerun``; an interrupted run inside it resumes from its
    last checkpoint. ``overrides`` (e.g. ``{"epochs": 1}``) apply to every config.
    """
    out_dir = Path(out_dir)
    raws = [load_config(p) for p in configs]
    if not raws:
        raise ConfigError("no configs given to the suite")
    names = [r["name"] for r in raws]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two configs share the name(s) {dupes}; give each a distinct `name:`")
    for raw in raws:
        _method_module(raw)  # unknown method -> error before hours of work
    summaries = []
    for raw in raws:
        run_dir = out_dir / raw["name"]
        done = run_dir / "summary.json"
        if done.is_file() and not rerun:
            import json

            summaries.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        resume = (run_dir / "checkpoints" / "last.safetensors").is_file() and not rerun
        summaries.append(run_experiment({**raw, **(overrides or {})}, run_dir, resume=resume, progress=progress))
    table = suite_table(summaries)
    write_csv(out_dir / "suite.csv", table)
    write_text(out_dir / "suite.md", suite_markdown(table))
    write_json(out_dir / "suite.json", summaries)
    return table


def _ci_text(value, ci) -> str:
    if value is None:
        return "n/a"
    ci = ci or {}
    if ci.get("low") is None:
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"


def suite_table(summaries: Sequence[dict]) -> pd.DataFrame:
    """One row per run: name, data, task, ACC/BACC/F1/AUC in % with 95% CIs, plus extra columns.

    A summary may add ``table_extra`` (column -> text) for method-specific figures (e.g. the
    thickness head's MAE), shown after the standard metrics.
    """
    rows = []
    # A transfer test (trained on one dataset, tested on another's test split) is a row of its own.
    summaries = [r for s in summaries for r in [s] + [{**s, **t, "table_extra": {}, "is_transfer": True} for t in s.get("transfer") or []]]
    for s in summaries:
        row = {"run": s.get("name"), "method": s.get("method"), "data": s.get("dataset"), "task": s.get("task") or "all"}
        if s.get("is_transfer"):
            row["data"] = f"{s.get('dataset')} -> {s['eval_dataset']}"
        for key in TABLE_METRICS:
            row[HEADERS[key]] = _ci_text((s.get("test") or {}).get(key), (s.get("test_ci") or {}).get(key))
        row.update(s.get("table_extra") or {})
        rows.append(row)
    return pd.DataFrame(rows)


def suite_markdown(table: pd.DataFrame) -> str:
    from dermkit.methods.zeroshot import markdown_table

    note = "\nMetrics in %, test split, 95% bootstrap CIs in brackets (lesion-grouped where the card has groups).\n"
    return markdown_table(list(table.columns), table.fillna("").values.tolist()) + note
