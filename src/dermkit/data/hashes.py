"""Perceptual hashes of images and the near-duplicate pairs they reveal.

A perceptual hash (imagehash's pHash with ``hash_size=16``: the signs of the 16x16 lowest
frequencies of the DCT of a 64x64 grey thumbnail, against their median; 256 bits) stays within a
few bits when an image is resized, re-compressed or slightly brightened, where a byte digest
changes completely. Each image keeps two hashes, of itself and of its mirror image, so a
horizontally flipped copy is found too. Crops and colour shifts move a pHash further: the audit's
embeddings (``dermkit data audit``) find those.

Why 256 bits and not imagehash's default 64: dermoscopic images share their low-frequency layout
(a dark round lesion on skin, dark corners), so on HAM10000 the 64-bit pHashes of different
lesions came within 2-4 bits for ~60 of 4.5 M pairs, as close as re-encoded copies. At 256 bits
(measured on 3,000 HAM10000 images and 150 of them copied 4 ways): resized (0.5-0.9x),
re-encoded (JPEG 40-70), brightened (+12%) and mirrored copies differ in at most 16 bits, the
closest pair of different lesions in 32 (second photos of one lesion: 6-24).

``hash_pairs`` compares every pair of images in blocks (XOR + popcount on uint64 words).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

__all__ = ["HASH_BITS", "NEAR_DUPLICATE_BITS", "perceptual_hash", "pair_bits", "hash_pairs", "hash_distance"]

HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
#: Largest Hamming distance (of 256 bits) read as "the same picture" (see the module docstring:
#: copies <= 16 bits, different lesions >= 32).
NEAR_DUPLICATE_BITS = 22
_WORDS = HASH_BITS // 64


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """The pHash of the image and of its mirror image: ``(2, 4)`` uint64 words (256 bits each).

    Equal to ``imagehash.phash(image, hash_size=16)``: the grey 64x64 thumbnail is made once and
    mirrored, so the second hash costs a DCT of a thumbnail, not a second resize of the image.
    """
    import imagehash  # imports scipy.fftpack: only when hashing

    side = HASH_SIZE * 4  # imagehash.phash's highfreq_factor
    thumb = image.convert("L").resize((side, side), Image.Resampling.LANCZOS)
    return np.stack([_words(imagehash.phash(thumb, hash_size=HASH_SIZE)),
                     _words(imagehash.phash(ImageOps.mirror(thumb), hash_size=HASH_SIZE))])


def _words(h) -> np.ndarray:
    return np.packbits(np.asarray(h.hash, dtype=bool).reshape(-1)).view(">u8").astype(np.uint64)


def hash_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Bits that differ between two images' hashes, the smaller of as-is and mirrored."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    return int(min(np.bitwise_count(a[0] ^ b[0]).sum(), np.bitwise_count(a[0] ^ b[1]).sum()))


def pair_bits(hashes: np.ndarray, rows: slice) -> np.ndarray:
    """Bit distances ``(len(rows), N)`` between the images in ``rows`` and every image, the
    smaller of as-is and mirrored; popcounts are added one 64-bit word at a time into uint16 (no
    3-D temporary: about 3x faster than summing over a word axis)."""
    plain, mirrored = hashes[:, 0], hashes[:, 1]
    block = plain[rows]
    as_is = np.zeros((len(block), len(hashes)), dtype=np.uint16)
    flipped = np.zeros_like(as_is)
    for w in range(hashes.shape[-1]):
        as_is += np.bitwise_count(block[:, w, None] ^ plain[None, :, w])
        flipped += np.bitwise_count(block[:, w, None] ^ mirrored[None, :, w])
    return np.minimum(as_is, flipped)


def hash_pairs(hashes: Sequence[np.ndarray] | np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS,
               block: int = 1024) -> list[tuple[int, int, int]]:
    """Every pair ``(i, j, bits)`` with ``i < j`` whose hashes differ in at most ``max_bits`` bits
    (as-is or one of them mirrored), sorted by ``bits`` then ``i``, ``j``."""
    arr = np.asarray(hashes, dtype=np.uint64).reshape(-1, 2, _WORDS)
    out: list[tuple[int, int, int]] = []
    for start in range(0, len(arr), block):
        bits = pair_bits(arr, slice(start, min(len(arr), start + block)))
        ii, jj = np.nonzero(bits <= max_bits)
        keep = ii + start < jj
        ii, jj = ii[keep], jj[keep]
        out.extend(zip((ii + start).tolist(), jj.tolist(), bits[ii, jj].astype(int).tolist()))
    out.sort(key=lambda t: (t[2], t[0], t[1]))
    return out
