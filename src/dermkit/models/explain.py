"""Visual explanations: Grad-CAM saliency maps of image classifiers, and their overlay PNG.

Grad-CAM comes from ``pytorch-grad-cam`` (``import pytorch_grad_cam``), not from code written
here: it is the maintained reference implementation (hooks, gradient weighting, ReLU,
normalisation and upsampling, ViT token reshaping, released on PyPI), works on any
``nn.Module`` that maps pixels to logits, and needs nothing but torch + OpenCV. captum's
``LayerGradCam`` would do the same, but returns raw layer-sized maps that we would then have to
upsample and normalise by hand, and needs an explicit layer callback for ViT tokens.

A predictor exposes what Grad-CAM needs through ``Predictor.saliency_module()`` (see
:mod:`dermkit.methods.base`), a :class:`SaliencyModule`:

* ``module``: preprocessed pixels ``(N, 3, H, W)`` -> logits ``(N, C)`` (differentiable),
* ``preprocess``: PIL image -> ``(3, H, W)`` float tensor (the predictor's own eval transform),
* ``target_layers`` and ``reshape_transform`` (token -> map for ViTs), usually from
  :func:`target_layers_for`, which knows timm CNNs (the last layer with a spatial output),
  timm ViTs (``blocks[-1].norm1``) and open_clip ViTs (``transformer.resblocks[-1].ln_1``).

:func:`saliency_map` returns a map in [0, 1] at the image's own size; :func:`overlay_png` blends
it over the image (the PNG ``dermkit predict --explain`` and ``POST /api/predict?explain=1``
return).
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from dermkit.errors import ModelError
from dermkit.io import atomic_path

__all__ = ["SaliencyModule", "target_layers_for", "tokens_to_map", "saliency_map", "overlay", "overlay_png",
           "save_overlay", "image_tower", "EncoderLogits", "encoder_saliency"]

# pytorch-grad-cam attaches hooks to the module for the length of one call: one call at a time
# per process keeps two threads from seeing each other's activations.
_LOCK = threading.Lock()


@dataclass
class SaliencyModule:
    """What Grad-CAM needs from a predictor (see the module docstring)."""

    module: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    target_layers: list[nn.Module]
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    kind: str = "cnn"  # cnn | vit (what the target layer is, for the API's description)


class tokens_to_map:
    """ViT tokens ``(N, prefix + gh*gw, D)`` (or ``(L, N, D)``) -> a ``(N, D, gh, gw)`` feature map."""

    def __init__(self, grid: Sequence[int], prefix: int, batch_first: bool = True):
        self.grid = (int(grid[0]), int(grid[1]))
        self.prefix = int(prefix)
        self.batch_first = batch_first

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        tokens = tokens[:, self.prefix:, :]
        n, length, dim = tokens.shape
        gh, gw = self.grid
        if length != gh * gw:
            raise ModelError(f"Grad-CAM: {length} patch tokens do not form the {gh}x{gw} grid of this ViT")
        return tokens.reshape(n, gh, gw, dim).permute(0, 3, 1, 2)


def image_tower(enc) -> nn.Module | None:
    """The image tower of a dermkit encoder wrapper (open_clip ``visual``, or the timm model itself)."""
    module = getattr(enc, "module", None)
    if module is None:
        return None
    if enc.kind == "open_clip":
        return getattr(module, "visual", None)
    if enc.kind in ("timm", "dermkit_classifier"):
        return module
    return None


class EncoderLogits(nn.Module):
    """pixels -> ``head(L2-normalised embedding)``: a frozen encoder wrapper plus a torch head as one module.

    ``head`` maps ``(N, D)`` embeddings to ``(N, C)`` logits (a zero-shot class-embedding head,
    a linear probe, learned prompts' text features). The image tower is registered as a
    submodule, so Grad-CAM's hooks and ``parameters()`` see it.
    """

    def __init__(self, enc, head: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.tower = image_tower(enc)
        object.__setattr__(self, "enc", enc)  # not registered twice: the tower above is its module
        object.__setattr__(self, "head", head)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc.encode_image(pixels, normalize=True).float())


def encoder_saliency(enc, head: Callable[[torch.Tensor], torch.Tensor]) -> SaliencyModule | None:
    """The :class:`SaliencyModule` of a head on a dermkit encoder wrapper; None for towers Grad-CAM
    cannot read here (a transformers CLIP/SigLIP tower, a hub model of unknown layout)."""
    tower = image_tower(enc)
    if tower is None:
        return None
    module = EncoderLogits(enc, head)
    size = enc.image_size if isinstance(enc.image_size, int) else enc.image_size[::-1]
    size = (size, size) if isinstance(size, int) else size
    example = enc.preprocess(Image.new("RGB", tuple(size), (128, 128, 128))).unsqueeze(0)
    layers, reshape, kind = target_layers_for(tower, example, lambda x: enc.encode_image(x))
    return SaliencyModule(module, enc.preprocess, layers, reshape, kind)


def target_layers_for(tower: nn.Module, example: torch.Tensor | None = None,
                      run: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """``(target_layers, reshape_transform, kind)`` for an image tower.

    ViTs: the first norm of the last block (its patch tokens still carry a gradient when the
    class token is pooled; the final norm's do not). CNNs: the last module whose output is a
    spatial map (``N, C, H, W`` with ``H*W > 1``), found by running ``example`` through ``run``
    (default: the tower) once: ``layer4`` of a ResNet, ``bn2`` of an EfficientNet.
    """
    # open_clip VisionTransformer
    transformer = getattr(tower, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks") and hasattr(tower, "grid_size"):
        block = transformer.resblocks[-1]
        prefix = 1 if getattr(tower, "class_embedding", None) is not None else 0
        return ([getattr(block, "ln_1", block)],
                tokens_to_map(tower.grid_size, prefix, getattr(transformer, "batch_first", True)), "vit")
    # timm VisionTransformer (and relatives with blocks + patch_embed)
    if hasattr(tower, "blocks") and hasattr(tower, "patch_embed") and hasattr(tower, "num_prefix_tokens"):
        block = tower.blocks[-1]
        grid = getattr(tower.patch_embed, "grid_size", None)
        if grid is None:
            raise ModelError(f"Grad-CAM: cannot tell the patch grid of {type(tower).__name__}")
        return [getattr(block, "norm1", block)], tokens_to_map(grid, tower.num_prefix_tokens), "vit"
    return [_last_spatial_layer(tower, example, run)], None, "cnn"


def _last_spatial_layer(tower: nn.Module, example: torch.Tensor | None, run) -> nn.Module:
    if example is None:
        size = _input_size(tower)
        example = torch.zeros(1, 3, size, size)
    order: list[nn.Module] = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            order.append(module)

    handles = [m.register_forward_hook(hook) for m in tower.modules() if m is not tower]
    try:
        with torch.no_grad():
            (run or tower)(example)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ModelError(f"Grad-CAM: {type(tower).__name__} has no layer with a spatial output at this input size "
                         f"({tuple(example.shape[-2:])}); use a larger image_size")
    return order[-1]  # forward hooks fire when a module finishes: a stage is listed after its children


def _input_size(tower: nn.Module) -> int:
    cfg = getattr(tower, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[-1]) if size else 224


def saliency_map(saliency: SaliencyModule, image: Image.Image, target: int | None = None) -> tuple[np.ndarray, int]:
    """``(map, target)``: Grad-CAM of class ``target`` (default: the top class) for one image.

    The map is float32 in [0, 1] at the image's size (``(height, width)``).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pixels = saliency.preprocess(image.convert("RGB")).unsqueeze(0).float()
    module = saliency.module
    _drop_inference_tensors(module)
    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        if param is not None:
            pixels = pixels.to(param.device)
        with _LOCK, torch.inference_mode(False), torch.enable_grad():
            if target is None:
                with torch.no_grad():
                    target = int(module(pixels).float().argmax(dim=1)[0])
            # Frozen weights (requires_grad False) would leave the activations without a gradient.
            pixels = pixels.clone().requires_grad_(True)
            with GradCAM(model=module, target_layers=list(saliency.target_layers),
                         reshape_transform=saliency.reshape_transform) as cam:
                heat = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(int(target))])[0]
    finally:
        module.train(was_training)
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0)
    resized = Image.fromarray(heat).resize(image.size, resample=Image.BILINEAR)
    out = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return out, int(target)


def _drop_inference_tensors(module: nn.Module) -> None:
    """Replace weights created under ``torch.inference_mode`` by normal copies.

    Feature extraction moves a module to channels-last inside ``inference_mode``, which turns its
    4-D weights into inference tensors that autograd refuses to save for backward; a copy made
    outside inference mode holds the same values.
    """
    if any(t.is_inference() for t in itertools.chain(module.parameters(), module.buffers())):
        with torch.inference_mode(False), torch.no_grad():
            module._apply(lambda t: t.clone() if t.is_inference() else t)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """``heat`` (values in [0, 1], the image's size) as a jet colour map blended over ``image``."""
    from matplotlib import colormaps

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if heat.shape != rgb.shape[:2]:
        heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.BILINEAR))
    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    blend = (1 - alpha) * rgb + alpha * colours
    return Image.fromarray((np.clip(blend, 0, 1) * 255).round().astype(np.uint8), "RGB")


def overlay_png(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """The overlay as PNG bytes."""
    buffer = io.BytesIO()
    overlay(image, heat, alpha).save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay(path: str | os.PathLike, image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Path:
    """Write the overlay PNG atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(overlay_png(image, heat, alpha))
    return Path(path)
