"""Selective prediction: how good is the model when it may abstain on the cases it is least sure of.

The model ranks cases by confidence (the maximum predicted probability) and decides only the
most confident fraction (the *coverage*); the rest are deferred (e.g. to a dermatologist).

* ``risk_coverage`` gives the risk (error rate of the decided cases) at every coverage k/N and
  the area under that curve (AURC, Geifman et al. 2019: the mean risk over k = 1..N; lower is
  better; a perfect ranking of errors gives the minimum for the model's error rate).
* ``selective_metrics`` adds, at coverages 80/90/95%, the accuracy of the decided cases, the
  melanoma sensitivity among the decided melanomas and the fraction of melanomas deferred.

Decisions are the ``y_pred`` given (the ``prediction`` column; argmax by default), confidence is
``max(proba)``. Cases tied in confidence are counted fractionally where a cut falls inside the
tie (as if the tie were broken at random), so the numbers do not depend on the row order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DermkitError
from .bootstrap import bootstrap_ci
from .metrics import melanoma_index

__all__ = ["COVERAGES", "coverage_key", "risk_coverage", "selective_metrics", "selective_with_ci"]

#: Coverages at which accuracy and melanoma sensitivity are reported.
COVERAGES = (0.80, 0.90, 0.95)


def coverage_key(coverage: float) -> str:
    """Key in metrics.json for a coverage, e.g. ``0.9 -> "0.90"``."""
    return f"{coverage:.2f}"


class _Ranking:
    """Cases sorted by decreasing confidence, with tie blocks, for expected counts of the top k."""

    def __init__(self, proba):
        confidence = np.asarray(proba, dtype=float).max(axis=1)
        self.order = np.argsort(-confidence, kind="stable")
        self.confidence = confidence[self.order]
        ordered = self.confidence
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.ends = np.r_[self.starts[1:], len(ordered)]
        self.n = len(ordered)

    def top(self, values, k) -> np.ndarray:
        """Expected sum of ``values`` over the ``k`` most confident cases (ties shared evenly)."""
        cum = np.r_[0.0, np.cumsum(np.asarray(values, dtype=float)[self.order])]
        k = np.asarray(k)
        block = np.searchsorted(self.starts, k - 1, side="right") - 1
        start, end = self.starts[block], self.ends[block]
        in_block = cum[end] - cum[start]
        return cum[start] + (k - start) * in_block / (end - start)


def risk_coverage(y_true, proba, y_pred=None) -> dict:
    """``{"coverage", "risk", "aurc", "threshold"}``: the risk-coverage curve at k = 1..N.

    ``risk[k - 1]`` is the (expected) error rate of the k most confident cases, ``threshold[k -
    1]`` the confidence of the k-th case; ``aurc = mean(risk)``.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or len(y_true) != proba.shape[0] or len(y_true) == 0:
        raise DermkitError("risk_coverage needs one label per row of an (N, C) probability array, N >= 1")
    y_pred = proba.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    ranking = _Ranking(proba)
    k = np.arange(1, ranking.n + 1)
    errors = ranking.top(y_pred != y_true, k)
    risk = errors / k
    return {"coverage": k / ranking.n, "risk": risk, "aurc": float(risk.mean()),
            "threshold": ranking.confidence}


def selective_metrics(y_true, proba, y_pred=None, melanoma: int | None = None,
                      coverages: Sequence[float] = COVERAGES) -> dict:
    """AURC and, per coverage, accuracy / melanoma sensitivity of the decided cases.

    ``melanoma``: index of the melanoma class (None: no melanoma keys). At coverage c the
    ``k = ceil(c N)`` most confident cases are decided. Returns ``{"aurc", "error_rate",
    "at_coverage": {"0.80": {"coverage", "n_decided", "threshold", "accuracy",
    "melanoma_sensitivity", "melanomas_deferred"}}}``; ``melanoma_sensitivity`` is TP / (decided
    melanomas), ``melanomas_deferred`` the fraction of all melanomas the model abstained on.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    y_pred = proba.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    curve = risk_coverage(y_true, proba, y_pred)
    ranking = _Ranking(proba)
    n = ranking.n
    out = {"aurc": curve["aurc"], "error_rate": float(curve["risk"][-1]), "at_coverage": {}}
    is_mel = (y_true == melanoma) if melanoma is not None else None
    for c in coverages:
        if not 0 < c <= 1:
            raise DermkitError(f"coverage must be in (0, 1], got {c}")
        k = max(1, int(np.ceil(c * n - 1e-9)))
        point = {"coverage": float(c), "n_decided": k, "threshold": float(ranking.confidence[k - 1]),
                 "accuracy": float(1.0 - curve["risk"][k - 1])}
        if is_mel is not None:
            mel_total = float(is_mel.sum())
            mel_kept = float(ranking.top(is_mel, k))
            hits = float(ranking.top(is_mel & (y_pred == melanoma), k))
            point["melanoma_sensitivity"] = hits / mel_kept if mel_kept > 0 else float("nan")
            point["melanomas_deferred"] = (mel_total - mel_kept) / mel_total if mel_total > 0 else float("nan")
        out["at_coverage"][coverage_key(c)] = point
    return out


def _flat(result: dict) -> dict[str, float]:
    flat = {"aurc": result["aurc"]}
    for key, point in result["at_coverage"].items():
        flat[f"accuracy_at_{key}"] = point["accuracy"]
        if "melanoma_sensitivity" in point:
            flat[f"melanoma_sensitivity_at_{key}"] = point["melanoma_sensitivity"]
    return flat


def selective_with_ci(y_true, proba, y_pred, classes: Sequence[str], groups=None, n_bootstrap: int = 1000,
                      seed: int = 0, level: float = 0.95, coverages: Sequence[float] = COVERAGES,
                      positive_class: str | None = None) -> dict:
    """``selective_metrics`` for a report, with percentile bootstrap CIs (same resamples as the
    headline CIs for the same seed) of AURC, accuracy and melanoma sensitivity at each coverage.

    The melanoma class is found by name (:func:`dermkit.evaluate.metrics.melanoma_index`).
    """
    mel = melanoma_index(classes, positive_class)
    result = selective_metrics(y_true, proba, y_pred, mel, coverages)
    result["confidence"] = "max predicted probability"
    result["melanoma_class"] = None if mel is None else str(classes[mel])
    if n_bootstrap > 0:
        result["ci"] = bootstrap_ci(lambda y, p, d: _flat(selective_metrics(y, p, d, mel, coverages)),
                                    y_true, proba, y_pred, groups=groups, n=n_bootstrap, seed=seed, level=level)
    else:
        result["ci"] = {k: {"low": float("nan"), "high": float("nan"), "level": level} for k in _flat(result)}
    return result
