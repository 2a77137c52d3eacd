"""Prediction files in, evaluation report out.

``read_predictions`` validates a predictions table (CSV path or DataFrame); ``evaluate`` computes
point metrics and bootstrap confidence intervals; ``Report.save`` writes metrics.json,
predictions.csv, report.md, a self-contained report.html and the PNG figures.

Predictions table: ``image``, ``target``, ``prediction`` and one ``prob:<class>`` column per class
(class order = column order); optional ``group`` (lesion/patient id for the grouped bootstrap).
Missing values are the texts in ``MISSING_TOKENS`` (empty, NA, NaN, null, None...). Repeated image
ids are refused unless ``allow_duplicates=True``. What the numbers must be read with (stripped
whitespace, rows without a group, a prediction column that contradicts the probabilities, classes
absent from the targets) ends up in ``Report.warnings``: metrics.json ``"warnings"`` and the top of
report.md/.html. ``format_metric``/``format_ci`` print undefined metrics (null in metrics.json) as
``n/a``.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..errors import DataError, DermkitError
from .bootstrap import bootstrap_metrics, group_codes
from .metrics import (
    HEADLINE_METRICS,
    LABEL_METRICS,
    PROBABILITY_METRICS,
    class_coverage_warning,
    classification_metrics,
    is_undefined,
)

PROB_PREFIX = "prob:"
REQUIRED_COLUMNS = ("image", "target", "prediction")
# Rows must be probability distributions; 1e-2 tolerates probabilities rounded in a CSV.
_SUM_TOLERANCE = 1e-2

FIGURES = {
    "confusion_matrix.png": "Confusion matrix (counts)",
    "confusion_matrix_normalized.png": "Confusion matrix (row-normalised)",
    "roc.png": "ROC curves",
    "reliability.png": "Reliability diagram",
    "risk_coverage.png": "Risk-coverage curve (selective prediction)",
}
#: Written only when the report has subgroups.
SUBGROUP_FIGURE = ("subgroups_forest.png", "Subgroup forest plot (95% CIs; hollow = too few cases)")

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


#: Cell texts read as a missing value in the ``image``, ``target``, ``prediction`` and ``group``
#: columns (and the ``prob:`` columns): pandas' default NA strings plus a few common placeholders.
#: Matched after stripping surrounding whitespace and ignoring letter case, so "NA", "na",
#: "NULL", "None" and "n/a" are all missing. A class may not be named like one of them.
MISSING_TOKENS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "none", "-", "--", "?",
})
_MISSING_FOLDED = frozenset(token.casefold() for token in MISSING_TOKENS)
#: ``DataFrame.attrs`` keys under which ``read_predictions`` leaves its warnings for ``evaluate``
#: and the CSV file they refer to (None for a DataFrame source).
WARNINGS_ATTR = "dermkit_warnings"
SOURCE_ATTR = "dermkit_source"
# Disagreements between the prediction column and argmax(prob) tolerated without a warning.
_DISAGREE_FRACTION, _DISAGREE_MIN = 0.01, 2
_SHOW = 3  # rows/ids quoted in a message


def is_missing(value: Any) -> bool:
    """True for ``None``, NaN/NA and any text in :data:`MISSING_TOKENS` (see there)."""
    if value is None:
        return True
    if not isinstance(value, str):
        try:
            if pd.isna(value):
                return True
        except (TypeError, ValueError):
            return False
    return str(value).strip().casefold() in _MISSING_FOLDED


def _missing_mask(values) -> np.ndarray:
    return np.array([is_missing(v) for v in values], dtype=bool)


def _fold(text: str) -> str:
    """Key under which two spellings differ only in letter case or whitespace."""
    return " ".join(str(text).split()).casefold()


def _num(value: Any) -> str:
    """A number as plain text (never ``np.float64(...)``)."""
    return repr(float(value))


def class_names(frame: pd.DataFrame) -> list[str]:
    """Class names in column order, from the ``prob:<class>`` columns."""
    return [c[len(PROB_PREFIX):] for c in frame.columns if str(c).startswith(PROB_PREFIX)]


def read_predictions(
    source: str | os.PathLike | pd.DataFrame, allow_duplicates: bool = False
) -> pd.DataFrame:
    """Load and validate a predictions CSV or DataFrame; returns a clean copy.

    The result has string ``image``/``target``/``prediction`` (and ``group``) columns and float
    ``prob:`` columns. Any problem raises ``DataError`` naming the column, the row (1-based CSV
    line number, or image id for a DataFrame) and how to fix it.

    * Surrounding whitespace of column names, class names (``prob: akiec ``), targets,
      predictions and group ids is stripped; a warning says so when anything changed. A target or
      prediction that matches a class only up to letter case (``AKIEC`` for ``prob:akiec``) is
      refused: the spelling is ambiguous, so fix the column.
    * Missing values (:data:`MISSING_TOKENS`: empty, ``NA``, ``NaN``, ``null``...) are refused in
      ``image``, ``target``, ``prediction`` and the ``prob:`` columns. A row with a missing
      ``group`` is its own bootstrap cluster (its image id becomes its group id; a warning says so).
    * A repeated ``image`` id is refused (the row would be counted twice) unless
      ``allow_duplicates=True``, for tables whose repeated ids really are distinct cases.

    Warnings are returned in ``result.attrs[WARNINGS_ATTR]`` (a list of strings), which
    ``evaluate`` copies into ``Report.warnings``.
    """
    warnings: list[str] = []
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index(drop=True).copy()
        where, from_csv = "predictions table", False
        warnings += [str(w) for w in source.attrs.get(WARNINGS_ATTR, ())]
        source_file = source.attrs.get(SOURCE_ATTR)
    else:
        path = Path(source)
        where, from_csv = str(path), True
        source_file = where
        if not path.is_file():
            raise DataError(f"{path}: predictions file not found; check the path (a CSV with "
                            "columns image, target, prediction, prob:<class>...)")
        try:
            # Everything as text: we parse numbers ourselves for exact float round-trips, and
            # missing-value tokens are recognised by is_missing (MISSING_TOKENS), column by column.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise DataError(
                f"{path}: file is empty; expected a CSV header "
                "'image,target,prediction,prob:<class>,...' and one row per image"
            ) from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc}); save the predictions as a "
                            "UTF-8, comma-separated CSV") from None
    frame.columns = [str(c) for c in frame.columns]

    # -- columns
    stripped_names = [_strip_column(c) for c in frame.columns]
    renamed = [f"{a!r} -> {b!r}" for a, b in zip(frame.columns, stripped_names) if a != b]
    clashes = pd.Series(stripped_names)[pd.Series(stripped_names).duplicated()].tolist()
    if clashes:
        same = [c for c, s in zip(frame.columns, stripped_names) if s == clashes[0]]
        raise DataError(
            f"{where}: columns {', '.join(repr(c) for c in same)} differ only in surrounding "
            f"whitespace, so both name {clashes[0]!r}; keep one of them"
        )
    frame.columns = stripped_names

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        header = ",".join(frame.columns)
        for sep, sep_name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if from_csv and len(frame.columns) <= 2 and sep in header:
                raise DataError(
                    f"{where}: the header line looks {sep_name}-separated ({header[:80]!r}); "
                    "dermkit reads comma-separated CSV: re-save the file with ',' as the delimiter "
                    "(e.g. pandas DataFrame.to_csv(path, index=False), or 'CSV (comma delimited)' "
                    "in a spreadsheet)"
                )
        raise DataError(
            f"{where}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {list(frame.columns)}. A predictions table needs 'image', 'target', "
            f"'prediction' and one '{PROB_PREFIX}<class>' column per class; rename or add the "
            "missing column(s)."
        )
    prob_columns = [c for c in frame.columns if c.startswith(PROB_PREFIX)]
    classes = class_names(frame)
    if len(prob_columns) < 2:
        raise DataError(
            f"{where}: found {len(prob_columns)} probability column(s) {prob_columns}; need one "
            f"'{PROB_PREFIX}<class>' column per class and at least 2 classes"
        )
    if any(not c for c in classes):
        raise DataError(f"{where}: a probability column is named '{PROB_PREFIX}' without a class; "
                        f"name it '{PROB_PREFIX}<class>'")
    for column, name in zip(prob_columns, classes):
        if is_missing(name):
            raise DataError(
                f"{where}: column {column!r} names the class {name!r}, which reads as a missing "
                "value in CSV files (see dermkit.evaluate.report.MISSING_TOKENS); rename the "
                "class (the column and its targets/predictions), e.g. to 'not_applicable'"
            )
    folded: dict[str, str] = {}
    for column, name in zip(prob_columns, classes):
        other = folded.setdefault(_fold(name), column)
        if other != column:
            raise DataError(
                f"{where}: columns {other!r} and {column!r} name classes that differ only in "
                "letter case/whitespace, which makes targets and predictions ambiguous; rename "
                "one of the classes or merge the columns"
            )
    def warn(text: str) -> None:
        warnings.append(f"{where}: {text}" if from_csv else text)

    if renamed:
        warn(
            "Stripped surrounding whitespace from column name(s): " + ", ".join(renamed[:_SHOW])
            + (f" and {len(renamed) - _SHOW} more" if len(renamed) > _SHOW else "") + "."
        )
    if len(frame) == 0:
        raise DataError(f"{where}: no prediction rows (the table has only a header); write one "
                        "row per evaluated image below the header")

    # -- rows
    image_missing = _missing_mask(frame["image"].to_numpy(dtype=object))
    images = np.array([str(v) for v in frame["image"].to_numpy(dtype=object)], dtype=object)

    def locate(i: int) -> str:
        row = f"line {i + 2}" if from_csv else f"row {i + 1}"  # line 1 of a CSV is the header
        return f"{row} (image {str(images[i])!r})"

    def rows_text(rows) -> str:
        rows = [int(r) for r in rows]
        shown = ", ".join(locate(i) for i in rows[:_SHOW])
        return shown + (f" and {len(rows) - _SHOW} more row(s)" if len(rows) > _SHOW else "")

    def fail(rows: np.ndarray, problem: str, fix: str) -> None:
        raise DataError(f"{where}: {problem} at {rows_text(rows)}; {fix}")

    if image_missing.any():
        fail(np.flatnonzero(image_missing), "missing 'image' id (empty or a missing-value token)",
             "give every row the image id or path it was predicted on")

    keys = pd.Series([i.strip() for i in images])
    repeated = keys.duplicated(keep=False).to_numpy()
    if repeated.any():
        first = keys[repeated].iloc[0]
        rows = np.flatnonzero((keys == first).to_numpy())
        n_ids = int(keys[repeated].nunique())
        extra = int(repeated.sum()) - n_ids
        numbers = [str(i + 2 if from_csv else i + 1) for i in rows[:8]]
        lines = ("lines " if from_csv else "rows ") + ", ".join(numbers) + (
            f" and {len(rows) - 8} more" if len(rows) > 8 else "")
        summary = (f"{n_ids} image id(s) occur more than once ({extra} extra row(s) of "
                   f"{len(keys)}); the first, {str(first)!r}, is on {lines}")
        if not allow_duplicates:
            raise DataError(
                f"{where}: {summary}. Each row must be one case, or duplicated rows are counted "
                "twice in every metric. Remove the duplicate rows (e.g. pandas "
                "drop_duplicates('image')), or, if they really are distinct cases that share an "
                "image id, pass allow_duplicates=True (CLI: --allow-duplicates)"
            )
        if not any("Repeated image ids:" in w for w in warnings):  # not twice
            warn(f"Repeated image ids: {summary}. They are evaluated as distinct cases "
                 "because duplicates were allowed (allow_duplicates=True).")

    out = pd.DataFrame({"image": images.astype(str)})
    known = {name: column for name, column in zip(classes, prob_columns)}
    by_fold = {_fold(name): name for name in classes}
    for column in ("target", "prediction"):
        raw = frame[column].to_numpy(dtype=object)
        absent = _missing_mask(raw)
        if absent.any():
            what = (
                "every row needs its true class: fill it in, or drop the rows without ground "
                "truth before evaluating" if column == "target"
                else "fill in the decided class (the argmax of the prob: columns unless a "
                "decision threshold was applied)"
            )
            fail(np.flatnonzero(absent), f"missing {column} (empty or a missing-value token "
                 f"such as {str(raw[np.flatnonzero(absent)[0]]).strip()!r})", what)
        text = [str(v) for v in raw]
        values = np.array([v.strip() for v in text], dtype=object)
        changed = np.flatnonzero(np.array([a != b for a, b in zip(text, values)], dtype=bool))
        bad = np.flatnonzero(~np.isin(values, list(known)))
        variants = [i for i in bad if _fold(values[i]) in by_fold]
        if variants:
            value = str(values[variants[0]])
            same = [i for i in bad if values[i] == value]
            right = by_fold[_fold(value)]
            fail(np.array(same),
                 f"{column} {value!r} differs only in letter case/whitespace from the class "
                 f"{right!r} (column {known[right]!r})",
                 f"classes are case-sensitive: normalise the {column} column to the spelling of "
                 f"the {PROB_PREFIX} columns (here {right!r}), or rename the column if "
                 f"{value!r} is the intended spelling")
        if len(bad):
            value = str(values[bad[0]])
            fail(bad, f"{column} {value!r} is not one of the classes {classes}",
                 f"fix the label or add a '{PROB_PREFIX}{value}' probability column "
                 "(classes come from the prob: columns)")
        if len(changed):
            i = int(changed[0])
            warn(
                f"Stripped surrounding whitespace from {len(changed)} {column} value(s) "
                f"(first at {locate(i)}: {text[i]!r} -> {str(values[i])!r}); they were matched "
                "to the classes after stripping."
            )
        out[column] = values.astype(str)

    proba = np.empty((len(frame), len(classes)))
    for k, column in enumerate(prob_columns):
        values, unparsable = _parse_floats(frame[column])
        if len(unparsable):
            raw = frame[column].to_numpy(dtype=object)[unparsable[0]]
            fail(unparsable, f"column {column!r} has a non-numeric value {str(raw)!r}",
                 "write probabilities as plain numbers in [0, 1] with '.' as the decimal point")
        nan = np.flatnonzero(np.isnan(values))
        if len(nan):
            fail(nan, f"column {column!r} is missing/NaN",
                 "every image needs a probability for every class; re-export the model outputs "
                 "or drop the row")
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
        if len(bad):
            fail(bad, f"column {column!r} has {_num(values[bad[0]])}, outside [0, 1]",
                 "write probabilities (apply softmax to logits), not raw scores")
        proba[:, k] = values
    sums = proba.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    if len(bad):
        fail(bad, f"probabilities sum to {float(sums[bad[0]]):.4f} instead of 1 (tolerance "
             f"{_SUM_TOLERANCE})", "write one softmax distribution over all classes per image")
    for k, name in enumerate(classes):
        out[PROB_PREFIX + name] = proba[:, k]

    if "group" in frame.columns:
        groups, notes = _normalise_groups(frame["group"].to_numpy(dtype=object), images,
                                          locate)
        for note in notes:
            warn(note)
        out["group"] = groups
    # Keep any extra columns (e.g. dataset, split) for the user; they do not affect metrics.
    for column in frame.columns:
        if column not in out.columns:
            out[column] = frame[column].to_numpy()
    out.attrs[WARNINGS_ATTR] = list(dict.fromkeys(warnings))
    out.attrs[SOURCE_ATTR] = source_file
    return out


def _strip_column(name: str) -> str:
    name = name.strip()
    if name.startswith(PROB_PREFIX):
        return PROB_PREFIX + name[len(PROB_PREFIX):].strip()
    return name


def _normalise_groups(values, images, locate, what: str = "group id(s)"):
    """``(group ids, warnings)``: ids as stripped text, a missing id replaced by the row's own
    cluster (its image id, made unique against the real ids)."""
    missing = _missing_mask(values)
    text = ["" if m else str(v) for v, m in zip(values, missing)]
    groups = [t.strip() for t in text]
    notes = []
    changed = [i for i, (a, b) in enumerate(zip(text, groups)) if a != b]
    if changed:
        i = changed[0]
        notes.append(f"Stripped surrounding whitespace from {len(changed)} {what} (first at "
                     f"{locate(i)}: {text[i]!r} -> {groups[i]!r}).")
    rows = np.flatnonzero(missing)
    if len(rows):
        real = {g for g, m in zip(groups, missing) if not m}
        for i in rows:
            own = str(images[i]).strip()
            while own in real:  # never join an existing group by accident
                own = f"{own} (no group)"
            groups[i] = own
        shown = ", ".join(locate(int(i)) for i in rows[:_SHOW])
        more = f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
        notes.append(
            f"{len(rows)} row(s) have no group id (empty or a missing-value token such as "
            f"'NA'), e.g. {shown}{more}: each is resampled by the bootstrap as its own cluster "
            "(its image id is its group id), not pooled into one group. Fill in their "
            "lesion/patient ids if several images of one lesion are among them."
        )
    return groups, notes


def _parse_floats(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Float values of a column and the positions of unparsable cells (missing cells -> NaN)."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=float, na_value=np.nan), np.zeros(0, dtype=np.int64)
    values = np.empty(len(column))
    bad = []
    for i, cell in enumerate(column.to_numpy(dtype=object)):
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            values[i] = np.nan
            continue
        text = str(cell).strip()
        if is_missing(text):
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
    allow_duplicates: bool = False,
    subgroups: Sequence[str] | None = None,
    bins: Mapping[str, Sequence[float]] | None = None,
    metadata: pd.DataFrame | None = None,
    missing_values: Sequence[str] = (),
) -> Report:
    """Metrics with bootstrap CIs for a predictions table (path or DataFrame).

    ``groups`` (one lesion/patient id per row) switches to the cluster bootstrap; by default the
    table's ``group`` column is used when present. A missing group id (see ``MISSING_TOKENS``)
    makes that row its own cluster. Label metrics (:data:`LABEL_METRICS`) use the ``prediction``
    column, probability metrics (:data:`PROBABILITY_METRICS`: AUC, sensitivity at specificity,
    ECE, Brier, log loss) the ``prob:`` columns. ``allow_duplicates`` is passed to
    :func:`read_predictions` (repeated image ids are refused by default).

    ``Report.warnings`` collects what the numbers need read with: whitespace that was stripped,
    rows without a group, allowed duplicates, a ``prediction`` column that disagrees with the
    probabilities, and classes absent from the targets (undefined or fewer-class metrics).

    Every report has ``metrics["selective"]`` (risk-coverage AURC, accuracy and melanoma
    sensitivity at 80/90/95% coverage, with CIs; see :mod:`dermkit.evaluate.selective`).
    ``subgroups`` (metadata columns such as ``["sex", "age_band"]``; see
    :mod:`dermkit.evaluate.subgroups`, ``bins`` = cut points per numeric column) adds
    ``metrics["subgroups"]``; the columns come from the table itself or from ``metadata`` (a
    dataset's metadata table, joined on ``image``; ``missing_values`` = its extra missing tokens).
    """
    frame = read_predictions(preds, allow_duplicates=allow_duplicates)
    warnings = list(frame.attrs.get(WARNINGS_ATTR, ()))
    if groups is not None:
        # The explicit ids replace the group column: its warnings no longer apply.
        warnings = [w for w in warnings if "no group id" not in w and "group id(s)" not in w]
        values = np.asarray(groups, dtype=object)
        if values.shape != (len(frame),):
            group_codes(values, len(frame))  # raises the length error
        images = frame["image"].to_numpy(dtype=object)
        ids, notes = _normalise_groups(values, images,
                                       lambda i: f"row {i + 1} (image {str(images[i])!r})",
                                       "id(s) in groups=")
        warnings += notes
        frame["group"] = ids
    valid_n = isinstance(n_bootstrap, (int, np.integer)) and not isinstance(n_bootstrap, bool)
    if not valid_n or n_bootstrap < 0:
        raise DermkitError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap}")
    grouped = "group" in frame.columns
    classes, y_true, proba, y_pred = prediction_arrays(frame)

    metrics = classification_metrics(y_true, proba, classes, y_pred)
    source_file = frame.attrs.get(SOURCE_ATTR)
    for note in (_prediction_warning(frame, proba, y_pred),
                 class_coverage_warning(y_true, y_pred, classes, metrics)):
        if note:
            warnings.append(f"{source_file}: {note}" if source_file else note)
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
    from .selective import selective_with_ci

    metrics["selective"] = selective_with_ci(y_true, proba, y_pred, classes, groups=group_values,
                                             n_bootstrap=int(n_bootstrap), seed=seed, level=level)
    if subgroups:
        from .subgroups import attach_metadata, subgroup_analysis, subgroup_labels

        table = attach_metadata(frame, metadata) if metadata is not None else frame
        labels, how = subgroup_labels(table, list(subgroups), bins, missing_values=missing_values)
        metrics["subgroups"] = subgroup_analysis(frame, labels, how, n_bootstrap=int(n_bootstrap), seed=seed,
                                                 level=level)
    metrics["bootstrap"] = {
        "n": int(n_bootstrap),
        "seed": seed,
        "stratified": True,
        "grouped": grouped,
        "n_groups": int(frame["group"].nunique()) if grouped else None,
    }
    frame.attrs[WARNINGS_ATTR] = list(dict.fromkeys(warnings))
    return Report(metrics=metrics, predictions=frame, title=title,
                  warnings=list(dict.fromkeys(warnings)))


def _prediction_warning(frame: pd.DataFrame, proba: np.ndarray, y_pred: np.ndarray) -> str | None:
    """Warning when the prediction column is not the argmax of the probabilities on > 1% rows."""
    n = len(y_pred)
    chosen = proba[np.arange(n), y_pred]
    # A tie for the maximum counts as agreement: either class is an argmax.
    disagree = np.flatnonzero(chosen < proba.max(axis=1) - 1e-12)
    if len(disagree) < _DISAGREE_MIN or len(disagree) <= _DISAGREE_FRACTION * n:
        return None
    ids = ", ".join(repr(str(i)) for i in frame["image"].to_numpy()[disagree[:5]])
    more = f" and {len(disagree) - 5} more" if len(disagree) > 5 else ""
    return (
        f"The 'prediction' column disagrees with the argmax of the {PROB_PREFIX} columns on "
        f"{len(disagree)} of {n} rows ({len(disagree) / n:.1%}), e.g. image(s) {ids}{more}. "
        f"Label metrics use the prediction column: {', '.join(LABEL_METRICS)}. Probability "
        f"metrics use the {PROB_PREFIX} columns: {', '.join(PROBABILITY_METRICS)}. The two "
        "groups of numbers therefore describe different decisions. Check that both columns come "
        f"from the same model and that the {PROB_PREFIX} columns are in the right class order; "
        "if a decision threshold was applied on purpose, this is expected."
    )


# ------------------------------------------------------------------------------ reporting


def format_metric(value: Any, digits: int = 4) -> str:
    """A metric value for people: ``"n/a"`` when undefined (None/NaN/inf), else fixed digits.

    Use it wherever a metric is printed (CLI, tables): an undefined metric is ``null`` in
    metrics.json and must not print as ``nan``.
    """
    if is_undefined(value):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def format_ci(ci: dict | None, digits: int = 4, template: str = "{low} \u2013 {high}") -> str:
    """A confidence interval ``{"low", "high"}`` as text, ``"n/a"`` when it is undefined."""
    if not ci or is_undefined(ci.get("low")) or is_undefined(ci.get("high")):
        return "n/a"
    return template.format(low=format_metric(ci["low"], digits),
                           high=format_metric(ci["high"], digits))


_fmt = format_metric


def _fmt_ci(ci: dict | None) -> str:
    return format_ci(ci)


def _fmt_ci_value(value, ci: dict | None) -> str:
    """``0.812 (0.734 – 0.891)``; the bare value when the CI is undefined."""
    interval = format_ci(ci, 3)
    return _fmt(value, 3) + ("" if interval == "n/a" else f" ({interval})")


@dataclass
class Report:
    """Result of ``evaluate``: JSON-able ``metrics`` and the validated ``predictions`` table."""

    metrics: dict
    predictions: pd.DataFrame
    title: str = "Evaluation report"
    #: What the numbers must be read with (one sentence or paragraph each, plain text): stripped
    #: whitespace, rows without a group, allowed duplicates, a prediction column that disagrees
    #: with the probabilities, classes absent from the targets. Shown at the top of report.md and
    #: report.html and saved as ``"warnings"`` in metrics.json (``[]`` when there are none).
    warnings: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["classes"])

    def metrics_json(self) -> dict:
        """metrics.json content: ``metrics`` with ``"warnings"`` after ``"classes"`` and every
        undefined value (NaN/inf) as ``None`` (JSON null)."""
        out = {}
        for key, value in self.metrics.items():
            out[key] = value
            if key == "classes":
                out["warnings"] = list(self.warnings)
        out.setdefault("warnings", list(self.warnings))
        return _json_ready(out)

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

    def _selective_rows(self) -> list[list[str]]:
        sel = self.metrics.get("selective")
        if not sel:
            return []
        ci = sel.get("ci", {})
        rows = []
        for key, point in sel["at_coverage"].items():
            mel = "melanoma_sensitivity" in point
            rows.append([f"{float(key):.0%}", str(point["n_decided"]), _fmt(point["accuracy"]),
                         _fmt_ci(ci.get(f"accuracy_at_{key}")),
                         _fmt(point["melanoma_sensitivity"]) if mel else "n/a",
                         _fmt_ci(ci.get(f"melanoma_sensitivity_at_{key}")) if mel else "n/a",
                         _fmt(point["melanomas_deferred"]) if mel else "n/a"])
        rows.append(["100%", str(self.metrics["n"]), _fmt(1 - sel["error_rate"]), "\u2014", "", "", ""])
        return rows

    def _selective_note(self) -> str:
        sel = self.metrics["selective"]
        mel = sel.get("melanoma_class")
        return (f"Area under the risk-coverage curve (AURC, lower is better): {_fmt(sel['aurc'])} "
                f"(95% CI {_fmt_ci(sel.get('ci', {}).get('aurc'))}). At each coverage the model decides the "
                "most confident cases (max predicted probability) and defers the rest; accuracy is over the "
                "decided cases. "
                + (f"Melanoma (class {mel!r}) sensitivity is over the decided melanomas; 'melanomas deferred' "
                   "is the fraction of all melanomas the model abstained on." if mel else
                   "No class is named melanoma (mel/melanoma), so no melanoma sensitivity."))

    def _subgroups_html(self, table) -> list[str]:
        from .subgroups import SUBGROUP_METRICS, subgroups_markdown

        esc = html.escape
        sub = self.metrics["subgroups"]
        note = subgroups_markdown(sub).split("\n")[2]

        def cells(entry):
            return [_fmt_ci_value(entry["metrics"][k], entry["ci"][k]) for k in SUBGROUP_METRICS]

        rows = [["overall", "all", sub["overall"]["n"], sub["overall"]["n_melanoma"], *cells(sub["overall"]), ""]]
        gaps = []
        for a in sub["attributes"]:
            rows += [[a["attribute"], lv["level"], lv["n"], lv["n_melanoma"], *cells(lv), "; ".join(lv["flags"])]
                     for lv in a["levels"]]
            for key, g in a["gaps"].items():
                gaps.append([a["attribute"], SUBGROUP_METRICS[key],
                             "n/a" if g["worst"] is None else _fmt_ci_value(g["gap"], g["ci"]),
                             "" if g["worst"] is None else f"{g['worst']} vs {g['best']}",
                             _fmt(g["p"]) if g["worst"] is not None else g.get("note", "")])
        return ["<h2>Subgroups</h2>", f"<p class='note'>{esc(note)}</p>",
                table(["Attribute", "Subgroup", "n", "Melanomas", *SUBGROUP_METRICS.values(), "Flag"], rows),
                "<h3>Worst minus best subgroup</h3>",
                table(["Attribute", "Metric", "Gap (95% CI)", "Worst vs best", "p"], gaps)]

    def _figure_names(self) -> dict[str, str]:
        names = dict(FIGURES)
        if self.metrics.get("subgroups"):
            names[SUBGROUP_FIGURE[0]] = SUBGROUP_FIGURE[1]
        return names

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
        lines = [f"# {self.title}", ""]
        for warning in self.warnings:
            lines += [f"> **Warning:** {cell(warning)}", ""]
        lines += [f"- Samples: {m['n']}",
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
        selective = self._selective_rows()
        if selective:
            lines += ["## Selective prediction (abstain on the lowest maximum probability)", "",
                      self._selective_note(), ""]
            lines += table(["Coverage", "Decided", "Accuracy", "95% CI", "Melanoma sensitivity", "95% CI",
                            "Melanomas deferred"], selective)
        if m.get("subgroups"):
            from .subgroups import subgroups_markdown

            lines += [subgroups_markdown(m["subgroups"]), ""]
        lines += ["## Figures", ""]
        lines += [f"![{alt}]({name})\n" for name, alt in self._figure_names().items()]
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
            *(f"<p class='warning'><b>Warning:</b> {esc(w)}</p>" for w in self.warnings),
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
        ]
        selective = self._selective_rows()
        if selective:
            parts += ["<h2>Selective prediction (abstain on the lowest maximum probability)</h2>",
                      f"<p class='note'>{esc(self._selective_note())}</p>",
                      table(["Coverage", "Decided", "Accuracy", "95% CI", "Melanoma sensitivity", "95% CI",
                             "Melanomas deferred"], selective)]
        if m.get("subgroups"):
            parts += self._subgroups_html(table)
        parts.append("<h2>Figures</h2>")
        for name, alt in self._figure_names().items():
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
            **self._extra_figures(),
        }

    def _extra_figures(self) -> dict:
        from . import plots
        from .selective import risk_coverage

        classes, y_true, proba, y_pred = prediction_arrays(self.predictions)
        curve = risk_coverage(y_true, proba, y_pred)
        curve["points"] = list((self.metrics.get("selective") or {}).get("at_coverage", {}).values())
        out = {"risk_coverage.png": plots.plot_risk_coverage(curve)}
        if self.metrics.get("subgroups"):
            from .subgroups import forest_figure

            out[SUBGROUP_FIGURE[0]] = forest_figure(self.metrics["subgroups"], self.title)
        return out

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write metrics.json, predictions.csv, the PNG figures, report.md and report.html."""
        out = Path(out_dir)
        # Render before touching the folder, so a failure leaves no half-written report behind.
        figures = self.figures()
        metrics = self.metrics_json()
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "metrics.json", metrics)
        io.write_csv(out / "predictions.csv", self.predictions)
        images = {}
        for name, fig in figures.items():
            io.save_figure(out / name, fig)
            images[name] = (out / name).read_bytes()
        if self.metrics.get("subgroups"):
            from .subgroups import gap_table, subgroup_table

            io.write_csv(out / "subgroups.csv", subgroup_table(self.metrics["subgroups"]))
            io.write_csv(out / "subgroup_gaps.csv", gap_table(self.metrics["subgroups"]))
        io.write_text(out / "report.md", self.to_markdown())
        io.write_text(out / "report.html", self.to_html(images))
        return out


def _json_ready(obj: Any) -> Any:
    """Copy of a metrics structure with NaN/inf as None and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if is_undefined(obj) else float(obj)
    return obj


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
.warning{background:#fff4e5;border-left:4px solid #e08a00;padding:.5rem .8rem}
figure{margin:1rem 0}
img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#555;font-size:.85rem}
""".strip()
