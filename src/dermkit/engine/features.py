"""Image embeddings from a frozen encoder, computed once and cached on disk.

Linear probes, zero-shot prompt sweeps, retrieval and concept models all start from the same
embeddings, so :func:`extract_features` runs the encoder only for images it has not seen
before. The cache key is (encoder fingerprint, preprocessing, precision) per *bucket* folder and
the BLAKE2b hash of the file bytes per image, so renaming or moving images keeps their cache
entries, and editing an image invalidates only that image.

Layout of ``<cache_dir>/<bucket>/``::

    bucket.json                     what the bucket holds (fingerprint, transform, precision)
    shard-<time>-<random>.npy       float32 (n, D) embeddings of one run (np.load, no pickle)
    shard-<time>-<random>.json      {"hashes": [content hash of row 0, row 1, ...], "dim": D}

Each run that computes something adds one shard; shards are never modified, and the JSON index
of a shard is written (atomically) only after its ``.npy``, so a reader never sees half a shard
and two processes can fill one bucket at the same time.

Computation uses a DataLoader whose worker processes decode and preprocess, batches in
``torch.inference_mode``, channels-last memory, and bf16 autocast only where the hardware has
native bf16 (emulated bf16 on other CPUs is ~10x slower than fp32, see DESIGN.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dermkit import io
from dermkit.data.card import load_card
from dermkit.data.images import as_path, open_image, read_image_bytes
from dermkit.engine import distributed
from dermkit.errors import DataError
from dermkit.models.onnx import inference_backend, onnx_function
from dermkit.runtime import resolve_precision

__all__ = [
    "extract_features",
    "extract_split_features",
    "cached_features",
    "map_images",
    "default_cache_dir",
    "content_hash",
    "cache_key",
    "FeatureCache",
]

_CACHE_VERSION = 1


# ------------------------------------------------------------------------------ keys


def default_cache_dir() -> Path:
    """``$DERMKIT_CACHE/features``, else ``~/.cache/dermkit/features``."""
    root = os.environ.get("DERMKIT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "dermkit"
    return base / "features"


def content_hash(path: str | os.PathLike) -> str:
    """BLAKE2b-128 hex digest of a file's bytes (missing/unreadable file -> DataError)."""
    return hashlib.blake2b(read_image_bytes(as_path(path)), digest_size=16).hexdigest()


def _describe_preprocess(preprocess) -> str:
    """Stable text of a preprocessing pipeline (torchvision reprs list sizes, interpolation, crops)."""
    text = getattr(preprocess, "description", None) or repr(preprocess)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(text))  # object addresses change every run


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    # The engine's one rule (precision "auto"): bf16 where native, fp16 on older GPUs, else fp32.
    return resolve_precision("auto", device)


def _device(enc) -> torch.device:
    device = getattr(enc, "device", None)
    if device is not None:
        return torch.device(device)
    try:
        return next(enc.module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _plan(enc) -> tuple[str, torch.dtype | None]:
    """``(backend, autocast dtype)`` of frozen inference: ONNX Runtime in fp32 on CPUs where it is
    installed (several times faster than eager PyTorch, same outputs), else PyTorch with the
    engine's precision rule."""
    backend = inference_backend(_device(enc))
    return backend, (None if backend == "onnx" else _autocast_dtype(_device(enc)))


def cache_key(enc, precision: str | None = None) -> dict:
    """What the features of one image depend on, besides its bytes."""
    if precision is None:
        dtype = _plan(enc)[1]
        precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    return {
        "version": _CACHE_VERSION,
        "fingerprint": str(enc.fingerprint),
        "transform": {
            "image_size": _jsonable(enc.image_size),
            "mean": [round(float(m), 6) for m in enc.mean],
            "std": [round(float(s), 6) for s in enc.std],
            "preprocess": _describe_preprocess(enc.preprocess),
        },
        "precision": precision,
        "normalized": True,
    }


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value]
    return int(value)


# ------------------------------------------------------------------------------ cache


class FeatureCache:
    """One bucket folder: content hash -> embedding row, over all shards."""

    def __init__(self, root: str | os.PathLike, key: dict):
        self.key = key
        digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()
        self.folder = Path(root).expanduser() / digest
        self._index: dict[str, tuple[Path, int]] | None = None
        self.dim: int | None = None

    def index(self) -> dict[str, tuple[Path, int]]:
        """Map content hash -> (shard .npy, row), read from every complete shard."""
        if self._index is None:
            index: dict[str, tuple[Path, int]] = {}
            for meta_path in sorted(self.folder.glob("shard-*.json")):
                try:
                    meta = json.loads(meta_path.read_text(encoding="utf-8"))
                    hashes, dim = list(meta["hashes"]), int(meta["dim"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # an unreadable index only costs a recomputation
                npy = meta_path.with_suffix(".npy")
                if not npy.is_file() or (self.dim is not None and dim != self.dim):
                    continue
                self.dim = dim
                for row, h in enumerate(hashes):
                    index[h] = (npy, row)
            self._index = index
        return self._index

    def read(self, hashes: Sequence[str]) -> np.ndarray:
        """Embeddings of ``hashes`` (all must be in :meth:`index`), in that order."""
        index = self.index()
        out = np.empty((len(hashes), self.dim or 0), dtype=np.float32)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, h in enumerate(hashes):
            shard, row = index[h]
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            data = np.load(shard, mmap_mode="r", allow_pickle=False)
            targets, rows = zip(*pairs)
            if data.ndim != 2 or data.shape[1] != out.shape[1] or max(rows) >= data.shape[0]:
                raise DataError(f"feature cache shard {shard} is damaged; delete {self.folder} and re-run")
            out[list(targets)] = data[list(rows)]
        return out

    def write(self, hashes: Sequence[str], features: np.ndarray) -> Path:
        """Add one shard (atomic: the .npy first, then its JSON index)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "bucket.json"
        if not info.exists():
            io.write_json(info, self.key)
        stem = f"shard-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(4).hex()}"
        npy = self.folder / f"{stem}.npy"
        with io.atomic_path(npy) as tmp, open(tmp, "wb") as fh:
            np.save(fh, features, allow_pickle=False)
        io.write_json(self.folder / f"{stem}.json", {"hashes": list(hashes), "dim": int(features.shape[1]),
                                                     "dtype": "float32", "rows": int(len(hashes))})
        if self._index is not None:
            self.dim = int(features.shape[1])
            self._index.update({h: (npy, row) for row, h in enumerate(hashes)})
        return npy


# ------------------------------------------------------------------------------ compute


class _ImageFiles(Dataset):
    """Decode + preprocess one image per item; errors travel back as text (see _collate)."""

    def __init__(self, paths: Sequence[Path], preprocess):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(open_image(self.paths[i])), ""
        except DataError as exc:
            # DataLoader cannot rebuild our exception types across processes (it would turn a
            # clear "file X is truncated" into a RuntimeError), so the message is passed on.
            return i, None, str(exc)


def _collate(items):
    errors = [e for _, _, e in items if e]
    if errors:
        return None, None, errors
    return torch.tensor([i for i, _, _ in items]), torch.stack([x for _, x, _ in items]), []


class _EncodeImage(torch.nn.Module):
    """``enc.encode_image(pixels, normalize=True)`` as a module (what ONNX Runtime runs)."""

    def __init__(self, enc):
        super().__init__()
        self.tower = enc.module  # registered, so the exporter sees the weights as parameters
        self.enc = enc

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.enc.encode_image(pixels, normalize=True)


def _onnx_encoder(enc):
    """The encoder's image tower on ONNX Runtime (None: not exportable, PyTorch runs it)."""
    if getattr(enc, "module", None) is None:
        return None
    size = enc.image_size if isinstance(enc.image_size, tuple) else (enc.image_size, enc.image_size)
    return onnx_function(_EncodeImage(enc), size, key=f"encode_image-{enc.fingerprint}")


@torch.inference_mode()
def _compute(enc, paths: Sequence[Path], batch_size: int, num_workers: int, progress: bool,
             amp_dtype: torch.dtype | None, backend: str = "torch") -> np.ndarray:
    from tqdm.auto import tqdm

    device = _device(enc)
    module = getattr(enc, "module", None)
    onnx = _onnx_encoder(enc) if backend == "onnx" else None
    if module is not None:
        module.eval()
        if onnx is None:
            module.to(memory_format=torch.channels_last)  # only 4-D (conv) weights change layout
    # Worker processes pay off only when there is more than one batch to overlap with.
    workers = num_workers if len(paths) > batch_size else 0
    loader = DataLoader(_ImageFiles(paths, enc.preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate)
    out: np.ndarray | None = None
    with tqdm(total=len(paths), desc="features", unit="img", disable=not progress, leave=False) as bar:
        for index, pixels, errors in loader:
            if errors:
                raise DataError(errors[0] + (f" (and {len(errors) - 1} more in this batch)" if len(errors) > 1 else ""))
            if onnx is not None:
                emb = onnx(pixels)
            else:
                pixels = pixels.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    emb = enc.encode_image(pixels, normalize=True)
                emb = emb.float().cpu().numpy()
            if out is None:
                out = np.empty((len(paths), emb.shape[1]), dtype=np.float32)
            out[index.numpy()] = emb
            bar.update(len(index))
    return out if out is not None else np.zeros((0, int(getattr(enc, "embed_dim", 0))), dtype=np.float32)


def map_images(enc, paths: Sequence[Path], fn, batch_size: int = 64, num_workers: int = 1, progress: bool = True,
               desc: str = "encoding") -> torch.Tensor:
    """``fn(preprocessed pixels)`` for every image, in order, concatenated on the CPU (no cache).

    For methods that need something other than the final embedding of a frozen encoder (prompt
    learning caches the input of the tuned image tail). Decoding runs in worker processes; an
    unreadable image raises :class:`~dermkit.errors.DataError` naming the file.
    """
    from tqdm.auto import tqdm

    workers = num_workers if len(paths) > batch_size else 0
    loader = DataLoader(_ImageFiles(paths, enc.preprocess), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate)
    out = []
    with torch.inference_mode(), tqdm(total=len(paths), desc=desc, unit="img", disable=not progress,
                                      leave=False) as bar:
        for _, pixels, errors in loader:
            if errors:
                raise DataError(errors[0] + (f" (and {len(errors) - 1} more in this batch)" if len(errors) > 1 else ""))
            out.append(fn(pixels).float().cpu())
            bar.update(len(pixels))
    if not out:
        raise DataError("no images to encode")
    return torch.cat(out)


def extract_features(
    enc,
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    progress: bool = True,
    use_cache: bool = True,
) -> np.ndarray:
    """L2-normalised image embeddings (N, D) float32 for ``paths``, in order.

    Images whose (encoder, preprocessing, precision, file bytes) were embedded before are read
    from the cache in ``cache_dir`` (default :func:`default_cache_dir`); the rest are computed
    (identical files once) and added as a new shard; in a distributed run each process computes its
    share. ``use_cache=False`` computes everything and writes nothing. Unreadable images raise
    :class:`~dermkit.errors.DataError` naming the file.
    """
    paths = [as_path(p) for p in paths]
    backend, amp_dtype = _plan(enc)
    if not use_cache:
        return _compute(enc, paths, batch_size, num_workers, progress, amp_dtype, backend)
    hashes = [content_hash(p) for p in paths]
    cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir(), cache_key(enc))
    distributed.barrier()  # every process sees the same cache before the work is shared out
    index = cache.index()
    missing: dict[str, Path] = {}
    for h, p in zip(hashes, paths):
        if h not in index and h not in missing:
            missing[h] = p
    if missing:
        # Under torch.distributed each process encodes its own contiguous share and adds it as
        # its own shard; after the barrier every process reads all of them from the cache.
        todo = list(missing)[distributed.local_slice(len(missing))]
        if todo:
            computed = _compute(enc, [missing[h] for h in todo], batch_size, num_workers,
                                progress and distributed.is_main(), amp_dtype, backend)
            cache.write(todo, computed)
        if distributed.world_size() > 1:
            distributed.barrier()
            cache._index = None  # re-read: the other processes' shards are there now
    if not paths:
        return np.zeros((0, cache.dim or int(getattr(enc, "embed_dim", 0))), dtype=np.float32)
    return cache.read(hashes)


def cached_features(enc, paths: Sequence[str | os.PathLike],
                    cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The cached embeddings of ``paths`` without computing any: ``(features of the cached ones,
    bool mask over paths)``. For checks that use embeddings only when an earlier command made them."""
    paths = [as_path(p) for p in paths]
    cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir(), cache_key(enc))
    index = cache.index()
    hashes = [content_hash(p) if p.is_file() else "" for p in paths]
    mask = np.array([h in index for h in hashes], dtype=bool)
    if not mask.any():
        return np.zeros((0, cache.dim or 0), dtype=np.float32), mask
    return cache.read([h for h, m in zip(hashes, mask) if m]), mask


def extract_split_features(enc, card, split: str, cache_dir: str | os.PathLike | None = None, **kwargs):
    """``(features, labels, rows)`` for one split of a dataset card (name, folder or card).

    ``labels`` are class indices into ``card.classes``; ``rows`` is ``card.rows(split)``.
    Extra keyword arguments go to :func:`extract_features`.
    """
    card = card if hasattr(card, "rows") else load_card(card)
    rows = card.rows(split)
    labels = card.labels(rows)
    paths = [card.image_path(p) for p in rows["image"]]
    return extract_features(enc, paths, cache_dir=cache_dir, **kwargs), labels, rows
