"""An image model's preprocessing as data: steps that another program can follow without dermkit.

An exported model (``dermkit export``) carries its preprocessing in this form, so a deployment that
has only ONNX Runtime, Pillow and NumPy feeds the graph the pixels dermkit's own predictor sees.
:func:`describe_transform` turns a torchvision / open_clip / timm eval transform into the steps;
:func:`apply_steps` is the reference implementation (what ``dermkit export`` checks the exported
graph with, on sample images, against the predictor). Each step is a dict with an ``op``:

``shrink``         shorter side above ``max_side``: scale by ``r = max_side / shorter side`` to
                   ``(round(w * r), round(h * r))`` (Python's round), Pillow's ``interpolation``
``resize``         to exactly ``size`` = [height, width] (the whole image, no crop)
``resize_shorter`` shorter side to ``size``, the longer to ``int(size * longer / shorter)`` (truncated)
``center_crop``    ``size`` = [height, width] from offset ``round((H - h) / 2)``, ``round((W - w) / 2)``
``to_float``       ``(3, H, W)`` float32 in [0, 1]: the 8-bit values divided by 255
``normalize``      ``(x - mean) / std`` per channel

A resize is skipped when the image already has its output size. ``kernel`` says which
implementation resamples: ``PIL`` (``Image.resize`` with ``interpolation``, antialiased when
shrinking) or ``torchvision`` (``torchvision.transforms.v2.functional.resize`` of the uint8
``(3, H, W)`` tensor with ``antialias=True``; Pillow's own ``BILINEAR`` differs from it by one grey
level on a few per cent of the pixels).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from dermkit.errors import ModelError

__all__ = ["describe_transform", "apply_steps", "steps_text", "shrink_step", "final_size"]

_PIL_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                 "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
_SKIPPED = {"RGB", "MaybeConvertMode", "_convert_to_rgb", "PILToTensor", "ToImage", "MaybePILToTensor"}


def shrink_step(max_side: int) -> dict[str, Any]:
    """The step of dermkit's image decoding cache (``ImageDataset(cache_side=...)``)."""
    return {"op": "shrink", "max_side": int(max_side), "interpolation": "bicubic", "kernel": "PIL"}


def _flatten(transform) -> list:
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return [t for item in inner for t in _flatten(item)]
    return [transform]


def _size(value) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    value = [int(v) for v in value]
    return value * 2 if len(value) == 1 else value


def _interpolation(t) -> str:
    mode = getattr(t, "interpolation", None)
    name = str(getattr(mode, "value", mode)).lower()
    if name not in _PIL_RESAMPLE:
        raise ModelError(f"cannot describe the resize {t!r}: interpolation {mode!r} has no Pillow equivalent")
    return name


def describe_transform(transform: Callable, tensor_input: bool = False) -> list[dict[str, Any]]:
    """The steps of an eval transform (a torchvision v1/v2 Compose, open_clip's or timm's), applied
    to a decoded RGB image (PIL; ``tensor_input``: its uint8 ``(3, H, W)`` tensor). A transform
    that is not one of the known kinds is a :class:`ModelError` naming it: it cannot be described."""
    steps: list[dict[str, Any]] = []
    tensor, floating = tensor_input, False
    for t in _flatten(transform):
        name = getattr(t, "__name__", None) or type(t).__name__
        if name in _SKIPPED:  # RGB conversion (the decoded image is RGB already) and PIL -> uint8 tensor
            tensor = tensor or name in ("PILToTensor", "ToImage", "MaybePILToTensor")
        elif name in ("ToTensor", "MaybeToTensor") or (name == "ToDtype" and getattr(t, "scale", False)):
            steps.append({"op": "to_float"})
            floating = True
        elif name == "Resize" and not floating:
            if getattr(t, "max_size", None) is not None:
                raise ModelError(f"cannot describe the resize {t!r}: max_size is not supported")
            if tensor and getattr(t, "antialias", True) is not True:
                raise ModelError(f"cannot describe the resize {t!r}: a tensor resize without antialiasing")
            size = t.size
            shorter = isinstance(size, int) or len(size) == 1
            steps.append({"op": "resize_shorter" if shorter else "resize",
                          "size": int(size if isinstance(size, int) else size[0]) if shorter else _size(size),
                          "interpolation": _interpolation(t), "kernel": "torchvision" if tensor else "PIL"})
        elif name == "CenterCrop" and not floating:
            steps.append({"op": "center_crop", "size": _size(t.size)})
        elif name == "Normalize" and floating:
            steps.append({"op": "normalize", "mean": [float(m) for m in np.asarray(t.mean).reshape(-1)],
                          "std": [float(s) for s in np.asarray(t.std).reshape(-1)]})
        else:
            raise ModelError(f"cannot describe the preprocessing step {t!r} as data (known: Resize, CenterCrop, "
                             "ToTensor, Normalize and RGB conversions)")
    if not floating or steps[-1]["op"] not in ("normalize", "to_float"):
        raise ModelError(f"the preprocessing {transform!r} does not end in float pixels (ToTensor + Normalize)")
    return steps


def _resized(size: tuple[int, int], step: dict) -> tuple[int, int]:
    """(width, height) after a resize step of an image of ``size`` (width, height)."""
    w, h = size
    if step["op"] == "resize":
        return step["size"][1], step["size"][0]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = step["size"], int(step["size"] * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def final_size(steps: Sequence[dict], size: tuple[int, int] = (1000, 750)) -> tuple[int, int]:
    """(height, width) of the pixels the steps make from an image of ``size`` (width, height)."""
    for step in steps:
        if step["op"] in ("resize", "resize_shorter"):
            size = _resized(size, step)
        elif step["op"] == "center_crop":
            size = (step["size"][1], step["size"][0])
        elif step["op"] == "shrink" and min(size) > step["max_side"]:
            r = step["max_side"] / min(size)
            size = (max(1, round(size[0] * r)), max(1, round(size[1] * r)))
    return size[1], size[0]


def apply_steps(image: Image.Image, steps: Sequence[dict]) -> np.ndarray:
    """The pixels (float32 ``(3, H, W)``) the steps make from a decoded image (the reference
    implementation: Pillow and NumPy, torchvision only for a ``kernel: torchvision`` resize)."""
    img, x = image.convert("RGB"), None
    for step in steps:
        op = step["op"]
        if op == "shrink":
            if min(img.size) > step["max_side"]:
                r = step["max_side"] / min(img.size)
                img = img.resize((max(1, round(img.width * r)), max(1, round(img.height * r))),
                                 resample=_PIL_RESAMPLE[step["interpolation"]])
        elif op in ("resize", "resize_shorter"):
            target = _resized(img.size, step)
            if target != img.size:
                img = _resize(img, target, step)
        elif op == "center_crop":
            h, w = step["size"]
            if h > img.height or w > img.width:
                raise ModelError(f"center_crop {h}x{w} is larger than the {img.height}x{img.width} image")
            top, left = int(round((img.height - h) / 2.0)), int(round((img.width - w) / 2.0))
            img = img.crop((left, top, left + w, top + h))
        elif op == "to_float":
            x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        elif op == "normalize":
            mean = np.asarray(step["mean"], dtype=np.float32)[:, None, None]
            std = np.asarray(step["std"], dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        else:
            raise ModelError(f"unknown preprocessing step {op!r}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _resize(img: Image.Image, target: tuple[int, int], step: dict) -> Image.Image:
    if step.get("kernel", "PIL") == "PIL":
        return img.resize(target, resample=_PIL_RESAMPLE[step["interpolation"]])
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    tensor = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())
    out = TF.resize(tensor, [target[1], target[0]], interpolation=InterpolationMode(step["interpolation"]),
                    antialias=True)
    return Image.fromarray(out.permute(1, 2, 0).numpy(), "RGB")


def steps_text(steps: Sequence[dict]) -> str:
    """The resize rule of the steps in one sentence (the ``resize`` metadata of an exported model)."""
    parts = []
    for step in steps:
        op, kernel = step["op"], step.get("kernel", "PIL")
        how = f"{step.get('interpolation')}" + (" (torchvision's antialiased uint8 kernel)" if kernel == "torchvision"
                                                else " (Pillow)")
        if op == "shrink":
            parts.append(f"an image whose shorter side exceeds {step['max_side']} px is first shrunk to it, {how}")
        elif op == "resize":
            parts.append(f"the whole image is resized to {step['size'][0]}x{step['size'][1]} (height x width, no "
                         f"crop, aspect ratio not kept), {how}")
        elif op == "resize_shorter":
            parts.append(f"the shorter side is resized to {step['size']} px (aspect ratio kept), {how}")
        elif op == "center_crop":
            parts.append(f"the centre {step['size'][0]}x{step['size'][1]} is cropped")
    return "; ".join(parts) + "."
