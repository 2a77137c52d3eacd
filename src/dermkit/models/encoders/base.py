"""The encoder interface shared by every loader kind: :class:`EncoderWrapper`, fingerprints, helpers.

Each loader module (:mod:`.open_clip`, :mod:`.hub`, :mod:`.hf`, :mod:`.timm`) returns a subclass
of :class:`EncoderWrapper`; :func:`dermkit.models.encoders.load_encoder` picks the loader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dermkit.errors import ModelError
from dermkit.runtime import resolve_device

__all__ = ["EncoderWrapper", "model_fingerprint", "DEFAULT_LOGIT_SCALE", "TOKENIZER_FILES", "compact_size",
           "pooled_features", "quiet_transformers"]

# What ``PreTrainedTokenizer.save_pretrained`` writes, for the common tokenizer families.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)
DEFAULT_LOGIT_SCALE = 100.0
_NO_TEXT = "has no text encoder; use a CLIP-style model for zero-shot/retrieval"


# ------------------------------------------------------------------------------ the wrapper


class EncoderWrapper:
    """One frozen-or-trainable encoder with the preprocessing its checkpoint expects.

    Attributes: ``name`` (short display name), ``source`` (the spec it was loaded from),
    ``kind`` (``open_clip`` / ``hf_clip`` / ``timm`` / ``dermkit_classifier``), ``module`` (the
    underlying ``nn.Module``, for training), ``has_text``, ``image_size`` (int, or ``(h, w)`` for
    non-square inputs), ``mean``, ``std``, ``preprocess`` (PIL image -> ``(3, H, W)`` float tensor),
    ``embed_dim``, ``device``. ``fingerprint`` hashes the weights and architecture (computed on
    first use; call :meth:`refresh_fingerprint` after changing the weights).

    open_clip encoders also carry ``model_cfg`` and ``preprocess_cfg``, so a fine-tuned
    ``module`` is saved with ``save_open_clip_folder(enc.module, dir, enc.model_cfg, enc.preprocess_cfg)``;
    other kinds have ``None`` there.

    ``encode_image`` / ``encode_text`` move their inputs to ``device`` and impose no gradient
    mode: wrap frozen use in ``torch.inference_mode()``, train through them (or ``module``) as is.
    """

    has_text = False
    model_cfg: dict | None = None  # open_clip encoders: what save_open_clip_folder needs to re-save
    preprocess_cfg: dict | None = None

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        source: str,
        kind: str,
        preprocess: Callable,
        image_size: int | tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        embed_dim: int,
        arch: dict[str, Any],
    ):
        self.module = module
        self.name = name
        self.source = source
        self.kind = kind
        self.preprocess = preprocess
        self.image_size = compact_size(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.embed_dim = int(embed_dim)
        self.arch = arch  # what, besides the tensors, decides the outputs (hashed into the fingerprint)
        self.device = torch.device("cpu")
        self._fingerprint: str | None = None

    # -- images
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed pixels -> ``(N, D)`` float32 embeddings (L2-normalised by default)."""
        features = self._image_features(pixels.to(self.device)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- text
    def tokenize(self, texts: Sequence[str]) -> Any:
        raise ModelError(f"{self.name} {_NO_TEXT}")

    def encode_text(self, tokens: Any, normalize: bool = True) -> torch.Tensor:
        """Tokens from :meth:`tokenize` -> ``(N, D)`` float32 embeddings (L2-normalised by default)."""
        if not self.has_text:
            raise ModelError(f"{self.name} {_NO_TEXT}")
        features = self._text_features(_to_device(tokens, self.device)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def _text_features(self, tokens: Any) -> torch.Tensor:
        raise ModelError(f"{self.name} {_NO_TEXT}")

    @property
    def logit_scale(self) -> float:
        """``exp`` of the learned log temperature; 100 for models without one."""
        scale = getattr(self.module, "logit_scale", None)
        if not isinstance(scale, torch.Tensor):
            return DEFAULT_LOGIT_SCALE
        return float(scale.detach().float().exp().reshape(-1)[0])

    # -- identity
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.module, {"kind": self.kind, "arch": self.arch})
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        """Recompute the fingerprint (after the weights changed, e.g. by fine-tuning)."""
        self._fingerprint = None
        return self.fingerprint

    # -- module plumbing
    def to(self, device: str | torch.device) -> "EncoderWrapper":
        """Move to ``device`` (a torch.device, or auto / cpu / cuda / cuda:N as configs name them)."""
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        self.module.to(self.device)
        return self

    def eval(self) -> "EncoderWrapper":
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> "EncoderWrapper":
        self.module.train(mode)
        return self

    def __repr__(self) -> str:
        text = "image+text" if self.has_text else "image-only"
        return f"EncoderWrapper({self.name!r}, {self.kind}, {text}, dim={self.embed_dim}, size={self.image_size})"


def pooled_features(output) -> torch.Tensor:
    """The features of a transformers ``get_image_features`` / ``get_text_features`` call.

    Older transformers return the tensor itself; transformers >= 5 a ModelOutput whose
    ``pooler_output`` holds the projected features.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _to_device(tokens, device: torch.device):
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if isinstance(tokens, dict) or hasattr(tokens, "items"):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
    return tokens


def compact_size(size) -> int | tuple[int, int]:
    """An image size as one int when square (``(224, 224)`` -> ``224``), else ``(h, w)``."""
    if isinstance(size, (tuple, list)):
        h, w = (int(s) for s in size)
        return h if h == w else (h, w)
    return int(size)


# ------------------------------------------------------------------------------ fingerprint


def model_fingerprint(model: nn.Module | dict[str, torch.Tensor], config: Any = None) -> str:
    """Stable hash (32 hex chars) of a model's tensors and a JSON-able description of it.

    SHA-256 over the canonical JSON of ``config`` and, in key order, each tensor's name, dtype,
    shape and bytes. Absolute local paths in ``config`` count only by their last component, so
    a copied or moved model keeps its fingerprint (and its feature cache).
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    digest.update(json.dumps(_portable(config), sort_keys=True, default=str).encode("utf-8"))
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return digest.hexdigest()[:32]


def _portable(obj: Any) -> Any:
    """Drop what differs between copies of one model: local paths, transformers' bookkeeping keys."""
    if isinstance(obj, dict):
        return {
            str(k): _portable(v)
            for k, v in obj.items()
            if not str(k).startswith("_") and k not in ("transformers_version", "name_or_path")
        }
    if isinstance(obj, (list, tuple)):
        return [_portable(v) for v in obj]
    if isinstance(obj, Path) or (isinstance(obj, str) and os.path.isabs(obj)):
        return Path(obj).name
    return obj


# ------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-load reports and progress bars (unused pooler weights etc.)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
