"""The scores of a data audit, computed from embeddings, perceptual hashes and out-of-fold
probabilities: near-duplicate pairs, off-topic images and label issues. Pure arrays in, ranked
tables out; :mod:`dermkit.engine.audit` computes the inputs and writes the audit folder.

What comes from where (DESIGN.md, "Data audit"):

- **Near-duplicates** follow SelfClean (Gröger et al., 2023): pairs of images ranked by their
  distance in a pre-trained embedding space (cosine), here joined by a second, independent
  distance, the perceptual hash's bit count (:mod:`dermkit.data.hashes`), which catches resized
  and re-encoded copies whatever the encoder. One score ranks them, each distance measured against
  its own cut-off: ``s_hash = 1 - bits / (2 * max_bits)`` and ``s_cos = 0.5 + 0.5 * (cos - c) / (1 - c)``
  (``c`` the cosine cut-off), clipped to [0, 1]; ``score = max(s_hash, s_cos)``. So 1 is an
  identical picture, 0.5 is exactly at a cut-off and unrelated pairs fall towards 0. A pair is
  flagged within the hash cut-off, or above the cosine cut-off when the two are each other's
  nearest image (:meth:`PairStats.flagged`). The distributions of both distances over all pairs are kept to
  say how many pairs of the collection lie beyond each cut-off.
- **Off-topic** images: isolation in the embedding space, the mean cosine distance to the ``k``
  nearest neighbours (SelfClean ranks with a single-linkage dendrogram (LAD); the k-NN distance
  is the simpler isolation score its paper compares against, needs no dendrogram of all pairs
  and is easy to explain).
- **Label issues**: Confident Learning (Northcutt et al., 2021) through cleanlab, on out-of-fold
  probabilities: ``cleanlab.rank.get_label_quality_scores`` (self-confidence) for the ranking,
  ``cleanlab.filter.find_label_issues`` for the count at Confident Learning's own cut-off.

SelfClean itself is not a dependency: it pins transformers 4.27 and downloads DINO weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dermkit.data.hashes import pair_bits
from dermkit.errors import DataError

__all__ = [
    "PairStats",
    "near_duplicate_pairs",
    "mutual_nearest_pairs",
    "off_topic_scores",
    "isolation_cutoff",
    "label_issue_scores",
]

_BINS = 4096  # cosine similarity histogram over [-1, 1] for the empirical p-values


@dataclass
class PairStats:
    """Distributions over all ``n_pairs`` image pairs: counts of pHash bit distances and a
    histogram of embedding cosine similarities (for the empirical p-values of the score)."""

    n_pairs: int
    bit_counts: np.ndarray  # (HASH_BITS + 1,) pairs at each bit distance
    cos_counts: np.ndarray  # (_BINS,) pairs per cosine bin over [-1, 1]
    max_bits: int = 0  # the pHash cut-off
    min_cosine: float = 1.0  # the embedding cut-off
    candidates: dict = field(default_factory=dict)  # (i, j) -> (bits, cosine)
    nearest: np.ndarray | None = None  # each image's nearest other image in the embedding space

    def mutual(self, i: int, j: int) -> bool:
        """True when ``i`` and ``j`` are each other's nearest neighbour in the embedding space."""
        return self.nearest is not None and self.nearest[i] == j and self.nearest[j] == i

    def flagged(self, i: int, j: int, bits: int, cosine: float) -> bool:
        """A pair within the hash cut-off, or above the cosine cut-off *and* mutual nearest
        neighbours (in a dense class, such as HAM10000's nevi, many pairs of different lesions pass
        a cosine cut-off that keeps 95% of planted copies; a copy is its original's nearest image)."""
        return bits <= self.max_bits or (cosine >= self.min_cosine and self.mutual(i, j))

    def p_bits(self, bits: int) -> float:
        """Share of pairs at most ``bits`` apart in their perceptual hashes."""
        return float(self.bit_counts[: int(bits) + 1].sum()) / self.n_pairs

    def p_cos(self, cosine: float) -> float:
        """Share of pairs at least this similar in the embedding space."""
        b = min(_BINS - 1, max(0, int((cosine + 1.0) / 2.0 * _BINS)))
        return float(self.cos_counts[b:].sum()) / self.n_pairs

    def score(self, bits: int, cosine: float) -> float:
        """One near-duplicate score in [0, 1] (see the module docstring; >= 0.5: flagged)."""
        s_hash = 1.0 - bits / (2.0 * self.max_bits) if self.max_bits > 0 else float(bits == 0)
        c = self.min_cosine
        s_cos = 0.5 + 0.5 * (cosine - c) / (1.0 - c) if c < 1.0 else float(cosine >= 1.0)
        return float(min(1.0, max(0.0, s_hash, s_cos)))


def near_duplicate_pairs(embeddings: np.ndarray, hashes: np.ndarray, max_bits: int, min_cosine: float,
                         neighbours: int = 5, block: int = 512) -> PairStats:
    """All pairs ``i < j`` compared once, in blocks: the distributions of both distances, and as
    candidates the pairs within ``max_bits`` pHash bits, at or above ``min_cosine``, or among each
    image's ``neighbours`` nearest in the embedding space (so the top of the ranking is filled
    even when nothing passes a cut-off)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(emb)
    if n < 2:
        raise DataError(f"a near-duplicate search needs at least 2 images, got {n}")
    if len(hashes) != n:
        raise DataError(f"{len(hashes)} hashes for {n} embeddings")
    bit_counts = np.zeros(hashes.shape[-1] * 64 + 1, dtype=np.int64)
    cos_counts = np.zeros(_BINS, dtype=np.int64)
    candidates: dict[tuple[int, int], tuple[int, float]] = {}
    k = max(0, min(neighbours, n - 1))
    nearest = np.zeros(n, dtype=np.int64)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        cos = emb[rows] @ emb.T
        bits = pair_bits(hashes, rows).astype(np.int64)
        ii = np.arange(rows.start, rows.stop)[:, None]
        upper = np.arange(n)[None, :] > ii  # each pair once
        bit_counts += np.bincount(bits[upper], minlength=len(bit_counts))
        cos_counts += np.bincount(np.clip(((cos[upper] + 1.0) / 2.0 * _BINS).astype(np.int64), 0, _BINS - 1),
                                  minlength=_BINS)
        hit = upper & ((bits <= max_bits) | (cos >= min_cosine))
        masked = np.where(np.arange(n)[None, :] == ii, -np.inf, cos)
        nearest[rows] = masked.argmax(axis=1)
        if k:
            top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
            hit[np.arange(len(top))[:, None], top] = True
        for a, b in zip(*np.nonzero(hit)):
            i, j = sorted((int(a) + start, int(b)))
            if i != j:  # both distances are symmetric: the block's cell holds them
                candidates[(i, j)] = (int(bits[a, b]), float(cos[a, b]))
    return PairStats(n * (n - 1) // 2, bit_counts, cos_counts, max_bits, float(min_cosine), candidates, nearest)


def mutual_nearest_pairs(embeddings: np.ndarray, min_cosine: float, block: int = 512) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, ``i < j``, of images that are each other's nearest image and whose
    (L2-normalised) embeddings reach ``min_cosine``: the embedding-only rule of the audit's flags."""
    emb = np.asarray(embeddings, dtype=np.float32)
    n = len(emb)
    if n < 2:
        return []
    nearest = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float32)
    for start in range(0, n, block):
        cos = emb[start:start + block] @ emb.T
        cos[np.arange(len(cos)), np.arange(start, start + len(cos))] = -np.inf
        nearest[start:start + len(cos)] = cos.argmax(axis=1)
        best[start:start + len(cos)] = cos.max(axis=1)
    return [(i, int(nearest[i]), float(best[i])) for i in range(n)
            if i < nearest[i] and nearest[nearest[i]] == i and best[i] >= min_cosine]


def off_topic_scores(embeddings: np.ndarray, k: int = 10, block: int = 1024) -> np.ndarray:
    """Mean cosine distance of each image to its ``k`` nearest other images (higher = more
    isolated from the rest of the collection)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    n = len(emb)
    if n < 2:
        raise DataError(f"an off-topic ranking needs at least 2 images, got {n}")
    k = max(1, min(k, n - 1))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, block):
        cos = emb[start:start + block] @ emb.T
        cos[np.arange(len(cos)), np.arange(start, start + len(cos))] = -np.inf
        top = -np.partition(-cos, k - 1, axis=1)[:, :k]
        out[start:start + len(cos)] = 1.0 - top.mean(axis=1)
    return out


def isolation_cutoff(scores: np.ndarray, factor: float = 3.0) -> float:
    """Tukey's far-out fence on the scores: ``Q3 + factor * (Q3 - Q1)``."""
    q1, q3 = np.percentile(np.asarray(scores, dtype=np.float64), [25, 75])
    return float(q3 + factor * (q3 - q1))


def label_issue_scores(labels: Sequence[int], oof_proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(score, is_issue)`` per image from out-of-fold probabilities: ``score = 1 - label
    quality`` (cleanlab's self-confidence; higher = more likely mislabelled) and Confident
    Learning's own decision (``find_label_issues``, prune by noise rate)."""
    from cleanlab.filter import find_label_issues  # imports sklearn/pandas helpers: only when auditing
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    proba = np.asarray(oof_proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(labels):
        raise DataError(f"out-of-fold probabilities of shape {proba.shape} for {len(labels)} labels")
    if proba.shape[1] < 2 or len(np.unique(labels)) < 2:
        raise DataError("label issues need at least two classes with images")
    quality = get_label_quality_scores(labels, proba, method="self_confidence")
    issues = find_label_issues(labels, proba, filter_by="prune_by_noise_rate")
    return 1.0 - quality, np.asarray(issues, dtype=bool)
