"""Paired comparison of two recipes trained with several seeds each, on the same test cases.

One run per recipe leaves out a source of noise: retraining with another seed gives another
model, and its test metrics move by as much as many claimed improvements. ``compare_seed_predictions``
takes the test predictions of K seed pairs (seed i of A with seed i of B, every table on the same
cases) and reports, for every headline metric, the mean difference B - A over the seed pairs with
two tests:

* **(a) hierarchical paired bootstrap over seeds and cases** (the primary test). Each of the B
  replicates draws K seed pairs with replacement *and* one resample of the test cases
  (``bootstrap.resample_indices``: stratified by class, whole lesions/patients together), the same
  case resample for every seed pair because all seeds are scored on one test set; the replicate's
  value is the mean over the drawn pairs of the paired difference on those cases (both models of a
  pair on the same resample, as :func:`dermkit.evaluate.compare.paired_bootstrap`). Its percentile
  CI and two-sided p (``bootstrap_p_value``) therefore carry both the test-sample noise and the
  seed-to-seed noise. Each seed pair's own case-level paired bootstrap (CI, p) is reported too.
  With few seeds the seed level is coarse: K seeds give only C(2K-1, K) distinct seed draws (10 for
  3) and the bootstrap variance across seeds is (K-1)/K of the sample variance, so its p is on the
  optimistic side; that is why (b) is reported beside it.
* **(b) seed-level paired t-test**: the K per-pair differences on the full test set, t = mean /
  (sd / sqrt(K)) with K - 1 degrees of freedom, and the t-based CI. It uses the training noise only
  (every difference is on the same test set) and is weak with few seeds: with 3 seeds it has 2
  degrees of freedom, the 95% CI is +-4.30 standard errors wide, and only a difference several
  times the spread of the per-pair differences reaches p < 0.05.

Finally it says when the mean difference is smaller than the **seed spread**: the pooled sample
standard deviation (ddof=1) of the metric across seeds, sqrt((sd_A^2 + sd_B^2) / 2), i.e. how far
one run of either recipe typically lands from its recipe's mean; a difference below it could have
come out in either order from one run per recipe.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DataError, DermkitError
from .bootstrap import WeightedHeadline, bootstrap_p_value, percentile_ci
from .compare import LOWER_IS_BETTER, _metric_keys, _paired_samples, check_same_cases, write_comparison
from .metrics import check_arrays
from .predictions import prediction_arrays, read_predictions
from .tables import format_ci, format_metric, format_p, markdown_table

__all__ = ["compare_seed_predictions", "save_seed_comparison", "seed_comparison_markdown", "seed_suite_columns",
           "t_quantile"]

#: Headline metrics shown first (the suite tables' columns); the rest follow.
_FIRST = ("balanced_accuracy", "macro_auc", "accuracy", "macro_f1")


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (4.30 for df 2)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, df))


def _sd(values) -> float:
    """Sample standard deviation (ddof=1) of the finite values; NaN with fewer than two."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.std(v, ddof=1)) if v.size >= 2 else float("nan")


def seed_t_test(differences, level: float = 0.95) -> dict:
    """Paired t-test over seed pairs: ``differences`` = B - A of each pair on the full test set.

    Returns ``{"n", "mean", "sd", "se", "t", "df", "p", "ci"}`` (two-sided, ``sd`` with ddof=1).
    All differences equal: no spread to test against, so ``t`` and ``p`` are NaN (``note`` says
    why) unless they are all zero (p = 1).
    """
    from scipy.stats import t as student

    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    k = int(d.size)
    if k < 2:
        nan = float("nan")
        return {"n": k, "mean": float(d.mean()) if k else nan, "sd": nan, "se": nan, "t": nan, "df": max(k - 1, 0),
                "p": nan, "ci": {"low": nan, "high": nan, "level": level},
                "note": "fewer than two seed pairs with a defined difference"}
    mean, sd = float(d.mean()), float(np.std(d, ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # equal differences up to rounding
        sd = 0.0
    se = sd / math.sqrt(k)
    out = {"n": k, "mean": mean, "sd": sd, "se": se, "df": k - 1}
    if se == 0.0:
        p = 1.0 if mean == 0.0 else float("nan")
        out.update(t=0.0 if mean == 0.0 else float("nan"), p=p, ci={"low": mean, "high": mean, "level": level})
        if mean != 0.0:
            out["note"] = "every seed pair has the same difference: no spread to test it against"
        return out
    tq = t_quantile(k - 1, level)
    stat = mean / se
    out.update(t=float(stat), p=float(min(1.0, 2.0 * student.sf(abs(stat), k - 1))),
               ci={"low": mean - tq * se, "high": mean + tq * se, "level": level})
    return out


def _read_all(tables: Sequence, names: Sequence[str], allow_duplicates: bool) -> list[pd.DataFrame]:
    frames = [read_predictions(t, allow_duplicates=allow_duplicates) for t in tables]
    for frame, name in zip(frames[1:], names[1:]):
        check_same_cases(frames[0], frame, names[0], name)
    return frames


def compare_seed_predictions(a: Sequence, b: Sequence, seeds_a: Sequence[int], seeds_b: Sequence[int],
                             n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                             names: tuple[str, str] = ("A", "B"), allow_duplicates: bool = False) -> dict:
    """Compare recipe B with recipe A from K seed pairs of predictions tables (paths or frames).

    ``a[i]`` and ``b[i]`` (trained with seeds ``seeds_a[i]`` and ``seeds_b[i]``) form pair i; every
    table must hold the same cases in the same order (refused naming the first mismatch). Returns a
    JSON-able dict: names, ``n``, ``classes``, ``grouped``, ``seed_pairs``, ``bootstrap`` settings
    and, per headline metric, ``a``/``b`` (per seed), ``a_mean``/``b_mean``/``a_sd``/``b_sd``,
    ``differences`` (per pair), ``difference`` (their mean), ``hierarchical`` (CI, p: the seeds x
    cases bootstrap), ``per_pair`` (each pair's case-level paired bootstrap), ``seed_t`` (the paired
    t-test over seeds), ``seed_spread`` and ``within_seed_spread``. See the module docstring.
    """
    name_a, name_b = names
    k = len(a)
    if k != len(b) or k != len(seeds_a) or k != len(seeds_b):
        raise DataError(f"{name_a} has {len(a)} seed run(s) and {name_b} {len(b)}: pair seed i of A with seed i of "
                        "B, so give both the same number of seeds")
    if k < 2:
        raise DataError(f"a seed comparison needs at least two seed pairs, got {k}; with one run per recipe use "
                        "`dermkit compare` on the two run folders")
    valid_n = isinstance(n_bootstrap, (int, np.integer)) and not isinstance(n_bootstrap, bool)
    if not valid_n or n_bootstrap < 1:
        raise DermkitError(f"n_bootstrap must be a positive integer, got {n_bootstrap}")
    labels = [f"{name_a} seed {s}" for s in seeds_a] + [f"{name_b} seed {s}" for s in seeds_b]
    frames = _read_all(list(a) + list(b), labels, allow_duplicates)
    group_frame = next((f for f in frames if "group" in f.columns), None)
    groups = group_frame["group"].to_numpy() if group_frame is not None else None
    classes, y_true, _, _ = prediction_arrays(frames[0])
    heads = []
    for frame in frames:
        _, _, proba, y_pred = prediction_arrays(frame)
        _, proba, y_pred = check_arrays(y_true, proba, [str(i) for i in range(proba.shape[1])], y_pred)
        heads.append(WeightedHeadline(y_true, proba, y_pred))
    ones = np.ones((1, len(y_true)))
    points = [head(ones) for head in heads]
    keys = _metric_keys(points[0])
    keys = [m for m in _FIRST if m in keys] + [m for m in keys if m not in _FIRST]
    # The same seed -> the same case resamples for every pair: one test set, resampled once per replicate.
    samples = [_paired_samples(heads[i], heads[k + i], y_true, groups, keys, int(n_bootstrap), seed)
               for i in range(k)]
    picks = np.random.default_rng([seed, 1]).integers(0, k, size=(int(n_bootstrap), k))
    metrics = {}
    for m in keys:
        values_a = [float(points[i][m][0]) for i in range(k)]
        values_b = [float(points[k + i][m][0]) for i in range(k)]
        diffs = [vb - va for va, vb in zip(values_a, values_b)]
        per_pair_samples = np.stack([s[m][2] for s in samples])  # (K, n_bootstrap)
        hierarchical = np.take_along_axis(per_pair_samples.T, picks, axis=1).mean(axis=1)
        sd_a, sd_b = _sd(values_a), _sd(values_b)
        spread = math.sqrt((sd_a ** 2 + sd_b ** 2) / 2.0)
        difference = float(np.nanmean(diffs)) if np.isfinite(diffs).any() else float("nan")
        metrics[m] = {
            "a": values_a, "b": values_b, "a_mean": float(np.nanmean(values_a)) if np.isfinite(values_a).any()
            else float("nan"), "b_mean": float(np.nanmean(values_b)) if np.isfinite(values_b).any() else float("nan"),
            "a_sd": sd_a, "b_sd": sd_b, "differences": diffs, "difference": difference,
            "hierarchical": {"ci": percentile_ci(hierarchical, level), "p": bootstrap_p_value(hierarchical)},
            "per_pair": [{"seeds": [int(sa), int(sb)], "difference": d, "ci": percentile_ci(s[m][2], level),
                          "p": bootstrap_p_value(s[m][2])} for sa, sb, d, s in zip(seeds_a, seeds_b, diffs, samples)],
            "seed_t": seed_t_test(diffs, level),
            "seed_spread": spread,
            "within_seed_spread": bool(np.isfinite(difference) and np.isfinite(spread) and abs(difference) < spread),
        }
    return {
        "a": name_a, "b": name_b, "n": int(len(y_true)), "classes": classes, "grouped": groups is not None,
        "n_groups": int(pd.Series(groups).nunique()) if groups is not None else None,
        "seed_pairs": [[int(sa), int(sb)] for sa, sb in zip(seeds_a, seeds_b)], "n_seed_pairs": k,
        "bootstrap": {"n": int(n_bootstrap), "seed": seed, "level": level, "paired": True, "stratified": True,
                      "hierarchical": "seed pairs drawn with replacement x one case resample per replicate"},
        "seed_spread": "pooled sample sd across seeds (ddof=1): sqrt((sd_A^2 + sd_B^2) / 2)",
        "metrics": metrics,
    }


def _name(key: str) -> str:
    name = key.replace("sensitivity_at_specificity_", "sensitivity at specificity ")
    return name + " (lower is better)" if key in LOWER_IS_BETTER else name


def _mean_sd(mean: float, sd: float) -> str:
    return "n/a" if not np.isfinite(mean) else f"{format_metric(mean)} ± {format_metric(sd)}"


def verdict(result: dict, key: str) -> str:
    """One sentence on metric ``key``: the mean difference, both p-values and the seed spread."""
    r = result["metrics"][key]
    d, spread = r["difference"], r["seed_spread"]
    if not np.isfinite(d):
        return f"{_name(key)}: undefined on these test cases."
    size = ("smaller than the seed spread" if r["within_seed_spread"] else "at least the seed spread")
    text = (f"{_name(key)}: B - A = {d:+.4f} (mean over {result['n_seed_pairs']} seed pairs), {size} "
            f"(sd across seeds {format_metric(spread)}); p = {format_p(r['hierarchical']['p'])} (seeds x cases "
            f"bootstrap), {format_p(r['seed_t']['p'])} (paired t over seeds).")
    if r["within_seed_spread"]:
        text += " One run per recipe could have shown either order."
    return text


def seed_comparison_markdown(result: dict) -> str:
    """comparison.md of a seed comparison: why these tests, the summary table, the per-pair table."""
    b, k = result["bootstrap"], result["n_seed_pairs"]
    unit = (f"whole lesions/patients ({result['n_groups']} groups) resampled, stratified by majority class"
            if result["grouped"] else "cases stratified by true class")
    pairs = ", ".join(f"A {sa} with B {sb}" for sa, sb in result["seed_pairs"])
    tq = t_quantile(k - 1, b["level"])
    lines = [f"# Multi-seed comparison: B = {result['b']} vs A = {result['a']}", "",
             f"- Cases: {result['n']} (the same images, targets and order in every seed's predictions)",
             f"- Classes ({len(result['classes'])}): {', '.join(result['classes'])}",
             f"- Seed pairs ({k}): {pairs}", "",
             "Differences are B - A, averaged over the seed pairs. Two sources of noise: which test cases were "
             "drawn, and which seed trained each model. Two tests:", "",
             f"- **Seeds x cases bootstrap** (primary): {b['n']} replicates (seed {b['seed']}), each drawing "
             f"{k} seed pairs with replacement and one case resample ({unit}) shared by all pairs; the replicate "
             "is the mean paired difference over the drawn pairs. Its CI and p include both sources of noise. "
             f"With {k} seeds the seed level has few distinct draws and slightly understates the seed "
             "variance, so read its p as optimistic.",
             f"- **Paired t-test over seeds**: the {k} per-pair differences on the full test set, {k - 1} degrees "
             f"of freedom. Training noise only, and weak with few seeds: its {b['level']:.0%} CI is "
             f"±{tq:.2f} standard errors wide, so only differences several times their spread reach p < 0.05.",
             "",
             "Seed spread: the pooled sample standard deviation (ddof=1) across seeds, sqrt((sd_A² + sd_B²) / 2): "
             "a difference below it is within what retraining alone moves a single run.", "",
             "## Headline metrics", "",
             markdown_table(["Metric", "A mean ± sd", "B mean ± sd", "B - A", f"{b['level']:.0%} CI (seeds x cases)",
                             "p (seeds x cases)", f"{b['level']:.0%} CI (t)", "p (t, seeds)", "Seed spread",
                             "Smaller than spread"],
                            [[_name(key), _mean_sd(r["a_mean"], r["a_sd"]), _mean_sd(r["b_mean"], r["b_sd"]),
                              format_metric(r["difference"]), format_ci(r["hierarchical"]["ci"], 4, "[{low}, {high}]"),
                              format_p(r["hierarchical"]["p"]), format_ci(r["seed_t"]["ci"], 4, "[{low}, {high}]"),
                              format_p(r["seed_t"]["p"]), format_metric(r["seed_spread"]),
                              "yes" if r["within_seed_spread"] else "no"]
                             for key, r in result["metrics"].items()]),
             "## In words", ""]
    lines += [f"- {verdict(result, key)}" for key in ("balanced_accuracy", "macro_auc") if key in result["metrics"]]
    lines += ["", "## Each seed pair (case-level paired bootstrap on the same resamples)", "",
              markdown_table(["Metric", "Seeds (A, B)", "A", "B", "B - A", f"{b['level']:.0%} CI", "p"],
                             [[_name(key), f"{pp['seeds'][0]}, {pp['seeds'][1]}", format_metric(va),
                               format_metric(vb), format_metric(pp["difference"]),
                               format_ci(pp["ci"], 4, "[{low}, {high}]"), format_p(pp["p"])]
                              for key, r in result["metrics"].items()
                              for pp, va, vb in zip(r["per_pair"], r["a"], r["b"])])]
    return "\n".join(lines)


def save_seed_comparison(result: dict, out_dir: str | os.PathLike) -> Path:
    """Write comparison.json, comparison.csv (one row per metric) and comparison.md into ``out_dir``."""
    out = Path(out_dir)
    text = seed_comparison_markdown(result)  # rendered before anything is written
    table = pd.DataFrame([
        {"metric": key, "a_mean": r["a_mean"], "a_sd": r["a_sd"], "b_mean": r["b_mean"], "b_sd": r["b_sd"],
         "difference": r["difference"], "ci_low": r["hierarchical"]["ci"]["low"],
         "ci_high": r["hierarchical"]["ci"]["high"], "p_seeds_x_cases": r["hierarchical"]["p"],
         "p_t_seeds": r["seed_t"]["p"], "seed_spread": r["seed_spread"],
         "within_seed_spread": r["within_seed_spread"]} for key, r in result["metrics"].items()])
    return write_comparison(out, result, table, text)


def seed_suite_columns(result: dict, baseline: str) -> dict[str, str]:
    """Suite-table cells (in %) of a seed comparison with ``baseline``: the mean BACC and AUC
    differences with the seeds x cases CI and p, the t-test's p, and whether |ΔBACC| < seed sd."""
    def cell(key: str) -> str:
        r = result["metrics"][key]
        if not np.isfinite(r["difference"]):
            return "n/a"
        ci = r["hierarchical"]["ci"]
        return (f"{100 * r['difference']:+.1f} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}] "
                f"p={format_p(r['hierarchical']['p'])}")

    bacc = result["metrics"]["balanced_accuracy"]
    return {f"ΔBACC vs {baseline}": cell("balanced_accuracy"), f"ΔAUC vs {baseline}": cell("macro_auc"),
            "t-test p (BACC, seeds)": format_p(bacc["seed_t"]["p"]),
            "ΔBACC < seed sd": "yes" if bacc["within_seed_spread"] else "no"}
