"""The robustness stress test of any predictor: its metrics on a split and on transformed copies of it.

:mod:`dermkit.data.stress` makes the copies (seeded by the image's path in the dataset, so every
model compared sees the same copy), :mod:`dermkit.evaluate.stress` turns the probabilities into
the table (paired-bootstrap differences to clean, flip rate), the summary and the plot; this module
runs the predictor in between, method-agnostic, through ``predict_paths``.

Nothing is written to the dataset: each condition's copies are made by two threads into a
temporary folder (PNG, fast compression, at the image's own size), predicted, and deleted before
the next condition; a predictor that caches image features caches the copies' features there too
(:func:`~dermkit.methods.base.scratch_feature_cache`). The clean row is the evaluation's own
predictions, so it equals ``dermkit evaluate`` on the same split exactly.
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dermkit.data.images import open_image
from dermkit.data.stress import apply_transform, parse_stress, transform_families
from dermkit.errors import ModelError
from dermkit.evaluate.predictions import prediction_arrays
from dermkit.evaluate.stress import stress_summary, stress_table
from dermkit.methods.base import Predictor, scratch_feature_cache

__all__ = ["run_stress", "check_image_input"]


def check_image_input(predictor: Predictor) -> None:
    """Refuse a model that reads no image (a metadata-only fusion model): nothing to transform."""
    if hasattr(predictor, "main_view") and predictor.main_view is None:
        raise ModelError(f"--stress: this {predictor.method} model reads no image (metadata only), so there is "
                         "nothing to transform; stress-test a model with an image input")


def _write_copy(source: Path, target: Path, name: str, severity: int, seed: int, key: str) -> Path:
    apply_transform(open_image(source), name, severity, seed=seed, key=key).save(target, compress_level=1)
    return target


def run_stress(predictor: Predictor, card, predictions: pd.DataFrame, plan: str | Sequence = "quick",
               seed: int = 0, n_bootstrap: int = 1000, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Stress-test ``predictor`` on the images of ``predictions`` (a validated predictions table of
    ``card``: image relative to the card, target, prob:<class>, group): returns
    (:func:`~dermkit.evaluate.stress.stress_table`, :func:`~dermkit.evaluate.stress.stress_summary`)."""
    from tqdm.auto import tqdm

    check_image_input(predictor)
    conditions = parse_stress(plan)
    classes, y_true, clean, _ = prediction_arrays(predictions)
    if list(classes) != list(predictor.classes):
        raise ModelError(f"--stress: the predictions' classes {classes} are not the model's {predictor.classes}")
    keys = predictions["image"].astype(str).tolist()
    sources = [card.image_path(key) for key in keys]
    groups = predictions["group"].to_numpy() if "group" in predictions.columns else None
    probabilities = {}
    with tempfile.TemporaryDirectory(prefix="dermkit-stress-") as tmp, scratch_feature_cache(predictor, tmp), \
            ThreadPoolExecutor(max_workers=2) as pool:
        for name, severity in tqdm(conditions, desc="stress test", disable=not progress):
            folder = Path(tmp) / f"{name}-{severity}"
            folder.mkdir()
            targets = [folder / f"{i}.png" for i in range(len(keys))]
            files = list(pool.map(_write_copy, sources, targets, [name] * len(keys), [severity] * len(keys),
                                  [seed] * len(keys), keys))
            probabilities[(name, severity)] = np.asarray(predictor.predict_paths(files), dtype=float)
            shutil.rmtree(folder)
    table = stress_table(y_true, clean, probabilities, families=transform_families(), classes=list(classes),
                         groups=groups, n_bootstrap=n_bootstrap, seed=seed)
    return table, stress_summary(table)
