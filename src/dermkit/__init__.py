"""dermkit: datasets, models, training and trustworthy evaluation for skin-lesion AI.

The public API (see :mod:`dermkit.api` and README.md): ``load_model``, ``load_predictor``,
``load_dataset``, ``evaluate``, ``run``, ``list_methods``. Heavy libraries load on first use.
"""

__version__ = "0.1.0"

from dermkit.api import Model, evaluate, list_methods, load_dataset, load_model, load_predictor, run  # noqa: E402

__all__ = ["Model", "evaluate", "list_methods", "load_dataset", "load_model", "load_predictor", "run", "__version__"]
