"""Multi-modal fusion (dermoscopic + clinical image + metadata) with a multi-task thickness head.

What PanDerm-2's multimodal fine-tuning and Derma-Fusion-Net do, on dermkit's cards: every image
view goes through a frozen registry image encoder (``timm:tf_efficientnet_lite0`` with offline
ImageNet weights, a DINO ViT, a dermkit-CLIP image tower...), whose pooled embeddings are cached
on disk (:mod:`dermkit.engine.features`), so training the fusion network and heads takes seconds
per epoch on a CPU. Metadata enters as typed tabular features or as a text prompt embedded by a
CLIP text encoder. The network (:class:`dermkit.models.fusion.FusionNet`) fuses by concatenation
or cross-attention and predicts the class and, where the card has a target, the Breslow thickness
(regression in mm from a ``thickness`` column, else Derm7pt's ordinal ``breslow_ordinal``).

Modality dropout: during training each available modality of a case is hidden with probability
``modality_dropout`` (at least one always stays), so the model still predicts when a view or the
metadata is missing at inference; missing inputs are masked, and every prediction says which
modalities it used. Loss = ``alpha`` x class cross-entropy + ``beta`` x thickness loss, the
thickness loss averaged over the rows that have a target only (Derm7pt: melanomas with a bin).

Outputs of a run folder: ``model/`` (safetensors + model.json, ``"method": "fusion"``),
``eval/test/`` (classification report + ``thickness.*``, written by the run's test report since
the predictions carry the thickness), ``modality_subsets.csv`` (test metrics when only some
modalities are given), ``history.csv``, ``summary.json``.
"""

from __future__ import annotations

import itertools
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from dermkit.data.card import DatasetCard
from dermkit.data.multimodal import (
    ORDINAL_BINS,
    MetadataEncoder,
    MultiModalRows,
    build_rows,
    fusion_meta_columns,
    view_columns,
)
from dermkit.engine.batching import index_batches, steps_per_epoch
from dermkit.engine.features import extract_features
from dermkit.engine.loop import EngineConfig
from dermkit.engine.losses import classification_criterion
from dermkit.errors import ConfigError, DataError, ModelError
from dermkit.evaluate import classification_metrics
from dermkit.io import write_csv
from dermkit.methods.base import ClassifierConfig, Method, Predictions, Predictor, register_method
from dermkit.models.checkpoint import MODEL_WEIGHTS, load_tensors, read_model_card
from dermkit.models.encoders import load_encoder
from dermkit.models.fusion import FUSIONS, FusionNet
from dermkit.models.integrity import state_dict_problem
from dermkit.models.text import encode_texts
from dermkit.models.thickness import thickness_loss, thickness_values
from dermkit.runtime import epoch_seed, resolve_device

__all__ = ["FusionConfig", "Fusion", "load_fusion_predictor", "FusionPredictor",
           "load_image_encoder", "DEFAULT_TEXT_ENCODER"]

DEFAULT_TEXT_ENCODER = "runs/dermkit_clip/model"
MODALITY_NAMES = {"derm": "derm", "clin": "clin", "meta": "meta"}


def _default_engine() -> EngineConfig:
    return EngineConfig(epochs=40, lr=1e-3, weight_decay=0.05, warmup_epochs=2, patience=12,
                        channels_last=False, precision="fp32", select_metric="balanced_accuracy")


@dataclass
class FusionConfig(ClassifierConfig):
    """Keys of a ``method: fusion`` config (engine keys may sit at the top level)."""

    data: str = "derm7pt"
    task: str | None = "all"  # all | melanoma_vs_rest | binary:CLASS
    image_encoder: str = "timm:tf_efficientnet_lite0"  # any load_encoder spec
    image_weights: str | None = None  # local safetensors for a timm architecture (e.g. DINO ViT weights)
    use_derm: bool = True
    use_clinical: bool = False
    use_meta: bool = False
    meta_encoder: str = "tabular"  # tabular | text
    text_encoder: str | None = None  # CLIP folder for meta_encoder: text (default: runs/dermkit_clip/model)
    meta_columns: list[str] | None = None  # default: the card's metadata columns minus label-leaking ones
    meta_exclude: list[str] = field(default_factory=list)
    fusion: str = "concat"  # concat | cross_attention
    hidden: int = 256
    num_heads: int = 4
    depth: int = 1
    meta_num_heads: int = 4
    meta_depth: int = 1
    dropout: float = 0.2
    modality_dropout: float = 0.25
    thickness: str = "auto"  # auto (a head when the card has a target) | none
    alpha: float = 1.0  # weight of the classification loss
    beta: float = 0.5  # weight of the thickness loss
    batch_size: int = 32
    label_smoothing: float = 0.1
    imbalance: str = "weighted_loss"  # weighted_loss | none
    feature_noise: float = 0.0  # std of Gaussian noise added to image embeddings while training
    cache_dir: str | None = None
    engine: EngineConfig = field(default_factory=_default_engine)

    def model_specs(self) -> dict[str, str]:
        specs = {"image_encoder": self.image_encoder}
        if self.use_meta and self.meta_encoder == "text":
            specs["text_encoder"] = self.text_encoder or DEFAULT_TEXT_ENCODER
        return specs

    @property
    def modalities(self) -> list[str]:
        return [m for m, on in (("derm", self.use_derm), ("clin", self.use_clinical), ("meta", self.use_meta)) if on]

    def validate(self) -> None:
        super().validate()
        if not self.modalities:
            raise ConfigError("no modality enabled; set at least one of use_derm, use_clinical, use_meta to true")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.meta_encoder not in ("tabular", "text"):
            raise ConfigError(f"meta_encoder must be tabular or text, got {self.meta_encoder!r}")
        if self.thickness not in ("auto", "none"):
            raise ConfigError(f"thickness must be auto or none, got {self.thickness!r}")
        if self.imbalance not in ("weighted_loss", "none"):
            raise ConfigError(f"imbalance must be weighted_loss or none, got {self.imbalance!r}")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            raise ConfigError("alpha and beta (loss weights) must be >= 0 and not both 0")
        for heads, name in ((self.num_heads, "num_heads"), (self.meta_num_heads, "meta_num_heads")):
            if heads < 1 or self.hidden % heads:
                raise ConfigError(f"{name}={heads} must divide hidden={self.hidden}")
        if self.depth < 1 or self.meta_depth < 1:
            raise ConfigError("depth and meta_depth must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")


def modality_text(modalities: Sequence[str]) -> str:
    return "+".join(MODALITY_NAMES[m] for m in modalities) or "none"


# ------------------------------------------------------------------------------ encoders


def load_image_encoder(spec: str, weights: str | None = None, device: str = "cpu"):
    """A frozen image encoder from any model spec (``timm:ARCH.TAG`` reads timm's tagged weights,
    e.g. DINO, from the local HF cache; ``weights`` is a local safetensors file for a timm spec)."""
    return load_encoder(spec, device=device, weights=weights)


def _text_encoder(spec: str | None, device: str = "cpu"):
    spec = spec or DEFAULT_TEXT_ENCODER
    if not Path(spec).expanduser().exists() and ":" not in spec:
        raise ModelError(
            f"text encoder {spec!r} not found for meta_encoder: text; train dermkit-CLIP (it writes "
            f"{DEFAULT_TEXT_ENCODER}) or set text_encoder: to a CLIP model folder, or use meta_encoder: tabular"
        )
    enc = load_encoder(spec, device=device)
    if not enc.has_text:
        raise ModelError(f"{spec} has no text encoder; meta_encoder: text needs a CLIP-style model folder")
    return enc


def encode_prompts(enc, prompts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings (N, D) of metadata prompts (identical prompts encoded once)."""
    return encode_texts(enc, prompts, batch_size=128, unique=True).numpy().astype(np.float32)


def _image_features(enc, paths: Sequence[Path | None], cache_dir, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) embeddings (zeros where the view is missing) and the (N,) presence mask."""
    present = np.array([p is not None for p in paths], dtype=bool)
    feats = np.zeros((len(paths), enc.embed_dim), dtype=np.float32)
    if present.any():
        feats[present] = extract_features(enc, [p for p in paths if p is not None], cache_dir=cache_dir,
                                          progress=progress)
    return feats, present


# ------------------------------------------------------------------------------ tensors of one split


@dataclass
class _Split:
    images: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    meta: torch.Tensor | None
    labels: torch.Tensor
    thickness: torch.Tensor  # NaN = no target
    rows: MultiModalRows

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> dict:
        return {"images": {m: v[idx] for m, v in self.images.items()},
                "present": {m: v[idx] for m, v in self.present.items()},
                "meta": None if self.meta is None else self.meta[idx],
                "labels": self.labels[idx], "thickness": self.thickness[idx]}


def _inputs(rows: MultiModalRows, modalities: Sequence[str], image_enc, text_enc, meta_kind: str | None,
            cache_dir, progress: bool) -> tuple[dict, dict, torch.Tensor | None]:
    images, present = {}, {}
    for m in modalities:
        if m == "meta":
            continue
        feats, mask = _image_features(image_enc, rows.views[m], cache_dir, progress)
        images[m], present[m] = torch.from_numpy(feats), torch.from_numpy(mask)
    meta = None
    if "meta" in modalities:
        if meta_kind == "text":
            meta = torch.from_numpy(encode_prompts(text_enc, rows.prompts))
        else:
            meta = torch.from_numpy(rows.meta)
        present["meta"] = torch.ones(len(rows), dtype=torch.bool)
    return images, present, meta


# ------------------------------------------------------------------------------ training


def modality_dropout(present: dict[str, torch.Tensor], p: float, generator: torch.Generator | None = None):
    """Hide each available modality of each row with probability ``p``, keeping at least one."""
    if p <= 0 or not present:
        return present
    names = list(present)
    avail = torch.stack([present[m] for m in names], dim=1)
    keep = avail & (torch.rand(avail.shape, generator=generator, device=avail.device) >= p)
    empty = ~keep.any(dim=1) & avail.any(dim=1)
    if empty.any():
        score = torch.rand(avail.shape, generator=generator, device=avail.device) * avail
        pick = F.one_hot(score.argmax(dim=1), len(names)).bool()
        keep = torch.where(empty[:, None], pick & avail, keep)
    return {m: keep[:, i] for i, m in enumerate(names)}


def _loss(model: FusionNet, batch: dict, criterion, cfg: FusionConfig, thickness_stats: dict | None) -> torch.Tensor:
    out = model(batch["images"], batch["present"], batch["meta"])
    loss = cfg.alpha * criterion(out["logits"], batch["labels"])
    if model.thickness_kind is not None and cfg.beta > 0:  # averaged over the rows with a target only
        loss = loss + cfg.beta * thickness_loss(model.thickness_kind, out["thickness"], batch["thickness"],
                                                thickness_stats)
    return loss


@torch.inference_mode()
def _forward_all(model: FusionNet, split: _Split, device, batch_size: int = 512,
                 present: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    model.eval()
    logits, thick = [], []
    n = len(split)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        b = split.take(idx)
        if present is not None:
            b["present"] = {m: present[m][idx] for m in b["present"]}
        out = model({m: v.to(device) for m, v in b["images"].items()},
                    {m: v.to(device) for m, v in b["present"].items()},
                    None if b["meta"] is None else b["meta"].to(device))
        logits.append(out["logits"].float().cpu())
        if "thickness" in out:
            thick.append(out["thickness"].float().cpu())
    result = {"proba": torch.softmax(torch.cat(logits), dim=1).double().numpy() if logits else np.zeros((0, 0))}
    if thick:
        result["thickness_raw"] = torch.cat(thick).numpy()
    return result


def _train_fusion(cfg: FusionConfig, run) -> "FusionPredictor":
    """Train on train, select on val; the modality-subset table of the selected model on test."""
    from dermkit.evaluate.thickness import thickness_metrics  # matplotlib: loaded only when training

    progress = run.progress
    out_dir = run.out_dir
    card = run.card()
    classes = card.classes
    modalities = cfg.modalities
    image_modalities = [m for m in modalities if m != "meta"]
    views = view_columns(card)
    for m in image_modalities:
        if views[m] is None:
            flag = "use_derm" if m == "derm" else "use_clinical"
            raise ConfigError(
                f"{flag}: true but dataset {card.name} has no {'dermoscopic' if m == 'derm' else 'clinical'} images "
                f"(modality {card.modality!r}, second_view_column {card.second_view_column!r}); set {flag}: false"
                + (", or declare second_view_column in its dataset.yaml" if m == "clin" else "")
            )

    meta_enc = None
    if "meta" in modalities:
        columns = fusion_meta_columns(card, cfg.meta_columns, cfg.meta_exclude)
        if not columns:
            raise ConfigError(f"use_meta: true but {card.name} has no usable metadata columns; set use_meta: false")
        meta_enc = MetadataEncoder.fit(card.rows("train"), columns, card.missing_values, where=str(card.metadata_csv))
    text = "meta" in modalities and cfg.meta_encoder == "text"
    device = "cpu"
    image_enc = load_image_encoder(cfg.image_encoder, cfg.image_weights, device=device) if image_modalities else None
    text_enc = _text_encoder(cfg.text_encoder, device=device) if text else None

    splits: dict[str, _Split] = {}
    for name in ("train", "val", "test"):
        rows = build_rows(card, name, image_modalities, meta_enc, with_prompts=text)
        images, present, meta = _inputs(rows, modalities, image_enc, text_enc, cfg.meta_encoder, cfg.cache_dir,
                                        progress)
        splits[name] = _Split(images, present, meta, torch.tensor(rows.labels),
                              torch.tensor(rows.thickness, dtype=torch.float32), rows)
    train = splits["train"]
    kind = train.rows.thickness_kind if cfg.thickness == "auto" else None
    if kind is not None and not torch.isfinite(train.thickness).any():
        kind = None  # e.g. a binary task card whose table has the column but train has no targets
    thickness_stats = None
    if kind == "regression":
        t = train.thickness[torch.isfinite(train.thickness)]
        thickness_stats = {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 and float(t.std()) > 0 else 1.0}

    arch = {
        "num_classes": len(classes),
        "image_dims": {m: int(train.images[m].shape[1]) for m in image_modalities},
        "meta_widths": meta_enc.field_widths if meta_enc is not None and not text else None,
        "text_dim": int(train.meta.shape[1]) if text else None,
        "hidden": cfg.hidden, "fusion": cfg.fusion, "num_heads": cfg.num_heads, "depth": cfg.depth,
        "meta_num_heads": cfg.meta_num_heads, "meta_depth": cfg.meta_depth, "dropout": cfg.dropout,
        "thickness_kind": kind, "thickness_bins": len(ORDINAL_BINS),
    }
    torch.manual_seed(cfg.engine.seed)
    model = FusionNet(**arch)
    engine = run.engine(model)
    dev = engine.device
    for s in splits.values():
        s.images = {m: v.to(dev) for m, v in s.images.items()}
        s.present = {m: v.to(dev) for m, v in s.present.items()}
        s.meta = None if s.meta is None else s.meta.to(dev)
        s.labels, s.thickness = s.labels.to(dev), s.thickness.to(dev)
    y_train = train.labels.cpu().numpy()
    criterion = classification_criterion(y_train, len(classes), cfg.imbalance, cfg.label_smoothing).to(dev)
    n_train = len(train)

    def make_batches(epoch: int):
        for idx in index_batches(n_train, cfg.batch_size, epoch_seed(cfg.engine.seed, epoch)):
            yield idx.to(dev)

    def loss_fn(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        batch = train.take(idx)
        batch["present"] = modality_dropout(batch["present"], cfg.modality_dropout)
        if cfg.feature_noise > 0:
            batch["images"] = {m: v + cfg.feature_noise * torch.randn_like(v) for m, v in batch["images"].items()}
        return _loss(model, batch, criterion, cfg, thickness_stats)

    val = splits["val"]

    def validate(model: nn.Module) -> dict[str, float]:
        out = _forward_all(model, val, dev)
        metrics = {k: v for k, v in classification_metrics(val.labels.cpu().numpy(), out["proba"], classes).items()
                   if isinstance(v, (int, float))}
        pred, _ = thickness_values(kind, out.get("thickness_raw"), thickness_stats)
        has = torch.isfinite(val.thickness).cpu().numpy()
        if pred is not None and has.any():
            tm = thickness_metrics(kind, val.thickness.cpu().numpy()[has], pred[has], len(ORDINAL_BINS))
            metrics.update({f"thickness_{k}": float(v) for k, v in tm.items() if k != "n"})
        return metrics

    display = f"fusion[{modality_text(modalities)}] {cfg.image_encoder if image_modalities else ''}".strip()

    def model_card(metrics: dict | None) -> dict[str, Any]:
        return {
            "method": "fusion", "model": display, "classes": classes, "task": cfg.task, "dataset": card.name,
            "modalities": modalities, "image_encoder": cfg.image_encoder if image_modalities else None,
            "image_weights": cfg.image_weights, "image_fingerprint": image_enc.fingerprint if image_enc else None,
            "meta_kind": cfg.meta_encoder if meta_enc is not None else None,
            "meta_encoder": meta_enc.to_dict() if meta_enc is not None else None,
            "text_encoder": (cfg.text_encoder or DEFAULT_TEXT_ENCODER) if text else None,
            "thickness": {"kind": kind, "bins": list(ORDINAL_BINS) if kind == "ordinal" else None,
                          "stats": thickness_stats},
            "arch": arch, "val_metrics": metrics, "train_config": cfg.to_dict(),
            "negative_name": cfg.negative_name,
            "created_with": {"torch": torch.__version__, "python": platform.python_version()},
        }

    run.fit(engine, make_batches, loss_fn, validate,
            lambda m, metrics: FusionPredictor(m, model_card(metrics), device=str(dev)),
            steps_per_epoch=steps_per_epoch(n_train, cfg.batch_size), batch_size_fn=lambda idx: len(idx))

    # ---- the selected weights on test (the Run reports them, with the thickness the predictions carry)
    predictor = load_fusion_predictor(run.model_dir, device=str(dev))
    best = predictor.model
    test = splits["test"]

    extra = {"modalities": modality_text(modalities)}
    if "meta" in modalities:
        extra["meta"] = f"{cfg.meta_encoder}: {len(meta_enc.columns)} cols"

    # ---- robustness: test metrics when only some modalities are given
    subset_rows = []
    for r in range(1, len(modalities) + 1):
        for subset in itertools.combinations(modalities, r):
            masks = {m: (test.present[m] if m in subset else torch.zeros_like(test.present[m])) for m in modalities}
            if not any(bool(masks[m].any()) for m in subset):
                continue
            o = _forward_all(best, test, dev, present=masks)
            m_ = classification_metrics(test.labels.cpu().numpy(), o["proba"], classes)
            subset_rows.append({"modalities given": modality_text(subset), "accuracy": m_["accuracy"],
                                "balanced_accuracy": m_["balanced_accuracy"], "macro_auc": m_["macro_auc"]})
    subsets = pd.DataFrame(subset_rows)
    write_csv(out_dir / "modality_subsets.csv", subsets)

    # ``thickness``: the Run's test report fills it in when the model predicts a thickness.
    run.summary.update(model=display, modalities=modalities, thickness=None, test_by_modalities=subset_rows)
    run.table_extra.update(extra)
    return predictor


@register_method
class Fusion(Method):
    """Clinical + dermoscopic images + metadata on frozen, cached encoders; class + thickness heads."""

    name = "fusion"
    config_class = FusionConfig
    card_fields = {"modalities": list, "arch": dict}
    description = "multimodal fusion (dermoscopic + clinical + metadata), multi-task Breslow thickness head"
    tiny_config = {"data": "{data}", "image_encoder": "{clip}", "use_meta": True, "hidden": 16, "num_heads": 2,
                   "meta_num_heads": 2, "epochs": 2, "n_bootstrap": 20}

    def fit(self, config: FusionConfig, run) -> "FusionPredictor":
        return _train_fusion(config, run)

    def load(self, folder, device: str = "auto") -> "FusionPredictor":
        return load_fusion_predictor(folder, device)




# ------------------------------------------------------------------------------ prediction


def _parse_meta(items: dict[str, Any] | Sequence[dict[str, Any]] | None, n: int) -> list[dict] | None:
    if items is None:
        return None
    if isinstance(items, dict):
        return [dict(items)] * n
    items = list(items)
    if len(items) != n:
        raise ConfigError(f"got metadata for {len(items)} images but {n} images; give one set per image or one for all")
    return [dict(i) for i in items]


class FusionPredictor(Predictor):
    """A trained fusion model plus its frozen encoders (``dermkit.load_predictor(folder)``).

    ``predict_paths(paths)`` reads each path as the model's main view (dermoscopic, or clinical
    for a clinical-only model); the other modalities are masked unless given with
    :meth:`set_extra_inputs` (clinical image per case, metadata ``{column: value}``).
    """

    method = "fusion"

    def __init__(self, model: FusionNet, model_card: dict, device: str = "auto"):
        super().__init__(model_card)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.modalities: list[str] = list(model_card["modalities"])
        meta = model_card.get("meta_encoder")
        self.meta_encoder = MetadataEncoder.from_dict(meta) if meta else None
        thickness = model_card.get("thickness") or {}
        self.thickness_kind = thickness.get("kind")
        self.thickness_bins = thickness.get("bins")
        self.thickness_stats = thickness.get("stats")
        self._image_enc = self._text_enc = None
        self.cache_dir = None  # feature cache of the image views (None: dermkit's default cache)
        self._clinical: list | None = None
        self._meta: list[dict] | dict | None = None
        self._last: tuple | None = None

    # -- encoders (loaded on first use)
    @property
    def image_encoder(self):
        if self._image_enc is None and self.model_card.get("image_encoder"):
            self._image_enc = load_image_encoder(self.model_card["image_encoder"], self.model_card.get("image_weights"))
            expected = self.model_card.get("image_fingerprint")
            if expected and self._image_enc.fingerprint != expected:
                raise ModelError(
                    f"the image encoder {self.model_card['image_encoder']} loaded here differs from the one this "
                    "fusion model was trained on (weights fingerprint mismatch); install the same weights")
        return self._image_enc

    @property
    def text_encoder(self):
        if self._text_enc is None and self.model_card.get("meta_kind") == "text":
            self._text_enc = _text_encoder(self.model_card.get("text_encoder"))
        return self._text_enc

    @property
    def main_view(self) -> str | None:
        return "derm" if "derm" in self.modalities else "clin" if "clin" in self.modalities else None

    def set_extra_inputs(self, clinical: Sequence[str | Path | None] | None = None,
                         meta: dict | Sequence[dict] | None = None) -> None:
        """Clinical images (one per path given to predict_paths) and/or metadata for the next predictions."""
        if clinical and "clin" not in self.modalities:
            raise ConfigError(f"this model was trained without clinical images ({modality_text(self.modalities)}); "
                              "drop --clinical")
        if clinical and self.main_view == "clin":
            raise ConfigError("this model's main view is the clinical image: pass the clinical images as the image "
                              "arguments, without --clinical")
        if meta and "meta" not in self.modalities:
            raise ConfigError(f"this model was trained without metadata ({modality_text(self.modalities)}); "
                              "drop --meta")
        if meta and self.meta_encoder is not None:
            keys = meta.keys() if isinstance(meta, dict) else {k for d in meta for k in d}
            unknown = sorted(set(keys) - set(self.meta_encoder.columns))
            if unknown:
                raise ConfigError(f"unknown metadata field(s) {unknown}; this model reads "
                                  f"{', '.join(self.meta_encoder.columns)}")
        self._clinical = list(clinical) if clinical else None
        self._meta = meta or None
        self._last = None

    def _meta_card(self) -> DatasetCard:
        return DatasetCard(".", {"name": self.model_card.get("dataset", "input"),
                                 "metadata_columns": self.meta_encoder.columns,
                                 "missing_values": self.meta_encoder.missing_values})

    def _run(self, views: dict[str, list], meta_rows: pd.DataFrame | None, card: DatasetCard | None,
             progress: bool = False) -> dict:
        n = len(next(iter(views.values()))) if views else (len(meta_rows) if meta_rows is not None else 0)
        images, present = {}, {}
        for m in (x for x in self.modalities if x != "meta"):
            paths = views.get(m) or [None] * n
            feats, mask = _image_features(self.image_encoder, [None if p is None else Path(p) for p in paths],
                                          self.cache_dir, progress)
            images[m], present[m] = torch.from_numpy(feats), torch.from_numpy(mask)
        meta = None
        if "meta" in self.modalities:
            if meta_rows is None:
                # No metadata given: a placeholder that the presence mask hides from the model.
                text = self.model_card.get("meta_kind") == "text"
                dim = self.model_card["arch"]["text_dim"] if text else self.meta_encoder.dim
                meta = torch.zeros(n, dim)
                present["meta"] = torch.zeros(n, dtype=torch.bool)
            else:
                if self.model_card.get("meta_kind") == "text":
                    prompts = self.meta_encoder.prompts(meta_rows, card or self._meta_card())
                    meta = torch.from_numpy(encode_prompts(self.text_encoder, prompts))
                elif card is None:
                    meta = torch.from_numpy(self.meta_encoder.transform(meta_rows, where="--meta",
                                                                        row_name="for image"))
                else:
                    meta = torch.from_numpy(self.meta_encoder.transform(meta_rows, where=str(card.metadata_csv)))
                present["meta"] = torch.ones(n, dtype=torch.bool)
        split = _Split(images, present, meta, torch.zeros(n, dtype=torch.long), torch.full((n,), float("nan")), None)
        out = _forward_all(self.model, split, self.device) if n else {"proba": np.zeros((0, len(self.classes)))}
        out["present"] = {m: v.numpy() for m, v in present.items()}
        return out

    def _outputs(self, paths: Sequence[str | Path], progress: bool = False) -> dict:
        key = tuple(str(p) for p in paths)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        n = len(paths)
        views: dict[str, list] = {}
        if self.main_view is not None:
            views[self.main_view] = list(paths)
        if self._clinical is not None:
            if len(self._clinical) != n:
                raise ConfigError(f"got {len(self._clinical)} clinical images for {n} images; give one per image")
            views["clin"] = self._clinical
        meta_rows = None
        if self._meta is not None:
            records = _parse_meta(self._meta, n)
            meta_rows = pd.DataFrame(records, dtype=str)
            meta_rows["csv_line"] = np.arange(1, n + 1)  # error messages say "--meta for image 1"
            meta_rows.index = range(n)
        if self.main_view is None and meta_rows is None:
            raise ConfigError("this fusion model reads metadata only; give it with --meta KEY=VALUE")
        out = self._run(views, meta_rows, None, progress)
        self._last = (key, out)
        return out

    def predict_paths(self, paths: Sequence[str | Path], progress: bool = False) -> np.ndarray:
        """(N, C) probabilities; ``paths`` are the model's main view (other modalities masked unless set)."""
        return self._outputs(paths, progress)["proba"]

    def image_features(self, paths, progress: bool = False) -> np.ndarray | None:
        """The frozen image encoder's embeddings of the main view (None for a metadata-only model)."""
        if self.main_view is None or self.image_encoder is None:
            return None
        return extract_features(self.image_encoder, [Path(p) for p in paths], cache_dir=self.cache_dir,
                                progress=progress)

    def _details(self, out: dict) -> list[dict]:
        n = len(out["proba"])
        point, expected = thickness_values(self.thickness_kind, out.get("thickness_raw"), self.thickness_stats)
        details = []
        for i in range(n):
            used = [m for m in self.modalities if bool(out["present"][m][i])]
            d = {"predicted class": self.classes[int(out["proba"][i].argmax())],
                 "confidence": f"{float(out['proba'][i].max()):.2f}"}
            if point is not None:
                if self.thickness_kind == "ordinal":
                    b = int(point[i])
                    d["thickness"] = f"{self.thickness_bins[b]} (bin {b}; expected bin {expected[i]:.2f})"
                else:
                    d["thickness"] = f"{point[i]:.4f} mm"
            d["modalities used"] = modality_text(used)
            missing = [m for m in self.modalities if m not in used]
            if missing:
                d["modalities missing"] = modality_text(missing)
            details.append(d)
        return details

    def predict_details(self, paths: Sequence[str | Path]) -> list[dict]:
        """Per image: predicted class, confidence, thickness (mm or bin) and the modalities used."""
        return self._details(self._outputs(paths))

    def _state(self):
        return self.model.state_dict(), self.model_card

    def _predict_rows(self, card, rows: pd.DataFrame, groups, progress: bool) -> Predictions:
        """Predictions for rows of a dataset card, with every modality the model was trained on."""
        image_modalities = [m for m in self.modalities if m != "meta"]
        available = view_columns(card)
        usable = [m for m in image_modalities if available[m] is not None]
        mm_rows = build_rows(card, rows, usable, None, with_labels=False)
        views = {m: mm_rows.views[m] for m in usable}
        if not views and "meta" not in self.modalities:
            raise DataError(f"{card.name} has none of the image views this model reads "
                            f"({modality_text(image_modalities)})")
        out = self._run(views, rows if "meta" in self.modalities else None, card, progress)
        point, _ = thickness_values(self.thickness_kind, out.get("thickness_raw"), self.thickness_stats)
        # The true thickness where the card has this model's kind of target, in float32 as training holds it.
        target = (mm_rows.thickness.astype(np.float32) if point is not None
                  and mm_rows.thickness_kind == self.thickness_kind else None)
        return Predictions(rows["image"].tolist(), out["proba"], self.classes, rows["diagnosis"].tolist(),
                           mm_rows.groups(card), thickness=point, thickness_target=target)


def load_fusion_predictor(folder: str | Path, device: str = "auto") -> FusionPredictor:
    """The :class:`FusionPredictor` of a fusion model folder (model.json + model.safetensors)."""
    folder = Path(folder)
    card = read_model_card(folder)
    if card.get("method") != "fusion":
        raise ModelError(f"{folder} is not a fusion model (method {card.get('method')!r})")
    try:
        model = FusionNet(**card["arch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder / 'model.json'}: invalid fusion architecture ({exc}); re-train the model") from exc
    state = load_tensors(folder / MODEL_WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{folder / MODEL_WEIGHTS} does not match the fusion architecture in model.json: "
                         f"{state_dict_problem(exc)}") from None
    return FusionPredictor(model.eval(), card, device=device)
