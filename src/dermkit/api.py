"""The public Python API: what the README's examples use, and nothing else.

    import dermkit

    model = dermkit.load_model("hf-hub:redlessone/PanDerm2")       # any model spec (see dermkit.models.specs)
    model.zero_shot("lesion.jpg", ["melanoma", "nevus"])           # {"melanoma": 0.83, "nevus": 0.17}
    model.encode_image(["a.jpg", "b.jpg"]), model.encode_text(["a melanoma"])

    summary = dermkit.run({"method": "linear_probe", "model": "timm:tf_efficientnet_lite0", "data": "ph2"},
                          out="runs/probe_ph2")
    predictor = dermkit.load_predictor("runs/probe_ph2/model")
    predictor.predict(["lesion.jpg"]).proba                         # (N, C) probabilities
    report = dermkit.evaluate(predictor.predict_split(dermkit.load_dataset("ph2"), "test"), out="runs/eval")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["Model", "load_model", "load_predictor", "load_dataset", "evaluate", "run", "list_methods"]

# ``import dermkit`` loads this module: every dermkit module below is imported inside the function
# that needs it, so torch, the method registry and the dataset layer load on first use only.


class Model:
    """An image (or image-text) encoder with plain-Python helpers; ``.encoder`` is the full wrapper."""

    def __init__(self, encoder):
        self.encoder = encoder

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def has_text(self) -> bool:
        return bool(self.encoder.has_text)

    def _pixels(self, images) -> Any:
        import torch

        from dermkit.data.images import open_image

        if isinstance(images, torch.Tensor):
            return images if images.ndim == 4 else images[None]
        items = [images] if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert") else list(images)
        return torch.stack([self.encoder.preprocess(i if hasattr(i, "convert") else open_image(Path(i)))
                            for i in items])

    def encode_image(self, images) -> np.ndarray:
        """L2-normalised embeddings (N, D) of image paths, PIL images or preprocessed pixels."""
        import torch

        with torch.inference_mode():
            return self.encoder.encode_image(self._pixels(images), normalize=True).cpu().numpy()

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings (N, D) (vision-language models only)."""
        from dermkit.models.text import encode_texts

        return encode_texts(self.encoder, [texts] if isinstance(texts, str) else list(texts)).numpy()

    def zero_shot(self, images, class_names: Sequence[str], templates: Sequence[str] = ("{}",)):
        """Class probabilities for one image (a dict) or several (a list of dicts).

        Each class is the mean embedding of its name in every template (``"a dermoscopic image of
        {}."``...); probabilities are the softmax of the model's ``logit_scale`` x cosine similarity.
        """
        from dermkit.models.text import class_embeddings, zeroshot_proba

        names = list(class_names)
        prompts = {c: [t.format(c) for t in templates] for c in names}
        proba = zeroshot_proba(self.encode_image(images), class_embeddings(self.encoder, prompts, names),
                               self.encoder.logit_scale)
        rows = [{c: float(p) for c, p in zip(names, row)} for row in proba]
        single = isinstance(images, (str, os.PathLike)) or hasattr(images, "convert")
        return rows[0] if single else rows

    def __repr__(self) -> str:
        return f"Model({self.encoder!r})"


def load_model(spec: str | os.PathLike, device: str = "cpu") -> Model:
    """Any encoder: ``timm:ARCH[.TAG][@random]``, ``hf-hub:ORG/NAME``, a model folder, ``openclip:ARCH``."""
    from dermkit.models.encoders import load_encoder

    return Model(load_encoder(spec, device=device))


def load_predictor(folder: str | os.PathLike, device: str = "auto"):
    """The :class:`~dermkit.methods.base.Predictor` of any dermkit model folder (``RUN/model``)."""
    from dermkit import methods

    return methods.load_predictor(folder, device=device)


def load_dataset(name_or_folder: str | os.PathLike, task: str | None = None):
    """A dataset card (``ham10000`` = ``$DERMKIT_DATA/ham10000``, or any folder with metadata.csv),
    relabelled for ``task`` (``melanoma_vs_rest``, ``binary:CLASS``) when given."""
    from dermkit.data.tasks import derive_task

    return derive_task(name_or_folder, task)


def evaluate(predictions: pd.DataFrame | str | os.PathLike, out: str | os.PathLike | None = None,
             n_bootstrap: int = 1000, seed: int = 0, title: str | None = None, allow_duplicates: bool = False):
    """Metrics with bootstrap CIs for a predictions table (or CSV); saved as a report in ``out``.

    ``report.warnings`` lists what a reader must know (e.g. classes absent from the targets)."""
    from dermkit.evaluate import evaluate_and_save

    return evaluate_and_save(predictions, out=out, n_bootstrap=n_bootstrap, seed=seed, title=title,
                             allow_duplicates=allow_duplicates)


def run(config: dict[str, Any] | str | os.PathLike, out: str | os.PathLike, resume: bool = False,
        force: bool = False, progress: bool = True, allow_config_change: bool = False) -> dict[str, Any]:
    """Run one experiment config (a dict with ``method:`` or a YAML path); returns its summary.
    ``resume`` refuses a config that differs from the run's recorded one unless ``allow_config_change``."""
    from dermkit.experiment import load_config, run_experiment

    raw = dict(config) if isinstance(config, dict) else load_config(config)
    return run_experiment(raw, out, resume=resume, progress=progress, force=force,
                          allow_config_change=allow_config_change)


def list_methods() -> list[str]:
    """Names of the registered methods (what ``method:`` accepts)."""
    from dermkit import methods

    return methods.list_methods()
