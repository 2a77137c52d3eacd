"""Image-text retrieval metrics: Recall@K, median and mean rank in both directions.

``similarity[i, j]`` scores image *i* against text *j* (higher = more similar, e.g. cosine
similarity of CLIP embeddings). The ground truth is either one-to-one (image *i* matches text
*i*) or, when an image has several captions or several images share a caption, one set of
correct text indices per image.

The rank of a query is the position of its best-scoring correct candidate: ``1 +`` the number
of *wrong* candidates that score higher than it **or equal** to it. Counting ties against the
model is deliberate: a degenerate model that gives every pair the same score gets the worst
rank instead of a perfect one. Recalls are fractions in [0, 1].

    >>> m = retrieval_metrics(np.eye(3))
    >>> m["image_to_text"]["R@1"], m["mean_recall"]
    (1.0, 1.0)
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..errors import DataError

__all__ = ["RECALL_AT", "retrieval_metrics", "retrieval_markdown", "query_ranks"]

RECALL_AT = (1, 5, 10)
# Rows of the similarity matrix processed at once (bounds the memory of the boolean masks).
_CHUNK = 2048


def _ground_truth_mask(ground_truth, n_images: int, n_texts: int) -> np.ndarray | None:
    """Boolean (n_images, n_texts) mask of correct pairs, or None for the one-to-one diagonal."""
    if ground_truth is None:
        if n_images != n_texts:
            raise DataError(
                f"similarity is {n_images}x{n_texts}: the default one-to-one ground truth needs a "
                "square matrix; pass ground_truth (a set of correct text indices per image)"
            )
        return None
    if isinstance(ground_truth, np.ndarray) and ground_truth.dtype == bool:
        if ground_truth.shape != (n_images, n_texts):
            raise DataError(
                f"ground_truth mask has shape {ground_truth.shape}, expected {(n_images, n_texts)}"
            )
        mask = ground_truth.copy()
    else:
        items = list(ground_truth)
        if len(items) != n_images:
            raise DataError(
                f"ground_truth lists {len(items)} images but the similarity matrix has {n_images} rows"
            )
        mask = np.zeros((n_images, n_texts), dtype=bool)
        for i, texts in enumerate(items):
            indices = [int(texts)] if np.isscalar(texts) else [int(t) for t in texts]
            bad = [t for t in indices if not 0 <= t < n_texts]
            if bad:
                raise DataError(f"ground_truth[{i}] has text index {bad[0]} outside 0..{n_texts - 1}")
            mask[i, indices] = True
    no_text = np.flatnonzero(~mask.any(axis=1))
    if len(no_text):
        raise DataError(f"image {int(no_text[0])} has no correct text in ground_truth; every image needs one")
    no_image = np.flatnonzero(~mask.any(axis=0))
    if len(no_image):
        raise DataError(
            f"text {int(no_image[0])} is the correct text of no image; drop it from the similarity "
            "matrix or add it to ground_truth"
        )
    return mask


def query_ranks(similarity: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """1-based rank of the best correct candidate for every row (query) of ``similarity``.

    ``mask`` marks correct (row, column) pairs; None means the diagonal. Ties with wrong
    candidates count against the query (see the module docstring).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    n_rows = sim.shape[0]
    ranks = np.empty(n_rows, dtype=np.int64)
    for start in range(0, n_rows, _CHUNK):
        stop = min(n_rows, start + _CHUNK)
        block = sim[start:stop]
        if mask is None:
            correct = np.zeros_like(block, dtype=bool)
            correct[np.arange(stop - start), np.arange(start, stop)] = True
        else:
            correct = mask[start:stop]
        best = np.where(correct, block, -np.inf).max(axis=1, keepdims=True)
        ranks[start:stop] = 1 + ((block >= best) & ~correct).sum(axis=1)
    return ranks


def _summary(ranks: np.ndarray, recall_at: Sequence[int]) -> dict:
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in recall_at}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


def retrieval_metrics(
    similarity: np.ndarray,
    ground_truth: Iterable[Iterable[int]] | np.ndarray | None = None,
    recall_at: Sequence[int] = RECALL_AT,
) -> dict:
    """Image→text and text→image R@1/5/10, median/mean rank, and their mean recall.

    ``similarity`` is (n_images, n_texts). ``ground_truth``: None for one-to-one pairs (square
    matrix, image *i* ↔ text *i*); a sequence giving, for each image, its correct text index or
    set of indices; or a boolean (n_images, n_texts) mask. Every image needs a correct text and
    every text a correct image. ``mean_recall`` is the mean of all R@K of both directions.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise DataError(f"similarity must be a non-empty 2-D (images x texts) matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise DataError("similarity has NaN or infinite scores; check the embeddings")
    n_images, n_texts = sim.shape
    mask = _ground_truth_mask(ground_truth, n_images, n_texts)
    i2t = _summary(query_ranks(sim, mask), recall_at)
    t2i = _summary(query_ranks(sim.T, None if mask is None else mask.T), recall_at)
    recalls = [d[f"R@{k}"] for d in (i2t, t2i) for k in recall_at]
    return {
        "image_to_text": i2t,
        "text_to_image": t2i,
        "mean_recall": float(np.mean(recalls)),
        "n_images": int(n_images),
        "n_texts": int(n_texts),
        "ground_truth": "one-to-one" if mask is None else "sets",
        "ties": "counted against the query (pessimistic rank)",
    }


def retrieval_markdown(metrics: dict, title: str = "Retrieval") -> str:
    """A small Markdown table of :func:`retrieval_metrics` output (recalls in %)."""
    keys = [k for k in metrics["image_to_text"] if k.startswith("R@")]
    header = ["Direction", *keys, "Median rank", "Mean rank"]
    lines = [f"# {title}", "",
             f"- Images: {metrics['n_images']}, texts: {metrics['n_texts']} "
             f"(ground truth: {metrics['ground_truth']})",
             f"- Mean recall: {100 * metrics['mean_recall']:.2f}%", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, key in (("image → text", "image_to_text"), ("text → image", "text_to_image")):
        d = metrics[key]
        cells = [f"{100 * d[k]:.2f}" for k in keys] + [f"{d['median_rank']:g}", f"{d['mean_rank']:.1f}"]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines += ["", "Recall@K in %; ties with wrong candidates count against the query."]
    return "\n".join(lines) + "\n"
