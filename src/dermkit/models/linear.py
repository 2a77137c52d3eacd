"""Linear heads on embeddings: logistic regression with C chosen on val, as plain arrays.

:class:`LinearProbe` is ``softmax(((x - mean) / scale) @ coef.T + intercept)``; :func:`fit_probe`
fits it with scikit-learn's ``LogisticRegression`` (L2 by default; ``penalty="l1"`` for a sparse
head such as a concept bottleneck) for every C of a grid and keeps the best by val balanced
accuracy. Used by the linear-probe method (raw embeddings), the SAE method (latent activations)
and the concept-bottleneck method (named latents).

The L1 head has a second solver, :func:`fit_l1_logistic` (``solver="fista"``): the same objective
as scikit-learn's (``C`` x the class-weighted sum of multinomial log losses + the L1 norm of the
weights, intercepts free), minimised full-batch in torch by accelerated proximal gradient (FISTA
with adaptive restart, step 1/L from the Lipschitz bound of the softmax loss) and warm-started
along the C grid. On thousands of SAE latents it converges in seconds where saga's per-sample
passes take minutes; a test holds its probabilities to scikit-learn's on the same data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from dermkit.errors import ConfigError, DataError, ModelError

__all__ = ["DEFAULT_CS", "L1_SOLVERS", "LinearProbe", "check_probe_settings", "fit_l1_logistic", "fit_probe",
           "stratified_subsample"]

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))
_TENSORS = ("coef", "intercept", "mean", "scale")
L1_SOLVERS = ("fista", "saga")


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

    def __post_init__(self):
        n = len(self.classes)
        if np.shape(self.coef)[:1] != (n,) or np.shape(self.intercept)[:1] != (n,):
            raise ModelError(f"the probe has {np.shape(self.coef)[0]} outputs but {n} class names "
                             f"{list(self.classes)[:8]}; the model folder's classes do not fit its weights "
                             "(model.json edited?). Restore model.json, or retrain.")

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


def _class_weights(y: np.ndarray, n_classes: int, class_weight: str | None) -> np.ndarray:
    """Per-sample weights as scikit-learn's ``class_weight`` (balanced: n / (n_present * n_class))."""
    if class_weight is None:
        return np.ones(len(y))
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(n_classes)
    per_class[present] = len(y) / (present.sum() * counts[present])
    return per_class[y]


def fit_l1_logistic(z: np.ndarray, y: np.ndarray, n_classes: int, C: float, class_weight: str | None = "balanced",
                    init: tuple[np.ndarray, np.ndarray] | None = None, max_iter: int = 5000, tol: float = 1e-6,
                    device: str = "cpu") -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Multinomial logistic regression with an L1 penalty: ``(coef (K, D), intercept (K,), iterations,
    converged)`` minimising ``C * sum_i w_i * logloss_i + |coef|_1`` (``w_i``: ``class_weight``), the
    objective of scikit-learn's ``LogisticRegression(penalty="l1")``. Classes absent from ``y`` get
    zero weights and an intercept of -inf.

    FISTA in float64 with a backtracking step (from 1024 x 1/L of the global Lipschitz bound of the
    softmax loss, halved whenever the quadratic model does not bound the loss: the bound is loose on
    sparse standardised codes) and adaptive restart (the momentum is dropped when the objective rises).
    ``converged``: an iteration changed no weight by more than ``tol`` x the largest weight (as
    scikit-learn's saga measures it; its default tol is 1e-4).
    """
    z_np, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.int64)
    n, d = z_np.shape
    present = np.bincount(y, minlength=n_classes) > 0
    k = int(present.sum())
    remap = np.cumsum(present) - 1
    dev = torch.device(device)
    x = torch.from_numpy(z_np).to(dev)
    target = torch.from_numpy(remap[y]).to(dev)
    w = torch.from_numpy(_class_weights(y, n_classes, class_weight)).to(dev) * float(C)
    rows = torch.arange(n, device=dev)
    # Global Lipschitz bound of the gradient in (coef, intercept): a softmax log loss's Hessian is at
    # most 1/2 in spectral norm per sample, so L <= 1/2 ||sqrt(w) [x, 1]||_2^2 (power iteration).
    aug = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=dev)], dim=1) * w.sqrt()[:, None]
    v = torch.ones(d + 1, dtype=x.dtype, device=dev)
    for _ in range(50):
        v = aug.T @ (aug @ v)
        v = v / v.norm().clamp_min(1e-300)
    # The bound is loose on sparse standardised codes: start 1024 x longer and let backtracking shorten it.
    step = 1024.0 / max(0.5 * 1.01 * float((aug @ v).pow(2).sum()), 1e-12)

    def loss_of(coef, b):
        return -(w * torch.log_softmax(x @ coef.T + b, dim=1)[rows, target]).sum()

    def loss_grad(coef, b):
        logp = torch.log_softmax(x @ coef.T + b, dim=1)
        loss = -(w * logp[rows, target]).sum()
        g = logp.exp()
        g[rows, target] -= 1.0
        g *= w[:, None]
        return loss, g.T @ x, g.sum(dim=0)

    if init is not None and init[0].shape == (n_classes, d):
        coef = torch.from_numpy(np.asarray(init[0], np.float64)[present]).to(dev)
        b = torch.from_numpy(np.nan_to_num(np.asarray(init[1], np.float64)[present], neginf=0.0)).to(dev)
    else:
        coef = torch.zeros(k, d, dtype=torch.float64, device=dev)
        b = torch.zeros(k, dtype=torch.float64, device=dev)
    yc, yb, t = coef.clone(), b.clone(), 1.0
    previous = float(loss_of(coef, b)) + float(coef.abs().sum())
    converged, iterations = False, 0
    while iterations < int(max_iter):
        iterations += 1
        loss_y, g_coef, g_b = loss_grad(yc, yb)
        while True:  # halve the step until the quadratic model bounds the loss (the step never grows)
            shifted = yc - step * g_coef
            new_coef = torch.sign(shifted) * torch.clamp(shifted.abs() - step, min=0.0)
            new_b = yb - step * g_b
            dc, db = new_coef - yc, new_b - yb
            new_loss = float(loss_of(new_coef, new_b))
            bound = float(loss_y) + float((g_coef * dc).sum() + (g_b * db).sum()) + float(
                dc.pow(2).sum() + db.pow(2).sum()) / (2 * step)
            if new_loss <= bound + 1e-12 * abs(bound) or step < 1e-30:
                break
            step /= 2.0
        objective = new_loss + float(new_coef.abs().sum())
        if objective > previous + 1e-13 * abs(previous) and t > 1.0:
            # adaptive restart: drop the momentum and step again from the last iterate (a plain
            # proximal-gradient step, which the backtracking makes monotone, so it is then accepted)
            yc, yb, t = coef, b, 1.0
            continue
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = (t - 1) / t_next
        change = max(float((new_coef - coef).abs().max()), float((new_b - b).abs().max()))
        yc = new_coef + momentum * (new_coef - coef)
        yb = new_b + momentum * (new_b - b)
        coef, b, t, previous = new_coef, new_b, t_next, objective
        if change <= tol * max(1.0, float(coef.abs().max()), float(b.abs().max())):
            converged = True
            break
    full_coef = np.zeros((n_classes, d))
    full_b = np.full(n_classes, -np.inf)
    full_coef[present] = coef.cpu().numpy()
    full_b[present] = b.cpu().numpy()
    return full_coef, full_b, iterations, converged


def check_probe_settings(Cs, class_weight, max_iter: int, refit_Cs=None) -> None:
    """ConfigError unless the settings of :func:`fit_probe` are usable (what configs validate)."""
    if not Cs or any(c <= 0 for c in Cs):
        raise ConfigError("Cs must be a non-empty list of positive numbers")
    if class_weight not in ("balanced", None):
        raise ConfigError(f"class_weight must be balanced or null, got {class_weight!r}")
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
    if refit_Cs is not None and (not isinstance(refit_Cs, (list, tuple)) or not refit_Cs or any(
            isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0 for c in refit_Cs)):
        raise ConfigError("refit_Cs must be a non-empty list of positive numbers (inverse L2 strengths of the "
                          f"relaxed-lasso refit) or null for plain L1 weights, got {str(refit_Cs)[:60]}")


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
    solver: str = "saga",
    refit_Cs: Sequence[float] | None = None,
) -> LinearProbe:
    """Fit one probe per C (ascending, warm-started), keep the best by val balanced accuracy.

    Ties go to the smaller C (stronger regularisation). Embeddings are standardised with the
    training subset's mean/sd, so one C grid suits every encoder's feature scale. ``penalty="l1"``
    gives a sparse head (most input columns get zero weight for every class), fitted by ``solver``:
    scikit-learn's ``saga`` or :func:`fit_l1_logistic` (``fista``: the same objective, seconds on
    thousands of inputs; ``max_iter`` is then its number of full-batch steps).

    ``refit_Cs`` (L1 only): the relaxed lasso (Meinshausen 2007). The L1 fit at each C only chooses
    the support (the inputs with non-zero weight); an L2 logistic regression on that support alone,
    one per ``refit_Cs``, gives the weights, so the head stays exactly as sparse while its weights lose
    the L1 shrinkage. The (C, refit C) pair is chosen on val like C alone (ties: the smaller pair);
    ``val_scores[C]`` is the best over the refit Cs, ``info["refit_scores"]`` has every pair.
    """
    from sklearn.metrics import balanced_accuracy_score

    check_probe_settings(Cs, class_weight, max_iter, refit_Cs)
    if penalty not in ("l1", "l2"):
        raise ConfigError(f"penalty must be l1 or l2, got {penalty!r}")
    if penalty == "l1" and solver not in L1_SOLVERS:
        raise ConfigError(f"the L1 solver must be one of {', '.join(L1_SOLVERS)}, got {solver!r}")
    if refit_Cs is not None and penalty != "l1":
        raise ConfigError("refit_Cs (the relaxed lasso's L2 refit) needs penalty l1")
    if len(np.unique(y_train)) < 2:
        raise DataError("the training subset has fewer than 2 classes; a linear probe needs at least 2")
    x_train = np.asarray(x_train, dtype=np.float64)
    if standardize:
        mean = x_train.mean(axis=0)
        scale = x_train.std(axis=0)
        scale[scale < 1e-12] = 1.0  # constant feature: leave it unscaled (as sklearn does)
    else:
        mean, scale = np.zeros(x_train.shape[1]), np.ones(x_train.shape[1])
    mean, scale = np.asarray(mean, float), np.asarray(scale, float)
    z_train = (x_train - mean) / scale
    z_val = (np.asarray(x_val, dtype=np.float64) - mean) / scale
    y_train = np.asarray(y_train, dtype=np.int64)
    solver = "lbfgs" if penalty == "l2" else solver
    if solver == "fista":
        path = _fista_path(z_train, y_train, classes, Cs, class_weight, max_iter, mean, scale)
    else:
        path = _sklearn_path(z_train, y_train, classes, Cs, class_weight, max_iter, solver, mean, scale)

    def score(probe: LinearProbe, z: np.ndarray) -> float:
        return float(balanced_accuracy_score(y_val, (z @ probe.coef.T + probe.intercept).argmax(axis=1)))

    best, best_score, refit_C, scores, converged, iterations, refit_scores = None, -np.inf, None, {}, {}, {}, {}
    for C, probe, n_iter, ok in path:
        converged[C], iterations[C] = ok, n_iter
        candidates = [(probe, None)]
        support = np.flatnonzero((np.abs(probe.coef) > 0).any(axis=0))
        if refit_Cs is not None and len(support):
            candidates = [(_refit_l2(z_train[:, support], y_train, support, classes, class_weight, rc, mean,
                                     scale, C), rc) for rc in sorted(float(c) for c in refit_Cs)]
        for candidate, rc in candidates:
            s = score(candidate, z_val)
            if rc is not None:
                refit_scores[f"{C:g}/{rc:g}"] = s
            scores[C] = max(scores.get(C, -np.inf), s)
            if s > best_score:
                best, best_score, refit_C = candidate, s, rc
    best.val_scores = scores
    best.info = {"class_weight": class_weight, "max_iter": max_iter, "standardize": standardize, "penalty": penalty,
                 "solver": solver, "n_train": int(len(y_train)), "converged": bool(converged[best.C]),
                 "nonzero_inputs": int((np.abs(best.coef) > 0).any(axis=0).sum())}
    if iterations[best.C] is not None:
        best.info["iterations"] = int(iterations[best.C])
    if refit_Cs is not None:
        best.info.update(refit="relaxed lasso: L2 logistic regression on the L1 support", refit_C=refit_C,
                         refit_scores=refit_scores)
    return best


def _sklearn_path(z_train, y_train, classes, Cs, class_weight, max_iter, solver, mean, scale):
    """``(C, probe, None, converged)`` along the ascending C grid: scikit-learn, warm-started (``lbfgs``
    for L2, ``saga`` with pure L1)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    kwargs = {} if solver == "lbfgs" else {"l1_ratio": 1.0}  # saga with pure L1 (sklearn >= 1.8 spelling)
    model = LogisticRegression(solver=solver, max_iter=max_iter, class_weight=class_weight, warm_start=True, **kwargs)
    for C in sorted(float(c) for c in Cs):
        model.set_params(C=C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(z_train, y_train)
        ok = bool(np.max(model.n_iter_) < max_iter)
        yield C, _from_sklearn(model, len(classes), classes, mean, scale, C), None, ok


def _fista_path(z_train, y_train, classes, Cs, class_weight, max_iter, mean, scale):
    """``(C, probe, iterations, converged)`` along the ascending C grid: :func:`fit_l1_logistic`,
    warm-started from the previous C."""
    init = None
    for C in sorted(float(c) for c in Cs):
        coef, intercept, n_iter, ok = fit_l1_logistic(z_train, y_train, len(classes), C, class_weight, init=init,
                                                      max_iter=max_iter)
        init = (coef, intercept)
        yield C, LinearProbe(list(classes), coef, intercept, mean, scale, C), n_iter, ok


def _refit_l2(z_support, y_train, support, classes, class_weight, refit_C, mean, scale, C) -> LinearProbe:
    """The relaxed lasso's second step: L2 logistic regression (lbfgs) on the support's columns,
    written back at full width (zero weight off the support); ``C`` stays the L1 fit's."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=refit_C, max_iter=1000, class_weight=class_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(z_support, y_train)
    narrow = _from_sklearn(model, len(classes), classes, mean[support], scale[support], C)
    coef = np.zeros((len(classes), len(mean)))
    coef[:, support] = narrow.coef
    return LinearProbe(list(classes), coef, narrow.intercept, mean, scale, C)


