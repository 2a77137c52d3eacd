"""The evaluation layer's predictions format, built from arrays.

One row per case: ``image``, ``target`` (when known), ``prediction`` (the argmax class),
``prob:<class>`` per class and, where the dataset has lesion/patient ids, ``group`` (the bootstrap
resamples whole groups).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["predictions_frame"]


def predictions_frame(
    images: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    targets: Sequence[str] | None = None,
    groups: Sequence | None = None,
) -> pd.DataFrame:
    """The predictions table: image, target, prediction, prob:<class>..., group."""
    proba = np.asarray(proba, dtype=np.float64).reshape(len(images), len(classes))
    frame = pd.DataFrame({"image": list(images)})
    if targets is not None:
        frame["target"] = list(targets)
    frame["prediction"] = [classes[i] for i in proba.argmax(axis=1)] if len(proba) else []
    for j, name in enumerate(classes):
        frame[f"prob:{name}"] = proba[:, j]
    if groups is not None:
        frame["group"] = list(groups)
    return frame
