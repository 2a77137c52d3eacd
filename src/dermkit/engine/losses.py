"""Losses and class weights shared by every method that trains a classifier head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["class_weights", "WeightedCrossEntropy", "classification_criterion"]


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over the samples (classes absent -> 0)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing where each *sample* is weighted by its class weight.

    torch's ``CrossEntropyLoss(weight=..., label_smoothing=...)`` also multiplies the smoothing
    term by every class's weight, which with HAM10000's 60:1 imbalance pushes all predictions
    towards the rare classes and puts the starting loss far above log(C).

    ``target`` is class indices ``(N,)`` or soft targets ``(N, C)`` (rows summing to 1, e.g.
    mixup/cutmix's ``lam * onehot(a) + (1 - lam) * onehot(b)``, *before* smoothing): the smoothing
    is applied here, ``(1 - eps) * target + eps / C`` (what timm's ``mixup_target`` folds in), and
    a row's weight is its target's mix of class weights (``lam * w[a] + (1 - lam) * w[b]``). A
    one-hot soft target gives exactly the loss of its index.
    """

    def __init__(self, class_weights: torch.Tensor, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("class_weights", class_weights.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = target.is_floating_point()
        target = target.float() if soft else target
        per_sample = nn.functional.cross_entropy(logits.float(), target, reduction="none",
                                                 label_smoothing=self.label_smoothing)
        w = target @ self.class_weights if soft else self.class_weights[target]
        return (per_sample * w).sum() / w.sum().clamp_min(1e-12)


def classification_criterion(labels: np.ndarray, n_classes: int, imbalance: str,
                             label_smoothing: float = 0.0) -> WeightedCrossEntropy:
    """The loss for ``imbalance`` = ``weighted_loss`` (inverse-frequency) or anything else (uniform)."""
    weights = class_weights(labels, n_classes) if imbalance == "weighted_loss" else torch.ones(n_classes)
    return WeightedCrossEntropy(weights, label_smoothing)
