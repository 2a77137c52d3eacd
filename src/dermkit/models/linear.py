"""Linear heads on embeddings: logistic regression with C chosen on val, as plain arrays.

:class:`LinearProbe` is ``softmax(((x - mean) / scale) @ coef.T + intercept)``; :func:`fit_probe`
fits it with scikit-learn's ``LogisticRegression`` (L2 by default; ``penalty="l1"`` for a sparse
head such as a concept bottleneck) for every C of a grid and keeps the best by val balanced
accuracy. Used by the linear-probe method (raw embeddings), the SAE method (latent activations)
and the concept-bottleneck method (named latents).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from dermkit.errors import ConfigError, DataError

__all__ = ["DEFAULT_CS", "LinearProbe", "check_probe_settings", "fit_probe", "stratified_subsample"]

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))
_TENSORS = ("coef", "intercept", "mean", "scale")


def stratified_subsample(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified ``fraction`` of ``labels`` (>= 1 per present class).

    Each class keeps ``max(1, round(fraction * n_class))`` images, drawn without replacement.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        k = max(1, int(round(fraction * len(members))))
        keep.append(members if k >= len(members) else rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@dataclass
class LinearProbe:
    """A fitted probe: softmax(((x - mean) / scale) @ coef.T + intercept) over ``classes``."""

    classes: list[str]
    coef: np.ndarray  # (n_classes, D)
    intercept: np.ndarray  # (n_classes,); -inf for a class absent from the training data
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    C: float
    val_scores: dict[float, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return z @ self.coef.T + self.intercept

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.logits(x)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k), dtype=np.float64)) for k in _TENSORS}


def _from_sklearn(model, n_classes: int, classes: Sequence[str], mean, scale, C: float) -> LinearProbe:
    """Full-class-width weights from a fitted LogisticRegression (binary models use one row)."""
    present = model.classes_.astype(int)
    coef = np.zeros((n_classes, model.coef_.shape[1]))
    intercept = np.full(n_classes, -np.inf)
    if len(present) == 2 and model.coef_.shape[0] == 1:
        # Binary sigmoid(w.x + b) == softmax over logits (0, w.x + b).
        coef[present[1]] = model.coef_[0]
        intercept[present[0]], intercept[present[1]] = 0.0, model.intercept_[0]
    else:
        coef[present] = model.coef_
        intercept[present] = model.intercept_
    return LinearProbe(list(classes), coef, intercept, np.asarray(mean, float), np.asarray(scale, float), C)


def check_probe_settings(Cs, class_weight, max_iter: int) -> None:
    """ConfigError unless the settings of :func:`fit_probe` are usable (what configs validate)."""
    if not Cs or any(c <= 0 for c in Cs):
        raise ConfigError("Cs must be a non-empty list of positive numbers")
    if class_weight not in ("balanced", None):
        raise ConfigError(f"class_weight must be balanced or null, got {class_weight!r}")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: Sequence[str],
    Cs: Sequence[float] = DEFAULT_CS,
    class_weight: str | None = "balanced",
    max_iter: int = 1000,
    standardize: bool = True,
    penalty: str = "l2",
) -> LinearProbe:
    """Fit one probe per C (ascending, warm-started), keep the best by val balanced accuracy.

    Ties go to the smaller C (stronger regularisation). Embeddings are standardised with the
    training subset's mean/sd, so one C grid suits every encoder's feature scale. ``penalty="l1"``
    (saga solver) gives a sparse head: most input columns get zero weight for every class.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    check_probe_settings(Cs, class_weight, max_iter)
    if penalty not in ("l1", "l2"):
        raise ConfigError(f"penalty must be l1 or l2, got {penalty!r}")
    if len(np.unique(y_train)) < 2:
        raise DataError("the training subset has fewer than 2 classes; a linear probe needs at least 2")
    x_train = np.asarray(x_train, dtype=np.float64)
    if standardize:
        mean = x_train.mean(axis=0)
        scale = x_train.std(axis=0)
        scale[scale < 1e-12] = 1.0  # constant feature: leave it unscaled (as sklearn does)
    else:
        mean, scale = np.zeros(x_train.shape[1]), np.ones(x_train.shape[1])
    z_train = (x_train - mean) / scale
    z_val = (np.asarray(x_val, dtype=np.float64) - mean) / scale
    solver = "lbfgs" if penalty == "l2" else "saga"
    kwargs = {} if penalty == "l2" else {"l1_ratio": 1.0}  # saga with pure L1 (sklearn >= 1.8 spelling)
    model = LogisticRegression(solver=solver, max_iter=max_iter, class_weight=class_weight, warm_start=True, **kwargs)
    best, scores, converged = None, {}, {}
    for C in sorted(float(c) for c in Cs):
        model.set_params(C=C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(z_train, y_train)
        score = float(balanced_accuracy_score(y_val, model.predict(z_val)))
        scores[C] = score
        converged[C] = bool(np.max(model.n_iter_) < max_iter)
        if best is None or score > scores[best.C]:
            best = _from_sklearn(model, len(classes), classes, mean, scale, C)
    best.val_scores = scores
    best.info = {"class_weight": class_weight, "max_iter": max_iter, "standardize": standardize, "penalty": penalty,
                 "n_train": int(len(y_train)), "converged": bool(converged[best.C]),
                 "nonzero_inputs": int((np.abs(best.coef) > 0).any(axis=0).sum())}
    return best


