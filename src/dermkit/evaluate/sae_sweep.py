"""The picture and files of an SAE sweep (``dermkit concepts sweep``): L0 vs FVU with the Pareto
frontier, dead-latent share and downstream probe accuracy, so a user picks a recipe from a picture.

The table comes from :func:`dermkit.models.sae_sweep.run_sweep` (one row per grid point, with
``frontier`` and ``recommended`` columns); this module only draws and writes it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dermkit import io

__all__ = ["sweep_figure", "save_sweep"]


def _label(row) -> str:
    knob = f"k={int(row['k'])}" if row["activation"] == "topk" else f"l1={row['l1']:g}"
    return f"x{int(row['expansion'])} {knob}"


def sweep_figure(table: pd.DataFrame, title: str | None = None):
    """Two panels: (left) val mean L0 against val FVU, colour = dead-latent share, the Pareto
    frontier as a line, the recommended point starred; (right) val mean L0 against the probe's val
    balanced accuracy. Markers: circle = topk, square = relu_l1."""
    from matplotlib.figure import Figure  # object-oriented API, as plots.py: no window, no pyplot state
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig = Figure(figsize=(12, 4.8))
    left, right = fig.subplots(1, 2)
    markers = {"topk": "o", "relu_l1": "s"}
    scatter = None
    for activation, part in table.groupby("activation", sort=False):
        scatter = left.scatter(part["val_mean_l0"], part["val_fvu"], c=part["dead_fraction"], cmap="viridis_r",
                               vmin=0, vmax=1, marker=markers.get(activation, "^"), s=60, edgecolors="black",
                               linewidths=0.5, label=activation, zorder=3)
        right.scatter(part["val_mean_l0"], part["probe_val_balanced_accuracy"], marker=markers.get(activation, "^"),
                      s=60, edgecolors="black", linewidths=0.5, label=activation, zorder=3)
    for _, row in table.iterrows():
        left.annotate(_label(row), (row["val_mean_l0"], row["val_fvu"]), fontsize=7, xytext=(4, 3),
                      textcoords="offset points")
    front = table[table["frontier"]].sort_values("val_mean_l0")
    if len(front):
        left.plot(front["val_mean_l0"], front["val_fvu"], color="#d62728", lw=1.5, zorder=2, label="Pareto frontier")
    chosen = table[table["recommended"]]
    for ax, y in ((left, "val_fvu"), (right, "probe_val_balanced_accuracy")):
        if len(chosen):
            ax.scatter(chosen["val_mean_l0"], chosen[y], marker="*", s=320, facecolors="none", edgecolors="#d62728",
                       linewidths=1.5, zorder=4, label="recommended")
        positive = table["val_mean_l0"].to_numpy(dtype=float)
        if np.all(positive[np.isfinite(positive)] > 0) and np.nanmax(positive) / max(np.nanmin(positive), 1e-9) > 20:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("Mean active latents per image (L0, val)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    left.set_ylabel("Fraction of variance unexplained (FVU, val)")
    right.set_ylabel("Probe balanced accuracy from the codes (val)")
    left.set_title("Sparsity vs reconstruction")
    right.set_title("Sparsity vs downstream probe")
    if scatter is not None:
        fig.colorbar(scatter, ax=left, label="dead-latent share (train)")
    fig.suptitle(title or "SAE sweep")
    fig.tight_layout()
    return fig


def _clean(value):
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_sweep(table: pd.DataFrame, out_dir, meta: dict, title: str | None = None) -> dict[str, Path]:
    """``sweep.csv``, ``sweep.json`` (``meta``: encoder, data, rule, probe; ``points``; the
    ``recommended`` point) and ``sweep.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    points = [{k: _clean(v) for k, v in row.items()} for row in table.to_dict("records")]
    chosen = [p for p in points if p["recommended"]]
    paths = {"csv": io.write_csv(out_dir / "sweep.csv", table),
             "json": io.write_json(out_dir / "sweep.json", {**meta, "points": points,
                                                            "recommended": chosen[0] if chosen else None}),
             "png": io.save_figure(out_dir / "sweep.png", sweep_figure(table, title))}
    return paths
