"""Temperature scaling (Guo et al. 2017) and calibration before/after with bootstrap CIs.

* ``fit_temperature(scores, y)`` fits one scalar T > 0 by minimising the negative log-likelihood
  of ``softmax(logits / T)`` (bounded scalar search on log T, ``scipy.optimize.minimize_scalar``).
  ``scores`` are logits, or probabilities (rows in [0, 1] summing to 1), which are turned into
  logits by ``log p``: ``softmax(log(p) / T) == softmax(logits / T)`` because softmax ignores a
  constant added to every logit of a row.
* ``apply_temperature(proba, T)`` rescales probabilities the same way, so a model folder only has
  to store T and its existing probabilities are recalibrated after the fact.
* ``calibration_report(y, proba_before, proba_after, groups)`` gives ECE / Brier / NLL before and
  after with paired bootstrap CIs (the same resamples, grouped by lesion when ``groups`` is given)
  and a before/after reliability figure.

Temperature scaling never changes the argmax, so accuracy and the confusion matrix are unchanged;
only the probability metrics move. T > 1 softens over-confident probabilities, T < 1 sharpens.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DataError
from .bootstrap import percentile_ci, resample_indices, resample_weights
from .metrics import ECE_BINS, brier_per_sample, calibration_terms, quiet
from .tables import markdown_table, with_ci

__all__ = ["CALIBRATION_METRICS", "TEMPERATURE_BOUNDS", "apply_offsets", "apply_temperature", "fit_class_offsets",
           "calibration_metrics", "calibration_report", "calibration_markdown", "fit_temperature", "nll"]

#: Search interval of the temperature.
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: Metrics of ``calibration_report`` (all lower is better).
CALIBRATION_METRICS = ("ece", "brier", "nll")
# Probabilities are clipped here before the log, so a probability of exactly 0 costs a finite NLL.
_EPS = 1e-12


def _as_logits(scores, logits: bool | None) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] == 0:
        raise DataError(f"temperature scaling needs an (N, C) array with C >= 2 classes, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise DataError("temperature scaling: scores contain NaN or infinite values; pass finite logits or "
                        "probabilities")
    if logits is None:  # probabilities when every row is a distribution
        logits = not (scores.min() >= 0 and scores.max() <= 1 and np.allclose(scores.sum(axis=1), 1, atol=1e-3))
    return scores if logits else np.log(np.clip(scores, _EPS, None))


def _check_labels(y, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be {n} integer class indices, got shape {y.shape} and dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"labels must lie in 0..{n_classes - 1}")
    return y.astype(np.int64)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(scores, y, logits: bool | None = None, bounds: Sequence[float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` on ``(scores, y)``.

    ``scores``: ``(N, C)`` logits or probabilities (``logits=None`` decides: rows that are
    distributions are probabilities). Fit it on the validation split, never on the test split.
    """
    from scipy.optimize import minimize_scalar

    z = _as_logits(scores, logits)
    y = _check_labels(y, z.shape[0], z.shape[1])
    low, high = bounds
    if not 0 < low < high:
        raise DataError(f"temperature bounds must satisfy 0 < low < high, got {tuple(bounds)}")
    result = minimize_scalar(lambda log_t: _nll(z, y, float(np.exp(log_t))), bounds=(np.log(low), np.log(high)),
                             method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """``softmax(log(proba) / T)``: the probabilities of ``softmax(logits / T)``."""
    from scipy.special import softmax

    if not (np.isfinite(temperature) and temperature > 0):
        raise DataError(f"temperature must be a positive number, got {temperature}")
    proba = np.asarray(proba, dtype=float)
    with np.errstate(divide="ignore"):
        logp = np.log(proba)  # log 0 = -inf stays a probability of 0 after any temperature
    return softmax(logp / float(temperature), axis=1)


def apply_offsets(proba, offsets) -> np.ndarray:
    """``softmax(log(proba) + b)``: class ``k``'s score shifted by ``b[k]`` in log space (a decision
    threshold per class; ``b = 0`` leaves the probabilities unchanged)."""
    from scipy.special import softmax

    proba = np.asarray(proba, dtype=float)
    offsets = np.asarray(offsets, dtype=float)
    if offsets.shape != (proba.shape[1],) or not np.isfinite(offsets).all():
        raise DataError(f"class offsets must be {proba.shape[1]} finite numbers, got {offsets.tolist()}")
    with np.errstate(divide="ignore"):
        return softmax(np.log(proba) + offsets, axis=1)


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    recalls = [np.mean(pred[y == k] == k) for k in range(n_classes) if np.any(y == k)]
    return float(np.mean(recalls)) if recalls else float("nan")


def fit_class_offsets(proba, y, grid: Sequence[float] = tuple(np.linspace(-3, 3, 61)), rounds: int = 3) -> np.ndarray:
    """Per-class log offsets ``b`` (``b[0] = 0``) that maximise the balanced accuracy of
    ``argmax(log p + b)`` on ``(proba, y)``: coordinate ascent over ``grid``, ``rounds`` sweeps,
    ties kept at the smaller offset change. Fit on the validation split, never on the test split."""
    proba = np.asarray(proba, dtype=float)
    y = _check_labels(np.asarray(y), proba.shape[0], proba.shape[1])
    n_classes = proba.shape[1]
    with np.errstate(divide="ignore"):
        logp = np.log(np.clip(proba, _EPS, None))
    offsets = np.zeros(n_classes)
    best = _balanced_accuracy(y, (logp + offsets).argmax(1), n_classes)
    for _ in range(rounds):
        changed = False
        for k in range(1, n_classes):  # b[0] = 0: only differences between classes matter
            for value in sorted(grid, key=lambda v: abs(v - offsets[k])):
                trial = offsets.copy()
                trial[k] = value
                score = _balanced_accuracy(y, (logp + trial).argmax(1), n_classes)
                if score > best + 1e-12:
                    best, offsets, changed = score, trial, True
        if not changed:
            break
    return offsets


def nll(y, proba) -> np.ndarray:
    """Per-case negative log-likelihood ``-log p(true class)`` (probabilities clipped at 1e-12)."""
    proba = np.asarray(proba, dtype=float)
    return -np.log(np.clip(proba[np.arange(len(proba)), np.asarray(y)], _EPS, None))


class _WeightedCalibration:
    """ECE, Brier and NLL of one probability table for a ``(B, N)`` matrix of resample weights."""

    def __init__(self, y, proba, n_bins: int = ECE_BINS):
        bins, correct, confidence = calibration_terms(y, proba, n_bins)
        self.gap_by_bin = np.zeros((len(y), n_bins))
        self.gap_by_bin[np.arange(len(y)), bins] = correct - confidence
        self.brier = brier_per_sample(y, proba)
        self.nll = nll(y, proba)

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights.sum(axis=1)
        return {"ece": np.abs(weights @ self.gap_by_bin).sum(axis=1) / total,
                "brier": weights @ self.brier / total, "nll": weights @ self.nll / total}


def calibration_metrics(y, proba, n_bins: int = ECE_BINS) -> dict[str, float]:
    """ECE (``n_bins`` equal-width bins of the argmax confidence), multi-class Brier and NLL."""
    values = _WeightedCalibration(np.asarray(y), np.asarray(proba, float), n_bins)(np.ones((1, len(y))))
    return {k: float(v[0]) for k, v in values.items()}


def calibration_report(y, proba_before, proba_after, groups=None, n_bootstrap: int = 1000, seed: int = 0,
                       level: float = 0.95, n_bins: int = ECE_BINS, temperature: float | None = None,
                       figure: bool = True):
    """``(result, figure)``: ECE / Brier / NLL before and after recalibration with bootstrap CIs.

    ``result = {"before": {metric: value}, "after": {...}, "difference": {...} (after - before),
    "ci": {"before"|"after"|"difference": {metric: {"low", "high", "level"}}}, "bootstrap": {...},
    "temperature": T}``. Before and after are scored on the same resamples (stratified by class,
    whole groups when ``groups`` is given), so the CI of the difference is paired. ``figure`` is a
    two-panel reliability diagram (before | after), or None with ``figure=False``.
    """
    y = np.asarray(y)
    before_p = np.asarray(proba_before, dtype=float)
    after_p = np.asarray(proba_after, dtype=float)
    if before_p.shape != after_p.shape or before_p.ndim != 2 or before_p.shape[0] != len(y):
        raise DataError(f"proba_before {before_p.shape} and proba_after {after_p.shape} must both be "
                        f"({len(y)}, C) arrays for the {len(y)} labels")
    y = _check_labels(y, len(y), before_p.shape[1])
    before, after = _WeightedCalibration(y, before_p, n_bins), _WeightedCalibration(y, after_p, n_bins)
    ones = np.ones((1, len(y)))
    point_b = {k: float(v[0]) for k, v in before(ones).items()}
    point_a = {k: float(v[0]) for k, v in after(ones).items()}
    samples = {part: {k: [] for k in CALIBRATION_METRICS} for part in ("before", "after", "difference")}
    indices = list(resample_indices(y, groups, n=int(n_bootstrap), seed=seed))
    with quiet():
        for start in range(0, len(indices), 200):
            weights = resample_weights(indices[start:start + 200], len(y))
            vb, va = before(weights), after(weights)
            for k in CALIBRATION_METRICS:
                samples["before"][k].append(vb[k])
                samples["after"][k].append(va[k])
                samples["difference"][k].append(va[k] - vb[k])
    ci = {part: {k: percentile_ci(np.concatenate(v[k]) if v[k] else [], level) for k in CALIBRATION_METRICS}
          for part, v in samples.items()}
    result = {"before": point_b, "after": point_a,
              "difference": {k: point_a[k] - point_b[k] for k in CALIBRATION_METRICS}, "ci": ci,
              "bootstrap": {"n": int(n_bootstrap), "seed": seed, "paired": True, "grouped": groups is not None},
              "n_bins": n_bins, "temperature": temperature}
    fig = None
    if figure:
        from . import plots  # matplotlib is slow to import

        fig = plots.plot_reliability_pair(y, before_p, after_p, n_bins=n_bins, temperature=temperature)
    return result, fig


def calibration_markdown(result: dict) -> str:
    """A Markdown table of ``calibration_report``'s result (metric, before, after, difference, CIs)."""
    rows = []
    for k, label in (("ece", "ECE"), ("brier", "Brier score"), ("nll", "NLL (log loss)")):
        cell = [with_ci(result[part][k], result["ci"][part][k]["low"], result["ci"][part][k]["high"], 4)
                for part in ("before", "after", "difference")]
        rows.append([label, *cell])
    t = result.get("temperature")
    head = f"Temperature scaling (T = {t:.4f}, one scalar fitted by NLL)" if t else "Recalibration"
    return (f"{head}: lower is better for every metric; the difference is after - before, with a paired "
            f"bootstrap CI ({result['bootstrap']['n']} resamples).\n\n"
            + markdown_table(["Metric", "Before", "After", "After - before"], rows))
