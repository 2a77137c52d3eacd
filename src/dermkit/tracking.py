"""Experiment tracking: a run mirrored into MLflow (``tracking: mlflow`` in any config, or ``--track
mlflow`` on ``dermkit run`` / ``suite`` / ``train``), so runs compare in MLflow's UI.

The run folder stays the record; MLflow gets a copy of it:

- params: the resolved config (``config.yaml``: method, name, every default filled in), flattened
  with dots (``engine.lr``); lists as JSON; values cut to MLflow's 6000 characters;
- metrics: the engine's history row of every epoch, step = epoch (``train/loss``, ``lr``,
  ``val/balanced_accuracy``..., as in TensorBoard), logged as the epoch ends; when the run is over,
  the test metrics with their 95% CI bounds (``test/macro_auc``, ``test/macro_auc_ci_low``,
  ``..._ci_high``; a transfer test as ``test_<dataset>/...``) and ``best_val_score``,
  ``best_epoch``, ``epochs_run``, ``wall_seconds``;
- tags: method, dataset, task, dermkit_version, run_folder;
- artifacts: config.yaml, summary.json, history.csv, the report folders (``eval/...``) and the model
  folder (``model/``), at their paths in the run folder.

Where: ``MLFLOW_TRACKING_URI`` when set (any server), else a local store ``mlruns/`` beside the run
folder (in the parent of ``--out``; a suite's runs: in the suite folder). The local store is
MLflow's file store (a ``file:`` URI): the sqlite store needs SQLAlchemy and alembic, which
mlflow-skinny leaves out, and needs no server either. MLflow 3 keeps the file store in
maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``, which this module sets
for its own calls (see ``CLIENT_ENV``).

Experiment: ``MLFLOW_EXPERIMENT_NAME`` when set; else a suite's folder name (every run of the
suite in one experiment), and the method's name for a single run (``supervised``: runs of one
method compare side by side; the dataset and task are tags to filter on).

Failures never lose the run: whatever MLflow raises (server down, store unwritable, mlflow not
installed) prints one warning on stderr and the run goes on untracked; its folder is written as
always. MLflow's own HTTP defaults retry an unreachable server for minutes, so, unless the user
set them, each call here runs with 2 retries, backoff factor 1 and a 10 s timeout.

Resume: ``tracking.json`` in the run folder records the store and the MLflow run id; ``--resume``
continues that MLflow run (new epochs only; params it already has are kept) when the store is
the same, else starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from dermkit.errors import ConfigError
from dermkit.io import write_json

__all__ = ["MODES", "RECORD", "check_mode", "resolve_mode", "tracked", "MlflowTracker", "flat_params",
           "default_uri"]

MODES = ("mlflow",)
RECORD = "tracking.json"  # in the run folder: the MLflow store and run id, for --resume
STORE = "mlruns"
# Environment for MLflow's calls, where the user has not set these variables (their value wins).
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # MLflow's default, 7 with backoff x2, waits minutes for a dead server
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # seconds per request (default 120)
    "MLFLOW_ALLOW_FILE_STORE": "true",  # the local mlruns/ store (see the module's docstring)
    "MLFLOW_DISABLE_TELEMETRY": "true",  # no usage reports sent from the machine that trains
}
# MLflow's limits (mlflow.utils.validation): value lengths, key length, entities per log_batch.
MAX_PARAM_VALUE, MAX_TAG_VALUE, MAX_KEY = 6000, 8000, 250
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000
REPORT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
EPOCH_KEY = "train/loss"  # every engine history row has it: its steps are the epochs already logged
FILES = ("config.yaml", "summary.json", "history.csv")


def check_mode(value: Any, where: str | None = None, key: str = "tracking") -> str | None:
    """``tracking:`` / ``--track`` -> ``"mlflow"``, or None for no tracking (null, ``none``, false)."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    prefix = f"{where}: " if where else ""
    raise ConfigError(f"{prefix}{key} must be one of: {', '.join(MODES)} (or none / null: no tracking), "
                      f"got {value!r}")


def resolve_mode(track: Any, raw: Mapping[str, Any], where: str) -> str | None:
    """The run's tracking: ``--track`` when given (``--track none`` turns a config's off), else the
    config's ``tracking:``."""
    if track is not None:
        return check_mode(track, key="--track")
    return check_mode(raw.get("tracking"), where)


def default_uri(run_dir: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI``, else the file store ``mlruns/`` in the run folder's parent."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or (Path(run_dir).resolve().parent / STORE).as_uri()


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: ``{"engine": {"lr": 0.001}}`` -> ``{"engine.lr": "0.001"}``;
    strings as they are, other values as JSON (null, true, [...]); cut to MLflow's limits."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[_key(name)] = _cut(text, MAX_PARAM_VALUE)
    return out


def _key(name: str) -> str:
    """A name MLflow accepts as a param or metric key (letters, digits, ``_ - . / space``)."""
    name = re.sub(r"[^\w./\- ]", "_", str(name))
    name = "/".join(part for part in name.split("/") if part not in ("", ".", ".."))
    return name[:MAX_KEY] or "_"


def _cut(text: str, limit: int) -> str:
    marker = "...(truncated)"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None  # an undefined AUC (NaN) is left out


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """An engine history row as metrics, named as in TensorBoard (``train_loss`` -> ``train/loss``)."""
    out = {}
    for key, value in row.items():
        value = _number(value)
        if key == "epoch" or value is None:
            continue
        for prefix in ("train_", "val_"):
            if key.startswith(prefix):
                key = prefix[:-1] + "/" + key[len(prefix):]
                break
        out[_key(key)] = value
    return out


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Test metrics with their CI bounds (and each transfer test's), and the selection figures."""
    out = {}

    def block(prefix: str, values: Mapping | None, cis: Mapping | None) -> None:
        for name in REPORT_METRICS:
            ci = (cis or {}).get(name) or {}
            for key, value in ((name, (values or {}).get(name)), (f"{name}_ci_low", ci.get("low")),
                               (f"{name}_ci_high", ci.get("high"))):
                if _number(value) is not None:
                    out[_key(f"{prefix}/{key}")] = _number(value)

    block("test", summary.get("test"), summary.get("test_ci"))
    for transfer in summary.get("transfer") or []:
        block(f"test_{transfer.get('eval_dataset')}", transfer.get("test"), transfer.get("test_ci"))
    for key in ("best_val_score", "best_epoch", "epochs_run", "wall_seconds"):
        if _number(summary.get(key)) is not None:
            out[key] = _number(summary[key])
    return out


@contextlib.contextmanager
def _client_env() -> Iterator[None]:
    """``CLIENT_ENV`` where unset, and urllib3's per-retry warnings off, for the duration of a call."""
    added = [k for k in CLIENT_ENV if k not in os.environ]
    os.environ.update({k: CLIENT_ENV[k] for k in added})
    quiet = logging.getLogger("urllib3")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)
        for k in added:
            os.environ.pop(k, None)


class MlflowTracker:
    """One dermkit run as one MLflow run. No method raises: the first failure warns on stderr
    (once) and turns the tracker off for the rest of the run."""

    def __init__(self, run_dir: str | os.PathLike, experiment: str, run_name: str, params: Mapping[str, Any],
                 tags: Mapping[str, Any], resume: bool = False, uri: str | None = None):
        self.run_dir = Path(run_dir)
        self.uri = uri or default_uri(self.run_dir)
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or experiment
        self.run_name = run_name
        self.client = None
        self.run_id: str | None = None
        self.logged_epochs = 0  # epochs this MLflow run already holds (a resumed run)
        self.failed = False
        self.closed = False
        self._call("starting the run", self._start, params, tags, resume)

    @property
    def active(self) -> bool:
        return self.run_id is not None and not self.failed and not self.closed

    # -- what the run calls
    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """The engine's history row of one epoch (step = the epoch, counted from 1)."""
        epoch = int(row.get("epoch") or 0)
        if self.active and epoch > self.logged_epochs:
            self._call(f"logging epoch {epoch}", self._log_metrics, epoch_metrics(row), epoch)
            self.logged_epochs = max(self.logged_epochs, epoch)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Test metrics with CIs, the run folder's files and folders as artifacts; the run FINISHED."""
        if self.active:
            self._call("logging the test metrics", self._log_metrics, summary_metrics(summary), 0)
            self._call("uploading the report and model folders", self._log_files, summary)
        if self.active:
            print(f"MLflow: run {self.run_id} in experiment {self.experiment!r} at {self.uri}", flush=True)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Close the MLflow run (FINISHED, FAILED or KILLED)."""
        if self.active:
            self._call("closing the run", self.client.set_terminated, self.run_id, status)
        self.closed = True

    # -- MLflow calls
    def _call(self, what: str, fn, *args) -> None:
        if self.failed:
            return
        try:
            with _client_env():
                fn(*args)
        except Exception as exc:  # tracking must never end a run
            self.failed = True
            message = " ".join(str(exc).split())
            print(f"warning: MLflow tracking to {self.uri} failed while {what} ({type(exc).__name__}: "
                  f"{_cut(message, 300)}); the run goes on untracked, its folder {self.run_dir} holds everything",
                  file=sys.stderr, flush=True)

    def _start(self, params: Mapping[str, Any], tags: Mapping[str, Any], resume: bool) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        params = flat_params(params)
        run = None
        record = _read_record(self.run_dir) if resume else {}
        if record.get("run_id") and record.get("tracking_uri") == self.uri:
            try:
                run = client.get_run(record["run_id"])
            except MlflowException:  # deleted from the store: a new MLflow run
                run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(run.info.run_id, status="RUNNING")
            params = {k: v for k, v in params.items() if k not in run.data.params}  # params cannot change
            self.logged_epochs = max((m.step for m in client.get_metric_history(run.info.run_id, EPOCH_KEY)),
                                     default=0)
        else:
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                experiment_id = client.create_experiment(self.experiment)
            else:
                experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":  # deleted in the UI, still in the store
                    client.restore_experiment(experiment_id)
            run = client.create_run(experiment_id, run_name=self.run_name)
        self.client, self.run_id = client, run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])
        tags = {**tags, "dermkit_version": getattr(sys.modules.get("dermkit"), "__version__", None),
                "run_folder": str(self.run_dir.resolve())}
        client.log_batch(self.run_id, tags=[RunTag(_key(k), _cut(str(v), MAX_TAG_VALUE))
                                            for k, v in tags.items() if v is not None])
        write_json(self.run_dir / RECORD, {"tracker": "mlflow", "tracking_uri": self.uri,
                                           "experiment_id": run.info.experiment_id, "run_id": self.run_id,
                                           "experiment": self.experiment})

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + METRICS_PER_BATCH])

    def _log_files(self, summary: Mapping[str, Any]) -> None:
        root = self.run_dir.resolve()
        for name in FILES:
            if (root / name).is_file():
                self.client.log_artifact(self.run_id, str(root / name))
        reports = [summary.get("report")] + [t.get("report") for t in summary.get("transfer") or []]
        folders = [Path(r).resolve() for r in reports if r] + [root / "model"]
        for folder in folders:
            if not folder.is_dir():
                continue
            try:
                where = folder.relative_to(root).as_posix()
            except ValueError:  # a report kept outside the run folder
                where = f"reports/{folder.name}"
            self.client.log_artifacts(self.run_id, str(folder), where)


def _read_record(run_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


@contextlib.contextmanager
def tracked(mode: str | None, run_dir: str | os.PathLike, **kwargs) -> Iterator[MlflowTracker | None]:
    """The tracker of one run (None when ``mode`` is None); an exception out of the block closes the
    MLflow run as FAILED (KILLED for Ctrl-C) and goes on up; a block that ends without
    :meth:`MlflowTracker.finish` closes it FINISHED."""
    tracker = MlflowTracker(run_dir, **kwargs) if mode else None
    try:
        yield tracker
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.end("KILLED")
        raise
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if tracker is not None and not tracker.closed:
        tracker.end("FINISHED")
