"""Point estimates of classification metrics for skin-lesion classifiers.

Conventions used throughout ``dermkit.evaluate``:

* ``y_true`` and ``y_pred`` are integer class indices into ``classes``; ``proba`` is an
  ``(N, C)`` array whose columns follow the same class order.
* Label metrics (accuracy, F1, kappa, confusion matrix, sensitivity...) use ``y_pred``, which may
  differ from ``argmax(proba)`` when a decision threshold was applied. Probability metrics (AUC,
  ECE, Brier, log loss) use ``proba``; ECE scores the argmax decision (its standard definition).
* A metric that is undefined on the data (e.g. the AUC of a class absent from ``y_true``) is
  ``nan``; it never raises and never emits a Python warning. ``class_coverage_warning`` words
  the report warning for classes absent from ``y_true``, ``prediction_column_warning`` the one for
  a ``y_pred`` that is not the argmax of ``proba``; ``LABEL_METRICS`` and
  ``PROBABILITY_METRICS`` name which metrics use ``y_pred`` and which use ``proba``.

The values come from scikit-learn where it has the metric. The rank/block helpers at the bottom
compute AUC and sensitivity-at-specificity from per-sample weights, so the bootstrap can evaluate
a thousand resamples in a few vectorised numpy operations (see ``bootstrap.py``); the tests check
they agree with scikit-learn.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import numpy as np

from ..errors import DermkitError
from .predictions import PROB_PREFIX

#: Number of equal-width confidence bins of the expected calibration error.
ECE_BINS = 15
#: Specificities at which binary problems report the achievable sensitivity.
SPECIFICITIES = (0.80, 0.90, 0.95)
#: Metrics shown in the headline table; each gets a bootstrap confidence interval.
HEADLINE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_auc",
    "cohen_kappa",
    "ece",
    "brier",
)
#: Metrics computed from the decided class (the ``prediction`` column / ``y_pred``), by label.
LABEL_METRICS = (
    "accuracy",
    "balanced accuracy",
    "macro/weighted F1",
    "Cohen's kappa",
    "the confusion matrix",
    "per-class sensitivity, specificity, PPV, NPV and F1",
)
#: Metrics computed from the probabilities (the ``prob:`` columns / ``proba``), by label.
PROBABILITY_METRICS = (
    "AUC (macro and per-class)",
    "sensitivity at fixed specificity",
    "ECE (of the argmax decision)",
    "Brier score",
    "log loss",
)
# Disagreements between the prediction column and argmax(proba) tolerated without a warning.
_DISAGREE_FRACTION, _DISAGREE_MIN = 0.01, 2
# FPR limits such as 1 - 0.90 are not exact in binary floating point (0.09999999999999998); the
# tolerance lets an operating point with exactly 10% false positives count as specificity 0.90.
_FPR_TOL = 1e-9


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence scikit-learn/numpy warnings about undefined metrics: we report those as NaN."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def nanmean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the finite entries along ``axis``; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def specificity_key(specificity: float) -> str:
    """Key used in metrics.json for a target specificity, e.g. ``0.9 -> "0.90"``."""
    return f"{specificity:.2f}"


#: Class names read as melanoma (compared case-insensitively): HAM10000/ISIC ``mel``, PAD ``MEL``,
#: PH2/Derm7pt/ISIC 2017 ``melanoma``.
MELANOMA_NAMES = ("mel", "melanoma", "malignant melanoma")


def melanoma_index(classes: Sequence[str], positive_class: str | None = None) -> int | None:
    """Index of the melanoma class in ``classes``, or None when there is none.

    ``positive_class`` (a card's ``positive_class``, melanoma in every packaged card) wins when it
    is one of the classes; otherwise the first class named like :data:`MELANOMA_NAMES`.
    """
    classes = [str(c) for c in classes]
    if positive_class is not None and str(positive_class) in classes:
        return classes.index(str(positive_class))
    for i, name in enumerate(classes):
        if " ".join(name.split()).casefold() in MELANOMA_NAMES:
            return i
    return None


def check_arrays(
    y_true, proba, classes: Sequence[str], y_pred=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert metric inputs; ``y_pred`` defaults to ``argmax(proba)``."""
    classes = [str(c) for c in classes]  # plain str: messages never show np.str_(...)
    n_classes = len(classes)
    if n_classes < 2:
        raise DermkitError(f"need at least 2 classes, got {classes!r}")
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise DermkitError(
            f"proba must have shape (n_samples, {n_classes}) to match classes {classes!r}, "
            f"got {proba.shape}"
        )
    if proba.shape[0] == 0:
        raise DermkitError("no samples to evaluate")
    if not np.all(np.isfinite(proba)) or proba.min() < 0 or proba.max() > 1:
        raise DermkitError("proba must contain finite probabilities in [0, 1]")
    if np.any(proba.sum(axis=1) <= 0):
        raise DermkitError("every proba row needs a positive sum (softmax outputs)")
    y_true = _check_labels(y_true, "y_true", proba.shape[0], n_classes)
    if y_pred is None:
        y_pred = proba.argmax(axis=1)
    y_pred = _check_labels(y_pred, "y_pred", proba.shape[0], n_classes)
    return y_true, proba, y_pred


def _check_labels(labels, name: str, n: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DermkitError(f"{name} must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DermkitError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise DermkitError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- point estimates


def classification_metrics(
    y_true,
    proba,
    classes: Sequence[str],
    y_pred=None,
    *,
    n_bins: int = ECE_BINS,
    specificities: Sequence[float] = SPECIFICITIES,
) -> dict:
    """All point metrics of one prediction set as a JSON-able dict (undefined values are NaN).

    ``y_pred`` is the decided class per sample (defaults to ``argmax(proba)``). Keys: ``n``,
    ``classes``, the headline metrics, ``log_loss``, ``per_class``, ``confusion_matrix`` and, for
    two classes, ``sensitivity_at_specificity`` (positive class = second class).
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
    )

    classes = [str(c) for c in classes]
    y_true, proba, y_pred = check_arrays(y_true, proba, classes, y_pred)
    n, n_classes = proba.shape
    labels = np.arange(n_classes)

    with quiet():
        cm = confusion_matrix(y_true, y_pred, labels=labels)
        # macro/weighted F1 keep scikit-learn's default label set (classes present in y_true or
        # y_pred): a class that never occurs anywhere has no F1 and must not count as 0.
        metrics = {
            "n": int(n),
            "classes": classes,
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "cohen_kappa": _finite_or_nan(cohen_kappa_score(y_true, y_pred, labels=labels)),
        }
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=np.nan
        )
        # scikit-learn >= 1.7 no longer renormalises; CSV rounding leaves rows summing to ~1.
        normalised = proba / proba.sum(axis=1, keepdims=True)
        log_loss_value = float(log_loss(y_true, normalised, labels=labels))

    aucs = np.array([binary_auc(y_true == c, proba[:, c]) for c in range(n_classes)])
    metrics["macro_auc"] = macro_auc(aucs)
    metrics["ece"] = expected_calibration_error(y_true, proba, n_bins=n_bins)
    metrics["brier"] = brier_score(y_true, proba)
    # Fixed key order (n, classes, headline metrics in table order...) keeps metrics.json diffable.
    metrics = {
        "n": metrics["n"],
        "classes": metrics["classes"],
        **{key: metrics[key] for key in HEADLINE_METRICS},
        "log_loss": log_loss_value,
    }

    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    specificity = _ratio(tn, tn + fp)
    npv = _ratio(tn, tn + fn)
    metrics["per_class"] = {
        name: {
            "sensitivity": float(recall[c]),
            "specificity": float(specificity[c]),
            "ppv": float(precision[c]),
            "npv": float(npv[c]),
            "f1": float(f1[c]),
            "auc": float(aucs[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(classes)
    }
    metrics["confusion_matrix"] = cm.astype(int).tolist()
    if n_classes == 2:
        metrics["sensitivity_at_specificity"] = sensitivity_at_specificity(
            y_true == 1, proba[:, 1], specificities
        )
    return metrics


def is_undefined(value) -> bool:
    """True for a metric value that is undefined on the data: ``None``, NaN or infinite."""
    if value is None:
        return True
    try:
        return not np.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def class_coverage_warning(y_true, y_pred, classes: Sequence[str], metrics: dict) -> str | None:
    """Warning for classes absent from ``y_true``; ``None`` when every class occurs.

    Names the absent classes, the metrics that are undefined (NaN here, null in metrics.json)
    and the averages taken over fewer classes than the task has (macro AUC, balanced accuracy,
    macro F1). ``metrics`` is the dict from :func:`classification_metrics`.
    """
    classes = [str(c) for c in classes]
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    support = np.bincount(y_true, minlength=len(classes))
    absent = [name for name, count in zip(classes, support) if count == 0]
    if not absent:
        return None
    present = [name for name, count in zip(classes, support) if count > 0]
    quoted = ", ".join(repr(c) for c in absent)
    undefined = [key for key in (*HEADLINE_METRICS, "log_loss") if is_undefined(metrics.get(key))]
    sens = metrics.get("sensitivity_at_specificity")
    if sens and all(is_undefined(v) for v in sens.values()):
        undefined.append("sensitivity_at_specificity")
    parts = [
        (f"{len(absent)} of the {len(classes)} classes never occur in the targets: {quoted} "
         f"(present: {', '.join(repr(c) for c in present)}).")
    ]
    if len(present) == 1:
        parts.append(
            f"Only {present[0]!r} occurs, so AUC and every other metric that needs both "
            "positives and negatives of a class is undefined."
        )
    parts.append(f"Per-class sensitivity and AUC of {quoted} are undefined.")
    fewer = []
    if len(classes) > 2 and not is_undefined(metrics.get("macro_auc")):
        fewer.append(f"macro_auc is the mean one-vs-rest AUC over the {len(present)} present "
                     "classes only")
    fewer.append(f"balanced_accuracy is the mean sensitivity over the {len(present)} present "
                 "class(es) only")
    in_f1 = len(set(y_true.tolist()) | set(y_pred.tolist()))
    if in_f1 < len(classes):
        fewer.append(f"macro_f1 averages over the {in_f1} classes that occur in the targets or "
                     "predictions")
    parts.append("Computed over fewer classes than the task has: " + "; ".join(fewer) + ".")
    if undefined:
        parts.append(f"Undefined (null in metrics.json, n/a in the reports): "
                     f"{', '.join(undefined)}.")
    parts.append("These numbers are not comparable with an evaluation over all classes; "
                 "evaluate on a set that contains every class for the full metrics.")
    return " ".join(parts)


def prediction_column_warning(images, proba, y_pred) -> str | None:
    """Warning when the decided class ``y_pred`` (the ``prediction`` column) is not the argmax of
    ``proba`` on more than 1% of the rows (and at least 2); ``None`` otherwise.

    ``images`` (one id per row) name the first disagreeing rows. A tie for the maximum counts as
    agreement. The text says which metrics use which column (:data:`LABEL_METRICS`,
    :data:`PROBABILITY_METRICS`).
    """
    proba = np.asarray(proba)
    y_pred = np.asarray(y_pred)
    n = len(y_pred)
    chosen = proba[np.arange(n), y_pred]
    # A tie for the maximum counts as agreement: either class is an argmax.
    disagree = np.flatnonzero(chosen < proba.max(axis=1) - 1e-12)
    if len(disagree) < _DISAGREE_MIN or len(disagree) <= _DISAGREE_FRACTION * n:
        return None
    ids = ", ".join(repr(str(i)) for i in np.asarray(images)[disagree[:5]])
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


def binary_auc(positive, scores) -> float:
    """ROC AUC via scikit-learn; NaN when ``positive`` lacks positives or negatives."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))


def macro_auc(aucs) -> float:
    """Headline AUC from per-class one-vs-rest AUCs.

    Two classes: the plain AUC of the second (positive) class. More classes: the mean over the
    classes whose AUC is defined (both positives and negatives present).
    """
    aucs = np.asarray(aucs, dtype=float)
    if aucs.shape[-1] == 2:
        return aucs[..., 1] if aucs.ndim > 1 else float(aucs[1])
    result = nanmean(aucs, axis=-1)
    return result if aucs.ndim > 1 else float(result)


def sensitivity_at_specificity(
    positive, scores, specificities: Sequence[float] = SPECIFICITIES
) -> dict[str, float]:
    """Best sensitivity among ROC operating points whose specificity is at least each target.

    Returns ``{"0.80": tpr, ...}``: the max TPR over thresholds with FPR <= 1 - specificity
    (threshold "above every score" included, so the answer is >= 0). NaN if undefined.
    """
    from sklearn.metrics import roc_curve

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return {specificity_key(s): float("nan") for s in specificities}
    # drop_intermediate=False: a dropped collinear point can be the best one under an FPR limit.
    fpr, tpr, _ = roc_curve(positive, scores, drop_intermediate=False)
    return {
        specificity_key(s): float(tpr[fpr <= (1.0 - s) + _FPR_TOL].max()) for s in specificities
    }


def _finite_or_nan(value) -> float:
    value = float(value)
    return value if np.isfinite(value) else float("nan")


def _ratio(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ------------------------------------------------------------------------------- calibration


def ece_bin_index(confidence, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence for ``n_bins`` equal-width bins ``(lo, hi]`` (0 goes to bin 0)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" puts a value equal to an edge into the bin that edge closes, matching the
    # usual ``lo < conf <= hi`` definition (Guo et al. 2017).
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def calibration_terms(y_true, proba, n_bins: int = ECE_BINS):
    """Per-sample (bin index, correct 0/1, confidence) of the argmax decision."""
    proba = np.asarray(proba, dtype=float)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y_true)).astype(float)
    return ece_bin_index(confidence, n_bins), correct, confidence


def reliability_table(y_true, proba, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin count, accuracy and mean confidence (NaN for empty bins) plus the bin edges."""
    bins, correct, confidence = calibration_terms(y_true, proba, n_bins)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    hits = np.bincount(bins, weights=correct, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "accuracy": _ratio(hits, count),
        "confidence": _ratio(conf, count),
    }


def expected_calibration_error(y_true, proba, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy - mean confidence| of the argmax class."""
    bins, correct, confidence = calibration_terms(y_true, proba, n_bins)
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / len(correct))


def brier_per_sample(y_true, proba) -> np.ndarray:
    """Sum over classes of (p - onehot)^2 for each sample (0 = perfect, 2 = confidently wrong)."""
    proba = np.asarray(proba, dtype=float)
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(proba)), np.asarray(y_true)] = 1.0
    return ((proba - onehot) ** 2).sum(axis=1)


def brier_score(y_true, proba) -> float:
    """Multi-class Brier score: mean over samples of the squared error to the one-hot target."""
    return float(brier_per_sample(y_true, proba).mean())


# ------------------------------------------------------------- weighted (bootstrap) primitives


class TieBlocks:
    """Ascending sort order and tie blocks of one score column, computed once per column.

    ``block_sums(W)`` turns per-sample weights (a resample's row counts; shape ``(B, N)``) into
    the positive and negative weight inside each block of equal scores. AUC and ROC points follow
    from cumulative sums over the blocks, so no resample ever needs sorting.
    """

    def __init__(self, positive, scores):
        scores = np.asarray(scores, dtype=float)
        self.order = np.argsort(scores, kind="stable")
        ordered = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.positive = np.asarray(positive, dtype=float)[self.order]

    def block_sums(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sorted_w = weights[:, self.order]
        pos = np.add.reduceat(sorted_w * self.positive, self.starts, axis=1)
        neg = np.add.reduceat(sorted_w, self.starts, axis=1) - pos
        return pos, neg


def auc_from_blocks(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row: P(score+ > score-) + 0.5 P(tie), from ascending tie blocks."""
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    return _ratio(wins, n_pos * n_neg)


def sens_at_spec_from_blocks(
    pos: np.ndarray, neg: np.ndarray, specificities: Sequence[float] = SPECIFICITIES
) -> dict[str, np.ndarray]:
    """Vectorised ``sensitivity_at_specificity`` from ascending tie blocks (row = resample)."""
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    # Thresholds run from the highest score down: cumulative counts over reversed blocks.
    tpr = _ratio(np.cumsum(pos[:, ::-1], axis=1), n_pos[:, None])
    fpr = _ratio(np.cumsum(neg[:, ::-1], axis=1), n_neg[:, None])
    defined = (n_pos > 0) & (n_neg > 0)
    out = {}
    for s in specificities:
        ok = fpr <= (1.0 - s) + _FPR_TOL
        best = np.where(ok, tpr, 0.0).max(axis=1)  # 0.0 = threshold above every score
        out[specificity_key(s)] = np.where(defined, best, np.nan)
    return out


def rank_auc(positive, scores, sample_weight=None) -> float:
    """Rank-based (Mann-Whitney) ROC AUC with ties counted 1/2; equals ``roc_auc_score``.

    ``sample_weight`` may be integer counts (a bootstrap resample as row multiplicities).
    """
    positive = np.asarray(positive, dtype=bool)
    weights = np.ones(len(positive)) if sample_weight is None else np.asarray(sample_weight, float)
    pos, neg = TieBlocks(positive, scores).block_sums(weights[None, :])
    return float(auc_from_blocks(pos, neg)[0])
