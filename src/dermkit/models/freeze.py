"""Freezing and partial unfreezing: the one place that knows a model's units in forward order.

A *unit* is a top-level child of a module, with timm's ``blocks`` / ``stages`` / ``layers``
sequences expanded, so "the last 7 units" of EfficientNet-Lite0 are its last blocks, ``conv_head``,
``bn2`` and the classifier. Supervised fine-tuning (``train_last``), contrastive training (the
image trunk's and the text tower's tails) and prompt learning (the tuned image tail) all use it.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from dermkit.errors import ConfigError

__all__ = ["HEAD_NAMES", "units", "freeze", "unfreeze", "train_only_last", "set_eval"]

HEAD_NAMES = ("global_pool", "classifier", "head", "fc", "head_drop")
_SEQUENCES = ("blocks", "stages", "layers")


def units(module: nn.Module, forward_chain: bool = False) -> list[nn.Module]:
    """The module's units in forward order.

    Default: every unit that has parameters, head included (what partial fine-tuning counts).
    ``forward_chain=True``: every unit up to the pooling/head, parameter-free ones included, so
    chaining them reproduces ``forward_features`` (prompt learning's cached prefix + tail).
    """
    out: list[nn.Module] = []
    for name, child in module.named_children():
        if forward_chain and name in HEAD_NAMES:
            break
        children = list(child) if name in _SEQUENCES and isinstance(child, nn.Sequential) else [child]
        for unit in children:
            if forward_chain or any(True for _ in unit.parameters()):
                out.append(unit)
    return out


def freeze(modules: nn.Module | Iterable[nn.Module]) -> None:
    for module in [modules] if isinstance(modules, nn.Module) else modules:
        for p in module.parameters():
            p.requires_grad_(False)


def unfreeze(modules: nn.Module | Iterable[nn.Module]) -> None:
    for module in [modules] if isinstance(modules, nn.Module) else modules:
        for p in module.parameters():
            p.requires_grad_(True)


def train_only_last(module: nn.Module, n: int | None, extra: Iterable[nn.Module] = (),
                    what: str = "train_last") -> list[nn.Module]:
    """Freeze every unit of ``module`` but the last ``n`` (``None``: all train); ``extra`` modules
    (a projection head) train too. Returns the frozen units, which the caller keeps in eval mode
    while training so frozen BatchNorm keeps its pretrained statistics (see :func:`set_eval`)."""
    all_units = units(module)
    if n is None:
        unfreeze(module)
        unfreeze(extra)
        return []
    if not 1 <= n <= len(all_units):
        raise ConfigError(f"{what} must be between 1 and {len(all_units)} for this model, got {n}")
    frozen = all_units[: len(all_units) - n]
    unfreeze(all_units[len(all_units) - n:])
    freeze(frozen)
    unfreeze(extra)
    return frozen


def set_eval(modules: Iterable[nn.Module]) -> None:
    """Put frozen units back in eval mode (call after ``model.train()``)."""
    for module in modules:
        module.eval()
