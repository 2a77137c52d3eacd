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


class RandomRot90(torch.nn.Module):
    """Rotate by a random multiple of 90 degrees: lesions have no canonical orientation."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


def train_transform(size: int, mean: Sequence[float], std: Sequence[float], strength: str = "strong") -> Callable:
    """Dermoscopy augmentation: crops, flips, rotations, colour jitter (on uint8 CHW tensors)."""
    if strength == "none":
        return eval_transform(size, mean, std)
    scale = (0.35, 1.0) if strength == "strong" else (0.7, 1.0)
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop((size, size), scale=scale, ratio=(0.75, 1.333), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
    ]
    if strength == "strong":
        steps += [
            v2.RandomApply([v2.RandomRotation(30)], p=0.3),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03),
        ]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


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


def decode_all(paths: Sequence[Path], max_side: int | None, progress: bool = False, desc: str = "decoding") -> list[torch.Tensor]:
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
    ):
        self.paths = [as_path(p) for p in paths]
        self.labels = None if labels is None else torch.tensor(np.array(labels), dtype=torch.long)
        self.transform = transform
        self.images = decode_all(self.paths, cache_side, progress=progress, desc=desc)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        x = self.transform(self.images[index])
        y = -1 if self.labels is None else self.labels[index]
        return x, y
