"""How valid is a concept name? AUROC of a latent's activation against a dataset's own annotation.

A latent named "blue-whitish veil" by text similarity is a hypothesis; where the dataset annotates
that criterion (Derm7pt's 7-point columns, PH2's structures and colours; the mapping is data,
``data/concepts/annotations.yaml``, and any dataset may declare its own columns in its card,
``concept_annotations: {name: {column, positive}}``), the AUROC of the latent's activation for
"present" vs "absent", with a grouped bootstrap CI from the one evaluation layer, measures it.

Three views: :func:`concept_validity`, each named concept against its own name's annotation;
:func:`validity_matrix`, every concept against every annotation (plain AUROC, no CI);
:func:`best_latents`, per annotation the latent with the highest AUROC on one split (val),
evaluated with a CI on another (test): the best of many latents chosen and reported on the same
split would be optimistic.

:func:`name_by_annotations` turns the screen into names (Network Dissection's idea, Bau et al.,
CVPR 2017: a unit is named by the labelled concept it detects): latents and annotations matched
one-to-one on a labelled split (val), a name kept only where its AUROC there is high and its CI
lies above 0.5; validity is then measured on another split (test).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from dermkit.errors import DataError

from .report import evaluate

__all__ = ["concept_annotations", "concept_validity", "validity_matrix", "best_latents", "name_by_annotations",
           "BEST_LATENT_NOTE"]

BEST_LATENT_NOTE = ("the best of many latents, chosen on the same split it is reported on, is optimistic: "
                    "each latent here is chosen on {select} and reported on {split}")


def _check_annotations(spec: Any, where: str) -> dict[str, dict]:
    if not isinstance(spec, dict):
        raise DataError(f"{where}: concept annotations must be a mapping {{name: {{column, positive: [...]}}}}")
    out = {}
    for name, entry in spec.items():
        if not isinstance(entry, dict) or "column" not in entry or not isinstance(entry.get("positive"), list) \
                or not entry["positive"]:
            raise DataError(f"{where}: concept annotation {name!r} needs column: and a non-empty positive: list, "
                            f"got {entry!r}")
        out[str(name)] = {"column": str(entry["column"]), "positive": list(entry["positive"])}
    return out


def concept_annotations(dataset) -> dict[str, dict]:
    """``{concept name: {column, positive}}`` of a dataset: the packaged mapping
    (``data/concepts/annotations.yaml``) for its name, extended (and overridden per name) by the
    ``concept_annotations:`` its card declares. ``dataset``: a card or a packaged dataset name."""
    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None)
    text = resources.files("dermkit.data").joinpath("concepts/annotations.yaml").read_text(encoding="utf-8")
    out = _check_annotations((yaml.safe_load(text) or {}).get(name, {}) or {}, f"annotations.yaml ({name})")
    own = (getattr(dataset, "extra", None) or {}).get("concept_annotations") if not isinstance(dataset, str) else None
    if own:
        where = " + ".join(getattr(dataset, "sources", ())) or str(name)
        out.update(_check_annotations(own, f"{where}: concept_annotations"))
    return out


def _present(rows: pd.DataFrame, spec: dict, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(known, present)`` boolean masks of one annotation over ``rows``."""
    column = spec["column"]
    if column not in rows.columns:
        raise DataError(f"concept annotation column {column!r} is not in the dataset's table{where}; "
                        f"columns: {', '.join(map(str, rows.columns))}")
    values = rows[column]
    known = (values.notna() & (values.astype(str).str.strip() != "")).to_numpy()
    present = values.astype(str).str.strip().str.lower().isin(_positive_texts(spec["positive"])).to_numpy()
    return known, present


def _positive_texts(positive: Sequence) -> set[str]:
    """The cell texts (lower case) that mean "present"; YAML reads an unquoted yes/true as a boolean."""
    out = set()
    for v in positive:
        if isinstance(v, bool):
            out |= {"true", "yes", "1", "y"} if v else {"false", "no", "0", "n"}
        else:
            out.add(str(v).strip().lower())
    return out


def _auroc_ci(score: np.ndarray, present: np.ndarray, images, groups, n_bootstrap: int, seed: int) -> dict:
    scaled = (score - score.min()) / max(float(score.max() - score.min()), 1e-12)  # a probability-like score
    frame = pd.DataFrame({
        "image": np.asarray(images),
        "target": np.where(present, "present", "absent"),
        "prediction": np.where(scaled >= 0.5, "present", "absent"),
        "prob:absent": 1.0 - scaled, "prob:present": scaled,
    })
    if groups is not None:
        frame["group"] = np.asarray(list(groups))
    metrics = evaluate(frame, n_bootstrap=n_bootstrap, seed=seed).metrics
    ci = metrics["ci"]["macro_auc"]
    return {"auroc": metrics["macro_auc"], "low": ci["low"], "high": ci["high"]}


def concept_validity(activations: np.ndarray, named: Sequence[dict], rows: pd.DataFrame, annotations: dict[str, dict],
                     groups: Sequence | None = None, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per latent of ``named``: where its name is annotated, AUROC [95% CI] of its activation.

    ``activations``: ``(N, n_latents)`` for ``rows`` (in order); ``named``: what
    :func:`dermkit.models.concepts.name_latents` returns. Latents whose concept is not annotated,
    or whose annotation has only one value in ``rows``, are listed with ``auroc`` None and a note.
    """
    out = []
    acts = np.asarray(activations)
    group_array = np.asarray(list(groups)) if groups is not None else None
    for entry in named:
        name, latent = entry.get("name"), int(entry["latent"])
        spec = annotations.get(name) if name else None
        row = {"latent": latent, "name": name, "similarity": entry.get("similarity"), "margin": entry.get("margin"),
               "column": None, "n": int(len(rows)), "n_present": None, "auroc": None, "low": None, "high": None,
               "note": ""}
        if spec is None:
            row["note"] = "unnamed" if not name else "not annotated in this dataset"
            out.append(row)
            continue
        known, present = _present(rows, spec)
        row.update(column=spec["column"], n=int(known.sum()), n_present=int((present & known).sum()))
        if present[known].all() or not present[known].any():
            row["note"] = "the annotation has one value only"
            out.append(row)
            continue
        row.update(_auroc_ci(acts[known, latent].astype(float), present[known], rows["image"].to_numpy()[known],
                             None if group_array is None else group_array[known], n_bootstrap, seed))
        out.append(row)
    return pd.DataFrame(out)


def _plain_auroc(score: np.ndarray, present: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(present, score))


def validity_matrix(activations: np.ndarray, latents: Sequence[int], rows: pd.DataFrame,
                    annotations: dict[str, dict]) -> pd.DataFrame:
    """AUROC of every latent in ``latents`` against every annotation (rows: latents, columns:
    annotation names; NaN where the annotation has one value only on ``rows``). No CI: a screen."""
    acts = np.asarray(activations)
    table = pd.DataFrame(index=pd.Index([int(j) for j in latents], name="latent"), dtype=float)
    for name, spec in annotations.items():
        known, present = _present(rows, spec)
        if present[known].all() or not present[known].any():
            table[name] = np.nan
            continue
        table[name] = [_plain_auroc(acts[known, int(j)].astype(float), present[known]) for j in latents]
    return table


def best_latents(select_activations: np.ndarray, select_rows: pd.DataFrame, activations: np.ndarray,
                 rows: pd.DataFrame, latents: Sequence[int], annotations: dict[str, dict],
                 names: dict[int, str] | None = None, groups: Sequence | None = None, n_bootstrap: int = 1000,
                 seed: int = 0, select_split: str = "val", split: str = "test") -> pd.DataFrame:
    """Per annotation: the latent (of ``latents``) with the highest AUROC on the selection split
    (``select_activations``/``select_rows``, e.g. val), and its AUROC [95% CI] on ``rows``
    (``activations``, e.g. test). ``names``: latent -> concept name, to say whether the best latent
    carries that annotation's name."""
    names = names or {}
    screen = validity_matrix(select_activations, latents, select_rows, annotations)
    acts = np.asarray(activations)
    group_array = np.asarray(list(groups)) if groups is not None else None
    note = BEST_LATENT_NOTE.format(select=select_split, split=split)
    out = []
    for name, spec in annotations.items():
        row = {"annotation": name, "column": spec["column"], "latent": None, "concept": None, "name_matches": None,
               f"{select_split}_auroc": None, "n": None, "n_present": None, "auroc": None, "low": None, "high": None,
               "note": note}
        column = screen[name] if name in screen else pd.Series(dtype=float)
        if column.isna().all() or not len(latents):
            row["note"] = f"the annotation has one value only on {select_split}"
            out.append(row)
            continue
        best = int(column.idxmax())
        concept = names.get(best)
        row.update(latent=best, concept=concept or f"latent {best}", name_matches=concept == name,
                   **{f"{select_split}_auroc": float(column.max())})
        known, present = _present(rows, spec)
        row.update(n=int(known.sum()), n_present=int((present & known).sum()))
        if present[known].all() or not present[known].any():
            row["note"] = f"the annotation has one value only on {split}"
            out.append(row)
            continue
        row.update(_auroc_ci(acts[known, best].astype(float), present[known], rows["image"].to_numpy()[known],
                             None if group_array is None else group_array[known], n_bootstrap, seed))
        out.append(row)
    return pd.DataFrame(out)


def name_by_annotations(activations: np.ndarray, latent_ids: Sequence[int], rows: pd.DataFrame,
                        annotations: dict[str, dict], groups: Sequence | None = None, min_auroc: float = 0.6,
                        n_bootstrap: int = 1000, seed: int = 0, split: str = "val") -> list[dict]:
    """Names for ``latent_ids`` from the annotations of a labelled split (``rows``, with their
    ``activations``), one name per latent and one latent per annotation.

    Every latent is scored against every annotation (:func:`validity_matrix`); the Hungarian
    algorithm (:func:`scipy.optimize.linear_sum_assignment`) pairs them to maximise the total AUROC
    over the pairs that reach ``min_auroc``; a pair keeps its name only when the grouped bootstrap
    95% CI of its AUROC on this split lies above 0.5. Per latent (in the order given):
    ``{latent, name, auroc, low, high, n, n_present, unnamed}`` (``name`` None with ``unnamed``
    saying why). The pairing is chosen on this split, so its AUROC here is optimistic: report
    validity on another split.
    """
    from scipy.optimize import linear_sum_assignment

    latent_ids = [int(j) for j in latent_ids]
    out = [{"latent": j, "name": None, "auroc": None, "low": None, "high": None, "n": None, "n_present": None,
            "unnamed": f"no annotation reaches AUROC {min_auroc:g} on {split}"} for j in latent_ids]
    if not latent_ids or not annotations:
        for entry in out:
            entry["unnamed"] = f"no concept annotation on {split}"
        return out
    matrix = validity_matrix(activations, latent_ids, rows, annotations)
    names = [n for n in matrix.columns if matrix[n].notna().any()]
    if not names:
        for entry in out:
            entry["unnamed"] = f"every annotation has one value only on {split}"
        return out
    scores = matrix[names].to_numpy(dtype=float)
    gain = np.where(np.nan_to_num(scores, nan=0.0) >= min_auroc, np.nan_to_num(scores, nan=0.0), 0.0)
    acts = np.asarray(activations)
    group_array = np.asarray(list(groups)) if groups is not None else None
    for r, c in zip(*linear_sum_assignment(-gain)):
        if gain[r, c] <= 0:
            continue
        name, entry = names[c], out[r]
        known, present = _present(rows, annotations[name])
        ci = _auroc_ci(acts[known, latent_ids[r]].astype(float), present[known], rows["image"].to_numpy()[known],
                       None if group_array is None else group_array[known], n_bootstrap, seed)
        entry.update(auroc=float(scores[r, c]), low=ci["low"], high=ci["high"], n=int(known.sum()),
                     n_present=int((present & known).sum()), candidate=name)
        if ci["low"] is not None and np.isfinite(ci["low"]) and ci["low"] > 0.5:
            entry.update(name=name, unnamed=None)
        elif ci["low"] is None or not np.isfinite(ci["low"]):
            entry["unnamed"] = f"{name!r}: AUROC {scores[r, c]:.3f} on {split}, no CI to check it (n_bootstrap 0)"
        else:
            entry["unnamed"] = (f"{name!r}: AUROC {scores[r, c]:.3f} on {split}, but its 95% CI reaches "
                                f"{ci['low']:.3f} (not above 0.5)")
    return out
