"""Losses: class weights and the weighted cross-entropy of every method that trains a classifier
head; the contrastive image-text loss and its gather of the global batch under torch.distributed
(as open_clip's ``loss.py`` holds ``ClipLoss`` with ``gather_features``)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dermkit.engine import distributed

__all__ = ["class_weights", "WeightedCrossEntropy", "classification_criterion", "soft_clip_loss", "gather_global",
           "global_clip_loss"]


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


# ------------------------------------------------------------------------------ contrastive image-text loss


def soft_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, caption_ids: torch.Tensor,
                   negative_emb: torch.Tensor | None = None, negative_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE; rows with identical captions share the target mass.

    ``negative_emb`` (hard-negative captions, with their caption ids) are extra columns of the
    image-to-text side only: each image must pick its caption among the batch's captions and
    negatives (a negative whose text is an image's own caption counts as that image's positive).
    """
    image = F.normalize(image_emb.float(), dim=-1)
    logits = scale * image @ F.normalize(text_emb.float(), dim=-1).T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    text_to_image = F.cross_entropy(logits.T, same / same.sum(dim=1, keepdim=True))  # ``same`` is symmetric
    if negative_emb is not None:
        logits = torch.cat([logits, scale * image @ F.normalize(negative_emb.float(), dim=-1).T], dim=1)
        same = torch.cat([same, (caption_ids[:, None] == negative_ids[None, :]).float()], dim=1)
    image_to_text = F.cross_entropy(logits, same / same.sum(dim=1, keepdim=True))
    return 0.5 * (image_to_text + text_to_image)


def gather_global(tensor: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """``tensor`` of every process concatenated in rank order: the global batch (itself on one process).

    ``with_grad``: the gather's backward sends each process the gradients the others computed for
    its rows (open_clip's ``gather_with_grad``); without it (ids, labels) nothing flows back.
    """
    if distributed.world_size() == 1:
        return tensor
    if with_grad:
        # Only under torchrun: torch builds without distributed support cannot import it.
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # recent torch points to a private replacement; this one still works
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
            return torch.cat(all_gather(tensor))
    parts = [torch.empty_like(tensor) for _ in range(distributed.world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def global_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                     caption_ids: torch.Tensor, negative_emb: torch.Tensor | None = None,
                     negative_ids: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`soft_clip_loss` over the global batch: every process's rows are negatives of every other's.

    Under torch.distributed the image and text embeddings of all processes are gathered with
    gradients, so every process holds the global loss and the gather's backward sums each row's
    gradient over the processes; with equal slices per process, DDP's average of those gradients
    is the one-process gradient.
    """
    if negative_emb is not None:
        negative_emb, negative_ids = gather_global(negative_emb), gather_global(negative_ids, with_grad=False)
    return soft_clip_loss(gather_global(image_emb), gather_global(text_emb), scale,
                          gather_global(caption_ids, with_grad=False), negative_emb, negative_ids)
