"""Rows of a dataset that show the same picture: near-duplicates found by perceptual hashes.

``dermkit data check`` hashes every image while it decodes it (``validate._inspect``) and
reports near-duplicates in different splits (``near_duplicate_leak``); ``dermkit data split`` and
the importers that make a split read the images with :func:`row_links` and keep each cluster of
near-duplicates in one split, as they keep a lesion's images together.

A pHash sets the bits of the DCT coefficients above their median: 128 of 256 for any picture
with detail (every image of the shared datasets). A flat image, or a plain gradient, has mostly
tied coefficients and sets a handful of bits, the same handful for every such image, so its hash
would "match" any other plain image: :func:`image_hash` gives None for it.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from dermkit.data.hashes import hash_pairs, perceptual_hash
from dermkit.data.images import ImageProblem, PathResolver, decode_image_bytes, read_image_bytes
from dermkit.errors import DataError

__all__ = ["MIN_HASH_BITS", "image_hash", "file_hash", "row_links"]

#: A hash (or its mirror's) with fewer bits set than this is a plain image's: no hash.
MIN_HASH_BITS = 64
THREADS = 4
_CHUNK = 32
_REDUCED_SIDE = 256  # 4x the hash's 64x64 grey thumbnail


def image_hash(image: Image.Image) -> np.ndarray | None:
    """:func:`~dermkit.data.hashes.perceptual_hash` of ``image``, or None for a plain image (flat
    or a pure gradient) whose hash cannot tell it from other plain images, or one Pillow cannot
    convert to grey.

    An image whose smaller side is at least ``2 * _REDUCED_SIDE`` pixels is first made grey and
    shrunk by an integer factor (box average) to a smaller side of at least ``_REDUCED_SIDE``:
    the hash's Lanczos resize of a 6000x4000 photo costs 3x its decoding, and the hash moves by a
    few bits at most (a resized copy: <= 16).
    """
    try:
        factor = min(image.size) // _REDUCED_SIDE
        if factor >= 2:
            image = image.convert("L").reduce(factor)
        h = perceptual_hash(image)
    except (OSError, ValueError):
        return None
    if int(np.bitwise_count(h).sum(axis=1).min()) < MIN_HASH_BITS:
        return None
    return h


def file_hash(path: Path) -> np.ndarray | None:
    """The :func:`image_hash` of an image file; None when it is missing or unreadable (``data
    check`` reports those)."""
    try:
        return image_hash(decode_image_bytes(read_image_bytes(path), path, convert=False))
    except (ImageProblem, DataError, OSError):
        return None


def _hash_chunk(paths: list[Path]) -> list[np.ndarray | None]:
    return [file_hash(p) for p in paths]


def row_links(
    table: pd.DataFrame,
    root: str | os.PathLike,
    columns: Sequence[str] = ("image",),
    follow_symlinks: bool = False,
    threads: int = THREADS,
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, bits)`` of row *positions* (``i < j``) whose images are near-duplicates.

    Every image named in ``columns`` (those present in ``table``; e.g. ``image`` and a second
    view) is read from ``root`` and hashed in ``threads`` threads; paths that are unsafe, missing
    or unreadable are skipped. Two images of one row are not a pair. ``bits``: the smallest
    Hamming distance between the two rows' images (at most ``NEAR_DUPLICATE_BITS``).
    """
    resolve = PathResolver(Path(root), follow_symlinks=follow_symlinks)
    rows: list[int] = []
    paths: list[Path] = []
    for col in (c for c in columns if c in table.columns):
        for pos, rel in enumerate(table[col].to_numpy()):
            if pd.isna(rel):
                continue
            try:
                paths.append(resolve(str(rel)))
            except DataError:
                continue
            rows.append(pos)
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    with cf.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        hashes = [h for chunk in pool.map(_hash_chunk, chunks) for h in chunk]
    kept = [k for k, h in enumerate(hashes) if h is not None]
    if len(kept) < 2:
        return []
    best: dict[tuple[int, int], int] = {}
    for a, b, bits in hash_pairs([hashes[k] for k in kept]):
        i, j = sorted((rows[kept[a]], rows[kept[b]]))
        if i != j and bits < best.get((i, j), bits + 1):
            best[(i, j)] = bits
    return sorted((i, j, bits) for (i, j), bits in best.items())
