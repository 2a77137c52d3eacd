"""A grid of sparse autoencoders on cached embeddings: the L0 vs FVU frontier a user picks a recipe from.

:func:`sweep_grid` turns the options of ``dermkit concepts sweep`` into grid points (TopK: one per
expansion x k; ReLU + L1: one per expansion x l1). :func:`run_sweep` trains each point with
:func:`~dermkit.models.sae.train_sae` on the SAE training embeddings (train splits only) with one
seed, and measures it with :func:`~dermkit.models.sae.sae_metrics` on those embeddings and on the
val split, plus a downstream probe: a logistic regression (:func:`~dermkit.models.linear.fit_probe`,
standardised codes, ``class_weight: balanced``, L2, one fixed ``C = 1``, so nothing is chosen on val)
fitted on the SAE codes of the first dataset's train split, its balanced accuracy on that dataset's
val split. :func:`pareto_front` marks the points no other point beats on both val mean L0 and val
FVU; :func:`recommend` picks, on val, the point with the lowest val FVU among those with val mean
L0 <= ``max_l0`` and a dead-latent share (on the training embeddings) <= ``max_dead``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from dermkit.errors import ConfigError
from dermkit.models.linear import fit_probe
from dermkit.models.sae import ACTIVATIONS, SAETrainConfig, sae_metrics, train_sae

__all__ = ["SweepPoint", "SweepSettings", "sweep_grid", "run_sweep", "pareto_front", "recommend", "RECOMMEND_RULE"]

PROBE = "logistic regression on standardised SAE codes (L2, C=1, class_weight balanced), train split -> val split"
RECOMMEND_RULE = "lowest val FVU among points with val mean L0 <= {max_l0:g} and dead-latent share <= {max_dead:g}"


@dataclass(frozen=True)
class SweepPoint:
    """One SAE recipe of the grid (``k`` for topk, ``l1`` for relu_l1; the other is None)."""

    activation: str
    expansion: int
    k: int | None = None
    l1: float | None = None


@dataclass
class SweepSettings:
    """Training settings every point shares, and the recommendation rule's bounds."""

    epochs: int = 50
    seed: int = 0
    lr: float = 5e-4
    batch_size: int = 4096
    device: str = "cpu"
    max_l0: float = 32.0
    max_dead: float = 0.5
    probe_max_iter: int = 1000

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.max_l0 > 0:
            raise ConfigError(f"--max-l0 must be > 0, got {self.max_l0}")
        if not 0 <= self.max_dead <= 1:
            raise ConfigError(f"--max-dead must be a share in [0, 1], got {self.max_dead}")


def sweep_grid(activations: Sequence[str], ks: Sequence[int], l1s: Sequence[float],
               expansions: Sequence[int]) -> list[SweepPoint]:
    """The grid points, in a stable order; ConfigError naming the option for an unusable value."""
    activations = [str(a).strip() for a in activations]
    bad = [a for a in activations if a not in ACTIVATIONS]
    if not activations or bad:
        raise ConfigError(f"--activations must list {' and/or '.join(ACTIVATIONS)}, got {', '.join(bad) or 'none'}")
    if not expansions or any(int(e) < 1 for e in expansions):
        raise ConfigError(f"--expansions must be integers >= 1, got {list(expansions)}")
    if "topk" in activations and (not ks or any(int(k) < 1 for k in ks)):
        raise ConfigError(f"--k must be integers >= 1 for topk, got {list(ks)}")
    if "relu_l1" in activations and (not l1s or any(not float(v) >= 0 for v in l1s)):
        raise ConfigError(f"--l1 must be numbers >= 0 for relu_l1, got {list(l1s)}")
    points = []
    for activation in dict.fromkeys(activations):
        for e in dict.fromkeys(int(e) for e in expansions):
            if activation == "topk":
                points += [SweepPoint("topk", e, k=int(k)) for k in dict.fromkeys(int(k) for k in ks)]
            else:
                points += [SweepPoint("relu_l1", e, l1=float(v)) for v in dict.fromkeys(float(v) for v in l1s)]
    return points


def check_grid(points: Sequence[SweepPoint], d_in: int) -> None:
    """ConfigError for a TopK point whose k exceeds its number of latents (``d_in`` x expansion)."""
    for p in points:
        if p.activation == "topk" and p.k > d_in * p.expansion:
            raise ConfigError(f"--k {p.k} exceeds the {d_in * p.expansion} latents of expansion {p.expansion} on "
                              f"{d_in}-d embeddings; use smaller k or larger --expansions")


def train_config(point: SweepPoint, settings: SweepSettings) -> SAETrainConfig:
    """The :class:`SAETrainConfig` of one grid point (what a single ``train_sae`` run would use)."""
    return SAETrainConfig(activation=point.activation, expansion=point.expansion,
                          k=point.k if point.k is not None else 32, l1=point.l1 if point.l1 is not None else 0.0,
                          lr=settings.lr, batch_size=settings.batch_size, epochs=settings.epochs,
                          device=settings.device)


def run_sweep(points: Sequence[SweepPoint], x_sae: np.ndarray, x_val: np.ndarray, y_train_codes: tuple,
              classes: Sequence[str], settings: SweepSettings, progress: bool | Callable = False) -> pd.DataFrame:
    """One row per grid point: its settings, train/val FVU, mean L0, dead latents, the probe's val
    balanced accuracy, seconds; then ``frontier`` and ``recommended`` columns.

    ``x_sae``: the SAE training embeddings; ``x_val``: the val split's; ``y_train_codes``:
    ``(x_train, y_train, y_val)``, the labelled train split's embeddings and both splits' labels
    (class indices into ``classes``) for the probe.
    """
    from tqdm.auto import tqdm

    settings.validate()
    check_grid(points, int(np.asarray(x_sae).shape[1]))
    x_train, y_train, y_val = y_train_codes
    rows = []
    with tqdm(total=len(points), desc="SAE sweep", unit="point", disable=not progress or callable(progress)) as bar:
        for p in points:
            start = time.perf_counter()
            sae, history = train_sae(x_sae, train_config(p, settings), seed=settings.seed)
            train, val = sae_metrics(sae, x_sae), sae_metrics(sae, x_val)
            probe = fit_probe(sae.activations(x_train), y_train, sae.activations(x_val), y_val, classes, Cs=[1.0],
                              max_iter=settings.probe_max_iter)
            row = {"activation": p.activation, "expansion": p.expansion, "n_latents": sae.n_latents, "k": p.k,
                   "l1": p.l1, "epochs": settings.epochs, "seed": settings.seed, "lr": settings.lr,
                   "batch_size": settings.batch_size, "train_fvu": train["fvu"], "val_fvu": val["fvu"],
                   "train_mean_l0": train["mean_l0"], "val_mean_l0": val["mean_l0"], "dead": train["dead"],
                   "dead_fraction": train["dead_fraction"], "val_dead_fraction": val["dead_fraction"],
                   "probe_val_balanced_accuracy": float(probe.val_scores[1.0]),
                   "final_loss": history[-1]["loss"] if history else math.nan,
                   "seconds": round(time.perf_counter() - start, 2)}
            rows.append(row)
            if callable(progress):
                progress(row)
            bar.update(1)
            bar.set_postfix(L0=f"{val['mean_l0']:.1f}", FVU=f"{val['fvu']:.3f}")
    table = pd.DataFrame(rows)
    table["frontier"] = pareto_front(table)
    best = recommend(table, settings.max_l0, settings.max_dead)
    table["recommended"] = [i == best for i in range(len(table))]
    return table


def pareto_front(table: pd.DataFrame, x: str = "val_mean_l0", y: str = "val_fvu") -> list[bool]:
    """Per row: no other row has ``x`` <= and ``y`` <= with one of them strictly smaller (both minimised)."""
    xs, ys = table[x].to_numpy(dtype=float), table[y].to_numpy(dtype=float)
    out = []
    for i in range(len(table)):
        if not (np.isfinite(xs[i]) and np.isfinite(ys[i])):
            out.append(False)
            continue
        dominated = (xs <= xs[i]) & (ys <= ys[i]) & ((xs < xs[i]) | (ys < ys[i]))
        out.append(not bool(dominated.any()))
    return out


def recommend(table: pd.DataFrame, max_l0: float = 32.0, max_dead: float = 0.5) -> int | None:
    """Index of the recommended row (:data:`RECOMMEND_RULE`; ties: higher probe accuracy, then fewer
    active latents), or None when no point meets both bounds."""
    ok = table[(table["val_mean_l0"] <= max_l0) & (table["dead_fraction"] <= max_dead) & table["val_fvu"].notna()]
    if ok.empty:
        return None
    order = ok.sort_values(["val_fvu", "probe_val_balanced_accuracy", "val_mean_l0"], ascending=[True, False, True])
    return int(order.index[0])
