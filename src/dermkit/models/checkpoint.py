"""Safe checkpoints: tensors in safetensors, everything else in JSON. Never pickle.

A *model folder* (what ``dermkit predict/evaluate --model DIR`` reads) holds
``model.safetensors`` (weights) and ``model.json`` (architecture, classes, preprocessing, provenance).
``model.json`` is checked against its schema and its integrity record (weights digest + the fields
that give them meaning, :mod:`dermkit.models.integrity`) every time it is read.
A *training checkpoint* adds optimizer state and loop counters so ``--resume`` continues a run.

This module is tensor and card I/O only and imports nothing else of :mod:`dermkit.models` but
:mod:`~dermkit.models.integrity`;
:func:`dermkit.models.registry.load_classifier` rebuilds a classifier from a model folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dermkit.errors import ModelError
from dermkit.io import atomic_path, write_json
from dermkit.models.integrity import FORMAT_VERSION, check_schema, seal, verify

MODEL_WEIGHTS = "model.safetensors"
MODEL_CARD = "model.json"
FORMAT = "dermkit-classifier"
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors (made contiguous and detached) to a safetensors file."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning any corruption into a clear ``ModelError``."""
    path = Path(path)
    _refuse_pickle(path)
    if not path.is_file():
        raise ModelError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path} is not a readable safetensors file ({exc}). It may be truncated or corrupt: "
            "re-copy it, or retrain / resume from an earlier checkpoint."
        ) from exc


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES or _looks_like_pickle(path):
        raise ModelError(
            f"{path} looks like a pickle/PyTorch file. dermkit never unpickles model files (a pickle can run "
            "arbitrary code). Convert it once, in a trusted environment, to safetensors: "
            "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')."
        )


def _looks_like_pickle(path: Path) -> bool:
    # A zip archive (torch.save) or a raw pickle stream (protocol 2+ starts with 0x80).
    # A safetensors file starts with its header length (u64, little-endian) and then "{": it can
    # begin with byte 0x80 too (a 128-byte header), so recognise it before sniffing for a pickle.
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def save_model(folder: str | Path, model: nn.Module, card: dict[str, Any]) -> Path:
    """Write a model folder: weights + JSON card (card must be JSON-able and name the architecture)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / MODEL_WEIGHTS, model.state_dict(), metadata={"format": FORMAT})
    write_model_card(folder, card)
    return folder


def write_model_card(folder: str | Path, card: dict[str, Any]) -> Path:
    """``folder/model.json`` for the weights already in ``folder/model.safetensors``: the card with
    its format, version and integrity record (:mod:`dermkit.models.integrity`)."""
    folder = Path(folder)
    sealed = seal(card, folder / MODEL_WEIGHTS)
    return write_json(folder / MODEL_CARD, {"format": FORMAT, "format_version": FORMAT_VERSION, **sealed})


def read_model_card(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if folder.is_file():
        _refuse_pickle(folder)
        raise ModelError(
            f"--model expects a model folder (with {MODEL_CARD} and {MODEL_WEIGHTS}), got the file {folder}"
        )
    card_path = folder / MODEL_CARD
    if not card_path.is_file():
        pickles = (
            sorted(p.name for p in folder.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES) if folder.is_dir() else []
        )
        hint = (
            f" It holds {', '.join(pickles)}: pickle files are never loaded; convert them to safetensors."
            if pickles else ""
        )
        raise ModelError(
            f"{folder} is not a dermkit model folder: {MODEL_CARD} is missing.{hint} "
            "Train one with `dermkit train`, which writes DIR/model/."
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{card_path} is not valid JSON ({exc}); the model folder is corrupt.") from exc
    if (folder / MODEL_WEIGHTS).is_file():
        _refuse_pickle(folder / MODEL_WEIGHTS)  # the safety message first, whatever the card says
    check_schema(card, card_path, FORMAT)
    verify(card, folder, MODEL_WEIGHTS)
    return card
