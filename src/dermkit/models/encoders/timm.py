"""Image-only encoders: timm backbones (``timm:...`` specs) and dermkit classifier folders.

The embedding is the pooled pre-logits feature (``forward_head(forward_features(x), pre_logits=True)``).
A timm spec's weights come from :mod:`dermkit.models.timm_weights`, the resolver
``registry.create_classifier`` uses too, so both see the same weights for the same spec.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dermkit.models.encoders.base import EncoderWrapper
from dermkit.models.registry import load_classifier, model_spec
from dermkit.models.specs import ModelRef
from dermkit.models.timm_weights import create_timm_model

__all__ = ["load_timm", "load_dermkit_classifier"]


class _TimmEncoder(EncoderWrapper):
    """An image-only timm model; the embedding is the pooled pre-logits feature."""

    def _image_features(self, pixels):
        return self.module.forward_head(self.module.forward_features(pixels), pre_logits=True)


def load_dermkit_classifier(folder: Path, source: str) -> EncoderWrapper:
    """A dermkit classifier folder (``model.json`` + ``model.safetensors``) as an image encoder (pre-logits)."""
    from torchvision.transforms import v2

    from dermkit.data.torchdata import eval_transform  # imports torchvision, deferred like it

    model, card = load_classifier(folder)
    spec = model_spec(card["model"])
    size = int(card.get("image_size") or spec.default_size)
    mean, std = card.get("mean") or spec.mean, card.get("std") or spec.std
    # The classifier's own eval transform (squash-resize, no crop), so features match its training.
    transform = v2.Compose([v2.RGB(), v2.PILToTensor(), eval_transform(size, mean, std)])
    name = folder.name if folder.name != "model" else f"{folder.parent.name}/{folder.name}"
    return _TimmEncoder(
        model, name=name, source=source, kind="dermkit_classifier", preprocess=transform,
        image_size=size, mean=mean, std=std, embed_dim=model.num_features,
        arch={"model": card["model"], "num_classes": len(card["classes"])},
    )


def load_timm(ref: ModelRef, source: str, weights: str | os.PathLike | None = None) -> EncoderWrapper:
    """A headless timm backbone for a ``timm:`` ref, its weights from :func:`create_timm_model`.

    ``weights`` (a safetensors file of that architecture) replaces the ref's own weights. The
    preprocessing is timm's eval transform for the ref's pretrained config (its tag, or timm's
    default).
    """
    from timm.data import create_transform, resolve_model_data_config
    from torchvision.transforms import v2

    # A frozen encoder is identified by its weights: `timm:ARCH@random` is the *same* random init on
    # every load (seeded, outside the caller's RNG stream), so features are cached and a probe or
    # zero-shot head trained on it loads again. Classifiers trained from scratch are seeded by their run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, resolved = create_timm_model(ref, weights=weights, num_classes=0)
    data_cfg = resolve_model_data_config(model)
    # timm's eval transform (resize to size / crop_pct, center crop), after a conversion to RGB
    # that timm's own pipeline leaves to the caller (grey or RGBA files would break it).
    transform = v2.Compose([v2.RGB(), create_transform(**data_cfg)])
    return _TimmEncoder(
        model, name=str(ref), source=source, kind="timm", preprocess=transform,
        image_size=tuple(data_cfg["input_size"][-2:]), mean=data_cfg["mean"], std=data_cfg["std"],
        embed_dim=model.num_features, arch={"arch": ref.arch, "weights": resolved.description},
    )
