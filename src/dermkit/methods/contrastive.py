"""Contrastive image-caption alignment of a CLIP-style model (dermkit-CLIP by default).

Image-caption pairs come from the train splits of several dataset cards: a ``caption`` column
when the dataset has one, otherwise captions written from metadata (diagnosis + synonyms, site,
age, sex, dermoscopic criteria...) with templates re-drawn every epoch. Derm7pt's clinical
photos join as their own pairs with clinical captions. The loss is CLIP's symmetric InfoNCE
with a learnable temperature, except that pairs whose captions are *identical* count as
positives of each other (metadata captions repeat, and pushing an image away from the very
caption of its twin teaches nothing). Model selection is by mean zero-shot balanced accuracy on
the val splits, the number this model exists for. The loop is the one engine (engine/loop.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermkit.data import load_card
from dermkit.data.torchdata import decode_all, eval_transform, train_transform
from dermkit.config import config_from_dict
from dermkit.engine.loop import Engine, EngineConfig, epoch_seed, replace_dir
from dermkit.errors import DataError
from dermkit.io import write_json, write_text

DEFAULT_DATASETS = ("ham10000", "isic2017", "derm7pt", "pad_ufes20")  # PH2 stays unseen: the zero-shot target


@dataclass
class ClipTrainConfig:
    data: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    init: str | None = None  # an open_clip model (folder / hf-hub:) to continue from; None = build dermkit-CLIP
    image_tower: str = "tf_efficientnet_lite0"
    embed_dim: int = 256
    image_size: int = 160
    batch_size: int = 64
    train_image_last: int | None = 4  # trainable trunk units of a timm image tower (+ projection); None = all
    train_text_last: int | None = 2  # trainable transformer layers of an HF text tower (+ projection); None = all
    augment: str = "light"
    caption_seed: int = 0
    val_per_dataset: int = 300  # val images per dataset for zero-shot model selection
    num_workers: int = 1
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=3, lr=5e-4, weight_decay=0.1, warmup_epochs=0.3, select_metric="zeroshot_balanced_accuracy"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ClipTrainConfig":
        raw = dict(raw or {})
        if isinstance(raw.get("data"), str):  # "ham10000,isic2017" from the command line
            raw["data"] = [d.strip() for d in raw["data"].split(",") if d.strip()]
        return config_from_dict(cls, raw)


def set_trainable(model: nn.Module, image_last: int | None, text_last: int | None) -> dict[str, int]:
    """Freeze a CLIP model except the tails named by the config; returns parameter counts."""
    from dermkit.methods.supervised import trainable_units

    for p in model.parameters():
        p.requires_grad_(False)
    visual, text = getattr(model, "visual", None), getattr(model, "text", None)
    trunk = getattr(visual, "trunk", None)
    if image_last is None or trunk is None:
        parts: list[nn.Module] = [visual] if visual is not None else []
    else:
        parts = trainable_units(trunk)[-image_last:] + [m for m in (getattr(visual, "head", None),) if m is not None]
    layers = getattr(getattr(getattr(text, "transformer", None), "encoder", None), "layer", None)
    if text is None:  # open_clip's built-in text tower lives on the CLIP module itself
        text_parts = [m for name, m in model.named_children() if name not in ("visual",)]
    elif text_last is None or layers is None:
        text_parts = [text]
    else:
        text_parts = list(layers)[-text_last:] + [m for m in (getattr(text, "proj", None),) if m is not None]
    for module in parts + text_parts:
        for p in module.parameters():
            p.requires_grad_(True)
    if isinstance(getattr(model, "logit_scale", None), nn.Parameter):
        model.logit_scale.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}


def soft_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; rows with identical captions share the target mass."""
    logits = scale * F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def trim_padding(tokens, pad_id: int | None):
    """Drop the padding columns every caption in the batch has (context 128, captions ~40 tokens).

    Exact for an HF text tower: it masks padding and pools with the attention mask, so trailing
    all-pad columns change nothing but cost ~3x the text-tower compute.
    """
    if pad_id is None or not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens


class PairSource:
    """Image paths of all training pairs plus a caption generator per epoch."""

    def __init__(self, datasets: list[str], split: str):
        from dermkit.data.captions import captions_for_split

        self._captions_for_split = captions_for_split
        self.parts = []  # (card, modality or None, path list)
        for name in datasets:
            card = load_card(name)
            rows = card.rows(split)
            self.parts.append((card, None, [card.image_path(p) for p in rows["image"]]))
            view = card.second_view_column
            if view and view in rows.columns:
                ok = rows[view].notna()
                if ok.all():
                    self.parts.append((card, "clinical", [card.image_path(p) for p in rows[view]]))
        self.split = split
        self.paths = [p for _, _, paths in self.parts for p in paths]
        if not self.paths:
            raise DataError(f"no {split} images in {datasets}")

    def captions(self, seed: int) -> list[str]:
        out: list[str] = []
        for card, modality, _ in self.parts:
            out += self._captions_for_split(card, self.split, seed=seed, modality=modality)
        return out


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), i


def train_clip(config: ClipTrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Align the model on the train splits; saves the best (val zero-shot) model in open_clip layout."""
    import yaml

    from dermkit.data.prompts import load_prompts
    from dermkit.evaluate import classification_metrics
    from dermkit.methods.zeroshot import class_embeddings, zeroshot_proba
    from dermkit.models.vlm import load_encoder, save_open_clip_folder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if "ph2" in config.data:
        print("note: training on PH2 makes its zero-shot numbers no longer zero-shot")
    write_text(out_dir / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))

    # The starting model is written once in open_clip's hub layout and loaded back through the
    # registry, so training, saving and later loading all go through the same code path.
    init_dir = out_dir / "init"
    if config.init is None and not (init_dir / "open_clip_config.json").is_file():
        from dermkit.models.dermkit_clip import build_dermkit_clip

        torch.manual_seed(config.engine.seed)
        model, model_cfg, preprocess_cfg = build_dermkit_clip(config.image_tower, embed_dim=config.embed_dim)
        preprocess_cfg = {**preprocess_cfg, "size": config.image_size}
        model_cfg["vision_cfg"]["image_size"] = config.image_size
        save_open_clip_folder(model, init_dir, model_cfg, preprocess_cfg)
    enc = load_encoder(str(init_dir) if config.init is None else config.init)
    model = enc.module
    model_cfg, preprocess_cfg = enc.model_cfg, enc.preprocess_cfg
    counts = set_trainable(model, config.train_image_last, config.train_text_last)
    print(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,}")

    size, mean, std = enc.image_size, enc.mean, enc.std
    train = PairSource(config.data, "train")
    images = decode_all(train.paths, int(size * 1.15), progress=progress, desc="decoding train")
    train_set = _Indexed(images, train_transform(size, mean, std, config.augment))
    epoch_captions: dict[str, list[str]] = {}

    # Val: a fixed subset per dataset, preprocessed once.
    val_sets = []
    for name in config.data:
        card = load_card(name)
        rows = card.rows("val")
        rng = np.random.default_rng(config.engine.seed)
        keep = np.sort(rng.permutation(len(rows))[: config.val_per_dataset])
        rows = rows.iloc[keep]
        tensors = decode_all([card.image_path(p) for p in rows["image"]], int(size * 1.15))
        transform = eval_transform(size, mean, std)
        pixels = torch.stack([transform(t) for t in tensors])
        val_sets.append((card, pixels, card.labels(rows), load_prompts(card)))

    engine = Engine(model, config.engine, out_dir, progress=progress)
    pad_id = getattr(getattr(getattr(model, "text", None), "config", None), "pad_token_id", None)

    def make_batches(epoch: int):
        seed = epoch_seed(config.caption_seed, epoch)
        epoch_captions["list"] = train.captions(seed)
        generator = torch.Generator().manual_seed(epoch_seed(config.engine.seed, epoch))
        return torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                           generator=generator, num_workers=config.num_workers)

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        x, idx = batch
        captions = [epoch_captions["list"][i] for i in idx.tolist()]
        ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
        caption_ids = torch.tensor([ids[c] for c in captions], device=engine.device)
        tokens = trim_padding(enc.tokenize(captions), pad_id)
        tokens = {k: v.to(engine.device) for k, v in tokens.items()} if isinstance(tokens, dict) else tokens.to(engine.device)
        image_emb = model.encode_image(engine.to_device(x))
        text_emb = model.encode_text(tokens)
        scale = model.logit_scale.exp().clamp(max=100)
        return soft_clip_loss(image_emb, text_emb, scale, caption_ids)

    @torch.inference_mode()
    def validate(model: nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        scores = []
        for card, pixels, labels, prompts in val_sets:
            class_emb = class_embeddings(enc, prompts, card.classes)
            feats = torch.cat([enc.encode_image(pixels[i:i + 128].to(engine.device), normalize=True).float().cpu()
                               for i in range(0, len(pixels), 128)])
            proba = zeroshot_proba(feats.numpy(), class_emb, enc.logit_scale)
            m = classification_metrics(labels, proba, card.classes)
            metrics[f"{card.name}_balanced_accuracy"] = m["balanced_accuracy"]
            metrics[f"{card.name}_macro_auc"] = m["macro_auc"]
            scores.append(m["balanced_accuracy"])
        metrics["zeroshot_balanced_accuracy"] = float(np.mean(scores))
        metrics["logit_scale"] = float(enc.logit_scale)
        return metrics

    def on_best(model: nn.Module, metrics: dict[str, float]) -> None:
        tmp = out_dir / "model.partial"
        save_open_clip_folder(model, tmp, model_cfg, preprocess_cfg)
        replace_dir(tmp, out_dir / "model")

    state = engine.fit(make_batches, loss_fn, validate, on_best, steps_per_epoch=len(train_set) // config.batch_size,
                       resume=resume, batch_size_fn=lambda b: len(b[1]))
    summary = {"datasets": config.data, "pairs": len(train_set), "best_epoch": state.best_epoch,
               "best_val_zeroshot_balanced_accuracy": state.best_score, "epochs_run": state.epoch,
               "wall_seconds": round(time.perf_counter() - started, 1), "model": str(out_dir / "model"),
               "parameters": counts}
    write_json(out_dir / "summary.json", summary)
    return summary
