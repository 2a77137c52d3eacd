"""Evaluation figures: confusion matrices, one-vs-rest ROC curves, reliability diagram.

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
    table = reliability_table(y_true, proba, n_bins)
    ece = expected_calibration_error(y_true, proba, n_bins)
    edges = table["edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = table["count"] > 0

    fig = Figure(figsize=(6.5, 7.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
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
    fig.tight_layout()
    return fig
