"""Image-text retrieval with a vision-language encoder, and ranking texts for one image.

An encoder's evaluation, not a method (nothing is trained, no classifier is saved): it embeds
with the feature cache (:mod:`dermkit.engine.features`) and scores with
:mod:`dermkit.evaluate.retrieval`. ``run_retrieval`` pairs every image of a split with one
caption made from its metadata (:func:`dermkit.data.captions.captions_for_split`), embeds both
sides and scores the cosine similarity matrix with
:func:`dermkit.evaluate.retrieval.retrieval_metrics`. Metadata captions are often identical for
different images (same diagnosis, site, age and sex), so an image counts every text with exactly
its caption as correct, and vice versa, instead of only its own copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from dermkit import io
from dermkit.data.captions import captions_for_split
from dermkit.data.card import load_card
from dermkit.data.images import open_image
from dermkit.engine.features import extract_split_features
from dermkit.errors import DataError
from dermkit.evaluate.retrieval import query_ranks, retrieval_markdown, retrieval_metrics
from dermkit.models.encoders import load_encoder
from dermkit.models.text import encode_texts, require_text

__all__ = ["caption_ground_truth", "run_retrieval", "rank_texts"]


def caption_ground_truth(captions: Sequence[str]) -> list[list[int]]:
    """For image *i* (whose caption is ``captions[i]``): indices of all identical captions."""
    where: dict[str, list[int]] = {}
    for j, text in enumerate(captions):
        where.setdefault(text, []).append(j)
    return [where[text] for text in captions]


def run_retrieval(
    model_spec: str,
    dataset: str | os.PathLike,
    split: str = "test",
    out_dir: str | os.PathLike = "runs/retrieval",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
    enc=None,
) -> dict:
    """Image↔caption retrieval metrics for one dataset split; returns the metrics dict.

    Writes ``out_dir/metrics.json`` (R@1/5/10, median/mean rank per direction, mean recall,
    plus model/dataset provenance), ``out_dir/retrieval.md`` (a small table) and
    ``out_dir/captions.csv`` (image, caption, rank of the correct caption for that image).
    ``seed`` fixes the caption wording. ``enc`` skips loading ``model_spec``.
    """
    if enc is None:
        enc = load_encoder(model_spec, device=device)
    require_text(enc, "image-text retrieval")
    card = load_card(dataset)
    captions = captions_for_split(card, split, seed)
    images, _, rows = extract_split_features(enc, card, split, cache_dir=cache_dir, progress=progress)
    texts = encode_texts(enc, captions).numpy()
    similarity = images.astype(np.float64) @ texts.astype(np.float64).T
    truth = caption_ground_truth(captions)
    metrics = retrieval_metrics(similarity, truth)
    mask = np.zeros(similarity.shape, dtype=bool)
    for i, js in enumerate(truth):
        mask[i, js] = True
    ranks = query_ranks(similarity, mask)
    metrics.update({"model": model_spec, "encoder": enc.name, "fingerprint": enc.fingerprint,
                    "dataset": card.name, "split": split, "caption_seed": seed,
                    "unique_captions": int(len(set(captions)))})
    out = Path(out_dir)
    io.write_json(out / "metrics.json", metrics)
    io.write_csv(out / "captions.csv", pd.DataFrame({"image": rows["image"].tolist(), "caption": captions,
                                                      "image_to_text_rank": ranks}))
    io.write_text(out / "retrieval.md", retrieval_markdown(
        metrics, title=f"Retrieval: {enc.name} on {card.name} ({split} split, metadata captions)"))
    return metrics


@torch.inference_mode()
def rank_texts(enc, image_path: str | os.PathLike, texts: Sequence[str]) -> list[tuple[str, float]]:
    """``(text, cosine similarity)`` for one image, best match first."""
    require_text(enc, "ranking texts")
    texts = [str(t) for t in texts]
    if not texts:
        raise DataError("no texts to rank; pass at least one candidate text")
    pixels = enc.preprocess(open_image(image_path)).unsqueeze(0)
    device = getattr(enc, "device", None) or next(enc.module.parameters()).device
    image = enc.encode_image(pixels.to(device), normalize=True).float().cpu()
    scores = (image @ encode_texts(enc, texts).T)[0].tolist()
    return sorted(zip(texts, (float(s) for s in scores)), key=lambda pair: -pair[1])
