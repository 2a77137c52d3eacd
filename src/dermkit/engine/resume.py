"""A resume continues the experiment it resumes: the config it is given is compared with the one
the run was trained under.

A run folder holds ``run_record.json``, written when the run starts: the resolved config (every
default filled in, the method's name included) and its SHA-256 digest. ``--resume`` resolves the
config it is given the same way and compares it key by key (nested keys as ``engine.lr``) with the
record. Each difference is one of:

* an **execution** key (:data:`EXECUTION_KEYS`): where and how fast the same computation runs;
* a **report** key (:data:`REPORT_KEYS`): used only after training, when the resumed run writes its
  reports from its final model, so the reports follow the new value throughout;
* an **extension** (:data:`EXTENSION_KEYS`): ``engine.epochs``, which ``dermkit train --resume
  --epochs N`` has always been allowed to change (the schedule is recomputed for the new length, so
  the result is that of a run extended, not of an uninterrupted run of N epochs); never below the
  epochs already trained;
* anything else **changes the result** (learning rate, image size, data, model, augmentation,
  seed, ...): refused with a :class:`~dermkit.errors.ConfigError` naming each key with its recorded
  and given value, unless the caller passes ``allow_change`` (``--allow-config-change``).

Every accepted difference is returned (the Run puts it in ``summary.json``, and in ``model.json``
when it touched the weights) and appended to the record's ``changes``, whose ``config`` becomes the
new one. A run folder written by a dermkit without the record is compared with its ``config.yaml``
(with a warning: that file may itself have been edited) and gets a record from then on.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from dermkit.engine.loop import CHECKPOINT_DIR
from dermkit.errors import ConfigError
from dermkit.io import json_ready, write_json
from dermkit.models.integrity import canonical_sha256, excerpt

__all__ = ["RECORD", "EXECUTION_KEYS", "REPORT_KEYS", "EXTENSION_KEYS", "ResumeCheck", "check_resume",
           "write_record", "flatten"]

RECORD = "run_record.json"
FORMAT = "dermkit-run-record"

# Keys a resume may change, each with the reason it leaves the experiment as it was.
EXECUTION_KEYS = {
    "name": "the run's label in tables, not a setting",
    "num_workers": "data-loading processes: the same images reach the same model (the random stream of "
                   "augmentation workers may differ, as it does between machines)",
    "eval_batch_size": "batch size of validation passes: no weight is updated in them",
    "encode_batch_size": "batch size of frozen-encoder passes: no weight is updated in them",
    "cache_dir": "where cached features live; they are keyed by model fingerprint, image content and transform",
    "device": "which processor computes (floating-point rounding may differ, the experiment does not)",
    "engine.device": "which processor computes (floating-point rounding may differ, the experiment does not)",
}
REPORT_KEYS = {
    "n_bootstrap": "resamples of the test report's confidence intervals, computed after training",
    "eval_data": "extra test sets the final model is reported on after training",
}
EXTENSION_KEYS = {
    "engine.epochs": "a resume may extend a run (dermkit train --resume --epochs N), not undo trained epochs",
}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"engine": {"lr": 1}}`` -> ``{"engine.lr": 1}``; lists stay values."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_written(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(json_ready(config), default=str))


class ResumeCheck:
    """What :func:`check_resume` found: ``changes`` (key -> {"from", "to", "kind", "why"}) and
    whether the record is to be (re)written."""

    def __init__(self, changes: dict[str, dict[str, Any]], write: bool, allowed_by: str | None):
        self.changes, self.write, self.allowed_by = changes, write, allowed_by

    def summary(self) -> dict[str, Any] | None:
        """``summary.json``'s ``resumed`` field (None when nothing changed)."""
        if not self.changes:
            return None
        return {"config_changes": self.changes, "allowed_by": self.allowed_by}

    def weight_changes(self) -> dict[str, Any] | None:
        """The changes that reach the weights trained from now on (for ``model.json``)."""
        touched = {k: [v["from"], v["to"]] for k, v in self.changes.items() if v["kind"] in ("extension", "override")}
        return {"changes": touched, "allowed_by": self.allowed_by} if touched else None


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); it records the config the run was trained under. "
                          "Restore it, or start a new run with another --out.") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{path} is not a dermkit run record (an object with format {FORMAT!r} and config); "
                          "restore it, or start a new run with another --out.")
    if canonical_sha256(record["config"]) != record.get("digest"):
        raise ConfigError(f"{path} was edited after the run started (its config no longer matches its digest), so "
                          "the config the run was trained under is unknown. Restore it, or start a new run with "
                          "another --out.")
    return record


def _epochs_done(out_dir: Path) -> int:
    meta = out_dir / CHECKPOINT_DIR / "last.json"
    try:
        return int(json.loads(meta.read_text(encoding="utf-8"))["loop"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _kind(key: str) -> tuple[str, str]:
    for kind, table in (("execution", EXECUTION_KEYS), ("report", REPORT_KEYS), ("extension", EXTENSION_KEYS)):
        if key in table:
            return kind, table[key]
    return "result", "changes what is trained or how it is selected"


def check_resume(out_dir: str | Path, config: dict[str, Any], allow_change: bool = False,
                 fallback: Callable[[], dict[str, Any] | None] | None = None) -> ResumeCheck:
    """Compare ``config`` (resolved, with ``method``) with the run's record; raise ConfigError for a
    difference that changes the result (unless ``allow_change``). Reads only; see :func:`write_record`."""
    out_dir = Path(out_dir)
    path = out_dir / RECORD
    if path.is_file():
        reference = _read_record(path)["config"]
    else:
        reference = fallback() if fallback is not None else None
        warnings.warn(f"{out_dir} has no {RECORD} (the run was started by an older dermkit): "
                      + ("the config was compared with its config.yaml, which may itself have been edited"
                         if reference is not None else "the config it was trained under cannot be checked")
                      + f"; {RECORD} is written now, so later resumes are checked.", UserWarning, stacklevel=3)
        if reference is None:
            return ResumeCheck({}, True, None)
    old, new = flatten(_as_written(reference)), flatten(_as_written(config))
    changes: dict[str, dict[str, Any]] = {}
    for key in sorted(old):  # a key only one of the two dermkit versions has cannot be compared
        if key in new and new[key] != old[key]:
            kind, why = _kind(key)
            changes[key] = {"from": old[key], "to": new.get(key), "kind": kind, "why": why}
    shown = "; ".join(f"{k} {excerpt(v['from'], 60)} -> {excerpt(v['to'], 60)}" for k, v in changes.items()
                      if v["kind"] == "result")
    finished = (out_dir / "summary.json").is_file()
    if shown and not allow_change:
        raise ConfigError(
            f"{out_dir}: --resume was given a config that differs from the one the run was trained under "
            f"({path.name if path.is_file() else 'config.yaml'}): {shown}. "
            + ("The run has finished: its model and reports were made with the recorded values. "
               if finished else "")
            + "A resume continues the same experiment; put the recorded values back in the config you resumed with "
            f"(for `dermkit train --resume`: {out_dir / 'config.yaml'}), start a new run with another --out, or pass "
            "--allow-config-change to continue under the new values (recorded in summary.json and model.json).")
    epochs = changes.get("engine.epochs")
    done = _epochs_done(out_dir)
    if epochs is not None and isinstance(epochs["to"], int) and epochs["to"] < done:
        raise ConfigError(f"{out_dir}: --resume with engine.epochs {epochs['to']}, but the run has already trained "
                          f"{done} epochs (recorded: {epochs['from']}); a resume can extend a run, not undo epochs. "
                          f"Give epochs >= {done}, or start a new run with another --out.")
    allowed_by = None
    for change in changes.values():
        if change["kind"] == "result":
            change["kind"], allowed_by = "override", "--allow-config-change"
    return ResumeCheck(changes, write=bool(changes) or not path.is_file(), allowed_by=allowed_by)


def write_record(out_dir: str | Path, config: dict[str, Any], check: ResumeCheck | None = None) -> Path:
    """Write ``run_record.json`` for a run that starts (``check`` None) or a resume whose check
    asks for it (its changes appended to the history)."""
    path = Path(out_dir) / RECORD
    config = _as_written(config)
    changes = []
    if check is not None:
        if not check.write:
            return path
        if path.is_file():
            changes = list(_read_record(path).get("changes") or [])
        if check.changes:
            changes.append({"resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "allowed_by": check.allowed_by,
                            "changes": check.changes})
    return write_json(path, {"format": FORMAT, "format_version": 1, "config": config,
                             "digest": canonical_sha256(config), "changes": changes})
