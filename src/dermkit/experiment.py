"""YAML config -> run -> output folder, suites of runs compared in one table, config checks, and
one encoder evaluated on several datasets (``dermkit zeroshot`` / ``dermkit probe``).

A config names its ``method`` (any registered method, see :mod:`dermkit.methods.base`) and holds
that method's keys::

    method: prompt_learning        # supervised | zeroshot | linear_probe | contrastive | prompt_learning | fusion
    name: cgcoop_ift               # optional; default: the file name
    data: derm7pt
    task: melanoma_vs_rest         # all | melanoma_vs_rest | binary:CLASS
    eval_data: [ph2]               # transfer tests
    ...

:class:`Run` owns the bookkeeping every method used to write for itself: the config snapshot
(``config.yaml``), the best model (``model/``, written atomically), the training engine bound to the
run folder, the test report of the selected model on the task's test split and on every
``eval_data`` test split (``eval/test``, ``eval/<dataset>_test``; plus the Breslow thickness report,
``eval/test/thickness.*``, when the model's test predictions carry a thickness), and
``summary.json`` with one schema (see :meth:`Run.finish`). :func:`run_zeroshot` and
:func:`run_probe` keep their own folder layout (the report in ``<dataset>/``) but write each
dataset folder's ``summary.json`` through a :class:`Run` too, so it has the same schema.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import yaml

from dermkit import io, tracking
from dermkit.data.card import load_card
from dermkit.data.datasheet import save_datasheet
from dermkit.data.prompts import prompt_spec
from dermkit.data.tasks import derive_task
from dermkit.engine import distributed
from dermkit.engine.loop import Engine
from dermkit.engine.resume import ResumeCheck, check_resume, write_record
from dermkit.errors import ConfigError, DataError, DermkitError
from dermkit.evaluate import evaluate, read_predictions
from dermkit.evaluate.calibration import (
    apply_offsets,
    apply_temperature,
    calibration_markdown,
    calibration_report,
    fit_class_offsets,
    fit_temperature,
)
from dermkit.evaluate.compare import compare_predictions, predictions_path, save_comparison
from dermkit.evaluate.compare import suite_columns as compare_columns
from dermkit.evaluate.predictions import prediction_arrays
from dermkit.evaluate.stress import save_stress
from dermkit.evaluate.subgroups import (
    attach_metadata,
    save_subgroups,
    subgroup_analysis,
    subgroup_labels,
)
from dermkit.evaluate.subgroups import suite_columns as subgroup_columns
from dermkit.evaluate.tables import markdown_table, percent_ci
from dermkit.inputs import MAX_YAML_CHARS, load_yaml, read_text
from dermkit.io import write_csv, write_json, write_text
from dermkit.methods import get_method, load_predictor
from dermkit.methods.base import DatasetResult, Method, Predictor, Recalibrated
from dermkit.methods.linear_probe import (
    DEFAULT_CS,
    DEFAULT_FRACTIONS,
    ProbeConfig,
    check_sweep,
    probe_sweep,
    write_probe_table,
)
from dermkit.methods.ood import fit_detector
from dermkit.methods.stress import run_stress
from dermkit.methods.zeroshot import ZeroShotConfig, write_zeroshot_table, zeroshot_report
from dermkit.models.encoders import load_encoder
from dermkit.models.text import require_text
from dermkit.seeds import SEEDS_NOTE, is_seed_run, parse_seeds, run_seeds, seed_baseline_cells, seed_cell

__all__ = ["Run", "load_config", "run_experiment", "run_suite", "suite_table", "suite_markdown", "check_configs",
           "run_zeroshot", "run_probe", "SUMMARY_KEYS", "TABLE_METRICS"]

TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
HEADERS = {"accuracy": "ACC", "balanced_accuracy": "BACC", "macro_f1": "F1", "macro_auc": "AUC"}
# Keys every summary.json has (None where a method has nothing to say); methods may add more.
SUMMARY_KEYS = ("name", "method", "dataset", "task", "model", "best_epoch", "epochs_run", "selected_on",
                "best_val_score", "wall_seconds", "report", "test", "test_ci", "transfer", "table_extra")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A config mapping from YAML; ``name`` defaults to the file's stem."""
    path = Path(path)
    raw = load_yaml(read_text(path, "config file", ConfigError, MAX_YAML_CHARS), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping (method: ..., data: ..., ...)")
    raw.setdefault("name", path.stem)
    raw["_source"] = str(path)
    return raw


def _split_raw(raw: dict[str, Any]) -> tuple[Method, dict[str, Any], str | None, str]:
    raw = dict(raw)
    where = str(raw.pop("_source", None) or f"config {raw.get('name', '?')!r}")
    tracking.check_mode(raw.pop("tracking", None), where)  # any method's config may ask for tracking
    method = get_method(raw.pop("method", None), where)
    name = raw.pop("name", None)
    if raw.get("seeds") is not None:  # several runs, one per seed: dermkit.seeds
        parse_seeds(raw.pop("seeds"), f"{where}: seeds")
    return method, raw, name, where


# ------------------------------------------------------------------------------ the run


class Run:
    """One method's run in one folder; handed to ``Method.fit``.

    ``card``: the run's dataset card when the caller has loaded it already (else it is derived
    from the config's ``data`` and ``task`` on first use).
    """

    def __init__(self, method: Method, config, out_dir: str | os.PathLike, name: str | None = None,
                 resume: bool = False, progress: bool = True, card=None):
        self.method = method
        self.config = config
        self.out_dir = Path(out_dir)
        self.name = name or self.out_dir.name
        self.resume = resume
        self.progress = progress
        self.started = time.perf_counter()
        self.summary: dict[str, Any] = {}  # method-specific summary fields
        self.table_extra: dict[str, str] = {}  # method-specific suite-table columns
        self.reports: dict[str, tuple] | None = None
        self.resume_check: ResumeCheck | None = None  # what a resume changed of the recorded config
        self._card = card
        self._eval_cards = None
        self.tracking: str | None = None  # experiment tracking (``tracking: mlflow``), kept in config.yaml
        self.tracker: tracking.MlflowTracker | None = None  # while run_experiment tracks the run

    # -- data
    def card(self):
        """The run's dataset card, relabelled for its ``task``."""
        if self._card is None:
            c = self.config
            self._card = derive_task(c.data, getattr(c, "task", None),
                                     negative_name=getattr(c, "negative_name", "other skin lesion"))
        return self._card

    def eval_cards(self) -> list:
        """The ``eval_data`` cards under the same task (their classes must equal the run's)."""
        if self._eval_cards is None:
            c, card = self.config, self.card()
            negative = getattr(c, "negative_name", "other skin lesion")
            cards = [derive_task(d, getattr(c, "task", None), negative_name=negative)
                     for d in getattr(c, "eval_data", None) or []]
            for other in cards:
                if other.classes != card.classes:
                    raise ConfigError(f"eval_data {other.name} has classes {other.classes}, the model {card.classes}; "
                                      "use a task both share (e.g. task: melanoma_vs_rest)")
            self._eval_cards = cards
        return self._eval_cards

    # -- files
    @property
    def model_dir(self) -> Path:
        return self.out_dir / "model"

    def resolved_config(self) -> dict[str, Any]:
        """The full config (every default filled in), as ``config.yaml`` holds it."""
        extra = {"tracking": self.tracking} if self.tracking else {}
        return {"method": self.method.name, "name": self.name, **extra, **self.config.to_dict()}

    def write_config(self) -> Path:
        """``config.yaml``: the full config (every default filled in), runnable with ``dermkit run``."""
        return write_text(self.out_dir / "config.yaml", yaml.safe_dump(self.resolved_config(), sort_keys=False))

    def save_best(self, predictor: Predictor) -> Path:
        """Write the selected model (atomically replacing the previous best); rank 0 alone."""
        if distributed.rank() != 0:
            return self.model_dir
        return predictor.save(self.model_dir)

    # -- training
    def engine(self, model, engine_config=None):
        return Engine(model, engine_config or self.config.engine, self.out_dir, progress=self.progress,
                      on_epoch=self.tracker.log_epoch if self.tracker else None)

    def fit(self, engine, make_batches: Callable, loss_fn: Callable, validate: Callable,
            to_predictor: Callable[[Any, dict], Predictor], steps_per_epoch: int,
            batch_size_fn: Callable | None = None):
        """``engine.fit`` with the best model saved through ``to_predictor(model, val_metrics)``."""
        def on_best(model, metrics):
            predictor = to_predictor(model, metrics)
            predictor.model_card.update(val_metrics=metrics, epoch=engine.state.epoch + 1)
            changed = self.resume_check.weight_changes() if self.resume_check else None
            if changed:  # weights trained after a resume that changed the config say so
                predictor.model_card["resumed_with_changes"] = changed
            self.save_best(predictor)

        state = engine.fit(make_batches, loss_fn, validate, on_best, steps_per_epoch=steps_per_epoch,
                           resume=self.resume, batch_size_fn=batch_size_fn)
        self.summary.update(best_epoch=state.best_epoch, epochs_run=state.epoch,
                            selected_on=f"val {engine.config.select_metric}", best_val_score=state.best_score)
        if state.precision is not None:  # precision: auto on a CPU: what was chosen and why
            self.summary["precision"] = state.precision
        return state

    # -- recalibration
    def recalibrate(self, predictor: Predictor) -> Predictor:
        """``calibrate: temperature`` (one temperature fitted on val by NLL) and/or ``decision:
        balanced`` (per-class offsets fitted on val for balanced accuracy, after the temperature):
        saved with the model; returns the recalibrated predictor (the report shows the effect)."""
        val = predictor.predict_split(self.card(), "val", progress=self.progress)
        _, y, proba, _ = prediction_arrays(read_predictions(val))
        temperature = offsets = None
        if getattr(self.config, "calibrate", None) == "temperature":
            temperature = fit_temperature(proba, y)
            proba = apply_temperature(proba, temperature)
            self.summary["temperature"] = round(float(temperature), 6)
        if getattr(self.config, "decision", None) == "balanced":
            offsets = fit_class_offsets(proba, y)
            self.summary["class_offsets"] = dict(zip(predictor.classes, map(float, offsets)))
        recalibrated = Recalibrated(predictor, temperature, offsets)
        self.save_best(recalibrated)
        self.reports = None  # a method that reported inside fit (fusion) is reported again, recalibrated
        return recalibrated

    def fit_ood(self, predictor: Predictor) -> None:
        """Fit the model's out-of-distribution detector (train split fits, val split calibrates) into
        the model folder, unless the config's ``ood_acceptance`` is null or the method fits none."""
        acceptance = getattr(self.config, "ood_acceptance", None)
        if acceptance is None or not predictor.fits_ood or not isinstance(getattr(self.config, "data", None), str):
            return
        card = self.card()
        splits = set(card.table["split"]) if "split" in card.table.columns else set()
        if not {"train", "val"} <= splits:
            self.summary["ood"] = {"fitted": False, "why": f"{card.name} has no train and val split to fit and "
                                   "calibrate an out-of-distribution detector on"}
            return
        seed = getattr(getattr(self.config, "engine", None), "seed", 0)
        detector = fit_detector(predictor, card, self.model_dir, acceptance=acceptance, seed=seed,
                                progress=self.progress)
        self.summary["ood"] = {"default": detector.default, "acceptance": detector.acceptance,
                               "thresholds": detector.thresholds, "val_auroc_vs_synthetic": detector.val_auroc,
                               "description": detector.describe()}

    # -- reports
    def report(self, predictor: Predictor) -> dict[str, tuple]:
        """Test report of ``predictor`` on the run's task and on every ``eval_data`` test split.

        When the predictions on the run's test split carry a Breslow thickness (and its target), the
        thickness report (metrics with CIs, plots) joins the test report (``eval/test/thickness.*``),
        and ``summary.json`` gets ``thickness`` and the suite-table column ``thickness (test)``.
        Returns ``{"test" | dataset: (report, folder, predictions frame)}``; computed once.
        """
        if self.reports is not None:
            return self.reports
        card = self.card()
        seed = getattr(getattr(self.config, "engine", None), "seed", 0)
        task = getattr(self.config, "task", None)
        reports = {}
        for eval_card in [card] + self.eval_cards():
            # The full test split, so the report shows it beside the cleaned one when the card excludes images.
            predictions = predictor.predict(eval_card, split="test", progress=self.progress, keep_excluded=True)
            preds = predictions.frame()
            excluded = eval_card.is_excluded(preds["image"])
            title = (f"{predictor.name} ({card.name}{'' if task in (None, '', 'all') else ', ' + task}) "
                     f"on {eval_card.name} test")
            report = evaluate(preds, n_bootstrap=self.config.n_bootstrap, seed=seed, title=title,
                              excluded=excluded, excluded_note=eval_card.exclusion_note())
            if excluded.any():
                predictions = predictions.subset(~excluded)
                preds = preds[~excluded].reset_index(drop=True)
            key = "test" if eval_card is card else eval_card.name
            folder = self.out_dir / "eval" / ("test" if key == "test" else f"{eval_card.name}_test")
            save_datasheet(eval_card, folder)
            report.links["Datasheet of the test data"] = "datasheet.html"
            report.save(folder)
            if getattr(predictor, "temperature", None) and hasattr(predictor, "inner"):
                _write_calibration(folder, preds, predictor, self.config.n_bootstrap, seed)
            if key == "test" and predictions.thickness is not None and predictions.thickness_target is not None:
                thickness = _write_thickness(folder, predictions, predictor, card, self.config.n_bootstrap, seed)
                self.summary["thickness"] = {"kind": thickness.kind, **thickness.metrics, "ci": thickness.ci}
                self.table_extra["thickness (test)"] = thickness.summary_text()
            reports[key] = (report, folder, preds)
        self.reports = reports
        return reports

    def record_report(self, report, folder: Path, preds: pd.DataFrame) -> None:
        """Take a test report written elsewhere (a multi-dataset command's own layout) as this run's."""
        self.reports = {"test": (report, Path(folder), preds)}

    def finish(self, predictor: Predictor | None) -> dict[str, Any]:
        """Write and return ``summary.json`` (keys :data:`SUMMARY_KEYS` + the method's own)."""
        def block(report):
            return ({k: report.metrics.get(k) for k in TABLE_METRICS},
                    {k: report.metrics.get("ci", {}).get(k) for k in TABLE_METRICS})

        summary = {k: None for k in SUMMARY_KEYS}
        card = self.card() if hasattr(self.config, "data") and isinstance(self.config.data, str) else None
        task = getattr(self.config, "task", None)
        summary.update(name=self.name, method=self.method.name, dataset=card.name if card else None,
                       task=task or "all", model=predictor.name if predictor else None, transfer=[],
                       table_extra=dict(self.table_extra))
        if self.reports:
            report, folder, _ = self.reports["test"]
            summary["test"], summary["test_ci"] = block(report)
            summary["report"] = str(folder)
            for key, (report, folder, _) in self.reports.items():
                if key != "test":
                    t, t_ci = block(report)
                    summary["transfer"].append({"eval_dataset": key, "test": t, "test_ci": t_ci, "report": str(folder)})
        if card is not None and card.excluded:  # rows the card's exclusion list left out, per reason
            summary["excluded"] = card.excluded
        summary.update(self.summary)
        summary["wall_seconds"] = round(time.perf_counter() - self.started, 1)
        write_json(self.out_dir / "summary.json", summary)
        return summary


def _write_calibration(folder: Path, preds, predictor, n_bootstrap: int, seed: int) -> None:
    """``calibration.json`` / ``.md`` and the before/after reliability diagram of a model recalibrated
    by a temperature (its offsets, if any, count as part of "after")."""
    frame = read_predictions(preds)
    _, y, after, _ = prediction_arrays(frame)
    temperature = predictor.temperature
    unshifted = after if predictor.offsets is None else apply_offsets(after, -predictor.offsets)
    before = apply_temperature(unshifted, 1.0 / temperature)  # the uncalibrated probabilities
    groups = frame["group"].to_numpy() if "group" in frame.columns else None
    result, fig = calibration_report(y, before, after, groups, n_bootstrap=max(1, n_bootstrap), seed=seed,
                                     temperature=temperature)
    io.write_json(folder / "calibration.json", result)
    io.write_text(folder / "calibration.md", calibration_markdown(result) + "\n")
    io.save_figure(folder / "reliability_calibration.png", fig)


def _write_thickness(folder: Path, predictions, predictor: Predictor, card, n_bootstrap: int, seed: int):
    """The Breslow thickness report of test ``predictions`` (true vs predicted thickness of the rows
    that have a target; CIs on the classification report's resamples), saved in ``folder``."""
    from dermkit.evaluate.thickness import thickness_report  # matplotlib: loaded only for a thickness model

    info = predictor.model_card.get("thickness") or {}
    kind = info.get("kind")
    report = thickness_report(kind, predictions.ids, predictions.thickness_target, predictions.thickness,
                              info.get("bins"), predictions.groups, n_bootstrap=n_bootstrap, seed=seed,
                              title=f"Breslow thickness ({kind}) of {predictor.name} on {card.name} (test split)")
    report.save(folder)
    return report


# ------------------------------------------------------------------------------ entry points


def _refuse_finished(out_dir: Path, resume: bool, force: bool) -> None:
    if resume:
        if not (out_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume: {out_dir} holds no run to resume (no config.yaml); start it without --resume")
        return
    if force or not out_dir.exists():
        return
    if (out_dir / "summary.json").is_file() or (out_dir / "checkpoints").is_dir() or (out_dir / "model").is_dir():
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it, --force to overwrite it, "
                          "or choose another --out")


def run_experiment(raw: dict[str, Any], out_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
                   force: bool = False, track: str | None = None, experiment: str | None = None,
                   allow_config_change: bool = False) -> dict:
    """Run one config (a mapping with ``method``) into ``out_dir``; returns its summary.

    Everything is validated before any file is written. ``resume`` continues a run from its last
    checkpoint; without it (or ``force``) a folder that already holds a run is refused. A resume
    compares the config with the one the run was trained under (``run_record.json``, see
    :mod:`dermkit.engine.resume`) and refuses a difference that changes the result, unless
    ``allow_config_change`` (then the changes are recorded in summary.json and model.json). ``track``
    (``mlflow``, or ``none``) overrides the config's ``tracking:``; ``experiment`` names the MLflow
    experiment (default: the method's name), see :mod:`dermkit.tracking`. A config
    with ``seeds`` runs once per seed (:func:`dermkit.seeds.run_seeds`; finished seeds reused).
    """
    if raw.get("seeds") is not None:
        def run_one(seed_raw, seed_out, **kw):  # each seed tracked like a single run
            return run_experiment(seed_raw, seed_out, track=track, experiment=experiment,
                                  allow_config_change=allow_config_change, **kw)
        return run_seeds(raw, out_dir, run_one, resume=resume, force=force, progress=progress)
    method, rest, name, where = _split_raw(raw)
    config = method.config(rest, where)
    mode = tracking.resolve_mode(track, raw, where)
    out_dir = Path(out_dir)
    _refuse_finished(out_dir, resume, force)
    if allow_config_change and not resume:
        raise ConfigError("--allow-config-change lets a --resume continue under a changed config; it needs --resume")
    run = Run(method, config, out_dir, name=name, resume=resume, progress=progress)
    run.tracking = mode
    resolved = {"method": method.name, "name": run.name, **config.to_dict()}
    if resume:
        run.resume_check = check_resume(out_dir, resolved, allow_config_change,
                                        fallback=lambda: _saved_config(out_dir, method))
        if run.resume_check.summary():
            run.summary["resumed"] = run.resume_check.summary()
    run.card()  # a missing dataset or bad task fails before any file is written
    run.eval_cards()
    for warning in method.check(config):  # e.g. a model folder that does not exist (yet, for --check)
        raise ConfigError(f"{where}: {warning}")
    main = distributed.rank() == 0  # under torchrun every process trains; rank 0 alone writes
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        run.write_config()
        write_record(out_dir, resolved, run.resume_check)
    with tracking.tracked(mode if main else None, out_dir, experiment=experiment or method.name, run_name=run.name,
                          params=run.resolved_config(), tags=_tags(run), resume=resume) as run.tracker:
        predictor = method.fit(config, run)
        distributed.shutdown()  # training is over: rank 0 reports alone
        if not main:
            return {}
        if predictor is not None and (getattr(config, "calibrate", None) == "temperature"
                                      or getattr(config, "decision", None) == "balanced"):
            predictor = run.recalibrate(predictor)
        if predictor is not None:
            run.fit_ood(predictor)
            run.report(predictor)
        summary = run.finish(predictor)
        if run.tracker is not None:
            run.tracker.finish(summary)
    return summary


def _tags(run: Run) -> dict[str, Any]:
    """The MLflow tags of a run: what to filter and group runs by in the UI."""
    data = getattr(run.config, "data", None)
    return {"method": run.method.name, "dataset": run.card().name if isinstance(data, str) else None,
            "task": getattr(run.config, "task", None) or "all"}


def _saved_config(out_dir: Path, method: Method) -> dict[str, Any] | None:
    """The resolved ``config.yaml`` of a run folder without a run record (None if it does not parse)."""
    try:
        saved, rest, name, where = _split_raw(load_config(out_dir / "config.yaml"))
        if saved is not method:
            return {"method": saved.name}
        return {"method": saved.name, "name": name or out_dir.name, **saved.config(rest, where).to_dict()}
    except DermkitError:
        return None


def check_configs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, list[str]]]:
    """Validate configs without running anything: keys, value types and ranges, data folders,
    model specs. Returns ``[(path, warnings)]``; raises :class:`ConfigError` naming the file."""
    out = []
    for path in paths:
        raw = load_config(path)
        try:
            method, rest, _, where = _split_raw(raw)
            config = method.config(rest, where)
            warnings = method.check(config)
            if isinstance(getattr(config, "data", None), str) and not any(
                    w.startswith(("data:", "eval_data:")) for w in warnings):  # the task and eval_data fit the datasets
                run = Run(method, config, Path(os.devnull), progress=False)
                run.card()
                run.eval_cards()
        except DermkitError as exc:
            message = str(exc)
            raise type(exc)(message if str(path) in message else f"{path}: {message}") from exc
        out.append((str(path), warnings))
    return out


def run_suite(configs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, rerun: bool = False,
              progress: bool = True, overrides: dict[str, Any] | None = None, subgroups: Sequence[str] | None = None,
              bins: dict | None = None, baseline: str | None = None, n_bootstrap: int = 1000,
              stress: str | None = None, track: str | None = None) -> pd.DataFrame:
    """Run every config into ``out_dir/<name>/`` and write the comparison table.

    A config whose folder already has ``summary.json`` is not rerun (so an interrupted suite
    continues where it stopped) unless ``rerun``; an interrupted run inside it resumes from its
    last checkpoint. ``overrides`` (e.g. ``{"epochs": 1}``) apply to every config.

    ``subgroups`` (metadata columns, see :mod:`dermkit.evaluate.subgroups`; ``bins`` = cut points)
    adds per attribute the worst-minus-best balanced-accuracy gap (CI) of each run's test report,
    with the full tables in ``<name>/subgroups/``. ``baseline`` (a run name of the suite or a run
    folder) adds the paired comparison of every run against it (ΔBACC, ΔAUC with paired bootstrap
    CI and p, DeLong's and McNemar's p; ``<name>/compare_vs_<baseline>/``); a run on other test
    cases gets ``n/a`` and the reason is printed. ``track`` (``mlflow``) tracks every run it trains
    (as a config's ``tracking:`` does) in one MLflow experiment named after ``out_dir``.
    """
    out_dir = Path(out_dir)
    raws = [load_config(p) for p in configs]
    if not raws:
        raise ConfigError("no configs given to the suite")
    names = [r["name"] for r in raws]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two configs share the name(s) {dupes}; give each a distinct `name:`")
    tracking.check_mode(track, key="--track")
    for raw in raws:  # every config must be valid before hours of work start
        method, rest, _, where = _split_raw({**raw, **(overrides or {})})
        method.config(rest, where)
    base_dir = None
    if baseline is not None:
        base_dir = out_dir / baseline if baseline in names else Path(baseline)
        if baseline not in names and not base_dir.exists():
            raise ConfigError(f"--baseline {baseline!r} is neither a run of this suite ({', '.join(names)}) nor a "
                              "run folder or predictions CSV; give one of them")
        if baseline not in names and not is_seed_run(base_dir):
            predictions_path(base_dir)  # a folder without predictions fails before the runs
    summaries = []
    for raw in raws:
        run_dir = out_dir / raw["name"]
        if {**raw, **(overrides or {})}.get("seeds") is not None:  # finished seeds reused, killed ones resumed
            summaries.append(run_experiment({**raw, **(overrides or {})}, run_dir, resume=not rerun,
                                            progress=progress, force=rerun))
            continue
        done = run_dir / "summary.json"
        if done.is_file() and not rerun:
            summaries.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        resume = (run_dir / "checkpoints" / "last.safetensors").is_file() and not rerun
        try:
            summaries.append(run_experiment({**raw, **(overrides or {})}, run_dir, resume=resume, progress=progress,
                                            force=True, track=track, experiment=out_dir.resolve().name))
        except ConfigError as exc:  # e.g. a config edited since the run was interrupted
            raise (ConfigError(f"{exc} (dermkit suite: --rerun starts {raw['name']} over)") if resume else exc) \
                from None
    extra: dict[str, dict[str, str]] = {}
    base_csv = predictions_path(base_dir) if base_dir is not None and not is_seed_run(base_dir) else None
    for raw, summary in zip(raws, summaries):
        cells = extra.setdefault(summary.get("name"), {})
        report = summary.get("report")
        if subgroups:
            try:
                if not report or not isinstance(raw.get("data"), str):
                    raise DermkitError("the run has no test report on a dataset card")
                card = load_card(raw["data"])
                frame = read_predictions(Path(report) / "predictions.csv")
                labels, how = subgroup_labels(attach_metadata(frame, card.analysis_table(), str(card.metadata_csv)),
                                              subgroups,
                                              bins, missing_values=card.missing_values)
                result = subgroup_analysis(frame, labels, how, n_bootstrap=n_bootstrap)
                save_subgroups(result, out_dir / raw["name"] / "subgroups", title=raw["name"])
                cells.update(subgroup_columns(result))
            except DermkitError as exc:  # e.g. a dataset without that column: the other runs still get theirs
                if progress:
                    print(f"{raw['name']}: no subgroup table: {exc}")
                cells.update({f"ΔBACC {a}": "n/a" for a in subgroups})
        if stress:
            _suite_stress(raw, summary, out_dir / raw["name"], stress, n_bootstrap, cells, progress)
        if base_dir is not None and (base_csv is None or is_seed_run(out_dir / raw["name"])):
            cells.update(seed_baseline_cells(base_dir, out_dir / raw["name"], Path(baseline).name, n_bootstrap,
                                             progress))
        elif base_dir is not None:
            label = Path(baseline).name
            if raw["name"] == baseline or (report and base_csv.resolve() == predictions_path(report).resolve()):
                cells[f"ΔBACC vs {label}"] = "baseline"
                continue
            try:
                if not report:
                    raise DermkitError("the run has no test report")
                result = compare_predictions(base_csv, predictions_path(report),
                                             n_bootstrap=n_bootstrap, names=(label, raw["name"]))
            except DermkitError as exc:
                if progress:
                    print(f"{raw['name']}: no comparison with {label}: {exc}")
                cells[f"ΔBACC vs {label}"] = "n/a"
                continue
            save_comparison(result, out_dir / raw["name"] / f"compare_vs_{label}")
            cells.update(compare_columns(result, label))
    table = suite_table(summaries, extra)
    write_csv(out_dir / "suite.csv", table)
    write_text(out_dir / "suite.md", suite_markdown(table))
    write_json(out_dir / "suite.json", summaries)
    return table


def _suite_stress(raw: dict, summary: dict, run_dir: Path, plan: str, n_bootstrap: int, cells: dict,
                  progress: bool) -> None:
    """A suite run's stress test on its test predictions (``<run>/stress/``) and its two table cells."""
    report = summary.get("report")
    try:
        if not report or not isinstance(raw.get("data"), str) or not (run_dir / "model").is_dir():
            raise DermkitError("the run has no model folder and test report on a dataset card")
        predictor = load_predictor(run_dir / "model")
        card = predictor.task_card(load_card(raw["data"]))
        table, result = run_stress(predictor, card, read_predictions(Path(report) / "predictions.csv"), plan,
                                   n_bootstrap=n_bootstrap, progress=progress)
        save_stress(table, run_dir / "stress", result, title=raw["name"])
        rel = result["mean_relative_drop"]
        cells["stress: BACC / AUC drop"] = (f"{100 * rel['balanced_accuracy']:.1f}% / "
                                            f"{100 * rel['macro_auc']:.1f}%")
        worst = result["worst"]
        cells["stress: worst (flipped)"] = (f"{worst['transform']} ({100 * worst['flip_rate']:.0f}%)"
                                           if worst else "n/a")
    except DermkitError as exc:
        if progress:
            print(f"{raw['name']}: no stress test: {exc}")
        cells["stress: BACC / AUC drop"] = "n/a"


# ------------------------------------------------------------------------------ one encoder, several datasets


def _dataset_summary(run: Run, result: DatasetResult) -> dict:
    """``result.folder/summary.json`` of one dataset of a multi-dataset command (the schema of a run's)."""
    run.record_report(result.report, result.folder, result.predictions)
    run.summary.update(result.summary)
    run.fit_ood(result.predictor)
    return run.finish(result.predictor)


def run_zeroshot(
    model_spec: str,
    datasets: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    split: str = "test",
    n_bootstrap: int = 1000,
    prompts: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    enc=None,
) -> pd.DataFrame:
    """Zero-shot evaluation of one model on several datasets; returns the summary table.

    Writes ``out_dir/<dataset>/`` (the evaluation report: metrics.json, predictions.csv,
    report.md/.html, plots; ``model/``, the zero-shot classifier folder that ``dermkit predict``
    loads; prompts.json with the texts used; positive_vs_rest.json for datasets with a positive
    class; ``summary.json`` with the schema of a ``dermkit run`` folder's plus ``split``) and
    ``out_dir/zeroshot_table.md`` + ``.csv`` (dataset, n, classes, accuracy, balanced accuracy,
    macro AUC with 95% CI, macro F1, and the positive class's (melanoma's) one-vs-rest AUROC with
    95% CI) and ``out_dir/run.json`` (the command's settings). ``enc`` skips loading ``model_spec``.
    """
    if not datasets:
        raise DataError("no datasets given; pass one or more dataset names or folders")
    if enc is None:
        enc = load_encoder(model_spec, device=device)
    require_text(enc)
    out = Path(out_dir)
    cards = [load_card(d) for d in datasets]
    for card in cards:  # fail on a bad prompt file before any compute
        prompt_spec(card, prompts)
    method = get_method("zeroshot")
    rows = []
    for card, folder in zip(cards, io.unique_names(c.name for c in cards)):
        config = ZeroShotConfig(data=card.name, model=model_spec, n_bootstrap=n_bootstrap)
        run = Run(method, config, out / folder, progress=progress, card=card)
        result = zeroshot_report(enc, card, out / folder, model_spec, split=split, n_bootstrap=n_bootstrap,
                                 prompts=prompts, cache_dir=cache_dir, seed=seed, progress=progress)
        _dataset_summary(run, result)
        rows += result.rows
    table = write_zeroshot_table(out, rows, enc.name, split, n_bootstrap)
    io.write_json(out / "run.json", {"method": "zeroshot", "model": model_spec, "encoder": enc.name,
                                     "fingerprint": enc.fingerprint, "split": split,
                                     "datasets": [str(d) for d in datasets], "prompts": None if prompts is None
                                     else str(prompts), "n_bootstrap": n_bootstrap, "seed": seed})
    return table


def run_probe(
    model_spec: str,
    datasets: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int = 3,
    Cs: Sequence[float] = DEFAULT_CS,
    class_weight: str | None = "balanced",
    n_bootstrap: int = 1000,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
    enc=None,
) -> pd.DataFrame:
    """Linear-probe evaluation of one encoder on several datasets; returns the summary table.

    Writes ``out_dir/<dataset>/``: ``runs.csv`` (every fraction x seed: n_train, chosen C, val
    and test metrics), the evaluation report of the largest fraction (seed 0) and its fitted
    probe as a classifier folder (``model/``, loaded by ``dermkit predict/evaluate --model``),
    ``summary.json`` (the schema of a ``dermkit run`` folder's, for that probe, plus ``fraction``
    and ``seed``); and ``out_dir/probe_table.md`` + ``.csv`` (dataset, fraction, n_train, balanced
    accuracy / macro AUC / macro F1 mean ± sd over seeds) and ``out_dir/run.json``. A fraction that
    keeps the whole training set is fit once (every seed would give the same model). ``enc`` skips
    loading ``model_spec``.
    """
    fractions = check_sweep(fractions, seeds)
    if not datasets:
        raise DataError("no datasets given; pass one or more dataset names or folders")
    if enc is None:
        enc = load_encoder(model_spec, device=device)
    out = Path(out_dir)
    cards = [load_card(d) for d in datasets]
    method = get_method("linear_probe")
    rows = []
    for card, folder in zip(cards, io.unique_names(c.name for c in cards)):
        config = ProbeConfig(data=card.name, model=model_spec, n_bootstrap=n_bootstrap)
        run = Run(method, config, out / folder, progress=progress, card=card)
        result = probe_sweep(enc, card, out / folder, model_spec, fractions=fractions, seeds=seeds, Cs=Cs,
                             class_weight=class_weight, n_bootstrap=n_bootstrap, cache_dir=cache_dir,
                             progress=progress)
        _dataset_summary(run, result)
        rows += result.rows
    table = write_probe_table(out, rows, enc.name, Cs, class_weight)
    io.write_json(out / "run.json", {"method": "linear_probe", "model": model_spec, "encoder": enc.name,
                                     "fingerprint": enc.fingerprint, "datasets": [str(d) for d in datasets],
                                     "fractions": fractions, "seeds": seeds, "Cs": list(Cs),
                                     "class_weight": class_weight, "n_bootstrap": n_bootstrap})
    return table


# ------------------------------------------------------------------------------ suite tables


def suite_table(summaries: Sequence[dict], extra: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """One row per run: name, data, task, ACC/BACC/F1/AUC in % with 95% CIs, plus extra columns.

    A summary may add ``table_extra`` (column -> text) for method-specific figures (e.g. the
    thickness head's MAE), shown after the standard metrics. ``extra`` (run name -> column ->
    text: subgroup gaps, comparison with a baseline) adds columns to each run's own row (not to
    its transfer rows).
    """
    rows = []
    # A transfer test (trained on one dataset, tested on another's test split) is a row of its own.
    summaries = [r for s in summaries for r in [s] + [{**s, **t, "table_extra": {}, "is_transfer": True}
                                                      for t in s.get("transfer") or []]]
    for s in summaries:
        row = {"run": s.get("name"), "method": s.get("method"), "data": s.get("dataset"),
               "task": s.get("task") or "all"}
        if s.get("is_transfer"):
            row["data"] = f"{s.get('dataset')} -> {s['eval_dataset']}"
        for key in TABLE_METRICS:
            row[HEADERS[key]] = seed_cell(s, key) or percent_ci((s.get("test") or {}).get(key),
                                                                (s.get("test_ci") or {}).get(key))
        row.update(s.get("table_extra") or {})
        if not s.get("is_transfer"):
            row.update((extra or {}).get(s.get("name"), {}))
        rows.append(row)
    return pd.DataFrame(rows)


def suite_markdown(table: pd.DataFrame) -> str:
    note = "\nMetrics in %, test split, 95% bootstrap CIs in brackets (lesion-grouped where the card has groups).\n"
    if "seeds" in table.columns:
        note += SEEDS_NOTE
    return markdown_table(list(table.columns), table.fillna("").values.tolist()) + note
