"""Where and how a computation runs: device, autocast precision and seeds.

Below every layer that runs tensors (``models/``, ``engine/``, ``data/shards.py``), so a model
loader, a feature extractor and the training loop follow one rule: ``precision: auto`` is bf16
only where the hardware has it natively (AVX512-BF16/AMX CPUs, CUDA Ampere+), fp16 on older GPUs,
else fp32; every epoch re-seeds from ``epoch_seed(seed, epoch)``, which is what makes resume exact.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from dermkit.errors import ConfigError

__all__ = ["cpu_has_bf16", "epoch_seed", "resolve_device", "resolve_precision", "seed_everything"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a device (None = full fp32)."""
    if name == "fp32":
        return None
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("fp16 autocast needs a CUDA device; use bf16 on CPU")
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    # auto: bf16 where the hardware has it natively, else fp32 on CPU / fp16 on old GPUs.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch
