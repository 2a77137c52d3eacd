"""Methods: each module registers one method (see :mod:`dermkit.methods.base` for the contract).

Importing this package imports every method module, which fills the registry.
"""

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
from dermkit.methods.base import METHODS, Method, Predictions, Predictor, get_method, list_methods, load_predictor

__all__ = ["METHODS", "Method", "Predictions", "Predictor", "get_method", "list_methods", "load_predictor"]
