"""Repeated seeds: one config trained with several seeds, the spread across them, and comparisons
that account for it.

``seeds: [0, 1, 2]`` in a config (or ``--seeds 0,1,2`` on ``dermkit run`` / ``dermkit suite``)
makes :func:`run_seeds` run the config once per seed, each a full run (config's ``seed`` set to it:
the engine seed, ``engine.seed``, or the method's own ``seed``) in ``OUT/seed-<seed>/``. Finished
seeds (their ``summary.json`` exists, their ``config.yaml`` equal to the config's) are reused and
left untouched; an interrupted one continues from its checkpoint with ``resume`` (``--resume``).
Then ``OUT/`` gets:

* ``summary.json``: the run schema (``SUMMARY_KEYS``) with ``test`` = the mean over seeds,
  ``test_seeds`` / ``val_seeds`` = per metric ``mean, sd, min, max, n, values`` (``sd`` the
  **sample** standard deviation, ddof=1), ``seeds`` (the seeds, their folders, the selected seed and
  why) and ``transfer`` likewise per ``eval_data`` dataset;
* ``model/``: a copy of the model folder of the seed **selected on val** (the best
  ``best_val_score``, the val metric each seed selected its epoch on; ties go to the seed listed
  first), never on test; ``report`` points at that seed's test report;
* ``seeds.md`` / ``seeds.html`` / ``seeds.csv``: mean, sd, min, max of every headline test metric
  and the per-seed values; ``config.yaml``: the config with its ``seeds``.

The single-run function is passed in (``run_one``: :func:`dermkit.experiment.run_experiment`),
so this module sits below the experiment layer, which dispatches a config with ``seeds`` here.
:func:`compare_seed_folders` compares two such folders seed pair by seed pair
(:mod:`dermkit.evaluate.seed_compare`).
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from dermkit import io
from dermkit.engine import distributed
from dermkit.errors import ConfigError, DataError, DermkitError
from dermkit.evaluate.compare import predictions_path
from dermkit.evaluate.metrics import HEADLINE_METRICS
from dermkit.evaluate.seed_compare import compare_seed_predictions, save_seed_comparison, seed_suite_columns
from dermkit.evaluate.tables import format_metric, html_table, markdown_table
from dermkit.methods import get_method

__all__ = ["SEEDS_NOTE", "compare_seed_folders", "is_seed_run", "parse_seeds", "run_seeds", "seed_baseline_cells",
           "seed_cell", "seed_folder", "seed_stats"]

SEEDS_NOTE = ("Runs with several seeds (column seeds) show mean ± sample standard deviation (ddof=1) across "
              "seeds instead of a CI; each seed's own CIs are in its seed-N/eval/test report.\n")
SD_TEXT = "sample standard deviation across seeds (ddof=1: divided by n - 1)"


def seed_folder(out_dir: str | os.PathLike, seed: int) -> Path:
    """The run folder of ``seed`` inside a multi-seed run folder: ``OUT/seed-<seed>``."""
    return Path(out_dir) / f"seed-{seed}"


def parse_seeds(value: Any, where: str = "--seeds") -> list[int]:
    """Seeds from ``"0,1,2"`` (the option) or ``[0, 1, 2]`` (a config): at least two distinct integers >= 0."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",")]
        if not value.strip():
            items = []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{where} must be a list of seeds such as [0, 1, 2] (option: --seeds 0,1,2), got {value!r}")
    if not items:
        raise ConfigError(f"{where} is empty; give at least two seeds, e.g. 0,1,2")
    seeds = []
    for i, item in enumerate(items, 1):
        if isinstance(item, str) and item.lstrip("+").isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(f"{where}: item {i} ({item!r}) is not a whole number >= 0; give seeds such as 0,1,2")
        seeds.append(item)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{where}: seed(s) {', '.join(map(str, repeated))} given twice; each seed is one run, "
                          "list it once")
    if len(seeds) < 2:
        raise ConfigError(f"{where}: one seed ({seeds[0]}) gives no spread; give at least two (e.g. 0,1,2), or set "
                          f"`seed: {seeds[0]}` for a single run")
    return seeds


# ------------------------------------------------------------------------------ running


def _config_seed(config) -> int | None:
    engine = getattr(config, "engine", None)
    if engine is not None and hasattr(engine, "seed"):
        return engine.seed
    return getattr(config, "seed", None)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return out


def _config_difference(folder: Path, method: str, config) -> str | None:
    """None when ``folder/config.yaml`` holds ``config`` (names aside), else the first differing key."""
    path = folder / "config.yaml"
    if not path.is_file():
        return "it has no config.yaml to check it against"
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if saved.get("method") != method:
        return f"method is {saved.get('method')!r} there, {method!r} now"
    old = _flat({k: v for k, v in saved.items() if k not in ("method", "name")})
    new = _flat(json.loads(json.dumps(io.json_ready(config.to_dict()))))
    for key in sorted(set(old) | set(new)):
        if old.get(key, "(absent)") != new.get(key, "(absent)"):
            return f"{key} is {old.get(key, '(absent)')!r} there, {new.get(key, '(absent)')!r} now"
    return None


def _plan(raw: dict, out_dir: Path, resume: bool, force: bool):
    """Validate everything before any file is written: the seeds, each seed's config, the folders.

    Returns ``(method, name, where, [(seed, seed raw, config, action)])`` with action ``reuse``,
    ``resume`` or ``run``.
    """
    raw = dict(raw)
    where = str(raw.pop("_source", None) or f"config {raw.get('name', '?')!r}")
    seeds = parse_seeds(raw.pop("seeds"), f"{where}: seeds")
    if "seed" in raw:
        raise ConfigError(f"{where}: both seed ({raw['seed']!r}) and seeds ({seeds}) are given; keep seeds for "
                          "several runs or seed for one")
    if distributed.world_size() > 1:
        raise ConfigError("several seeds under torchrun (--nproc) are not supported; run the seeds without "
                          "--nproc, or one seed per torchrun call with `seed: N`")
    method = get_method(raw.pop("method", None), where)
    name = raw.pop("name", None) or out_dir.name
    top = out_dir / "summary.json"
    single = ((out_dir / "checkpoints").is_dir() or (out_dir / "eval").is_dir()
              or (top.is_file() and "seeds" not in json.loads(top.read_text(encoding="utf-8"))))
    if single and not force:
        raise ConfigError(f"{out_dir} holds a single run; choose another --out for the seeds, or --force")
    if _config_seed(method.config(raw, where)) is None:
        raise ConfigError(f"{where}: seeds: method {method.name} has no training seed (no seed key), so every "
                          "seed would give the same model; drop seeds")
    plan = []
    for s in seeds:
        config = method.config({**raw, "seed": s}, where)
        folder = seed_folder(out_dir, s)
        action = "run"
        if force or not folder.exists():
            pass
        elif (folder / "summary.json").is_file():
            differs = _config_difference(folder, method.name, config)
            if differs:
                raise ConfigError(f"{folder} is a finished seed run of another config ({differs}); pass --force to "
                                  "run every seed again, or choose another --out")
            action = "reuse"
        elif resume:
            action = "resume"
        else:
            raise ConfigError(f"{folder} holds an interrupted seed run (no summary.json); pass --resume to continue "
                              "it, or --force to run every seed again")
        plan.append((s, {**raw, "method": method.name, "name": f"{name}-seed{s}", "_source": where, "seed": s},
                     config, action))
    return method, name, where, plan


def run_seeds(raw: dict[str, Any], out_dir: str | os.PathLike, run_one: Callable[..., dict], resume: bool = False,
              force: bool = False, progress: bool = True) -> dict:
    """Run a config with ``seeds`` (see the module docstring); returns the aggregate summary.

    ``run_one(raw, folder, resume=, progress=, force=)`` runs one seed's config (``seed`` set, no
    ``seeds``). ``force`` runs every seed again; ``resume`` continues interrupted seeds (from their
    checkpoint when they have one). Finished seeds are always reused.
    """
    out_dir = Path(out_dir)
    method, name, where, plan = _plan(raw, out_dir, resume, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = plan[0][2]
    settings = {k: v for k, v in first.to_dict().items() if k != "seed"}  # each seed sets its own
    if isinstance(settings.get("engine"), dict):
        settings["engine"] = {k: v for k, v in settings["engine"].items() if k != "seed"}
    snapshot = {"method": method.name, "name": name, "seeds": [p[0] for p in plan], **settings}
    io.write_text(out_dir / "config.yaml", yaml.safe_dump(io.json_ready(snapshot), sort_keys=False))
    summaries = []
    for s, seed_raw, _, action in plan:
        folder = seed_folder(out_dir, s)
        if action == "reuse":
            if progress:
                print(f"seed {s}: finished in {folder}, reused")
            summaries.append(json.loads((folder / "summary.json").read_text(encoding="utf-8")))
            continue
        if progress:
            print(f"seed {s}: {'resuming' if action == 'resume' else 'running'} in {folder}")
        resumable = action == "resume" and (folder / "checkpoints" / "last.safetensors").is_file()
        summaries.append(run_one(seed_raw, folder, resume=resumable, progress=progress, force=not resumable))
    engine = getattr(first, "engine", None)
    summary = seed_summary(name, [p[0] for p in plan], summaries, out_dir,
                           select_mode=getattr(engine, "select_mode", "max"))
    selected = seed_folder(out_dir, summary["seeds"]["selected_seed"]) / "model"
    if selected.is_dir():
        _install_model(selected, out_dir / "model")
    table = seeds_table(summary)
    io.write_csv(out_dir / "seeds.csv", table)
    blocks = _blocks(summary)
    io.write_text(out_dir / "seeds.md", _markdown(blocks))
    io.write_text(out_dir / "seeds.html", _html(blocks, f"Seeds: {name}"))
    io.write_json(out_dir / "summary.json", summary)  # last: a multi-seed run is finished when it exists
    return summary


def _install_model(source: Path, target: Path) -> None:
    """Copy the selected seed's model folder to ``target``, swapped in whole (never half-written)."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp)
    io.replace_dir(tmp, target)


# ------------------------------------------------------------------------------ the summary


def seed_stats(values: dict[int, Any]) -> dict[str, Any]:
    """``{"mean", "sd", "min", "max", "n", "values"}`` over the finite values (``sd``: ddof=1, None below two)."""
    finite = [float(v) for v in values.values() if v is not None and math.isfinite(float(v))]
    arr = np.asarray(finite, dtype=float)
    return {"mean": float(arr.mean()) if finite else None,
            "sd": float(np.std(arr, ddof=1)) if len(finite) >= 2 else None,
            "min": float(arr.min()) if finite else None, "max": float(arr.max()) if finite else None,
            "n": len(finite), "values": {str(s): (None if v is None else float(v)) for s, v in values.items()}}


def _test_values(summary: dict, folder: Path) -> dict[str, Any]:
    """A seed's headline test metrics: its summary's ``test`` plus the other headline metrics of its report."""
    values = dict(summary.get("test") or {})
    metrics = folder / "eval" / "test" / "metrics.json"
    if metrics.is_file():
        report = json.loads(metrics.read_text(encoding="utf-8"))
        for key in (*HEADLINE_METRICS, "log_loss"):
            if key in report and key not in values:
                values[key] = report[key]
    return values


def _select(seeds: Sequence[int], summaries: Sequence[dict], select_mode: str) -> tuple[int, str]:
    scores = {s: x.get("best_val_score") for s, x in zip(seeds, summaries)}
    finite = {s: float(v) for s, v in scores.items() if v is not None and math.isfinite(float(v))}
    if not finite:
        return seeds[0], (f"seed {seeds[0]}: no seed has a val score (the method selects nothing on val), so the "
                          "first seed listed; test metrics never select")
    pick = max if select_mode == "max" else min
    best = pick(finite.values())
    chosen = next(s for s in seeds if finite.get(s) == best)
    what = summaries[list(seeds).index(chosen)].get("selected_on") or "val"
    return chosen, (f"seed {chosen}: the {'highest' if select_mode == 'max' else 'lowest'} best_val_score "
                    f"({what}: {best:.4f}) of the {len(seeds)} seeds (ties: the seed listed first); "
                    "test metrics never select")


def seed_summary(name: str, seeds: Sequence[int], summaries: Sequence[dict], out_dir: Path,
                 select_mode: str = "max") -> dict:
    """The aggregate ``summary.json`` of a multi-seed run from its seeds' summaries."""
    seeds = list(seeds)
    chosen, why = _select(seeds, summaries, select_mode)
    selected = summaries[seeds.index(chosen)]
    tests = {s: _test_values(x, seed_folder(out_dir, s)) for s, x in zip(seeds, summaries)}
    keys = list(dict.fromkeys(k for t in tests.values() for k in t))
    test_seeds = {k: seed_stats({s: tests[s].get(k) for s in seeds}) for k in keys}
    transfer = []
    for entry in selected.get("transfer") or []:
        dataset = entry["eval_dataset"]
        per_seed = {s: next((t["test"] for t in x.get("transfer") or [] if t["eval_dataset"] == dataset), {})
                    for s, x in zip(seeds, summaries)}
        stats = {k: seed_stats({s: per_seed[s].get(k) for s in seeds}) for k in entry["test"]}
        transfer.append({"eval_dataset": dataset, "test": {k: v["mean"] for k, v in stats.items()},
                         "test_ci": {k: None for k in stats}, "report": entry.get("report"), "test_seeds": stats})
    table_keys = list((selected.get("test") or {}).keys())
    return {**selected, "name": name, "test": {k: test_seeds[k]["mean"] for k in table_keys},
            "test_ci": {k: None for k in table_keys}, "transfer": transfer,
            "selected_on": why, "table_extra": {"seeds": f"{len(seeds)}: {', '.join(map(str, seeds))}"},
            "wall_seconds": round(sum(float(x.get("wall_seconds") or 0.0) for x in summaries), 1),
            "seeds": {"seeds": seeds, "n": len(seeds), "folders": {str(s): seed_folder(out_dir, s).name for s in seeds},
                      "selected_seed": chosen, "selection": why, "sd": SD_TEXT,
                      "model": "model/ is a copy of the selected seed's model folder"},
            "test_seeds": test_seeds,
            "val_seeds": {"best_val_score": seed_stats({s: x.get("best_val_score") for s, x in zip(seeds, summaries)})}}


def seed_cell(summary: dict, key: str) -> str | None:
    """A suite-table cell ``72.3 ± 1.2`` (in %, mean ± sample sd) when ``summary`` has seeds, else None."""
    stats = (summary.get("test_seeds") or {}).get(key)
    if not stats:
        return None
    if stats["mean"] is None:
        return "n/a"
    return f"{100 * stats['mean']:.1f}" + ("" if stats["sd"] is None else f" ± {100 * stats['sd']:.1f}")


def seeds_table(summary: dict) -> pd.DataFrame:
    """seeds.csv: one row per seed (folder, selected, val score, every test metric)."""
    info, tests = summary["seeds"], summary["test_seeds"]
    rows = []
    for s in info["seeds"]:
        row = {"seed": s, "folder": info["folders"][str(s)], "selected": s == info["selected_seed"],
               "best_val_score": summary["val_seeds"]["best_val_score"]["values"][str(s)]}
        row.update({f"test_{k}": v["values"][str(s)] for k, v in tests.items()})
        for t in summary.get("transfer") or []:
            row.update({f"{t['eval_dataset']}_{k}": v["values"][str(s)] for k, v in t["test_seeds"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _stat_rows(stats: dict[str, dict], seeds: Sequence[int]) -> list[list[str]]:
    return [[key, format_metric(v["mean"]), format_metric(v["sd"]), format_metric(v["min"]), format_metric(v["max"]),
             *(format_metric(v["values"][str(s)]) for s in seeds)] for key, v in stats.items()]


def _blocks(summary: dict) -> list[tuple]:
    info = summary["seeds"]
    seeds = info["seeds"]
    header = ["Metric", "Mean", "SD", "Min", "Max", *(f"seed {s}" for s in seeds)]
    blocks = [("h1", f"{summary['name']}: {info['n']} seeds"),
              ("p", f"{summary.get('method')} on {summary.get('dataset')} (task {summary.get('task')}); seeds "
                    f"{', '.join(map(str, seeds))}, each a full run in {', '.join(info['folders'].values())}."),
              ("p", f"SD is the {SD_TEXT}. The CIs inside each seed's report cover the test cases only; the spread "
                    "here is the training noise (another seed, another model) on the same test cases."),
              ("p", f"Model (model/): {info['selection']}."),
              ("h2", "Test split"), ("table", header, _stat_rows(summary["test_seeds"], seeds)),
              ("h2", "Validation (what each seed selected its model on)"),
              ("table", header, _stat_rows(summary["val_seeds"], seeds))]
    for t in summary.get("transfer") or []:
        blocks += [("h2", f"Transfer: {t['eval_dataset']} test"), ("table", header, _stat_rows(t["test_seeds"], seeds))]
    return blocks


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        if block[0] == "table":
            out.append(markdown_table(block[1], block[2]))
        else:
            out.append({"h1": "# ", "h2": "## ", "p": ""}[block[0]] + block[1] + "\n")
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.2em .6em}"
        "td{text-align:right}th{background:#f4f4f4}")


def _html(blocks: list[tuple], title: str) -> str:
    body = [html_table(b[1], b[2]) if b[0] == "table" else f"<{b[0]}>{html.escape(b[1])}</{b[0]}>" for b in blocks]
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ------------------------------------------------------------------------------ comparing


def is_seed_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a finished multi-seed run (its summary.json has ``seeds``)."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return False
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("seeds"), dict)
    except (json.JSONDecodeError, AttributeError):
        return False


def _seed_predictions(folder: Path) -> tuple[list[int], list[Path]]:
    seeds = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["seeds"]["seeds"]
    return list(seeds), [predictions_path(seed_folder(folder, s)) for s in seeds]


def compare_seed_folders(a: str | os.PathLike, b: str | os.PathLike, n_bootstrap: int = 1000, seed: int = 0,
                         names: tuple[str, str] | None = None, allow_duplicates: bool = False) -> dict:
    """Compare the multi-seed runs ``b`` and ``a`` (folders) seed pair by seed pair.

    Seeds are paired by value when both runs have the same seeds, otherwise by position in each
    run's list (the result's ``pairing`` says which); both need the same number of seeds.
    """
    a, b = Path(a), Path(b)
    names = names or (str(a), str(b))
    for folder, label in ((a, names[0]), (b, names[1])):
        if not is_seed_run(folder):
            raise DataError(f"{label} is not a finished multi-seed run (no summary.json with seeds); compare two "
                            "runs made with --seeds, or two single runs")
    seeds_a, preds_a = _seed_predictions(a)
    seeds_b, preds_b = _seed_predictions(b)
    if len(seeds_a) != len(seeds_b):
        raise DataError(f"{names[0]} has {len(seeds_a)} seeds ({seeds_a}) and {names[1]} {len(seeds_b)} ({seeds_b}); "
                        "run both with the same seeds (seed i of A is compared with seed i of B)")
    pairing = "by seed value (the same seeds)" if sorted(seeds_a) == sorted(seeds_b) else "by position in each list"
    if sorted(seeds_a) == sorted(seeds_b):
        order = [seeds_b.index(s) for s in seeds_a]
        seeds_b, preds_b = [seeds_b[i] for i in order], [preds_b[i] for i in order]
    result = compare_seed_predictions(preds_a, preds_b, seeds_a, seeds_b, n_bootstrap=n_bootstrap, seed=seed,
                                      names=names, allow_duplicates=allow_duplicates)
    result["pairing"] = pairing
    return result


def seed_baseline_cells(base_dir: Path, run_dir: Path, label: str, n_bootstrap: int, progress: bool) -> dict[str, str]:
    """A suite run's comparison with a baseline when either is a multi-seed run: saved in
    ``run_dir/compare_vs_<label>/`` and returned as table cells (``n/a`` with the reason printed)."""
    if base_dir.resolve() == run_dir.resolve():
        return {f"ΔBACC vs {label}": "baseline"}
    try:
        result = compare_seed_folders(base_dir, run_dir, n_bootstrap=n_bootstrap, names=(label, run_dir.name))
    except DermkitError as exc:
        if progress:
            print(f"{run_dir.name}: no comparison with {label}: {exc}")
        return {f"ΔBACC vs {label}": "n/a"}
    save_seed_comparison(result, run_dir / f"compare_vs_{label}")
    return seed_suite_columns(result, label)
