"""Breslow thickness metrics, bootstrap CIs and plots (regression in mm, or ordinal bins).

Regression (a measured thickness in mm): MAE, RMSE (mm) and MAPE (%, over rows whose true
thickness is > 0, since the percentage error of a 0 mm lesion is undefined).

Ordinal (Derm7pt ``breslow_ordinal``: 0 in situ, 1 <0.76 mm, 2 0.76-1.5 mm, 3 >1.5 mm): exact-bin
accuracy, MAE in bins (|predicted bin - true bin|) and quadratic-weighted Cohen's kappa (QWK:
1 = perfect agreement, 0 = chance; disagreements cost the squared bin distance).

CIs are percentile bootstraps over the same resamples as the classification report
(:func:`dermkit.evaluate.bootstrap.resample_indices`: stratified by true bin, whole lesions/patients
when groups are given).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import io
from ..errors import DataError
from .bootstrap import percentile_ci, resample_indices
from .plots import plot_confusion_matrix

__all__ = [
    "regression_metrics",
    "ordinal_metrics",
    "quadratic_weighted_kappa",
    "thickness_metrics",
    "bootstrap_thickness",
    "plot_thickness_agreement",
    "plot_thickness_distribution",
    "ThicknessReport",
    "thickness_report",
]

REGRESSION_METRICS = ("mae", "rmse", "mape")
ORDINAL_METRICS = ("accuracy", "mae_bins", "qwk")
LABELS = {
    "mae": "MAE (mm)", "rmse": "RMSE (mm)", "mape": "MAPE (%)",
    "accuracy": "Exact-bin accuracy", "mae_bins": "MAE (bins)", "qwk": "Quadratic-weighted kappa",
}


def _arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=float).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=float).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise DataError(f"thickness: {len(y_true)} true values but {len(y_pred)} predictions")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise DataError("thickness: NaN/inf among the values; drop rows without a thickness before scoring")
    return y_true, y_pred


def regression_metrics(y_true_mm, y_pred_mm) -> dict[str, float]:
    """MAE, RMSE (mm) and MAPE (%, rows with a true thickness > 0) of thickness predictions."""
    y_true, y_pred = _arrays(y_true_mm, y_pred_mm)
    if len(y_true) == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "mape": float("nan"), "n": 0}
    err = y_pred - y_true
    positive = y_true > 0
    mape = float(np.mean(np.abs(err[positive]) / y_true[positive]) * 100) if positive.any() else float("nan")
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))), "mape": mape,
            "n": int(len(y_true))}


def quadratic_weighted_kappa(y_true, y_pred, n_bins: int) -> float:
    """Cohen's kappa with quadratic weights over bins ``0..n_bins-1`` (as scikit-learn's
    ``cohen_kappa_score(weights="quadratic", labels=range(n_bins))``); NaN when undefined."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if len(t) == 0:
        return float("nan")
    observed = np.bincount(t * n_bins + p, minlength=n_bins * n_bins).reshape(n_bins, n_bins).astype(float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    idx = np.arange(n_bins)
    weights = (idx[:, None] - idx[None, :]) ** 2
    denominator = float((weights * expected).sum())
    if denominator == 0:
        return float("nan")
    return float(1.0 - (weights * observed).sum() / denominator)


def ordinal_metrics(y_true, y_pred, n_bins: int) -> dict[str, float]:
    """Exact-bin accuracy, MAE in bins and quadratic-weighted kappa of predicted bins."""
    y_true, y_pred = _arrays(y_true, y_pred)
    bad = (y_true < 0) | (y_true >= n_bins) | (y_pred < 0) | (y_pred >= n_bins) | (y_true != np.round(y_true))
    if bad.any():
        raise DataError(f"ordinal thickness: values must be whole bins 0-{n_bins - 1}; got {y_true[bad][:3]}")
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "mae_bins": float("nan"), "qwk": float("nan"), "n": 0}
    return {"accuracy": float(np.mean(y_true == y_pred)), "mae_bins": float(np.mean(np.abs(y_true - y_pred))),
            "qwk": quadratic_weighted_kappa(y_true, y_pred, n_bins), "n": int(len(y_true))}


def thickness_metrics(kind: str, y_true, y_pred, n_bins: int | None = None) -> dict[str, float]:
    if kind == "regression":
        return regression_metrics(y_true, y_pred)
    if kind == "ordinal":
        if n_bins is None:
            raise DataError("ordinal thickness metrics need n_bins")
        return ordinal_metrics(y_true, y_pred, n_bins)
    raise DataError(f"unknown thickness kind {kind!r}; use regression or ordinal")


def bootstrap_thickness(kind: str, y_true, y_pred, n_bins: int | None = None, groups=None, n: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Percentile CIs of :func:`thickness_metrics` (stratified by true bin for ordinal targets)."""
    y_true, y_pred = _arrays(y_true, y_pred)
    names = REGRESSION_METRICS if kind == "regression" else ORDINAL_METRICS
    if n <= 0 or len(y_true) == 0:
        return {k: {"low": float("nan"), "high": float("nan"), "level": level} for k in names}
    strata = y_true.astype(np.int64) if kind == "ordinal" else np.zeros(len(y_true), dtype=np.int64)
    samples = {k: np.empty(n) for k in names}
    for b, idx in enumerate(resample_indices(strata, groups, n=n, seed=seed)):
        values = thickness_metrics(kind, y_true[idx], y_pred[idx], n_bins)
        for k in names:
            samples[k][b] = values[k]
    return {k: percentile_ci(samples[k], level) for k in names}


# ------------------------------------------------------------------------------ plots


def plot_thickness_agreement(kind: str, y_true, y_pred, bin_names: Sequence[str] | None = None,
                             title: str | None = None) -> Figure:
    """Predicted vs actual: a scatter with the identity line (mm), or a bin confusion matrix."""
    y_true, y_pred = _arrays(y_true, y_pred)
    if kind == "ordinal":
        names = list(bin_names or [str(i) for i in range(int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1)])
        k = len(names)
        cm = np.bincount(y_true.astype(int) * k + y_pred.astype(int), minlength=k * k).reshape(k, k)
        fig = plot_confusion_matrix(cm, names, title=title or "Breslow bin: true (rows) vs predicted (columns)")
        return fig
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.scatter(y_true, y_pred, s=18, alpha=0.7)
    hi = float(max(y_true.max(initial=1.0), y_pred.max(initial=1.0))) * 1.05
    ax.plot([0, hi], [0, hi], color="grey", linestyle="--", linewidth=1, label="predicted = actual")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("actual thickness (mm)")
    ax.set_ylabel("predicted thickness (mm)")
    ax.set_title(title or "Breslow thickness: predicted vs actual")
    ax.legend(loc="upper left")
    return fig


def plot_thickness_distribution(kind: str, y_true, y_pred, bin_names: Sequence[str] | None = None,
                                title: str | None = None) -> Figure:
    """Distribution of actual and predicted thickness (bar chart per bin, or histograms in mm)."""
    y_true, y_pred = _arrays(y_true, y_pred)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if kind == "ordinal":
        names = list(bin_names or [])
        k = len(names) or int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
        x = np.arange(k)
        ax.bar(x - 0.2, np.bincount(y_true.astype(int), minlength=k), width=0.4, label="actual")
        ax.bar(x + 0.2, np.bincount(y_pred.astype(int), minlength=k), width=0.4, label="predicted")
        ax.set_xticks(x, names or [str(i) for i in x])
        ax.set_ylabel("lesions")
    else:
        hi = float(max(y_true.max(initial=1.0), y_pred.max(initial=1.0)))
        bins = np.linspace(0, hi, 16)
        ax.hist(y_true, bins=bins, alpha=0.6, label="actual")
        ax.hist(y_pred, bins=bins, alpha=0.6, label="predicted")
        ax.set_xlabel("thickness (mm)")
        ax.set_ylabel("lesions")
    ax.set_title(title or "Breslow thickness distribution")
    ax.legend()
    return fig


# ------------------------------------------------------------------------------ report


class ThicknessReport:
    """Thickness metrics with CIs for one split; ``save(folder)`` writes JSON, Markdown, CSV, PNGs."""

    def __init__(self, kind: str, metrics: dict, ci: dict, table: pd.DataFrame, bin_names: list[str] | None,
                 title: str):
        self.kind, self.metrics, self.ci, self.table = kind, metrics, ci, table
        self.bin_names, self.title = bin_names, title

    def summary_text(self) -> str:
        """One short cell for a suite table, e.g. ``QWK 0.41 [0.10, 0.65], MAE 0.62 bins (n=31)``."""
        def f(key, scale=1.0, digits=2):
            v, c = self.metrics.get(key), self.ci.get(key, {})
            if v is None or not np.isfinite(v):
                return "n/a"
            text = f"{v * scale:.{digits}f}"
            if c.get("low") is not None and np.isfinite(c["low"]):
                text += f" [{c['low'] * scale:.{digits}f}, {c['high'] * scale:.{digits}f}]"
            return text
        n = self.metrics.get("n", 0)
        if self.kind == "ordinal":
            return f"QWK {f('qwk')}, acc {f('accuracy')}, MAE {f('mae_bins')} bins (n={n})"
        return f"MAE {f('mae')} mm, RMSE {f('rmse')} mm, MAPE {f('mape', digits=1)}% (n={n})"

    def to_markdown(self) -> str:
        names = REGRESSION_METRICS if self.kind == "regression" else ORDINAL_METRICS
        target = ("Breslow thickness in mm (regression)" if self.kind == "regression" else
                  "Breslow bin (ordinal): " + ", ".join(f"{i} = {b}" for i, b in enumerate(self.bin_names or [])))
        lines = [f"# {self.title}", "", f"- Lesions with a thickness target: {self.metrics.get('n', 0)}",
                 f"- Target: {target}",
                 "", "| Metric | Value | 95% CI |", "|---|---|---|"]
        for k in names:
            v, c = self.metrics.get(k), self.ci.get(k, {})
            val = "n/a" if v is None or not np.isfinite(v) else f"{v:.4f}"
            ci = ("n/a" if c.get("low") is None or not np.isfinite(c["low"]) else f"{c['low']:.4f} – {c['high']:.4f}")
            lines.append(f"| {LABELS[k]} | {val} | {ci} |")
        lines += ["", "Percentile bootstrap CIs (stratified by true bin for ordinal targets; whole lesions/patients "
                  "when grouped). Figures: thickness_agreement.png (predicted vs actual), "
                  "thickness_distribution.png.", ""]
        return "\n".join(lines)

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        io.write_json(folder / "thickness.json", {"kind": self.kind, "bins": self.bin_names, **self.metrics,
                                                  "ci": self.ci})
        io.write_csv(folder / "thickness_predictions.csv", self.table)
        io.write_text(folder / "thickness.md", self.to_markdown())
        if len(self.table):
            t, p = self.table["thickness_true"].to_numpy(float), self.table["thickness_pred"].to_numpy(float)
            io.save_figure(folder / "thickness_agreement.png",
                           plot_thickness_agreement(self.kind, t, p, self.bin_names))
            io.save_figure(folder / "thickness_distribution.png",
                           plot_thickness_distribution(self.kind, t, p, self.bin_names))
        return folder


def thickness_report(kind: str, images: Sequence[str], y_true, y_pred, bin_names: Sequence[str] | None = None,
                     groups: Sequence | None = None, n_bootstrap: int = 1000, seed: int = 0,
                     title: str = "Breslow thickness") -> ThicknessReport:
    """Metrics + CIs for rows that have a true thickness (NaN targets are dropped here)."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    keep = np.isfinite(y_true)
    images = [im for im, k in zip(images, keep) if k]
    y_t, y_p = y_true[keep], y_pred[keep]
    g = None if groups is None else [x for x, k in zip(groups, keep) if k]
    n_bins = len(bin_names) if bin_names is not None else None
    metrics = thickness_metrics(kind, y_t, y_p, n_bins)
    ci = bootstrap_thickness(kind, y_t, y_p, n_bins, g, n=n_bootstrap, seed=seed)
    table = pd.DataFrame({"image": images, "thickness_true": y_t, "thickness_pred": y_p})
    if g is not None:
        table["group"] = g
    return ThicknessReport(kind, metrics, ci, table, list(bin_names) if bin_names is not None else None, title)
