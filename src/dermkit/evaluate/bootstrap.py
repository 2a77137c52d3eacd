"""Percentile bootstrap confidence intervals, stratified by class and optionally by lesion/patient.

Resampling (``resample_indices``):

* without groups, rows are drawn with replacement *within each target class*, so every resample
  keeps the class counts of the evaluation set (rare classes such as dermatofibroma cannot vanish);
* with groups (lesion or patient ids), whole groups are drawn with replacement, stratified by each
  group's majority class, and all rows of a drawn group come in. Several images of one lesion are
  not independent evidence, so resampling them separately would make intervals too narrow.

``bootstrap_metrics`` computes all headline metrics for all resamples at once: a resample is a row
of counts (how often each original row was drawn), and every metric is a weighted sum over rows,
so a chunk of resamples becomes a few matrix operations instead of a Python loop over scikit-learn
calls. ``bootstrap_ci`` is the generic (slower) version for any metric function.
``bootstrap_p_value`` turns resample differences (paired models, two subgroups) into a p-value.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DermkitError
from .metrics import (
    ECE_BINS,
    HEADLINE_METRICS,
    SPECIFICITIES,
    TieBlocks,
    auc_from_blocks,
    brier_per_sample,
    calibration_terms,
    check_arrays,
    macro_auc,
    nanmean,
    quiet,
    sens_at_spec_from_blocks,
    specificity_key,
)

#: Upper bound on resamples x rows held in memory at once (float64: ~32 MB per matrix).
_CHUNK_ELEMENTS = 4_000_000


def resample_indices(
    y_true, groups=None, n: int = 1000, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield ``n`` arrays of row indices, one per stratified (and optionally grouped) resample.

    Deterministic for a given ``seed`` (numpy ``default_rng``). With ``groups`` (one id per row),
    whole groups are drawn within strata defined by each group's majority target class (ties go to
    the lowest class index), so a resample may have a different number of rows than the data.
    """
    y_true = np.asarray(y_true)
    if y_true.ndim != 1 or len(y_true) == 0:
        raise DermkitError("y_true must be a non-empty 1-D array")
    if n < 0:
        raise DermkitError(f"number of bootstrap resamples must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    if groups is None:
        strata = [np.flatnonzero(y_true == label) for label in np.unique(y_true)]
        for _ in range(n):
            yield np.concatenate([rows[rng.integers(0, len(rows), len(rows))] for rows in strata])
        return

    codes, n_groups = group_codes(groups, len(y_true))
    _, y_codes = np.unique(y_true, return_inverse=True)
    n_labels = int(y_codes.max()) + 1
    counts = np.bincount(codes * n_labels + y_codes, minlength=n_groups * n_labels)
    majority = counts.reshape(n_groups, n_labels).argmax(axis=1)
    strata = [np.flatnonzero(majority == label) for label in np.unique(majority)]
    # Rows sorted by group: group g occupies order[start[g] : start[g] + size[g]].
    order = np.argsort(codes, kind="stable")
    size = np.bincount(codes, minlength=n_groups)
    start = np.cumsum(size) - size
    for _ in range(n):
        chosen = np.concatenate([gids[rng.integers(0, len(gids), len(gids))] for gids in strata])
        lengths = size[chosen]
        # Expand each chosen group to its row positions without a Python loop.
        first = np.repeat(start[chosen] - (np.cumsum(lengths) - lengths), lengths)
        yield order[first + np.arange(lengths.sum())]


def group_codes(groups, n_rows: int) -> tuple[np.ndarray, int]:
    """Integer codes 0..G-1 for a group id per row; raises on a length mismatch or missing ids."""
    groups = np.asarray(groups, dtype=object)
    if groups.shape != (n_rows,):
        raise DermkitError(
            f"groups must give one id per prediction row ({n_rows}), got shape {groups.shape}"
        )
    codes, uniques = pd.factorize(groups, use_na_sentinel=True)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise DermkitError(
            f"group id missing for row {row + 1}; give every image its lesion/patient id "
            "(or a unique id for images without one)"
        )
    return codes.astype(np.int64), len(uniques)


def percentile_ci(values, level: float = 0.95) -> dict[str, float]:
    """Percentile interval of bootstrap values, ignoring NaN resamples (undefined metric)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"low": float("nan"), "high": float("nan"), "level": level}
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high), "level": level}


def bootstrap_p_value(differences) -> float:
    """Two-sided bootstrap p-value of "no difference" from resample differences (NaNs ignored).

    p = min(1, 2 min((1 + #{d <= 0}) / (B + 1), (1 + #{d >= 0}) / (B + 1))) over the B finite
    differences d; NaN when there are none.
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    below = (1 + (d <= 0).sum()) / (d.size + 1)
    above = (1 + (d >= 0).sum()) / (d.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise DermkitError(f"confidence level must be between 0 and 1, got {level}")


def bootstrap_ci(
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float | Mapping[str, float]],
    y_true,
    proba,
    y_pred=None,
    groups=None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile CI of any metric ``fn(y_true, proba, y_pred)`` over stratified resamples.

    ``fn`` returns a float (-> ``{"low", "high", "level"}``) or a dict of floats (-> one such
    interval per key). Resamples are the same as ``bootstrap_metrics`` for the same seed.
    """
    _check_level(level)
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    y_pred = proba.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    samples: list = []
    for idx in resample_indices(y_true, groups, n=n, seed=seed):
        with quiet():
            samples.append(fn(y_true[idx], proba[idx], y_pred[idx]))
    if samples and isinstance(samples[0], Mapping):
        return {
            key: percentile_ci([float(s[key]) for s in samples], level) for key in samples[0]
        }
    return percentile_ci([float(s) for s in samples], level)


class WeightedHeadline:
    """Headline metrics for many resamples at once, given as a ``(B, N)`` matrix of row counts.

    Everything that depends only on the data (sort orders, tie blocks, per-sample Brier terms,
    calibration bins) is computed once here; ``__call__`` is then pure matrix arithmetic. With all
    weights 1 it reproduces ``classification_metrics`` (tested).
    """

    def __init__(
        self,
        y_true,
        proba,
        y_pred,
        n_bins: int = ECE_BINS,
        specificities: Sequence[float] = SPECIFICITIES,
    ):
        y_true = np.asarray(y_true, dtype=np.int64)
        proba = np.asarray(proba, dtype=float)
        self.n_classes = proba.shape[1]
        self.n_bins = n_bins
        self.specificities = tuple(specificities)
        self.pairs = _Groupby(y_true * self.n_classes + np.asarray(y_pred), self.n_classes**2)
        bins, correct, confidence = calibration_terms(y_true, proba, n_bins)
        self.bins = _Groupby(bins, n_bins)
        self.calibration_gap = correct - confidence
        self.brier = brier_per_sample(y_true, proba)
        self.blocks = [TieBlocks(y_true == c, proba[:, c]) for c in range(self.n_classes)]

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        weights = np.asarray(weights, dtype=float)
        total = weights.sum(axis=1)
        cm = self.pairs.sums(weights).reshape(-1, self.n_classes, self.n_classes)
        out = _label_metrics(cm)
        out["ece"] = np.abs(self.bins.sums(weights * self.calibration_gap)).sum(axis=1) / total
        out["brier"] = weights @ self.brier / total
        blocks = [b.block_sums(weights) for b in self.blocks]
        aucs = np.stack([auc_from_blocks(pos, neg) for pos, neg in blocks], axis=1)
        out["macro_auc"] = macro_auc(aucs)
        if self.n_classes == 2:
            for key, values in sens_at_spec_from_blocks(*blocks[1], self.specificities).items():
                out[f"sensitivity_at_specificity_{key}"] = values
        return out


class _Groupby:
    """Sum weight columns by a fixed integer code per row (e.g. confusion cell, ECE bin)."""

    def __init__(self, codes, n_codes: int):
        codes = np.asarray(codes, dtype=np.int64)
        self.order = np.argsort(codes, kind="stable")
        ordered = codes[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.present = ordered[self.starts]
        self.n_codes = n_codes

    def sums(self, weights: np.ndarray) -> np.ndarray:
        out = np.zeros((weights.shape[0], self.n_codes))
        out[:, self.present] = np.add.reduceat(weights[:, self.order], self.starts, axis=1)
        return out


def _label_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro/weighted F1 and Cohen's kappa from ``(B, C, C)`` counts.

    Same definitions as scikit-learn: balanced accuracy and macro F1 average over the classes
    for which they are defined (present in y_true, resp. in y_true or y_pred).
    """
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1_den = support + predicted  # = 2 TP + FP + FN
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, np.nan)
        chance = (support * predicted).sum(axis=1) / total
        kappa_den = total - chance
        kappa = np.where(kappa_den > 0, (tp.sum(axis=1) - chance) / kappa_den, np.nan)
    return {
        "accuracy": tp.sum(axis=1) / total,
        "balanced_accuracy": nanmean(recall, axis=1),
        "macro_f1": nanmean(f1, axis=1),
        "weighted_f1": (np.nan_to_num(f1) * support).sum(axis=1) / total,
        "cohen_kappa": kappa,
    }


def resample_weights(index_arrays: Sequence[np.ndarray], n_rows: int) -> np.ndarray:
    """``(B, n_rows)`` matrix: how often each row was drawn in each resample."""
    lengths = np.array([len(idx) for idx in index_arrays])
    resample = np.repeat(np.arange(len(index_arrays)), lengths)
    flat = np.concatenate(index_arrays) if len(index_arrays) else np.zeros(0, np.int64)
    counts = np.bincount(resample * n_rows + flat, minlength=len(index_arrays) * n_rows)
    return counts.reshape(len(index_arrays), n_rows).astype(float)


def bootstrap_metrics(
    y_true,
    proba,
    y_pred=None,
    groups=None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    n_bins: int = ECE_BINS,
    specificities: Sequence[float] = SPECIFICITIES,
    return_samples: bool = False,
):
    """Percentile CIs of every headline metric (plus sensitivity at specificity when binary).

    Returns ``{metric: {"low", "high", "level"}}``; binary problems add keys
    ``sensitivity_at_specificity_0.80`` etc. With ``return_samples=True`` also returns the
    ``{metric: array of n resample values}`` (NaN where a resample leaves the metric undefined).
    """
    _check_level(level)
    y_true, proba, y_pred = check_arrays(
        y_true, proba, [str(i) for i in range(np.shape(proba)[1])], y_pred
    )
    n_rows = len(y_true)
    headline = WeightedHeadline(y_true, proba, y_pred, n_bins, specificities)
    names = list(HEADLINE_METRICS)
    if proba.shape[1] == 2:
        names += [f"sensitivity_at_specificity_{specificity_key(s)}" for s in specificities]
    samples = {name: np.empty(n) for name in names}
    chunk = max(1, _CHUNK_ELEMENTS // n_rows)
    indices = resample_indices(y_true, groups, n=n, seed=seed)
    done = 0
    with quiet():
        while done < n:
            batch = [next(indices) for _ in range(min(chunk, n - done))]
            values = headline(resample_weights(batch, n_rows))
            for name in names:
                samples[name][done : done + len(batch)] = values[name]
            done += len(batch)
    ci = {name: percentile_ci(samples[name], level) for name in names}
    return (ci, samples) if return_samples else ci
