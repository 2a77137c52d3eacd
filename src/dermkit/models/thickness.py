"""Breslow thickness heads, their masked loss and their read-out, shared by every method that
predicts a thickness (fusion on cached embeddings, supervised fine-tuning of a timm network).

Two kinds of target (see :mod:`dermkit.models.fusion` for the maths):

``ordinal`` (K bins, Derm7pt's ``breslow_ordinal``)
    CORAL: one shared projection plus K-1 ordered thresholds give cumulative logits
    ``P(bin > k)``; the predicted bin is the number of thresholds passed.
``regression`` (mm)
    one linear output predicting the thickness standardised with the train mean/sd; predictions
    are clamped at 0 mm.

Rows without a target (NaN: every non-melanoma, melanomas without a measured thickness) add
nothing to the loss: :func:`thickness_loss` averages over the rows that have one.

A timm classifier gains a thickness head with :func:`attach_thickness_head`: the head reads the
same pooled pre-logits features as the class head, so the backbone is fine-tuned by both losses.
The head is an attribute of the timm model (``model.thickness_head``), so the parameter names of
the backbone and of its class head stay timm's own (``layer_decay`` groups them by timm's block
matcher; the thickness head falls in the last group, with the class head), and ``model(x)`` still
returns the class logits (ONNX export, Grad-CAM and the engine's validation need nothing else).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dermkit.errors import ConfigError
from dermkit.models.fusion import coral_loss, coral_predict

__all__ = [
    "THICKNESS_KINDS",
    "InferenceOutputs",
    "ThicknessHead",
    "attach_thickness_head",
    "forward_with_thickness",
    "thickness_loss",
    "thickness_values",
]

THICKNESS_KINDS = ("ordinal", "regression")


class ThicknessHead(nn.Module):
    """Features ``(B, D)`` -> CORAL cumulative logits ``(B, K-1)`` or a standardised thickness ``(B,)``."""

    def __init__(self, in_features: int, kind: str, bins: int = 4):
        super().__init__()
        if kind not in THICKNESS_KINDS:
            raise ValueError(f"thickness kind must be one of {THICKNESS_KINDS}, got {kind!r}")
        self.kind, self.bins = kind, bins
        if kind == "ordinal":
            self.proj = nn.Linear(in_features, 1, bias=False)
            self.bias = nn.Parameter(torch.linspace(1.0, -1.0, bins - 1))  # ordered thresholds, as FusionNet's
        else:
            self.proj = nn.Linear(in_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.proj(features)
        return out + self.bias if self.kind == "ordinal" else out[:, 0]


def attach_thickness_head(model: nn.Module, kind: str, bins: int = 4) -> ThicknessHead:
    """Give a timm classifier a thickness head on its pre-logits features (``model.thickness_head``)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not hasattr(model, "forward_head") or not isinstance(classifier, nn.Linear):
        raise ConfigError(f"a thickness head needs a timm classifier whose head is one linear layer; "
                          f"{type(model).__name__} has {type(classifier).__name__}. Choose another model "
                          "or remove thickness:")
    model.thickness_head = ThicknessHead(classifier.in_features, kind, bins)
    return model.thickness_head


def forward_with_thickness(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class logits, raw thickness output)`` of a classifier with a thickness head, in one pass."""
    features = model.forward_head(model.forward_features(pixels), pre_logits=True)
    return model.get_classifier()(features), model.thickness_head(features)


def thickness_loss(kind: str, raw: torch.Tensor, target: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
    """The thickness loss averaged over the rows with a target (``target`` NaN = none).

    Ordinal: CORAL's summed binary cross-entropies; regression: smooth-L1 on the thickness
    standardised with ``stats`` (train mean/sd in mm). A batch without any target gives 0 while
    keeping the head in the graph, so every parameter still gets a (zero) gradient.
    """
    has = torch.isfinite(target)
    if not bool(has.any()):
        return 0.0 * raw.sum()
    pred = raw[has].float()
    if kind == "ordinal":
        return coral_loss(pred, target[has].long())
    z = (target[has] - stats["mean"]) / stats["std"]
    return F.smooth_l1_loss(pred, z.float())


def thickness_values(kind: str | None, raw: np.ndarray | None,
                     stats: dict | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(point prediction, expected value): bins for ordinal (predicted, expected bin), mm for regression."""
    if kind is None or raw is None:
        return None, None
    if kind == "ordinal":
        pred, expected = coral_predict(torch.from_numpy(np.asarray(raw)))
        return pred.numpy().astype(float), expected.numpy().astype(float)
    mm = np.clip(np.asarray(raw) * stats["std"] + stats["mean"], 0.0, None)
    return mm, mm


class InferenceOutputs(nn.Module):
    """What a frozen classifier's inference returns per image, as one ``(N, C [+ T])`` array:
    the class probabilities, then (with a thickness head) the cumulative probabilities ``P(bin > k)``
    (ordinal, K-1 columns) or the standardised thickness (regression, 1 column). All of it is a
    quantity that may be averaged over test-time views."""

    def __init__(self, model: nn.Module, thickness_kind: str | None = None):
        super().__init__()
        self.model, self.thickness_kind = model, thickness_kind

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.thickness_kind is None:
            return torch.softmax(self.model(pixels).float(), dim=1)
        logits, raw = forward_with_thickness(self.model, pixels)
        thickness = torch.sigmoid(raw.float()) if self.thickness_kind == "ordinal" else raw.float()[:, None]
        return torch.cat([torch.softmax(logits.float(), dim=1), thickness], dim=1)
