"""Frozen prefix / trained tail splits of a CLIP model's towers, so what does not learn runs once.

``trunk_split`` cuts a timm image tower (open_clip ``TimmModel``: ``visual.trunk`` + ``visual.head``)
at its first trained trunk unit; ``text_split`` cuts a Hugging Face BERT-style text tower (open_clip
``HFTextEncoder``: ``text.transformer`` + ``text.pooler`` + ``text.proj``) before its last trained
layers. In both, ``tail(prefix(x)) == tower(x)`` (tested), ``prefix`` runs without gradients and
``tail`` calls the tower's own modules, so training the tail trains the model itself.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dermkit.errors import ConfigError
from dermkit.models.freeze import units

__all__ = ["trunk_split", "text_split"]


def trunk_split(model: nn.Module, frozen: list[nn.Module]) -> tuple[Callable, Callable]:
    """(prefix, tail) of a CLIP model's timm image tower at its first unit not in ``frozen``:
    ``prefix(pixels)`` runs the frozen units, ``tail(x)`` the rest of the trunk, its pooling and
    the projection head, so ``tail(prefix(pixels)) == model.encode_image(pixels)``."""
    visual = getattr(model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    if trunk is None or not hasattr(trunk, "forward_head"):
        raise ConfigError(f"caching the image trunk needs a timm image tower (visual.trunk), not "
                          f"{type(visual).__name__}; set cache_views: 0")
    steps = units(trunk, forward_chain=True)
    frozen_ids = {id(m) for m in frozen}
    cut = next((k for k, m in enumerate(steps) if id(m) not in frozen_ids and any(True for _ in m.parameters())),
               len(steps))
    head_steps, tail_steps = steps[:cut], steps[cut:]

    @torch.no_grad()
    def prefix(pixels: torch.Tensor) -> torch.Tensor:
        x = pixels
        for step in head_steps:
            x = step(x)
        return x

    def tail(x: torch.Tensor) -> torch.Tensor:
        for step in tail_steps:
            x = step(x)
        return visual.head(trunk.forward_head(x))

    return prefix, tail


def text_split(model: nn.Module, trained_layers: int) -> tuple[Callable, Callable]:
    """(prefix, tail) of a CLIP model's Hugging Face text tower before its last ``trained_layers``.

    ``prefix(tokens) -> (hidden, mask)``: token embeddings through the frozen layers (``mask`` marks
    real tokens); ``tail(hidden, mask)`` the trained layers, the tower's pooler and projection, so
    ``tail(*prefix(tokens)) == model.encode_text(tokens)``. Positions where ``mask`` is 0 never
    reach a real token (attention and pooling are masked), so a batch may pad them with anything.
    """
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    text = getattr(model, "text", None)
    transformer = getattr(text, "transformer", None)
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if layers is None or not hasattr(transformer, "embeddings") or not hasattr(text, "pooler"):
        raise ConfigError(f"caching the text tower needs a Hugging Face BERT-style tower (text.transformer.encoder"
                          f".layer), not {type(text).__name__}; set cache_captions: 0")
    if not 0 <= trained_layers <= len(layers):
        raise ConfigError(f"train_text_last must be between 0 and {len(layers)} for this text tower")
    cut = len(layers) - trained_layers
    pad_id = text.config.pad_token_id

    def run(hidden: torch.Tensor, mask: torch.Tensor, layer_list) -> torch.Tensor:
        bias = create_bidirectional_mask(config=transformer.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in layer_list:
            out = layer(hidden, bias)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.no_grad()
    def prefix(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (tokens != pad_id).long()
        return run(transformer.embeddings(input_ids=tokens), mask, list(layers)[:cut]), mask

    def tail(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = run(hidden, mask, list(layers)[cut:])
        pooler = getattr(transformer, "pooler", None)  # what a CLS pooler with use_pooler_output reads
        out = BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=hidden,
                                                           pooler_output=pooler(hidden) if pooler is not None else None)
        return text.proj(text.pooler(out, mask))

    return prefix, tail
