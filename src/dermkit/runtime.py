"""Where and how a computation runs: device, autocast precision and seeds.

Below every layer that runs tensors (``models/``, ``engine/``, ``data/shards.py``), so a model
loader, a feature extractor and the training loop follow one rule: ``precision: auto`` is bf16
only where the hardware has it natively (AVX512-BF16/AMX CPUs, CUDA Ampere+), fp16 on older GPUs,
else fp32; every epoch re-seeds from ``epoch_seed(seed, epoch)``, which is what makes resume exact.

On a CPU with native bf16 the training loop goes one step further (:func:`choose_cpu_precision`):
a flag is not speed (AMX makes bf16 training much faster; Zen 4's AVX512-BF16 makes it about equal
to fp32 for EfficientNet-Lite0), so it times a few training steps of the model at hand in both and
keeps bf16 only when it is clearly faster; the answer is cached per CPU model, torch version and
model signature in ``$DERMKIT_CACHE/precision.json``.

One kind of layer is kept out of CPU bf16 while it trains (:func:`keep_depthwise_fp32`): a depthwise
convolution's backward pass in bf16 runs 2.5-4x slower than in fp32 on these CPUs (measured with
torch 2.14 / oneDNN on AMX and AVX512-BF16: no bf16 weight-gradient kernel for grouped convolutions),
while the pointwise convolutions and the matrix products around it gain from bf16.
"""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dermkit.errors import ConfigError

__all__ = ["BF16_MIN_SPEEDUP", "choose_cpu_precision", "cpu_has_bf16", "cpu_identity", "epoch_seed",
           "keep_depthwise_fp32", "resolve_device", "resolve_precision", "seed_everything"]

#: bf16 must make a training step at least this much faster than fp32 to be chosen on a CPU.
BF16_MIN_SPEEDUP = 1.15
#: Part of the probe cache key: bumped when what a bf16 training step runs changes (2: depthwise
#: convolutions that train stay fp32), so older timings are measured again.
PROBE_VERSION = 2


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; ConfigError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
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


def cpu_identity() -> str:
    """This CPU's model name and bf16-relevant features, and the torch version: a probe's cache key."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return f"{name} | amx={int(bool(amx))} avx512_bf16={int(bool(avx))} | torch {torch.__version__}"


def _precision_cache() -> Path:
    root = os.environ.get("DERMKIT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "dermkit") / "precision.json"


def choose_cpu_precision(signature: str, measure: Callable[[torch.dtype | None], float],
                         cache_file: str | os.PathLike | None = None) -> tuple[torch.dtype | None, dict]:
    """``precision: auto`` for training on this CPU: ``(autocast dtype or None, record)``.

    Without native bf16 (no AVX512-BF16, no AMX) it is fp32 at once: bf16 would be emulated, about
    ten times slower. Otherwise ``measure(dtype)`` (seconds of one training step of the model at
    hand, ``None`` = fp32) is called for both and bf16 is kept only when it is at least
    :data:`BF16_MIN_SPEEDUP` times faster. The record (precision, reason, both timings, the CPU) is
    cached under (this CPU, torch version, ``signature``), so the probe runs once per model shape.
    """
    cpu = cpu_identity()
    if not cpu_has_bf16():
        return None, {"precision": "fp32", "cpu": cpu, "probed": False,
                      "reason": "this CPU has no native bf16 (no AVX512-BF16, no AMX): bf16 would be emulated"}
    path = Path(cache_file) if cache_file is not None else _precision_cache()
    key = f"{cpu} | probe {PROBE_VERSION} | {signature}"
    try:
        cache = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}  # a damaged cache is measured again, never trusted
    record = cache.get(key) if isinstance(cache, dict) else None
    if not (isinstance(record, dict) and record.get("precision") in ("fp32", "bf16")):
        fp32, bf16 = measure(None), measure(torch.bfloat16)
        speedup = fp32 / bf16 if bf16 > 0 else float("inf")
        chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
        record = {"precision": chosen, "cpu": cpu, "signature": signature, "fp32_step_s": round(fp32, 5),
                  "bf16_step_s": round(bf16, 5), "bf16_speedup": round(speedup, 3), "probed": True,
                  "reason": (f"a training step is x{speedup:.2f} faster in bf16 than in fp32 on this CPU"
                             + (" (AMX or AVX512-BF16 pays off)" if chosen == "bf16" else
                                f" (below x{BF16_MIN_SPEEDUP}: fp32 keeps full precision for the same speed)"))}
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = record
        try:
            from dermkit.io import write_json

            write_json(path, cache)
        except OSError:
            pass  # a read-only home: measured again next time
    else:
        record = {**record, "probed": False, "cached": True}
    return (torch.bfloat16 if record["precision"] == "bf16" else None), record


_FP32_CLASSES: dict[type, type] = {}


def _fp32_when_training(self, x: torch.Tensor) -> torch.Tensor:
    """A depthwise convolution's forward under CPU bf16 autocast: in fp32 when a gradient will flow
    through it (its backward is the slow part), else as autocast has it (bf16 inference is fast)."""
    base = super(type(self), self).forward
    if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad)):
        with torch.autocast("cpu", enabled=False):
            return base(x.float())
    return base(x)


def keep_depthwise_fp32(model: torch.nn.Module) -> int:
    """Make every depthwise ``Conv2d`` of ``model`` (groups == input channels > 1) run in fp32 under CPU
    bf16 autocast whenever it takes part in a backward pass; returns how many were changed.

    In place, without touching parameters, buffers or state-dict keys: each such module's class
    becomes a subclass of its own class (one per class, e.g. timm's ``Conv2dSame`` keeps its padding)
    whose ``forward`` leaves autocast for the convolution. Outside CPU autocast, in inference and on
    GPUs it is the original forward. Idempotent.
    """
    changed = 0
    for module in model.modules():
        cls = type(module)
        if (not isinstance(module, torch.nn.Conv2d) or cls in _FP32_CLASSES.values()
                or module.groups <= 1 or module.groups != module.in_channels):
            continue
        if cls not in _FP32_CLASSES:
            _FP32_CLASSES[cls] = type(f"Fp32Depthwise{cls.__name__}", (cls,), {
                "forward": _fp32_when_training, "__module__": __name__,
                "__doc__": f"{cls.__name__} kept in fp32 under CPU bf16 autocast while training."})
        module.__class__ = _FP32_CLASSES[cls]
        changed += 1
    return changed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch
