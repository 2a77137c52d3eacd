"""Methods: each module registers one method (see :mod:`dermkit.methods.base` for the contract).

Importing this package imports every method module, which fills the registry; the lookups that
need a full registry (``get_method``, ``list_methods``, ``load_predictor``) live here, so no
method module depends on the others through ``base``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dermkit.errors import ConfigError, ModelError
from dermkit.methods import (  # noqa: F401  (each module registers its method)
    cbm,
    contrastive,
    fusion,
    linear_probe,
    prompt_learning,
    sae,
    supervised,
    vqa,
    zeroshot,
)
from dermkit.methods.base import METHODS, Method, Predictions, Predictor, Recalibrated
from dermkit.methods.ood import attach_detector
from dermkit.models.checkpoint import read_model_card
from dermkit.models.integrity import require_fields

__all__ = ["METHODS", "Method", "Predictions", "Predictor", "get_method", "list_methods", "load_predictor"]


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str | None, where: str = "config") -> Method:
    if name not in METHODS:
        raise ConfigError(f"{where}: method must be one of {', '.join(sorted(METHODS))}, got {name!r}")
    return METHODS[name]


def load_predictor(folder: str | os.PathLike, device: str = "auto") -> Predictor:
    """The predictor of any dermkit model folder (dispatch on ``model.json["method"]``), with the
    folder's out-of-distribution detector when it has one (``predictor.ood``; else ``ood_note``)."""
    card = read_model_card(folder)  # schema and integrity record checked
    method = card.get("method", "supervised")
    if method not in METHODS:
        raise ModelError(f"{folder}: model.json names method {method!r}, unknown to this dermkit "
                         f"({', '.join(sorted(METHODS))}); upgrade dermkit")
    require_fields(card, METHODS[method].card_fields, Path(folder) / "model.json", method)
    try:
        predictor = METHODS[method].load(folder, device=device)
    except ModelError as exc:  # a problem found while building the model: say which folder
        raise (exc if str(folder) in str(exc) else ModelError(f"{folder}: {exc}")) from None
    temperature, offsets = card.get("temperature"), card.get("class_offsets")
    if temperature is not None or offsets is not None:
        try:
            predictor = Recalibrated(predictor, temperature, offsets)
        except (ModelError, TypeError, ValueError) as exc:
            raise ModelError(f"{Path(folder) / 'model.json'}: {exc}") from None
    return attach_detector(predictor, folder)
