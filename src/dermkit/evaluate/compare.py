"""Paired comparison of two models evaluated on the same cases.

``compare_predictions(a, b)`` reads two predictions tables (``read_predictions``), refuses them
unless they hold the same cases in the same order with the same classes and targets (naming the
first mismatch), and reports, for every headline metric, the difference B - A with

* a **paired bootstrap** CI and two-sided p-value: both models are scored on the *same*
  resamples (``bootstrap.resample_indices``: stratified by class, whole lesions/patients drawn
  together when the tables have a ``group`` column), so what is shared by the two models (which
  images happen to be hard) cancels. p = min(1, 2 min((1 + #{d <= 0}) / (B + 1),
  (1 + #{d >= 0}) / (B + 1))) over the B resample differences d; identical files give p = 1;
* **DeLong's test** for the AUC difference (``delong_test``: the fast mid-rank algorithm of Sun &
  Xu 2014, ties counted 1/2) for the binary AUC and for the one-vs-rest macro AUC
  (``delong_macro_test``, see there for the variance);
* **McNemar's test** for the accuracy difference (``mcnemar_test``): the exact two-sided
  binomial test on the discordant pairs when there are fewer than 25 of them, else the
  chi-square statistic with continuity correction; the result says which one was used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import io
from ..errors import DataError, DermkitError
from .bootstrap import WeightedHeadline, bootstrap_p_value, percentile_ci, resample_indices, resample_weights
from .metrics import HEADLINE_METRICS, SPECIFICITIES, check_arrays, classification_metrics, quiet
from .predictions import class_names, prediction_arrays, read_predictions
from .tables import format_ci, format_metric, format_p, markdown_table, percent_ci, with_ci

__all__ = [
    "MCNEMAR_EXACT_BELOW",
    "cleaning_effect",
    "cleaning_rows",
    "compare_predictions",
    "comparison_markdown",
    "delong_components",
    "delong_macro_test",
    "delong_test",
    "mcnemar_test",
    "paired_bootstrap",
    "predictions_path",
    "save_comparison",
    "suite_columns",
]

#: Below this many discordant pairs McNemar's test is the exact binomial test.
MCNEMAR_EXACT_BELOW = 25
#: Metrics where lower is better (the difference is still reported as B - A).
LOWER_IS_BETTER = ("ece", "brier")
_CHUNK_ELEMENTS = 4_000_000


# ------------------------------------------------------------------------------------ DeLong


def delong_components(positive, scores) -> tuple[float, np.ndarray, np.ndarray]:
    """``(auc, V10, V01)``: DeLong's structural components from mid-ranks (Sun & Xu 2014).

    ``V10[i]`` is the fraction of negatives that positive *i* outscores (ties 1/2), ``V01[j]``
    the fraction of positives that outscore negative *j*; the AUC is the mean of either.
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    x, y = scores[positive], scores[~positive]
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise DermkitError("DeLong's test needs at least one positive and one negative case")
    tz = rankdata(np.concatenate([x, y]))  # mid-ranks among all cases
    v10 = (tz[:m] - rankdata(x)) / n
    v01 = 1.0 - (tz[m:] - rankdata(y)) / m
    return float(v10.mean()), v10, v01


def _delong_errors(positive, scores) -> tuple[float, np.ndarray]:
    """AUC and per-case terms ``e`` with ``sum(e**2)`` = DeLong's variance of the AUC.

    Positives contribute ``(V10 - AUC) / sqrt(m (m - 1))``, negatives ``(V01 - AUC) / sqrt(n (n -
    1))``, so for one AUC ``sum(e**2) = S10 / m + S01 / n`` and for a difference of two AUCs on the
    same cases ``sum((e_a - e_b)**2) = Var(A) + Var(B) - 2 Cov(A, B)`` (DeLong et al. 1988).
    """
    positive = np.asarray(positive, dtype=bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise DermkitError("DeLong's variance needs at least two positive and two negative cases")
    auc, v10, v01 = delong_components(positive, scores)
    e = np.empty(len(positive))
    e[positive] = (v10 - auc) / np.sqrt(m * (m - 1))
    e[~positive] = (v01 - auc) / np.sqrt(n * (n - 1))
    return auc, e


def _z_test(diff: float, var: float) -> tuple[float, float]:
    from scipy.stats import norm

    if var <= 0:
        # Both AUCs have no sampling variability left: equal AUCs are no evidence of a difference.
        return (0.0, 1.0) if diff == 0 else (float(np.sign(diff) * np.inf), 0.0)
    z = diff / np.sqrt(var)
    return float(z), float(2.0 * norm.sf(abs(z)))


def delong_test(positive, scores_a, scores_b) -> dict:
    """DeLong's test of AUC(B) - AUC(A) for two score columns on the same cases.

    Returns ``auc_a, auc_b, difference (B - A), var_a, var_b, cov, var_difference, se, z, p``
    (two-sided, normal approximation) and the 95% CI of the difference (difference +- 1.96 se).
    """
    auc_a, e_a = _delong_errors(positive, scores_a)
    auc_b, e_b = _delong_errors(positive, scores_b)
    var_a, var_b, cov = float(e_a @ e_a), float(e_b @ e_b), float(e_a @ e_b)
    diff = auc_b - auc_a
    var = float(((e_b - e_a) ** 2).sum())
    z, p = _z_test(diff, var)
    se = float(np.sqrt(max(var, 0.0)))
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": diff, "var_a": var_a, "var_b": var_b, "cov": cov,
            "var_difference": var, "se": se, "z": z, "p": p,
            "ci": {"low": diff - 1.959963984540054 * se, "high": diff + 1.959963984540054 * se, "level": 0.95}}


def delong_macro_test(y_true, proba_a, proba_b) -> dict:
    """DeLong-style test of the difference in macro AUC (mean one-vs-rest AUC), B - A.

    Two classes: exactly :func:`delong_test` on the second (positive) class, as ``macro_auc`` is
    that AUC. More classes: the difference is the mean over the classes with at least two
    positives and two negatives of AUC_c(B) - AUC_c(A). Its variance is ``sum over cases of
    (mean over classes of (e_c,B - e_c,A))**2``, where ``e_c`` are each class's DeLong terms (see
    ``_delong_errors``): this is DeLong's variance for one class and, for the mean, includes the
    covariances between classes (every class's AUC is computed on the same images) instead of
    assuming the classes independent. Classes left out are listed in ``"skipped_classes"``.
    """
    y_true = np.asarray(y_true)
    proba_a, proba_b = np.asarray(proba_a, float), np.asarray(proba_b, float)
    n_classes = proba_a.shape[1]
    if n_classes == 2:
        out = delong_test(y_true == 1, proba_a[:, 1], proba_b[:, 1])
        out.update(classes_used=[1], skipped_classes=[])
        return out
    used, skipped, diffs, aucs_a, aucs_b = [], [], [], [], []
    total = np.zeros(len(y_true))
    for c in range(n_classes):
        positive = y_true == c
        if positive.sum() < 2 or (~positive).sum() < 2:
            skipped.append(c)
            continue
        auc_a, e_a = _delong_errors(positive, proba_a[:, c])
        auc_b, e_b = _delong_errors(positive, proba_b[:, c])
        total += e_b - e_a
        used.append(c)
        aucs_a.append(auc_a)
        aucs_b.append(auc_b)
        diffs.append(auc_b - auc_a)
    if not used:
        raise DermkitError("no class has two positives and two negatives: the macro AUC difference is undefined")
    k = len(used)
    diff = float(np.mean(diffs))
    var = float(((total / k) ** 2).sum())
    z, p = _z_test(diff, var)
    se = float(np.sqrt(var))
    return {"auc_a": float(np.mean(aucs_a)), "auc_b": float(np.mean(aucs_b)), "difference": diff,
            "per_class_difference": dict(zip(used, map(float, diffs))), "var_difference": var, "se": se,
            "z": z, "p": p, "classes_used": used, "skipped_classes": skipped,
            "ci": {"low": diff - 1.959963984540054 * se, "high": diff + 1.959963984540054 * se, "level": 0.95}}


# ----------------------------------------------------------------------------------- McNemar


def mcnemar_test(correct_a, correct_b, exact_below: int = MCNEMAR_EXACT_BELOW) -> dict:
    """McNemar's test of equal accuracy from per-case correctness (booleans) of A and B.

    ``only_a_correct`` (b) and ``only_b_correct`` (c) are the discordant pairs. With
    ``b + c < exact_below`` the p-value is the exact two-sided binomial test of b ~ Bin(b + c,
    1/2) (``method: "exact binomial"``); otherwise it is the chi-square test of
    ``(|b - c| - 1)**2 / (b + c)`` with 1 degree of freedom (``method: "chi-square with continuity
    correction"``). No discordant pairs: p = 1.
    """
    from scipy.stats import binomtest, chi2

    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise DermkitError("McNemar's test needs the correctness of both models on the same cases")
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    out = {"both_correct": int((correct_a & correct_b).sum()), "only_a_correct": b, "only_b_correct": c,
           "both_wrong": int((~correct_a & ~correct_b).sum()), "n": int(len(correct_a))}
    if b + c == 0:
        return {**out, "statistic": 0.0, "p": 1.0, "method": "no discordant pairs"}
    if b + c < exact_below:
        p = float(binomtest(b, b + c, 0.5).pvalue)
        return {**out, "statistic": float(b), "p": min(1.0, p), "method": "exact binomial"}
    stat = (abs(b - c) - 1.0) ** 2 / (b + c)
    return {**out, "statistic": float(stat), "p": float(chi2.sf(stat, 1)),
            "method": "chi-square with continuity correction"}


# ---------------------------------------------------------------------------- paired bootstrap


def _paired_samples(head_a: WeightedHeadline, head_b: WeightedHeadline, y_true, groups, keys, n: int, seed: int,
                    keep_b: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{metric: (3, n)}`` values of A, B and B - A on the same ``n`` resamples of the rows; B sees
    only the rows where ``keep_b`` is true (a nested subset of the cases, e.g. a cleaned split)."""
    samples = {k: np.empty((3, n)) for k in keys}
    chunk = max(1, _CHUNK_ELEMENTS // len(y_true))
    indices = resample_indices(y_true, groups, n=n, seed=seed)
    done = 0
    with quiet():
        while done < n:
            batch = [next(indices) for _ in range(min(chunk, n - done))]
            weights = resample_weights(batch, len(y_true))
            values_a = head_a(weights)
            values_b = head_b(weights if keep_b is None else weights * keep_b)
            for k in keys:
                rows = slice(done, done + len(batch))
                samples[k][0, rows], samples[k][1, rows] = values_a[k], values_b[k]
                samples[k][2, rows] = values_b[k] - values_a[k]
            done += len(batch)
    return samples


def _metric_keys(point: dict) -> list[str]:
    return [k for k in point if k in HEADLINE_METRICS or k.startswith("sensitivity_at_specificity_")]


def paired_bootstrap(y_true, proba_a, proba_b, y_pred_a=None, y_pred_b=None, groups=None, n: int = 1000,
                     seed: int = 0, level: float = 0.95,
                     specificities: Sequence[float] = SPECIFICITIES) -> dict:
    """Difference B - A of every headline metric over the same resamples, with CI and p-value.

    Returns ``{metric: {"difference", "ci": {"low", "high", "level"}, "p"}}``, ``difference``
    being the point estimate on the full data; binary problems add the sensitivities at fixed
    specificity.
    """
    n_classes = np.shape(proba_a)[1]
    names = [str(i) for i in range(n_classes)]
    y_true, proba_a, y_pred_a = check_arrays(y_true, proba_a, names, y_pred_a)
    _, proba_b, y_pred_b = check_arrays(y_true, proba_b, names, y_pred_b)
    head_a = WeightedHeadline(y_true, proba_a, y_pred_a, specificities=specificities)
    head_b = WeightedHeadline(y_true, proba_b, y_pred_b, specificities=specificities)
    ones = np.ones((1, len(y_true)))
    point_a, point_b = head_a(ones), head_b(ones)
    keys = _metric_keys(point_a)
    samples = _paired_samples(head_a, head_b, y_true, groups, keys, n, seed)
    out = {}
    for k in keys:
        out[k] = {"a": float(point_a[k][0]), "b": float(point_b[k][0]),
                  "difference": float(point_b[k][0] - point_a[k][0]),
                  "ci": percentile_ci(samples[k][2], level), "p": bootstrap_p_value(samples[k][2])}
    return out


def cleaning_effect(y_true, proba, y_pred=None, excluded=None, groups=None, n: int = 1000, seed: int = 0,
                    level: float = 0.95, specificities: Sequence[float] = SPECIFICITIES) -> dict:
    """One model's metrics on a full split and on the same split without its ``excluded`` rows.

    The cleaned split is a subset of the full one, so the two are compared by a **paired
    bootstrap**: each resample draws rows (whole groups, stratified by class, as
    :func:`paired_bootstrap`) from the full split; the full metric uses all drawn rows, the
    cleaned metric the drawn rows that are not excluded. What the two share cancels in the
    difference cleaned - full, whose CI and two-sided p-value come from those resamples.

    Returns ``{"n_full", "n_cleaned", "n_excluded", "metrics": {metric: {"full", "full_ci",
    "cleaned", "cleaned_ci", "difference", "ci", "p"}}}`` (difference = cleaned - full).
    """
    n_classes = np.shape(proba)[1]
    y_true, proba, y_pred = check_arrays(y_true, proba, [str(i) for i in range(n_classes)], y_pred)
    excluded = np.asarray(excluded if excluded is not None else np.zeros(len(y_true)), dtype=bool)
    if excluded.shape != (len(y_true),):
        raise DermkitError(f"excluded has {excluded.shape[0] if excluded.ndim else 0} values for {len(y_true)} rows")
    if excluded.all():
        raise DermkitError("every row is excluded: nothing is left to compare the full split with")
    head = WeightedHeadline(y_true, proba, y_pred, specificities=specificities)
    keep = (~excluded).astype(float)
    point_full, point_clean = head(np.ones((1, len(y_true)))), head(keep[None, :])
    keys = _metric_keys(point_full)
    samples = _paired_samples(head, head, y_true, groups, keys, n, seed, keep_b=keep) if n > 0 else None
    nan_ci = {"low": float("nan"), "high": float("nan"), "level": level}
    metrics = {}
    for k in keys:
        full, clean = float(point_full[k][0]), float(point_clean[k][0])
        metrics[k] = {"full": full, "cleaned": clean, "difference": clean - full,
                      "full_ci": percentile_ci(samples[k][0], level) if samples else nan_ci,
                      "cleaned_ci": percentile_ci(samples[k][1], level) if samples else nan_ci,
                      "ci": percentile_ci(samples[k][2], level) if samples else nan_ci,
                      "p": bootstrap_p_value(samples[k][2]) if samples else float("nan")}
    return {"n_full": int(len(y_true)), "n_cleaned": int((~excluded).sum()), "n_excluded": int(excluded.sum()),
            "metrics": metrics}


def cleaning_rows(result: dict) -> list[list[str]]:
    """Rows ``[metric, full (CI), cleaned (CI), cleaned - full, 95% CI, p]`` of :func:`cleaning_effect`."""
    rows = []
    for key, r in result["metrics"].items():
        name = key.replace("sensitivity_at_specificity_", "sensitivity at specificity ")
        if key in LOWER_IS_BETTER:
            name += " (lower is better)"
        rows.append([name, with_ci(r["full"], r["full_ci"]["low"], r["full_ci"]["high"]),
                     with_ci(r["cleaned"], r["cleaned_ci"]["low"], r["cleaned_ci"]["high"]),
                     format_metric(r["difference"]), format_ci(r["ci"], 4, "[{low}, {high}]"), format_p(r["p"])])
    return rows


# -------------------------------------------------------------------------- two prediction files


def _label(source, fallback: str) -> str:
    return fallback if isinstance(source, pd.DataFrame) else str(source)


def check_same_cases(a: pd.DataFrame, b: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> None:
    """Refuse two validated predictions tables that do not describe the same cases.

    Checks, in order: the classes (names and order of the ``prob:`` columns), the number of rows,
    the image id of every row (same order), the target of every row and, when both have one, the
    ``group`` of every row. The message names the first mismatch.
    """
    ca, cb = class_names(a), class_names(b)
    if ca != cb:
        where = next((i for i, (x, y) in enumerate(zip(ca, cb)) if x != y), min(len(ca), len(cb)))
        first = (f"class {where + 1} is {ca[where] if where < len(ca) else '(none)'!r} in {name_a} but "
                 f"{cb[where] if where < len(cb) else '(none)'!r} in {name_b}")
        raise DataError(f"{name_a} and {name_b} have different classes ({ca} vs {cb}): {first}; compare models "
                        "of the same task (same prob:<class> columns in the same order)")
    if len(a) != len(b):
        only = sorted(set(a["image"]) ^ set(b["image"]))
        extra = f"; e.g. image {only[0]!r} is in only one of them" if only else ""
        raise DataError(f"{name_a} has {len(a)} rows but {name_b} has {len(b)}{extra}; evaluate both models on the "
                        "same split of the same dataset")
    for column, what in (("image", "image id"), ("target", "target")):
        differ = np.flatnonzero(a[column].to_numpy(dtype=object) != b[column].to_numpy(dtype=object))
        if len(differ):
            i = int(differ[0])
            hint = ("sort both files by image (or evaluate both on the same split) so row i is the same case"
                    if column == "image" and set(a["image"]) == set(b["image"]) else
                    "evaluate both models on the same split of the same dataset" if column == "image" else
                    "both files must hold the same ground truth; re-export them from the same dataset card")
            raise DataError(f"row {i + 1} differs: {what} {str(a[column].iloc[i])!r} in {name_a} but "
                            f"{str(b[column].iloc[i])!r} in {name_b} ({len(differ)} row(s) differ); {hint}")
    if "group" in a.columns and "group" in b.columns:
        differ = np.flatnonzero(a["group"].to_numpy(dtype=object) != b["group"].to_numpy(dtype=object))
        if len(differ):
            i = int(differ[0])
            raise DataError(f"row {i + 1} (image {str(a['image'].iloc[i])!r}) has group {str(a['group'].iloc[i])!r} "
                            f"in {name_a} but {str(b['group'].iloc[i])!r} in {name_b}; both files must group "
                            "images by the same lesion/patient ids")


def predictions_path(path: str | os.PathLike) -> Path:
    """A predictions CSV, or the ``predictions.csv`` of a report folder or of a run's ``eval/test``."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "predictions.csv", path / "eval" / "test" / "predictions.csv"):
            if candidate.is_file():
                return candidate
        raise DataError(f"{path} is a folder without predictions.csv or eval/test/predictions.csv; give a "
                        "predictions CSV, a report folder or a run folder")
    return path


def compare_predictions(a, b, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                        names: tuple[str, str] | None = None, allow_duplicates: bool = False) -> dict:
    """Paired comparison of two predictions tables (CSV paths or DataFrames) on the same cases.

    Returns a JSON-able dict: ``a``/``b`` (names), ``n``, ``classes``, ``grouped``, ``n_groups``,
    ``bootstrap`` (settings), ``metrics`` (per headline metric: A, B, difference B - A, paired
    bootstrap CI and p), ``delong`` (AUC difference: DeLong's test; binary AUC for two classes,
    one-vs-rest macro AUC otherwise) and ``mcnemar`` (accuracy).
    """
    name_a = names[0] if names else _label(a, "A")
    name_b = names[1] if names else _label(b, "B")
    frame_a = read_predictions(a, allow_duplicates=allow_duplicates)
    frame_b = read_predictions(b, allow_duplicates=allow_duplicates)
    check_same_cases(frame_a, frame_b, name_a, name_b)
    valid_n = isinstance(n_bootstrap, (int, np.integer)) and not isinstance(n_bootstrap, bool)
    if not valid_n or n_bootstrap < 1:
        raise DermkitError(f"n_bootstrap must be a positive integer for a paired bootstrap, got {n_bootstrap}")
    classes, y_true, proba_a, y_pred_a = prediction_arrays(frame_a)
    _, _, proba_b, y_pred_b = prediction_arrays(frame_b)
    group_frame = frame_a if "group" in frame_a.columns else frame_b if "group" in frame_b.columns else None
    groups = group_frame["group"].to_numpy() if group_frame is not None else None

    metrics = paired_bootstrap(y_true, proba_a, proba_b, y_pred_a, y_pred_b, groups, n=int(n_bootstrap),
                               seed=seed, level=level)
    with quiet():
        log_a = classification_metrics(y_true, proba_a, classes, y_pred_a)["log_loss"]
        log_b = classification_metrics(y_true, proba_b, classes, y_pred_b)["log_loss"]
    try:
        delong = delong_macro_test(y_true, proba_a, proba_b)
        delong["classes_used"] = [classes[c] for c in delong["classes_used"]]
        delong["skipped_classes"] = [classes[c] for c in delong["skipped_classes"]]
        if "per_class_difference" in delong:
            delong["per_class_difference"] = {classes[c]: v for c, v in delong["per_class_difference"].items()}
        delong["what"] = (f"AUC of {classes[1]!r}" if len(classes) == 2 else
                          "macro AUC (mean one-vs-rest AUC; variance includes between-class covariances)")
    except DermkitError as exc:
        delong = {"difference": float("nan"), "p": float("nan"), "error": str(exc)}
    return {
        "a": name_a, "b": name_b, "n": int(len(y_true)), "classes": classes,
        "grouped": groups is not None, "n_groups": int(pd.Series(groups).nunique()) if groups is not None else None,
        "bootstrap": {"n": int(n_bootstrap), "seed": seed, "level": level, "paired": True, "stratified": True},
        "metrics": metrics,
        "log_loss": {"a": log_a, "b": log_b, "difference": log_b - log_a},
        "delong": delong,
        "mcnemar": mcnemar_test(y_pred_a == y_true, y_pred_b == y_true),
    }


def comparison_rows(result: dict) -> list[list[str]]:
    """Rows ``[metric, A, B, B - A, 95% CI, p]`` of the paired-bootstrap table."""
    rows = []
    for key, r in result["metrics"].items():
        name = key.replace("sensitivity_at_specificity_", "sensitivity at specificity ")
        if key in LOWER_IS_BETTER:
            name += " (lower is better)"
        rows.append([name, format_metric(r["a"]), format_metric(r["b"]), format_metric(r["difference"]),
                     format_ci(r["ci"], 4, "[{low}, {high}]"), format_p(r["p"])])
    return rows


def comparison_markdown(result: dict) -> str:
    """comparison.md: the paired bootstrap table, DeLong's and McNemar's tests."""
    b, d, mc = result["bootstrap"], result["delong"], result["mcnemar"]
    unit = (f"whole lesions/patients ({result['n_groups']} groups) resampled, stratified by majority class"
            if result["grouped"] else "stratified by true class")
    lines = [f"# Paired comparison: B = {result['b']} vs A = {result['a']}", "",
             f"- Cases: {result['n']} (the same images, targets and order in both files)",
             f"- Classes ({len(result['classes'])}): {', '.join(result['classes'])}", "",
             f"Differences are B - A. {b['level']:.0%} CIs and two-sided p-values: paired percentile bootstrap "
             f"with {b['n']} resamples (seed {b['seed']}), both models scored on the same resamples, {unit}; "
             f"the smallest bootstrap p-value possible is 2/(resamples + 1) = {2 / (b['n'] + 1):.4f}.", "",
             "## Headline metrics", "",
             markdown_table(["Metric", "A", "B", "B - A", f"{b['level']:.0%} CI", "p (bootstrap)"],
                            comparison_rows(result)),
             "## AUC: DeLong's test", ""]
    if "error" in d:
        lines += [f"Not computed: {d['error']}", ""]
    else:
        lines += [markdown_table(["What", "A", "B", "B - A", "SE", "95% CI", "z", "p"],
                                 [[d["what"], format_metric(d["auc_a"]), format_metric(d["auc_b"]),
                                   format_metric(d["difference"]), format_metric(d["se"]),
                                   f"[{format_metric(d['ci']['low'])}, {format_metric(d['ci']['high'])}]",
                                   format_metric(d["z"], 3), format_p(d["p"])]])]
        if d.get("skipped_classes"):
            lines += [f"Classes without two positives and two negatives (left out): "
                      f"{', '.join(d['skipped_classes'])}.", ""]
    lines += ["## Accuracy: McNemar's test", "",
              markdown_table(["Both correct", "Only A correct", "Only B correct", "Both wrong", "Test", "p"],
                             [[mc["both_correct"], mc["only_a_correct"], mc["only_b_correct"], mc["both_wrong"],
                               mc["method"], format_p(mc["p"])]])]
    return "\n".join(lines)


def save_comparison(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write comparison.json, comparison.csv (the bootstrap table) and comparison.md into ``out_dir``."""
    out = Path(out_dir)
    text = comparison_markdown(result)  # rendered before anything is written
    table = pd.DataFrame([
        {"metric": key, "a": r["a"], "b": r["b"], "difference": r["difference"], "ci_low": r["ci"]["low"],
         "ci_high": r["ci"]["high"], "p_bootstrap": r["p"]} for key, r in result["metrics"].items()])
    return write_comparison(out, result, table, text)


def write_comparison(out: Path, result: dict, table: pd.DataFrame, text: str) -> Path:
    """comparison.json / .csv / .md of a comparison (one run pair or two multi-seed runs) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "comparison.json", result)
    io.write_csv(out / "comparison.csv", table)
    io.write_text(out / "comparison.md", text)
    return out


def suite_columns(result: dict, baseline: str) -> dict[str, str]:
    """Suite-table cells (in %) of ``compare_predictions(baseline, run)``: the BACC and AUC differences
    with paired bootstrap CI and p, DeLong's p for the AUC and McNemar's p for the accuracy."""
    def cell(key: str) -> str:
        r = result["metrics"][key]
        return f"{percent_ci(r['difference'], r['ci'])} p={format_p(r['p'])}"

    return {f"ΔBACC vs {baseline}": cell("balanced_accuracy"), f"ΔAUC vs {baseline}": cell("macro_auc"),
            "DeLong p": format_p(result["delong"].get("p")), "McNemar p": format_p(result["mcnemar"]["p"])}
