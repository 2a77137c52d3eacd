"""Multi-modal fusion network: per-modality tokens -> fusion -> class head + thickness head.

Inputs per case (any subset may be missing, per row):

- one embedding per image view (``derm``, ``clin``) from a frozen registry image encoder;
- metadata, either as typed tabular features (one token per field, see
  :class:`dermkit.data.multimodal.MetadataEncoder`) or as one text-encoder embedding of the
  metadata prompt.

Fusion (``fusion``):

``concat`` (default)
    each modality is projected to ``hidden`` (the metadata vector through a small MLP); a missing
    modality is replaced by a *learned* "missing" embedding of that modality (never zeros), the
    vectors are concatenated and mixed by an MLP into the shared features.
``cross_attention``
    as PanDerm-2's multimodal fine-tuning: metadata field tokens first pass a transformer with
    ``meta_num_heads`` heads and ``meta_depth`` layers; then a learned [CLS] token, the image
    tokens and the metadata tokens (each with a modality-type embedding) pass a transformer with
    ``num_heads`` heads and ``depth`` layers, so every modality attends to the others; the [CLS]
    output is the shared feature. Missing modalities are excluded through the attention key
    padding mask; [CLS] is never masked, so a case with a single modality is still defined.

Heads on the shared features: a linear classifier, and optionally a thickness head:

``ordinal`` (K bins)
    CORAL (Cao et al., 2020): one shared projection ``w.h`` plus K-1 ordered thresholds give
    the cumulative logits ``P(bin > k)``, trained with binary cross-entropy per threshold. The
    predicted bin is the number of thresholds passed (``P > 0.5``); ``expected_bin`` sums the
    cumulative probabilities. Sharing ``w`` makes the cumulative probabilities rank-consistent.
``regression``
    one linear output predicting the standardised thickness (train mean/sd in mm), trained
    with a smooth-L1 loss; predictions are clamped at 0 mm.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FusionNet", "coral_loss", "coral_predict", "FUSIONS"]

FUSIONS = ("concat", "cross_attention")
IMAGE_MODALITIES = ("derm", "clin")


class _FieldTokens(nn.Module):
    """One linear projection per metadata field: (B, sum widths) -> (B, n_fields, hidden)."""

    def __init__(self, widths: list[int], hidden: int):
        super().__init__()
        self.widths = list(widths)
        self.proj = nn.ModuleList(nn.Linear(w, hidden) for w in widths)
        self.field_embed = nn.Parameter(torch.zeros(len(widths), hidden))
        nn.init.normal_(self.field_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.widths, dim=1)
        return torch.stack([p(part) for p, part in zip(self.proj, parts)], dim=1) + self.field_embed


def _encoder(hidden: int, heads: int, depth: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=dropout,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class FusionNet(nn.Module):
    """See the module docstring. ``image_dims``: modality -> embedding size, for the views used."""

    def __init__(
        self,
        num_classes: int,
        image_dims: dict[str, int],
        meta_widths: list[int] | None = None,
        text_dim: int | None = None,
        hidden: int = 256,
        fusion: str = "concat",
        num_heads: int = 4,
        depth: int = 1,
        meta_num_heads: int = 4,
        meta_depth: int = 1,
        dropout: float = 0.1,
        thickness_kind: str | None = None,
        thickness_bins: int = 4,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}")
        if meta_widths is not None and text_dim is not None:
            raise ValueError("metadata comes either as tabular fields or as a text embedding, not both")
        self.fusion = fusion
        self.image_modalities = [m for m in IMAGE_MODALITIES if m in image_dims]
        self.use_meta = meta_widths is not None or text_dim is not None
        self.meta_kind = "tabular" if meta_widths is not None else "text" if text_dim is not None else None
        self.thickness_kind = thickness_kind
        self.thickness_bins = thickness_bins
        if not self.image_modalities and not self.use_meta:
            raise ValueError("a fusion model needs at least one modality")

        self.image_proj = nn.ModuleDict({
            m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout))
            for m, d in image_dims.items()
        })
        n_parts = len(self.image_modalities) + int(self.use_meta)
        if fusion == "concat":
            if meta_widths is not None:
                self.meta_proj = nn.Sequential(nn.Linear(sum(meta_widths), hidden), nn.GELU(), nn.Dropout(dropout),
                                               nn.Linear(hidden, hidden), nn.GELU())
            elif text_dim is not None:
                self.meta_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden), nn.GELU())
            self.missing = nn.Parameter(torch.zeros(n_parts, hidden))
            nn.init.normal_(self.missing, std=0.02)
            self.mix = nn.Sequential(nn.LayerNorm(n_parts * hidden), nn.Linear(n_parts * hidden, hidden), nn.GELU(),
                                     nn.Dropout(dropout))
        else:
            if meta_widths is not None:
                self.meta_tokens = _FieldTokens(meta_widths, hidden)
            elif text_dim is not None:
                self.meta_tokens = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
            if self.use_meta:
                self.meta_encoder = _encoder(hidden, meta_num_heads, meta_depth, dropout)
            self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
            self.type_embed = nn.Parameter(torch.zeros(n_parts, hidden))
            nn.init.normal_(self.cls, std=0.02)
            nn.init.normal_(self.type_embed, std=0.02)
            self.encoder = _encoder(hidden, num_heads, depth, dropout)
            self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        if thickness_kind == "ordinal":
            self.thickness_head = nn.Linear(hidden, 1, bias=False)
            self.thickness_bias = nn.Parameter(torch.linspace(1.0, -1.0, thickness_bins - 1))
        elif thickness_kind == "regression":
            self.thickness_head = nn.Linear(hidden, 1)
        elif thickness_kind is not None:
            raise ValueError("thickness_kind must be ordinal, regression or None")

    # ------------------------------------------------------------------ forward
    def features(self, images: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                 meta: torch.Tensor | None) -> torch.Tensor:
        """Shared features (B, hidden). ``present[m]`` is a (B,) bool mask per modality used."""
        parts, masks = [], []
        for m in self.image_modalities:
            parts.append(self.image_proj[m](images[m]))
            masks.append(present[m])
        batch = masks[0].shape[0] if masks else meta.shape[0]
        if self.fusion == "concat":
            if self.use_meta:
                parts.append(self.meta_proj(meta))
                masks.append(present["meta"])
            filled = [torch.where(mask[:, None], part, self.missing[i].to(part.dtype).expand_as(part))
                      for i, (part, mask) in enumerate(zip(parts, masks))]
            return self.mix(torch.cat(filled, dim=1))
        tokens = [p[:, None, :] + self.type_embed[i] for i, p in enumerate(parts)]
        keep = [mask[:, None] for mask in masks]
        if self.use_meta:
            meta_tok = self.meta_tokens(meta)
            if meta_tok.ndim == 2:
                meta_tok = meta_tok[:, None, :]
            meta_tok = self.meta_encoder(meta_tok) + self.type_embed[len(parts)]
            tokens.append(meta_tok)
            keep.append(present["meta"][:, None].expand(-1, meta_tok.shape[1]))
        cls = self.cls.expand(batch, -1, -1)
        seq = torch.cat([cls, *tokens], dim=1)
        keep_mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=seq.device), *keep], dim=1)
        out = self.encoder(seq, src_key_padding_mask=~keep_mask)
        return self.norm(out[:, 0])

    def forward(self, images: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                meta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.features(images, present, meta)
        out = {"logits": self.classifier(h)}
        if self.thickness_kind == "ordinal":
            out["thickness"] = self.thickness_head(h) + self.thickness_bias  # (B, K-1) cumulative logits
        elif self.thickness_kind == "regression":
            out["thickness"] = self.thickness_head(h)[:, 0]  # standardised thickness
        return out


def coral_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the summed binary cross-entropies ``[target > k]`` vs ``logits[:, k]``."""
    k = logits.shape[1]
    levels = (target[:, None] > torch.arange(k, device=logits.device)[None, :]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, levels, reduction="none").sum(dim=1).mean()


def coral_predict(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted bin, expected bin) from CORAL cumulative logits."""
    probs = torch.sigmoid(logits.float())
    return (probs > 0.5).sum(dim=1), probs.sum(dim=1)
