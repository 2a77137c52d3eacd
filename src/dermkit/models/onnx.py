"""ONNX Runtime for frozen image networks on the CPU: exported once, cached by fingerprint, checked.

On a CPU, ONNX Runtime runs a frozen EfficientNet / ResNet / ViT tower several times faster than
eager PyTorch in fp32 (fused convolutions and depthwise kernels; ``benchmarks/feature_speed.py``
measures it), with the same outputs to ~1e-6, whereas bf16 autocast changes them by ~1e-2.
:func:`onnx_function` exports ``module(pixels)`` (one ``(N, 3, H, W)`` batch in, one array out)
with torch's exporter, caches the file under ``$DERMKIT_CACHE/onnx/<key>.onnx`` (``key`` names the
weights' fingerprint and the input size, so changed weights are a new file), and on every load
compares ONNX Runtime with PyTorch on a fixed batch: a difference above ``tolerance`` (or an
export torch cannot do) falls back to PyTorch with a warning, never to wrong numbers.

``DERMKIT_INFERENCE=torch`` turns it off (``onnx`` insists, ``auto`` = on where ONNX Runtime is
installed and the model runs on the CPU). Training never uses it: weights that change cannot be
exported once.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermkit.errors import ConfigError
from dermkit.io import atomic_path

__all__ = ["inference_backend", "onnx_function", "OnnxFunction", "onnx_cache_dir", "export_module"]

_WARNED: set[str] = set()


def onnx_cache_dir() -> Path:
    """``$DERMKIT_ONNX_CACHE``, else ``$DERMKIT_CACHE/onnx``, else ``~/.cache/dermkit/onnx``."""
    if os.environ.get("DERMKIT_ONNX_CACHE"):
        return Path(os.environ["DERMKIT_ONNX_CACHE"]).expanduser()
    root = os.environ.get("DERMKIT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "dermkit") / "onnx"


def inference_backend(device: torch.device | str = "cpu") -> str:
    """``onnx`` or ``torch`` for frozen inference on ``device`` (see the module docstring)."""
    choice = os.environ.get("DERMKIT_INFERENCE", "auto").strip().lower()
    if choice not in ("auto", "torch", "onnx"):
        raise ConfigError(f"DERMKIT_INFERENCE must be auto, torch or onnx, got {choice!r}")
    if choice == "torch" or torch.device(device).type != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if choice == "onnx":
            raise ConfigError("DERMKIT_INFERENCE=onnx needs onnxruntime (pip install onnxruntime)") from None
        return "torch"
    return "onnx"


class OnnxFunction:
    """A cached ONNX file run by ONNX Runtime: ``fn(pixels) -> np.ndarray`` (float32)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, pixels) -> np.ndarray:
        if torch.is_tensor(pixels):
            pixels = pixels.detach().cpu().contiguous().float().numpy()
        return self.session.run(None, {self.input: np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def _warn_once(key: str, text: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(text, stacklevel=3)


def export_module(module: nn.Module, example: torch.Tensor, path: str | os.PathLike, input_name: str = "pixels",
                  output_name: str = "out") -> None:
    """torch's ONNX export of ``module(pixels)`` (TorchScript tracer, opset 17, dynamic batch), written
    atomically; also what ``dermkit export --format onnx`` writes its graph with."""
    _export(module, example, Path(path), input_name, output_name)


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str = "pixels",
            output_name: str = "out") -> None:
    """torch's ONNX export (TorchScript tracer; dynamic batch) written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:  # the tracer refuses parameters that require grad as constants
        p.requires_grad_(False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused kernel has no ONNX op
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, opset_version=17,
                              dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for p in frozen:
            p.requires_grad_(True)


def onnx_function(module: nn.Module, image_size: tuple[int, int], key: str, tolerance: float = 1e-4,
                  cache_dir: str | os.PathLike | None = None) -> OnnxFunction | None:
    """``module`` (pixels -> array) as an :class:`OnnxFunction`, or None where it cannot be used.

    ``key`` must change whenever the weights or the function change (e.g. the model fingerprint +
    what the function computes); the input size is added here.
    """
    h, w = image_size
    path = Path(cache_dir or onnx_cache_dir()) / f"{key}-{h}x{w}.onnx"
    example = torch.linspace(-2, 2, 2 * 3 * h * w).reshape(2, 3, h, w)
    module = module.eval()
    try:
        fresh = not path.is_file()
        if fresh:
            _export(module, example, path)
        try:
            fn = OnnxFunction(path)
        except Exception:
            if fresh:
                raise
            path.unlink(missing_ok=True)  # a damaged cache file: export it again
            _export(module, example, path)
            fn = OnnxFunction(path)
        with torch.inference_mode():
            reference = module(example).float().numpy()
        difference = float(np.abs(fn(example) - reference).max())
    except Exception as exc:  # an op the exporter or runtime does not support: PyTorch it is
        _warn_once(key, f"ONNX Runtime cannot run this model ({type(exc).__name__}: {exc}); using PyTorch")
        return None
    if not difference <= tolerance:
        _warn_once(key, f"ONNX Runtime differs from PyTorch by {difference:.2e} > {tolerance} on this model; "
                        "using PyTorch")
        return None
    return fn
