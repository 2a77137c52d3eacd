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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermkit.data import load_card
from dermkit.data.torchdata import decode_all, eval_transform, train_transform
from dermkit.engine.loop import EngineConfig, epoch_seed, replace_dir
from dermkit.errors import ConfigError, DataError
from dermkit.methods.base import ClassEmbeddingPredictor, ClassifierConfig, Method, register_method
from dermkit.models.freeze import freeze, train_only_last, unfreeze

DEFAULT_DATASETS = ("ham10000", "isic2017", "derm7pt", "pad_ufes20")  # PH2 stays unseen: the zero-shot target


@dataclass
class ClipTrainConfig(ClassifierConfig):
    """``method: contrastive``: align a CLIP-style model on image-caption pairs.

    ``train_data``: datasets whose train splits give the pairs (PH2 stays unseen by default);
    ``data`` / ``task`` / ``eval_data``: the saved model is also a zero-shot classifier of ``data``'s
    classes (under ``task``), reported on its test split and on ``eval_data``'s.
    """

    data: str = "ham10000"
    train_data: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
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
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "ClipTrainConfig":
        raw = dict(raw or {})
        if isinstance(raw.get("train_data"), str):  # "ham10000,isic2017" from the command line
            raw["train_data"] = [d.strip() for d in raw["train_data"].split(",") if d.strip()]
        return super().from_dict(raw, where)

    def validate(self) -> None:
        super().validate()
        if not self.train_data:
            raise ConfigError("train_data is empty; name the datasets whose image-caption pairs to train on")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (in-batch negatives)")
        if self.augment not in ("strong", "light", "none"):
            raise ConfigError(f"augment must be strong, light or none, got {self.augment!r}")
        if self.val_per_dataset < 1 or self.image_size < 16 or self.embed_dim < 1:
            raise ConfigError("val_per_dataset and embed_dim must be >= 1, image_size >= 16")

    def model_specs(self) -> dict[str, str]:
        return {"init": self.init} if self.init else {}


def set_trainable(model: nn.Module, image_last: int | None, text_last: int | None) -> dict[str, int]:
    """Freeze a CLIP model except the tails named by the config; returns parameter counts."""
    freeze(model)
    visual, text = getattr(model, "visual", None), getattr(model, "text", None)
    trunk = getattr(visual, "trunk", None)
    if image_last is None or trunk is None:
        if visual is not None:
            unfreeze(visual)
    else:
        train_only_last(trunk, image_last, extra=[m for m in (getattr(visual, "head", None),) if m is not None],
                        what="train_image_last")
    layers = getattr(getattr(getattr(text, "transformer", None), "encoder", None), "layer", None)
    if text is None:  # open_clip's built-in text tower lives on the CLIP module itself
        unfreeze(m for name, m in model.named_children() if name not in ("visual",))
    elif text_last is None or layers is None:
        unfreeze(text)
    else:
        if not 1 <= text_last <= len(layers):
            raise ConfigError(f"train_text_last must be between 1 and {len(layers)} for this text tower")
        unfreeze(list(layers)[-text_last:] + [m for m in (getattr(text, "proj", None),) if m is not None])
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


@register_method
class Contrastive(Method):
    """CLIP-style contrastive alignment; the result is an open_clip folder and a zero-shot classifier."""

    name = "contrastive"
    config_class = ClipTrainConfig
    description = "contrastive image-caption training of a CLIP-style model (dermkit-CLIP by default)"
    tiny_config = {"init": "{clip}", "train_data": ["{data}"], "data": "{data}", "eval_data": [], "batch_size": 8,
                   "train_image_last": None, "train_text_last": None, "num_workers": 0, "epochs": 1,
                   "val_per_dataset": 12, "n_bootstrap": 20}

    def fit(self, config: ClipTrainConfig, run):
        from dermkit.data.prompts import load_prompts
        from dermkit.evaluate import classification_metrics
        from dermkit.models.encoders import load_encoder, save_open_clip_folder
        from dermkit.models.text import class_embeddings, zeroshot_proba

        out_dir = run.out_dir
        if "ph2" in config.train_data:
            print("note: training on PH2 makes its zero-shot numbers no longer zero-shot")
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
        train = PairSource(config.train_data, "train")
        images = decode_all(train.paths, int(size * 1.15), progress=run.progress, desc="decoding train")
        train_set = _Indexed(images, train_transform(size, mean, std, config.augment))
        if len(train_set) < config.batch_size:
            raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(train_set)} training pairs")
        epoch_captions: dict[str, list[str]] = {}

        # Val: a fixed subset per dataset, preprocessed once.
        val_sets = []
        for name in config.train_data:
            card = load_card(name)
            rows = card.rows("val")
            rng = np.random.default_rng(config.engine.seed)
            keep = np.sort(rng.permutation(len(rows))[: config.val_per_dataset])
            rows = rows.iloc[keep]
            tensors = decode_all([card.image_path(p) for p in rows["image"]], int(size * 1.15))
            transform = eval_transform(size, mean, std)
            pixels = torch.stack([transform(t) for t in tensors])
            val_sets.append((card, pixels, card.labels(rows), load_prompts(card)))

        engine = run.engine(model)
        pad_id = getattr(getattr(getattr(model, "text", None), "config", None), "pad_token_id", None)

        def make_batches(epoch: int):
            seed = epoch_seed(config.caption_seed, epoch)
            epoch_captions["list"] = train.captions(seed)
            generator = torch.Generator().manual_seed(epoch_seed(config.engine.seed, epoch))
            # Contrastive batches must be full (in-batch negatives): always drop the last partial one.
            return torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                               generator=generator, num_workers=config.num_workers)

        def loss_fn(model: nn.Module, batch) -> torch.Tensor:
            x, idx = batch
            captions = [epoch_captions["list"][i] for i in idx.tolist()]
            ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
            caption_ids = torch.tensor([ids[c] for c in captions], device=engine.device)
            tokens = trim_padding(enc.tokenize(captions), pad_id)
            tokens = ({k: v.to(engine.device) for k, v in tokens.items()} if isinstance(tokens, dict)
                      else tokens.to(engine.device))
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
            replace_dir(tmp, run.model_dir)

        state = engine.fit(make_batches, loss_fn, validate, on_best,
                           steps_per_epoch=len(train_set) // config.batch_size, resume=run.resume,
                           batch_size_fn=lambda b: len(b[1]))
        run.summary.update(train_datasets=config.train_data, pairs=len(train_set), best_epoch=state.best_epoch,
                           best_val_zeroshot_balanced_accuracy=state.best_score, best_val_score=state.best_score,
                           selected_on=f"val {config.engine.select_metric}", epochs_run=state.epoch,
                           clip_model=str(run.model_dir), parameters=counts)
        # The selected CLIP folder is also a zero-shot classifier of ``data``'s classes: its class
        # embeddings and model.json sit beside the open_clip files (base model "." = this folder).
        return self.classifier(run.model_dir, run, config)

    @staticmethod
    def classifier(folder: Path, run, config: ClipTrainConfig):
        from dermkit.data.prompts import load_prompts
        from dermkit.models.encoders import load_encoder
        from dermkit.models.text import class_embeddings

        enc = load_encoder(str(folder))
        card = run.card()
        predictor = ContrastivePredictor(enc, class_embeddings(enc, load_prompts(card), card.classes), {
            "model": f"zero-shot {Path(folder).parent.name}/{Path(folder).name}", "classes": list(card.classes),
            "dataset": card.name, "task": config.task, "negative_name": config.negative_name, "base_model": ".",
            "base_fingerprint": enc.fingerprint, "logit_scale": float(enc.logit_scale)})
        predictor.save(folder)  # beside the open_clip files, which stay
        return predictor

    def load(self, folder, device: str = "auto"):
        return ContrastivePredictor.from_folder(folder, device)


class ContrastivePredictor(ClassEmbeddingPredictor):
    """The trained CLIP model as a zero-shot classifier (its own folder holds the class embeddings)."""

    method = "contrastive"
