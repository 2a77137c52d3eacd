"""How valid is a concept name? AUROC of a latent's activation against a dataset's own annotation.

A latent named "blue-whitish veil" by text similarity is a hypothesis; where the dataset annotates
that criterion (Derm7pt's 7-point columns, PH2's structures and colours; the mapping is data,
``data/concepts/annotations.yaml``), the AUROC of the latent's activation for "present" vs
"absent", with a grouped bootstrap CI from the one evaluation layer, measures it.
"""

from __future__ import annotations

from importlib import resources
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from .report import evaluate

__all__ = ["concept_annotations", "concept_validity"]


def concept_annotations(dataset: str) -> dict[str, dict]:
    """``{concept name: {column, positive}}`` for a packaged dataset name (empty when none)."""
    text = resources.files("dermkit.data").joinpath("concepts/annotations.yaml").read_text(encoding="utf-8")
    return dict((yaml.safe_load(text) or {}).get(dataset, {}) or {})


def concept_validity(activations: np.ndarray, named: Sequence[dict], rows: pd.DataFrame, annotations: dict[str, dict],
                     groups: Sequence | None = None, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per named latent whose name the dataset annotates: AUROC [95% CI] of its activation.

    ``activations``: ``(N, n_latents)`` for ``rows`` (in order); ``named``: what
    :func:`dermkit.models.concepts.name_latents` returns. Latents whose concept is not annotated,
    or whose annotation has only one value in ``rows``, are listed with ``auroc`` None and a note.
    """
    out = []
    for entry in named:
        name, latent = entry.get("name"), int(entry["latent"])
        spec = annotations.get(name) if name else None
        row = {"latent": latent, "name": name, "similarity": entry.get("similarity"), "column": None,
               "n": int(len(rows)), "n_present": None, "auroc": None, "low": None, "high": None, "note": ""}
        if spec is None:
            row["note"] = "not annotated in this dataset"
            out.append(row)
            continue
        column = spec["column"]
        values = rows[column]
        known = values.notna().to_numpy()
        present = values.astype(str).isin([str(v) for v in spec["positive"]]).to_numpy()
        row.update(column=column, n=int(known.sum()), n_present=int((present & known).sum()))
        if present[known].all() or not present[known].any():
            row["note"] = "the annotation has one value only"
            out.append(row)
            continue
        score = np.asarray(activations)[known, latent].astype(float)
        scaled = (score - score.min()) / max(float(score.max() - score.min()), 1e-12)  # a probability-like score
        frame = pd.DataFrame({
            "image": rows["image"].to_numpy()[known],
            "target": np.where(present[known], "present", "absent"),
            "prediction": np.where(scaled >= 0.5, "present", "absent"),
            "prob:absent": 1.0 - scaled, "prob:present": scaled,
        })
        if groups is not None:
            frame["group"] = np.asarray(list(groups))[known]
        metrics = evaluate(frame, n_bootstrap=n_bootstrap, seed=seed).metrics
        ci = metrics["ci"]["macro_auc"]
        row.update(auroc=metrics["macro_auc"], low=ci["low"], high=ci["high"])
        out.append(row)
    return pd.DataFrame(out)
