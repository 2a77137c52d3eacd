"""Text-side helpers of vision-language encoders: embed texts, class prompt ensembles, zero-shot scores.

Everything here works on the encoder interface (``tokenize`` / ``encode_text`` / ``logit_scale``)
of :func:`dermkit.models.encoders.load_encoder`, so zero-shot classification, prompt learning,
contrastive training, retrieval and fusion's metadata sentences embed text the same way.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from dermkit.errors import DataError, ModelError

__all__ = ["require_text", "encode_texts", "class_embeddings", "zeroshot_proba"]


def require_text(enc, what: str = "zero-shot classification") -> None:
    """ModelError unless ``enc`` has a text encoder."""
    if not getattr(enc, "has_text", False):
        raise ModelError(
            f"{what} needs a vision-language model with a text encoder, but {enc.name!r} is "
            "image-only; use a CLIP-style model (hf-hub:ORG/NAME, openclip:ARCH or a CLIP folder), "
            "or a linear probe (method: linear_probe, `dermkit probe`) for image-only encoders"
        )


@torch.inference_mode()
def encode_texts(enc, texts: Sequence[str], batch_size: int = 256, unique: bool = False) -> torch.Tensor:
    """L2-normalised text embeddings (N, D) float32 on the CPU.

    ``unique=True`` embeds each distinct text once (metadata sentences repeat a lot).
    """
    require_text(enc, "encoding text")
    texts = list(texts)
    if unique:
        distinct = sorted(set(texts))
        table = encode_texts(enc, distinct, batch_size)
        index = {t: i for i, t in enumerate(distinct)}
        return table[[index[t] for t in texts]] if texts else table
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = enc.tokenize(texts[start:start + batch_size])
        out.append(enc.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, int(enc.embed_dim))


def class_embeddings(enc, prompts: Mapping[str, Sequence[str]], classes: Sequence[str] | None = None) -> torch.Tensor:
    """One embedding per class (C, D): mean of its normalised text embeddings, re-normalised
    (the CLIP_benchmark prompt ensemble)."""
    classes = list(prompts) if classes is None else list(classes)
    missing = [c for c in classes if not prompts.get(c)]
    if missing:
        raise DataError(f"no prompt texts for class(es) {', '.join(map(repr, missing))}; "
                        "give each class at least one name and template")
    texts = [t for c in classes for t in prompts[c]]
    emb = encode_texts(enc, texts)
    out, start = [], 0
    for c in classes:
        n = len(prompts[c])
        out.append(emb[start:start + n].mean(dim=0))
        start += n
    return torch.nn.functional.normalize(torch.stack(out), dim=-1)


def zeroshot_proba(image_features: np.ndarray, class_emb: torch.Tensor | np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over ``logit_scale * cosine`` (float64 rows summing to 1)."""
    img = torch.as_tensor(np.asarray(image_features), dtype=torch.float64)
    txt = torch.as_tensor(np.asarray(class_emb), dtype=torch.float64)
    logits = float(logit_scale) * img @ txt.T
    return torch.softmax(logits, dim=1).numpy()
