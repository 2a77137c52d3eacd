"""Turn a trained model folder into class probabilities, for files or whole dataset splits."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from dermkit.data.torchdata import ImageDataset, eval_transform
from dermkit.engine.loop import resolve_device, resolve_precision
from dermkit.models.checkpoint import load_model


@torch.inference_mode()
def predict_proba(
    model: torch.nn.Module,
    dataset: ImageDataset,
    batch_size: int = 64,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "predicting",
) -> np.ndarray:
    """Softmax probabilities (N, C) in dataset order; bf16 autocast where requested."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    out = []
    for x, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float64)
    return torch.cat(out).double().numpy()


def predictions_frame(
    images: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    targets: Sequence[str] | None = None,
    groups: Sequence | None = None,
) -> pd.DataFrame:
    """The evaluation layer's predictions format: image, target, prediction, prob:<class>..."""
    frame = pd.DataFrame({"image": list(images)})
    if targets is not None:
        frame["target"] = list(targets)
    frame["prediction"] = [classes[i] for i in proba.argmax(axis=1)]
    for j, name in enumerate(classes):
        frame[f"prob:{name}"] = proba[:, j]
    if groups is not None:
        frame["group"] = list(groups)
    return frame


class Predictor:
    """A trained classifier loaded from its model folder (safetensors + model.json)."""

    def __init__(self, model: torch.nn.Module, card: dict, device: str = "auto", precision: str = "auto"):
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        self.card = card
        self.classes: list[str] = list(card["classes"])
        self.image_size: int = int(card["image_size"])
        self.transform = eval_transform(self.image_size, card["mean"], card["std"])

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", precision: str = "auto"):
        """The predictor for any dermkit model folder.

        Folders written by other methods (``"method"`` in model.json: prompt_learning, fusion...)
        are loaded by that method's ``load_predictor(folder, device=...)``. Every predictor has
        ``classes``, ``card``, ``predict_paths(paths) -> (N, C)`` and ``predict_split(card, split)``;
        one that predicts more than a class (a thickness, the modalities it used) also has
        ``predict_details(paths) -> list[dict]`` (one dict per image, shown by ``dermkit predict``).
        """
        import importlib

        from dermkit.models.checkpoint import read_model_card

        method = read_model_card(folder).get("method", "supervised")
        if method != "supervised":
            from dermkit.experiment import METHODS

            if method not in METHODS:
                from dermkit.errors import ModelError

                raise ModelError(f"{folder}: model.json names method {method!r}, unknown to this dermkit "
                                 f"({', '.join(METHODS)}); upgrade dermkit")
            return importlib.import_module(METHODS[method]).load_predictor(folder, device=device)
        model, card = load_model(folder)
        return cls(model, card, device=device, precision=precision)

    def dataset(self, paths: Sequence[Path], progress: bool = False) -> ImageDataset:
        return ImageDataset(paths, None, self.transform, cache_side=int(self.image_size * 1.15), progress=progress)

    def predict_paths(self, paths: Sequence[Path], progress: bool = False) -> np.ndarray:
        return predict_proba(self.model, self.dataset(paths, progress), device=self.device, amp_dtype=self.amp_dtype, progress=progress)

    def predict_split(self, card, split: str, progress: bool = True) -> pd.DataFrame:
        """Predictions for one split of a dataset card, in the evaluation layer's format."""
        from dermkit.errors import DataError

        rows = card.rows(split)
        unknown = sorted(set(rows["diagnosis"]) - set(self.classes))
        if unknown:
            raise DataError(
                f"split {split!r} of {card.name} has classes the model was not trained on: {unknown}. "
                f"The model knows {self.classes}."
            )
        paths = [card.image_path(p) for p in rows["image"]]
        proba = self.predict_paths(paths, progress=progress)
        groups = None
        if card.group_column:
            # A row without a group id is its own group (never pooled into one "nan" group).
            col = rows[card.group_column]
            groups = col.where(col.notna(), rows["image"]).astype(str).tolist()
        return predictions_frame(rows["image"].tolist(), proba, self.classes, rows["diagnosis"].tolist(), groups)
