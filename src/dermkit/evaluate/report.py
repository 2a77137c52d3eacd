"""Prediction files in, evaluation report out.

``read_predictions`` validates a predictions table (CSV path or DataFrame); ``evaluate`` computes
point metrics and bootstrap confidence intervals; ``Report.save`` writes metrics.json,
predictions.csv, report.md, a self-contained report.html and the PNG figures.

Predictions table: ``image``, ``target``, ``prediction`` and one ``prob:<class>`` column per class
(class order = column order); optional ``group`` (lesion/patient id for the grouped bootstrap).
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import io
from ..errors import DataError, DermkitError
from .bootstrap import bootstrap_metrics, group_codes
from .metrics import HEADLINE_METRICS, classification_metrics

PROB_PREFIX = "prob:"
REQUIRED_COLUMNS = ("image", "target", "prediction")
# Rows must be probability distributions; 1e-2 tolerates probabilities rounded in a CSV.
_SUM_TOLERANCE = 1e-2

FIGURES = {
    "confusion_matrix.png": "Confusion matrix (counts)",
    "confusion_matrix_normalized.png": "Confusion matrix (row-normalised)",
    "roc.png": "ROC curves",
    "reliability.png": "Reliability diagram",
}

_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "weighted_f1": "Weighted F1",
    "macro_auc": "Macro AUC (one-vs-rest)",
    "cohen_kappa": "Cohen's kappa",
    "ece": "ECE (15 bins, lower is better)",
    "brier": "Brier score (lower is better)",
    "log_loss": "Log loss (lower is better)",
}
_PER_CLASS = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc")


# ------------------------------------------------------------------------------ reading


def class_names(frame: pd.DataFrame) -> list[str]:
    """Class names in column order, from the ``prob:<class>`` columns."""
    return [c[len(PROB_PREFIX):] for c in frame.columns if str(c).startswith(PROB_PREFIX)]


def read_predictions(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Load and validate a predictions CSV or DataFrame; returns a clean copy.

    The result has string ``image``/``target``/``prediction`` (and ``group``) columns and float
    ``prob:`` columns. Any problem raises ``DataError`` naming the column, the row (1-based CSV
    line number, or image id for a DataFrame) and how to fix it.
    """
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index(drop=True).copy()
        where, from_csv = "predictions table", False
    else:
        path = Path(source)
        where, from_csv = str(path), True
        if not path.is_file():
            raise DataError(f"{path}: predictions file not found")
        try:
            # Everything as text: we parse numbers ourselves for exact float round-trips and so
            # that a class literally named "NA" is not turned into a missing value.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise DataError(
                f"{path}: file is empty; expected a CSV header "
                "'image,target,prediction,prob:<class>,...' and one row per image"
            ) from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    frame.columns = [str(c) for c in frame.columns]

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {list(frame.columns)}. A predictions table needs 'image', 'target', "
            f"'prediction' and one '{PROB_PREFIX}<class>' column per class."
        )
    prob_columns = [c for c in frame.columns if c.startswith(PROB_PREFIX)]
    classes = class_names(frame)
    if len(prob_columns) < 2:
        raise DataError(
            f"{where}: found {len(prob_columns)} probability column(s) {prob_columns}; need one "
            f"'{PROB_PREFIX}<class>' column per class and at least 2 classes"
        )
    if any(not c.strip() for c in classes):
        raise DataError(f"{where}: a probability column is named '{PROB_PREFIX}' without a class")
    if len(frame) == 0:
        raise DataError(f"{where}: no prediction rows (the table has only a header)")

    images = frame["image"].astype(str).to_numpy()

    def locate(i: int) -> str:
        row = f"line {i + 2}" if from_csv else f"row {i + 1}"  # line 1 of a CSV is the header
        return f"{row} (image {images[i]!r})"

    def fail(rows: np.ndarray, problem: str, fix: str) -> None:
        more = f" (and {len(rows) - 1} more row(s))" if len(rows) > 1 else ""
        raise DataError(f"{where}: {problem} at {locate(int(rows[0]))}{more}; {fix}")

    empty = np.flatnonzero(np.char.strip(images.astype(str)) == "")
    if len(empty):
        fail(empty, "empty 'image' id", "give every row the image id or path it was predicted on")

    out = pd.DataFrame({"image": images})
    known = set(classes)
    for column in ("target", "prediction"):
        values = frame[column].astype(str).to_numpy()
        bad = np.flatnonzero(~np.isin(values, list(known)))
        if len(bad):
            fail(
                bad,
                f"{column} {values[bad[0]]!r} is not one of the classes {classes}",
                f"fix the label or add a '{PROB_PREFIX}{values[bad[0]]}' probability column "
                "(classes come from the prob: columns)",
            )
        out[column] = values

    proba = np.empty((len(frame), len(classes)))
    for k, column in enumerate(prob_columns):
        values, unparsable = _parse_floats(frame[column])
        if len(unparsable):
            raw = frame[column].to_numpy()[unparsable[0]]
            fail(unparsable, f"column {column!r} has a non-numeric value {raw!r}",
                 "write probabilities as plain numbers in [0, 1]")
        nan = np.flatnonzero(np.isnan(values))
        if len(nan):
            fail(nan, f"column {column!r} is missing/NaN",
                 "every image needs a probability for every class; re-export the model outputs "
                 "or drop the row")
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
        if len(bad):
            fail(bad, f"column {column!r} has {values[bad[0]]!r}, outside [0, 1]",
                 "write probabilities (apply softmax to logits), not raw scores")
        proba[:, k] = values
    sums = proba.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    if len(bad):
        fail(bad, f"probabilities sum to {sums[bad[0]]:.4f} instead of 1",
             "write one softmax distribution over all classes per image")
    for k, column in enumerate(prob_columns):
        out[column] = proba[:, k]

    if "group" in frame.columns:
        groups = frame["group"]
        blank = np.flatnonzero(groups.isna().to_numpy() | (groups.astype(str).str.strip() == ""))
        if len(blank):
            fail(blank, "empty 'group' id",
                 "give every image its lesion/patient id, or drop the 'group' column")
        out["group"] = groups.astype(str).to_numpy()
    # Keep any extra columns (e.g. dataset, split) for the user; they do not affect metrics.
    for column in frame.columns:
        if column not in out.columns:
            out[column] = frame[column].to_numpy()
    return out


def _parse_floats(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Float values of a column and the positions of unparsable cells (empty cells -> NaN)."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=float, na_value=np.nan), np.zeros(0, dtype=np.int64)
    values = np.empty(len(column))
    bad = []
    for i, cell in enumerate(column.to_numpy(dtype=object)):
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            values[i] = np.nan
            continue
        text = str(cell).strip()
        if text == "":
            values[i] = np.nan
            continue
        try:
            values[i] = float(text)  # Python's parser round-trips pandas' CSV output exactly
        except ValueError:
            values[i] = np.nan
            bad.append(i)
    return values, np.array(bad, dtype=np.int64)


def prediction_arrays(frame: pd.DataFrame):
    """``(classes, y_true, proba, y_pred)`` as integer indices / float array from a valid table."""
    classes = class_names(frame)
    index = {name: i for i, name in enumerate(classes)}
    y_true = frame["target"].map(index).to_numpy(dtype=np.int64)
    y_pred = frame["prediction"].map(index).to_numpy(dtype=np.int64)
    proba = frame[[PROB_PREFIX + c for c in classes]].to_numpy(dtype=float)
    return classes, y_true, proba, y_pred


# ----------------------------------------------------------------------------- evaluating


def evaluate(
    preds: str | os.PathLike | pd.DataFrame,
    groups=None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    title: str = "Evaluation report",
    level: float = 0.95,
) -> Report:
    """Metrics with bootstrap CIs for a predictions table (path or DataFrame).

    ``groups`` (one lesion/patient id per row) switches to the cluster bootstrap; by default the
    table's ``group`` column is used when present. Label metrics use the ``prediction`` column,
    probability metrics (AUC, ECE, Brier, log loss) the ``prob:`` columns.
    """
    frame = read_predictions(preds)
    if groups is not None:
        group_codes(groups, len(frame))  # validates length and missing ids
        frame["group"] = [str(g) for g in np.asarray(groups, dtype=object)]
    valid_n = isinstance(n_bootstrap, (int, np.integer)) and not isinstance(n_bootstrap, bool)
    if not valid_n or n_bootstrap < 0:
        raise DermkitError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    grouped = "group" in frame.columns
    classes, y_true, proba, y_pred = prediction_arrays(frame)

    metrics = classification_metrics(y_true, proba, classes, y_pred)
    group_values = frame["group"].to_numpy() if grouped else None
    if n_bootstrap > 0:
        ci = bootstrap_metrics(y_true, proba, y_pred, group_values, n=int(n_bootstrap),
                               seed=seed, level=level)
    else:
        names = list(HEADLINE_METRICS) + [
            f"sensitivity_at_specificity_{k}" for k in metrics.get("sensitivity_at_specificity", {})
        ]
        ci = {name: {"low": float("nan"), "high": float("nan"), "level": level} for name in names}
    metrics["ci"] = ci
    metrics["bootstrap"] = {
        "n": int(n_bootstrap),
        "seed": seed,
        "stratified": True,
        "grouped": grouped,
        "n_groups": int(frame["group"].nunique()) if grouped else None,
    }
    return Report(metrics=metrics, predictions=frame, title=title)


# ------------------------------------------------------------------------------ reporting


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _fmt_ci(ci: dict | None) -> str:
    if not ci or _fmt(ci.get("low")) == "n/a":
        return "n/a"
    return f"{_fmt(ci['low'])} \u2013 {_fmt(ci['high'])}"


@dataclass
class Report:
    """Result of ``evaluate``: JSON-able ``metrics`` and the validated ``predictions`` table."""

    metrics: dict
    predictions: pd.DataFrame
    title: str = "Evaluation report"

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["classes"])

    # -- content shared by the Markdown and HTML renderings

    def _headline_rows(self) -> list[tuple[str, str, str]]:
        m, ci = self.metrics, self.metrics.get("ci", {})
        rows = []
        for key in (*HEADLINE_METRICS, "log_loss"):
            label = _LABELS[key]
            if key == "macro_auc" and len(self.classes) == 2:
                label = f"AUC (positive class: {self.classes[1]})"
            rows.append((label, _fmt(m[key]), _fmt_ci(ci.get(key)) if key in ci else "\u2014"))
        return rows

    def _per_class_rows(self) -> list[list[str]]:
        return [
            [name, *(_fmt(stats[k]) for k in _PER_CLASS), _fmt(stats["support"])]
            for name, stats in self.metrics["per_class"].items()
        ]

    def _sens_at_spec_rows(self) -> list[tuple[str, str, str]]:
        ci = self.metrics.get("ci", {})
        return [
            (key, _fmt(value), _fmt_ci(ci.get(f"sensitivity_at_specificity_{key}")))
            for key, value in self.metrics.get("sensitivity_at_specificity", {}).items()
        ]

    def _method_note(self) -> str:
        b = self.metrics.get("bootstrap", {})
        if not b.get("n"):
            return "No bootstrap resamples were requested, so no confidence intervals."
        level = next(iter(self.metrics["ci"].values()))["level"]
        unit = (
            f"resampling whole groups (lesions/patients, {b['n_groups']} groups) stratified by "
            "their majority class"
            if b.get("grouped")
            else "stratified by true class"
        )
        return (
            f"{level:.0%} confidence intervals: percentile bootstrap with {b['n']} resamples "
            f"(seed {b['seed']}), {unit}. Label metrics use the prediction column; AUC, ECE, "
            "Brier and log loss use the predicted probabilities."
        )

    # -- renderings

    def to_markdown(self) -> str:
        """Markdown report; the figures are linked as PNG files next to it."""

        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        def table(header: list[str], rows) -> list[str]:
            lines = ["| " + " | ".join(cell(h) for h in header) + " |",
                     "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
            return lines + [""]

        m = self.metrics
        lines = [f"# {self.title}", "",
                 f"- Samples: {m['n']}",
                 f"- Classes ({len(self.classes)}): {', '.join(self.classes)}", "",
                 self._method_note(), "", "## Headline metrics", ""]
        lines += table(["Metric", "Value", "95% CI"], self._headline_rows())
        if "sensitivity_at_specificity" in m:
            positive = self.classes[1]
            lines += [f"## Sensitivity at fixed specificity (positive class: {positive})", ""]
            lines += table(["Specificity", "Sensitivity", "95% CI"], self._sens_at_spec_rows())
        lines += ["## Per-class metrics (one-vs-rest)", ""]
        lines += table(["Class", "Sensitivity", "Specificity", "PPV", "NPV", "F1", "AUC",
                        "Support"], self._per_class_rows())
        lines += ["## Confusion matrix (rows = true class, columns = predicted class)", ""]
        lines += table(["True \\ Predicted", *self.classes],
                       [[name, *map(str, row)] for name, row in
                        zip(self.classes, m["confusion_matrix"])])
        lines += ["## Figures", ""]
        lines += [f"![{alt}]({name})\n" for name, alt in FIGURES.items()]
        return "\n".join(lines)

    def to_html(self, images: dict[str, bytes] | None = None) -> str:
        """Single-file HTML report; ``images`` (file name -> PNG bytes) become data URIs."""
        esc = html.escape

        def table(header: list[str], rows, first_is_label: bool = True) -> str:
            head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
            body = "".join(
                "<tr>" + "".join(
                    f"<th scope='row'>{esc(str(v))}</th>" if j == 0 and first_is_label
                    else f"<td>{esc(str(v))}</td>"
                    for j, v in enumerate(row)
                ) + "</tr>"
                for row in rows
            )
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        m = self.metrics
        parts = [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            f"<p>Samples: <b>{m['n']}</b> &middot; Classes ({len(self.classes)}): "
            f"{esc(', '.join(self.classes))}</p>",
            f"<p class='note'>{esc(self._method_note())}</p>",
            "<h2>Headline metrics</h2>",
            table(["Metric", "Value", "95% CI"], self._headline_rows()),
        ]
        if "sensitivity_at_specificity" in m:
            parts += [
                f"<h2>Sensitivity at fixed specificity (positive class: "
                f"{esc(self.classes[1])})</h2>",
                table(["Specificity", "Sensitivity", "95% CI"], self._sens_at_spec_rows()),
            ]
        parts += [
            "<h2>Per-class metrics (one-vs-rest)</h2>",
            table(["Class", "Sensitivity", "Specificity", "PPV", "NPV", "F1", "AUC", "Support"],
                  self._per_class_rows()),
            "<h2>Confusion matrix (rows = true class, columns = predicted class)</h2>",
            table(["True \\ Predicted", *self.classes],
                  [[name, *row] for name, row in zip(self.classes, m["confusion_matrix"])]),
            "<h2>Figures</h2>",
        ]
        for name, alt in FIGURES.items():
            if images and name in images:
                data = base64.b64encode(images[name]).decode("ascii")
                parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(alt)}'>"
                             f"<figcaption>{esc(alt)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def figures(self) -> dict:
        """The report's matplotlib figures, keyed by PNG file name."""
        from . import plots  # imported lazily: matplotlib is slow to import

        classes, y_true, proba, _ = prediction_arrays(self.predictions)
        cm = self.metrics["confusion_matrix"]
        return {
            "confusion_matrix.png": plots.plot_confusion_matrix(cm, classes),
            "confusion_matrix_normalized.png": plots.plot_confusion_matrix(
                cm, classes, normalize=True
            ),
            "roc.png": plots.plot_roc_curves(y_true, proba, classes),
            "reliability.png": plots.plot_reliability(y_true, proba),
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write metrics.json, predictions.csv, the PNG figures, report.md and report.html."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "metrics.json", self.metrics)
        io.write_csv(out / "predictions.csv", self.predictions)
        images = {}
        for name, fig in self.figures().items():
            io.save_figure(out / name, fig)
            images[name] = (out / name).read_bytes()
        io.write_text(out / "report.md", self.to_markdown())
        io.write_text(out / "report.html", self.to_html(images))
        return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #4c72b0;padding-bottom:.3rem}
h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
thead th{background:#eef2f8;text-align:center}
tbody th{text-align:left;font-weight:600;background:#fafafa}
.note{color:#555;font-size:.9rem}
figure{margin:1rem 0}
img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#555;font-size:.85rem}
""".strip()
