"""Evaluation figures: confusion matrices, ROC curves, reliability diagrams, risk-coverage, forest plots.

Each ``plot_*`` function returns a ``matplotlib.figure.Figure``; ``Report.save`` writes them with
``dermkit.io.save_figure``. Figures are built with the object-oriented API (``Figure`` directly,
not ``pyplot.figure``) so they never open a window nor pile up in pyplot's global figure list.
"""

from __future__ import annotations

import sys
from typing import Sequence

import matplotlib

# Headless by default (servers, CI). If the caller already imported pyplot with a GUI backend we
# leave it alone: our figures do not depend on the backend.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np
from matplotlib.figure import Figure

from .metrics import ECE_BINS, expected_calibration_error, reliability_table

# Labels longer than this are shortened with an ellipsis so axes stay readable.
_MAX_LABEL = 28


def short_label(name: str, limit: int = _MAX_LABEL) -> str:
    """Class name for an axis label: shortened with an ellipsis past ``limit`` characters."""
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def plot_confusion_matrix(
    cm, classes: Sequence[str], normalize: bool = False, title: str | None = None
) -> Figure:
    """Confusion matrix heat map (rows = true class) with every cell annotated.

    ``normalize=True`` divides each row by its class support, so the diagonal shows per-class
    sensitivity; a class without samples shows an empty row.
    """
    counts = np.asarray(cm, dtype=float)
    n_classes = len(classes)
    if normalize:
        support = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
        vmax, fmt = 1.0, "{:.2f}"
        default_title = "Confusion matrix (row-normalised: recall per true class)"
    else:
        values = counts
        vmax, fmt = max(float(counts.max()), 1.0), "{:.0f}"
        default_title = "Confusion matrix (counts)"

    side = max(4.5, 0.65 * n_classes + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    labels = [short_label(c) for c in classes]
    ax.set_xticks(range(n_classes), labels=labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_classes), labels=labels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title or default_title)

    font = max(6, 11 - n_classes // 3)
    for i in range(n_classes):
        for j in range(n_classes):
            # White text on dark cells, black on light ones.
            colour = "white" if values[i, j] > 0.55 * vmax else "black"
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", color=colour,
                    fontsize=font)
    fig.tight_layout()
    return fig


def plot_roc_curves(y_true, proba, classes: Sequence[str], title: str | None = None) -> Figure:
    """One-vs-rest ROC curve per class (AUC in the legend) with the chance diagonal.

    With two classes only the positive (second) class is drawn: the other curve is identical.
    Classes without positives or negatives have no ROC curve and are listed as undefined.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    n_classes = len(classes)
    shown = [1] if n_classes == 2 else list(range(n_classes))

    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10" if len(shown) <= 10 else "tab20"]
    for k, c in enumerate(shown):
        positive = y_true == c
        name = short_label(classes[c])
        if positive.all() or not positive.any():
            ax.plot([], [], color="none", label=f"{name} (undefined: no positives or negatives)")
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, c])
        auc = roc_auc_score(positive, proba[:, c])
        ax.plot(fpr, tpr, color=colours(k % colours.N), lw=1.8, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    if title is None:
        title = (
            f"ROC curve (positive class: {short_label(classes[1])})"
            if n_classes == 2
            else "One-vs-rest ROC curves"
        )
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small" if len(shown) <= 8 else "x-small")
    fig.tight_layout()
    return fig


def plot_reliability(
    y_true, proba, n_bins: int = ECE_BINS, title: str | None = None
) -> Figure:
    """Reliability diagram of the argmax decision plus a histogram of its confidence.

    Top: accuracy per confidence bin (bars) against the diagonal of perfect calibration, with the
    gap to the bin's mean confidence hatched. Bottom: number of samples per bin.
    """
    fig = Figure(figsize=(6.5, 7.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _draw_reliability(top, bottom, y_true, proba, n_bins, title)
    fig.tight_layout()
    return fig


def plot_reliability_pair(
    y_true, proba_before, proba_after, n_bins: int = ECE_BINS, temperature: float | None = None
) -> Figure:
    """Two reliability diagrams side by side: before and after recalibration (same bins)."""
    fig = Figure(figsize=(12, 7.5))
    axes = fig.subplots(2, 2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    after = "After temperature scaling" + (f" (T = {temperature:.3f})" if temperature else "")
    for column, proba, label in ((0, proba_before, "Before"), (1, proba_after, after)):
        ece = expected_calibration_error(y_true, proba, n_bins)
        _draw_reliability(axes[0, column], axes[1, column], y_true, proba, n_bins,
                          f"{label}: ECE = {ece:.4f}")
    fig.tight_layout()
    return fig


def _draw_reliability(top, bottom, y_true, proba, n_bins: int, title: str | None) -> None:
    table = reliability_table(y_true, proba, n_bins)
    ece = expected_calibration_error(y_true, proba, n_bins)
    edges = table["edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = table["count"] > 0

    accuracy = table["accuracy"][filled]
    confidence = table["confidence"][filled]
    top.bar(centres[filled], accuracy, width=width, color="#4c72b0", edgecolor="black",
            lw=0.6, label="Accuracy")
    top.bar(centres[filled], confidence - accuracy, bottom=accuracy, width=width,
            color="#dd8452", alpha=0.35, edgecolor="#c44e52", hatch="//", lw=0.6,
            label="Gap to mean confidence")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy of predicted class")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    top.set_title(title or f"Reliability diagram (ECE = {ece:.4f}, {n_bins} bins)")

    bottom.bar(centres, table["count"], width=width, color="#8c8c8c", edgecolor="black", lw=0.6)
    bottom.set_xlabel("Confidence (max predicted probability)")
    bottom.set_ylabel("Count")
    bottom.grid(alpha=0.3)


def plot_risk_coverage(curve: dict, title: str | None = None) -> Figure:
    """Risk (error rate of the accepted cases) against coverage, abstaining on low confidence.

    ``curve`` is :func:`dermkit.evaluate.selective.risk_coverage`'s result; the marked points are
    the reported coverages, the dotted line the error rate without abstention.
    """
    fig = Figure(figsize=(6.5, 5))
    ax = fig.add_subplot()
    coverage, risk = np.asarray(curve["coverage"]), np.asarray(curve["risk"])
    ax.plot(coverage, risk, color="#4c72b0", lw=1.8, label=f"Risk-coverage (AURC {curve['aurc']:.4f})")
    ax.axhline(risk[-1], ls=":", color="grey", lw=1, label=f"No abstention (error {risk[-1]:.3f})")
    for point in curve.get("points", []):
        ax.plot(point["coverage"], 1 - point["accuracy"], "o", color="#c44e52")
        ax.annotate(f"{point['coverage']:.0%}", (point["coverage"], 1 - point["accuracy"]),
                    textcoords="offset points", xytext=(-10, 8), fontsize="small")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, max(0.05, float(np.nanmax(risk)) * 1.1))
    ax.grid(alpha=0.3)
    ax.set_xlabel("Coverage (fraction of cases the model decides)")
    ax.set_ylabel("Risk (error rate of the decided cases)")
    ax.set_title(title or "Selective prediction: abstain on the lowest max probability")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_forest(rows: Sequence[dict], metrics: Sequence[tuple[str, str]], overall: dict | None = None,
                title: str | None = None) -> Figure:
    """Forest plot: one row per subgroup, one panel per metric, point estimate with its 95% CI.

    ``rows`` are dicts with ``attribute``, ``level``, ``n``, ``flag`` (text, empty when the
    subgroup is large enough) and per metric ``key``, ``key_low``, ``key_high`` and optionally
    ``key_flag`` (default: ``flag``); ``metrics`` is ``[(key, label)]``; ``overall`` ``{key:
    value}`` draws a vertical reference line. Flagged estimates are drawn hollow and grey, and a
    row whose ``flag`` is set gets "(few)" after its label.
    """
    n_rows = len(rows)
    fig = Figure(figsize=(3.6 * len(metrics) + 2.8, max(2.5, 0.32 * n_rows + 1.4)))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    ypos = np.arange(n_rows)[::-1]
    labels = [f"{short_label(r['attribute'], 16)}: {short_label(r['level'], 18)} (n={r['n']})"
              + (" (few)" if r.get("flag") else "") for r in rows]
    for ax, (key, label) in zip(axes, metrics):
        for y, r in zip(ypos, rows):
            value, low, high = (r.get(key), r.get(f"{key}_low"), r.get(f"{key}_high"))
            if value is None or not np.isfinite(value):
                continue
            flagged = bool(r.get(f"{key}_flag", r.get("flag")))
            colour = "#8c8c8c" if flagged else "#4c72b0"
            if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
                ax.plot([low, high], [y, y], color=colour, lw=1.4)
            ax.plot(value, y, "o", color=colour, mfc="white" if flagged else colour)
        if overall and overall.get(key) is not None and np.isfinite(overall[key]):
            ax.axvline(overall[key], ls="--", color="#c44e52", lw=1, label="Overall")
            ax.legend(loc="lower right", fontsize="x-small")
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(label, fontsize="medium")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(ypos, labels=labels, fontsize="small")
    axes[0].set_ylim(-0.7, n_rows - 0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
