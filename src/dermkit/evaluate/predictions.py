"""The evaluation layer's predictions table: building it from arrays, reading and validating it.

One row per case: ``image``, ``target`` (when known), ``prediction`` (the decided class),
``prob:<class>`` per class (class order = column order) and, where the dataset has lesion/patient
ids, ``group`` (the bootstrap resamples whole groups). Extra columns (dataset, split, metadata) are
kept and do not affect the metrics.

``read_predictions`` validates such a table (CSV path or DataFrame) before anything computes on it:
missing values are the texts in :data:`dermkit.values.MISSING_TOKENS` (empty, NA, NaN, null,
None...), repeated image ids are refused unless ``allow_duplicates=True``, and what the numbers
must be read with (stripped whitespace, rows without a group) is left in
``result.attrs[WARNINGS_ATTR]``. ``prediction_arrays`` turns a validated table into the integer
labels and probability matrix of :mod:`dermkit.evaluate.metrics`. Nothing here computes a metric.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from ..values import is_missing, missing_mask, spelling_key

__all__ = ["PROB_PREFIX", "REQUIRED_COLUMNS", "SOURCE_ATTR", "WARNINGS_ATTR", "class_names", "normalise_groups",
           "prediction_arrays", "predictions_frame", "read_predictions"]

PROB_PREFIX = "prob:"
REQUIRED_COLUMNS = ("image", "target", "prediction")
#: ``DataFrame.attrs`` keys under which ``read_predictions`` leaves its warnings for ``evaluate``
#: and the CSV file they refer to (None for a DataFrame source).
WARNINGS_ATTR = "dermkit_warnings"
SOURCE_ATTR = "dermkit_source"
# Rows must be probability distributions; 1e-2 tolerates probabilities rounded in a CSV.
_SUM_TOLERANCE = 1e-2
_SHOW = 3  # rows/ids quoted in a message


def predictions_frame(
    images: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    targets: Sequence[str] | None = None,
    groups: Sequence | None = None,
) -> pd.DataFrame:
    """The predictions table: image, target, prediction, prob:<class>..., group."""
    proba = np.asarray(proba, dtype=np.float64).reshape(len(images), len(classes))
    frame = pd.DataFrame({"image": list(images)})
    if targets is not None:
        frame["target"] = list(targets)
    frame["prediction"] = [classes[i] for i in proba.argmax(axis=1)] if len(proba) else []
    for j, name in enumerate(classes):
        frame[f"{PROB_PREFIX}{name}"] = proba[:, j]
    if groups is not None:
        frame["group"] = list(groups)
    return frame


# ------------------------------------------------------------------------------ reading


def _missing_array(cells) -> np.ndarray:
    """:func:`dermkit.values.missing_mask` as a boolean array."""
    return np.array(missing_mask(cells), dtype=bool)


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
    * Missing values (:data:`dermkit.values.MISSING_TOKENS`: empty, ``NA``, ``NaN``, ``null``...)
      are refused in ``image``, ``target``, ``prediction`` and the ``prob:`` columns. A row with a missing
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
            # missing-value tokens are recognised by values.is_missing (MISSING_TOKENS), column by column.
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
                "value in CSV files (see dermkit.values.MISSING_TOKENS); rename the class (the "
                "column and its targets/predictions), e.g. to 'not_applicable'"
            )
    folded: dict[str, str] = {}
    for column, name in zip(prob_columns, classes):
        other = folded.setdefault(spelling_key(name), column)
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
    image_missing = _missing_array(frame["image"].to_numpy(dtype=object))
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
    by_fold = {spelling_key(name): name for name in classes}
    for column in ("target", "prediction"):
        raw = frame[column].to_numpy(dtype=object)
        absent = _missing_array(raw)
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
        variants = [i for i in bad if spelling_key(values[i]) in by_fold]
        if variants:
            value = str(values[variants[0]])
            same = [i for i in bad if values[i] == value]
            right = by_fold[spelling_key(value)]
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
        groups, notes = normalise_groups(frame["group"].to_numpy(dtype=object), images,
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


def normalise_groups(values, images, locate, what: str = "group id(s)") -> tuple[list[str], list[str]]:
    """``(group ids, warnings)``: ids as stripped text, a missing id replaced by the row's own
    cluster (its image id, made unique against the real ids).

    ``values``: one group id per row (a ``group`` column or ``evaluate(groups=...)``); ``images``:
    the rows' image ids; ``locate(i)``: how a warning names row ``i``; ``what``: how it names the
    ids ("group id(s)").
    """
    missing = _missing_array(values)
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

