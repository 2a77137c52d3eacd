"""Torch datasets and transforms for image classification.

Images are decoded once (in threads), shrunk to a little above the training size and kept in
RAM as uint8 tensors, so each epoch only augments. Lesion datasets are small (HAM10000 at
200x150 is ~0.8 GB decoded), and decoding every JPEG every epoch would cost more than the
forward pass of a small CNN on 2 cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dermkit.data.images import as_path, open_image
from dermkit.errors import ConfigError


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees: lesions have no canonical orientation."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


def train_transform(size: int, mean: Sequence[float], std: Sequence[float], strength: str = "strong",
                    randaugment: str | None = None) -> Callable:
    """Dermoscopy augmentation: crops, flips, rotations, colour jitter (on uint8 CHW tensors).

    ``randaugment`` (a timm RandAugment spec such as ``"rand-m9-mstd0.5"``) adds timm's
    RandAugment after the geometric steps, on a PIL image as timm's ops need; as in timm's own
    training transform it then replaces the colour jitter. ``strength="none"`` with RandAugment is
    the eval resize followed by RandAugment.
    """
    if strength == "none" and not randaugment:
        return eval_transform(size, mean, std)
    scale = (0.35, 1.0) if strength == "strong" else (0.7, 1.0)
    steps: list[torch.nn.Module] = []
    if strength == "none":
        steps.append(v2.Resize((size, size), antialias=True))
    else:
        steps += [
            v2.RandomResizedCrop((size, size), scale=scale, ratio=(0.75, 1.333), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            RandomRot90(),
        ]
    if strength == "strong":
        steps.append(v2.RandomApply([v2.RandomRotation(30)], p=0.3))
    if randaugment:
        steps += [v2.ToPILImage(), randaugment_transform(randaugment, size, mean), v2.PILToTensor()]
    elif strength == "strong":
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def randaugment_transform(spec: str, size: int, mean: Sequence[float]) -> Callable:
    """timm's RandAugment for ``spec`` (``rand-m9-mstd0.5``, ``rand-m7-n2-mstd0.5-inc1``...) with timm's
    hyper-parameters for this image size and fill colour; a bad spec is a ConfigError naming it."""
    from timm.data.auto_augment import rand_augment_transform

    parts = str(spec).split("-")
    known = ("m", "n", "p", "mstd", "mmax", "inc", "t")
    bad = [p for p in parts[1:] if not (p[:1] == "t" or any(p.startswith(k) and p[len(k):][:1].isdigit()
                                                             for k in known))]
    if parts[0] != "rand" or bad:
        raise ConfigError(f"randaugment {spec!r} is not a timm RandAugment spec"
                          + (f" (unknown part {bad[0]!r})" if bad and parts[0] == "rand" else "")
                          + "; write e.g. rand-m9-mstd0.5 (m: magnitude 0-10, n: ops per image, mstd: "
                          "magnitude noise, p: probability of each op, inc1: increasing ops)")
    hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean)}
    try:
        return rand_augment_transform(spec, hparams)
    except (AssertionError, ValueError, KeyError) as exc:
        raise ConfigError(f"randaugment {spec!r}: timm cannot read it ({exc}); write e.g. rand-m9-mstd0.5") from None


TTA_MODES = ("none", "flip", "flip_rot")


def tta_views(pixels: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The test-time views of an ``(N, C, H, W)`` batch: ``none`` the batch itself; ``flip`` + its
    horizontal and vertical flips (3 views); ``flip_rot`` the 8 symmetries of the square (the four
    90-degree rotations, each also flipped). Lesions have no canonical orientation, so a
    prediction averaged over these views loses nothing and smooths out orientation noise."""
    if mode == "none":
        return [pixels]
    if mode == "flip":
        return [pixels, pixels.flip(-1), pixels.flip(-2)]
    if mode == "flip_rot":
        if pixels.shape[-1] != pixels.shape[-2]:
            raise ValueError("flip_rot test-time views need square images")
        rotations = [pixels]
        for _ in range(3):  # rot90 as transpose + flip: the same views, and ONNX has no rot90 op
            rotations.append(rotations[-1].transpose(-2, -1).flip(-2))
        return rotations + [r.flip(-1) for r in rotations]
    raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Resize the whole image (no crop, so lesions at the border are kept) and normalise."""
    return v2.Compose(
        [v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )


def decode(path: Path, max_side: int | None) -> torch.Tensor:
    """Decode one image (with dermkit's checks) to a uint8 CHW tensor, shrunk so its shorter side <= max_side."""
    img = open_image(path)
    if max_side is not None and min(img.size) > max_side:
        ratio = max_side / min(img.size)
        img = img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), resample=3)
    return TF.pil_to_tensor(img)


def decode_all(paths: Sequence[Path], max_side: int | None, progress: bool = False,
               desc: str = "decoding") -> list[torch.Tensor]:
    """Decode many images in threads (PIL releases the GIL while decoding)."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=4) as pool:
        it = pool.map(lambda p: decode(p, max_side), paths)
        return list(tqdm(it, total=len(paths), desc=desc, disable=not progress, leave=False))


class ImageDataset(Dataset):
    """(image tensor, label) pairs for one split, decoded once and held in memory."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray | None,
        transform: Callable,
        cache_side: int | None = None,
        progress: bool = False,
        desc: str = "decoding",
        targets: np.ndarray | None = None,
    ):
        self.paths = [as_path(p) for p in paths]
        self.labels = None if labels is None else torch.tensor(np.array(labels), dtype=torch.long)
        # A second, per-image float target (a thickness; NaN = none): items become (x, y, target).
        self.targets = None if targets is None else torch.tensor(np.asarray(targets, dtype=np.float32))
        self.transform = transform
        self.images = decode_all(self.paths, cache_side, progress=progress, desc=desc)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        x = self.transform(self.images[index])
        y = -1 if self.labels is None else self.labels[index]
        return (x, y) if self.targets is None else (x, y, self.targets[index])
