"""Contrastive image-caption alignment of a CLIP-style model (dermkit-CLIP by default).

Image-caption pairs come from the train splits of several dataset cards: a ``caption`` column
when the dataset has one, otherwise captions written from metadata (diagnosis + synonyms, site,
age, sex, dermoscopic criteria...) with templates re-drawn every epoch. Derm7pt's clinical
photos join as their own pairs with clinical captions. The loss is CLIP's symmetric InfoNCE
with a learnable temperature, except that pairs whose captions are *identical* count as
positives of each other (metadata captions repeat, and pushing an image away from the very
caption of its twin teaches nothing). Model selection is by mean zero-shot balanced accuracy on
the val splits, the number this model exists for. The loop is the one engine (engine/loop.py).

Three levers make more epochs worth having on a small CPU (each a config key):
``cache_views: N`` runs the frozen part of the image trunk once on N augmented views of every
training image and keeps what enters the trained tail in memory (the prompt-learning trick with
augmentation kept): an epoch then costs the tail, the text tower and the loss, and each image
shows one of its N views per epoch (drawn from the epoch seed). ``cache_captions: K`` does the
same for the text tower: its frozen layers run once on K caption draws per pair (hard negatives
included) and epoch e trains on draw e mod K, so a step costs only the trained layers;
``cache_captions: epoch`` runs them at the start of each epoch on its own draw (exact for any
number of epochs, one draw in memory), and ``text_groups: G`` runs the trained layers on G groups
of similar caption length (the same embeddings with less padding). ``class_balance: p`` draws each
epoch's pairs with probability proportional to count(dataset, diagnosis)^-p inside each dataset
(0 = as they come, 0.5 = inverse square root, 1 = every class of a dataset equally often; each
dataset keeps its share), so nevi stop dominating the batches. ``hard_negatives: true`` adds, per
pair, its caption with the diagnosis replaced by another class of the dataset
(:func:`dermkit.data.captions.caption_and_negative`) as an extra negative column of the image-to-
text loss: the only way to tell it from the true caption is the diagnosis.

``shards:`` streams the pairs from WebDataset shards (``dermkit data shards``, see
:mod:`dermkit.data.shards`) instead of decoding the train splits into memory: the epoch's order
comes from its seed, steps per epoch from the manifests, and each image is augmented with its
own seed (epoch seed + position), so a sample looks the same whichever process decodes it.

The pairs and their global batches come from :mod:`dermkit.data.pairs` (``MemoryPairs`` for the
train splits, ``ShardPairs`` for shards); the loss is :func:`dermkit.engine.losses.global_clip_loss`.
Under torch.distributed (torchrun) the engine gives each process its slice of every global
batch; the loss gathers the image and text embeddings of all processes with gradients
(``torch.distributed.nn.functional.all_gather``, as open_clip's ``gather_with_grad``), so the
in-batch negatives are the whole global batch and every process holds the global loss. The
global batch must divide evenly over the processes: then the engine's share weighting
(n_local * world / n_global) is exactly 1, and DDP's average of the per-process gradients (each
the gradient of the global loss through its own embeddings, summed over processes by the
gather's backward) is the one-process gradient. Models with BatchNorm in a trained part (the
EfficientNet tower of dermkit-CLIP with ``train_image_last: null``) still normalise over each
process's slice, as DDP does without SyncBatchNorm.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermkit.data import load_card
from dermkit.data.pairs import MemoryPairs, ShardPairs
from dermkit.data.prompts import load_prompts
from dermkit.data.shards import ShardReader
from dermkit.data.torchdata import decode_all, eval_transform, train_transform
from dermkit.engine import distributed
from dermkit.engine.loop import EngineConfig
from dermkit.engine.losses import global_clip_loss
from dermkit.errors import ConfigError, DataError, excerpt
from dermkit.evaluate import classification_metrics
from dermkit.io import replace_dir
from dermkit.methods.base import ClassEmbeddingPredictor, ClassifierConfig, Method, register_method
from dermkit.models.dermkit_clip import build_dermkit_clip
from dermkit.models.encoders import load_encoder, save_open_clip_folder
from dermkit.models.freeze import freeze, set_eval, train_only_last, unfreeze
from dermkit.models.frozen_prefix import text_split, trunk_split
from dermkit.models.text import class_embeddings, zeroshot_proba

DEFAULT_DATASETS = ("ham10000", "isic2017", "derm7pt", "pad_ufes20")  # PH2 stays unseen: the zero-shot target


@dataclass
class ClipTrainConfig(ClassifierConfig):
    """``method: contrastive``: align a CLIP-style model on image-caption pairs.

    ``train_data``: datasets whose train splits give the pairs (PH2 stays unseen by default) and
    whose val splits select the model; ``shards``: WebDataset shards (brace patterns such as
    ``DIR/{000000..000123}.tar`` or a list) to stream the pairs from instead of the train splits
    (``train_data``'s val splits still select the model); ``shuffle_buffer``: samples held by
    the stream's shuffle; ``data`` / ``task`` / ``eval_data``: the saved model is also a zero-shot
    classifier of ``data``'s classes (under ``task``), reported on its test split and on ``eval_data``'s.
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
    num_workers: int = 1  # data loader processes (with shards: threads decoding the images)
    shards: list[str] | None = None
    shuffle_buffer: int = 1000
    cache_views: int = 0  # > 0: the frozen image-trunk prefix runs once on this many augmented views per image
    class_balance: float = 0.0  # pairs drawn with weight count(dataset, diagnosis)^-class_balance (0 = off)
    hard_negatives: bool = False  # each caption with another diagnosis as an extra negative
    # > 0: the frozen text layers run once on this many caption draws (epoch e uses e mod K); "epoch": once per
    # epoch on that epoch's own draw (exact for any number of epochs, one draw in memory)
    cache_captions: int | str = 0
    text_groups: int = 1  # with cache_captions: the trained text layers run on this many groups of similar length
    text_dropout: float | None = None  # dropout of the text tower while it trains; None = the tower's own (MiniLM 0.1)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=3, lr=5e-4, weight_decay=0.1, warmup_epochs=0.3, select_metric="zeroshot_balanced_accuracy"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> "ClipTrainConfig":
        raw = dict(raw or {})
        if isinstance(raw.get("train_data"), str):  # "ham10000,isic2017" from the command line
            raw["train_data"] = [d.strip() for d in raw["train_data"].split(",") if d.strip()]
        if isinstance(raw.get("cache_captions"), str) and raw["cache_captions"].strip().isdigit():  # "3" (option)
            raw["cache_captions"] = int(raw["cache_captions"])
        if isinstance(raw.get("shards"), str):  # one brace pattern (its braces may hold commas: not split)
            raw["shards"] = [raw["shards"]]
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
        if self.shards is not None and (not self.shards or not all(str(s).strip() for s in self.shards)):
            raise ConfigError("shards must name shard files or patterns such as 'DIR/{000000..000012}.tar' "
                              "(or be null to train on train_data's train splits)")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.cache_views < 0:
            raise ConfigError(f"cache_views must be >= 0 (0 = no cache), got {self.cache_views}")
        if not 0 <= self.class_balance <= 1:
            raise ConfigError(f"class_balance must be in [0, 1] (0 = off, 1 = classes equally often), "
                              f"got {self.class_balance}")
        if self.cache_views and self.train_image_last is None:
            raise ConfigError("cache_views caches the frozen part of the image trunk, but train_image_last is null "
                              "(the whole tower trains): set train_image_last (e.g. 4) or cache_views: 0")
        if self.text_dropout is not None and not 0.0 <= self.text_dropout < 1.0:
            raise ConfigError(f"text_dropout must be in [0, 1) (or null: the text tower's own), "
                              f"got {self.text_dropout}")
        if self.cache_captions != "epoch" and (not isinstance(self.cache_captions, int) or self.cache_captions < 0):
            raise ConfigError(f"cache_captions must be a whole number >= 0 (0 = no cache, K = K caption draws) or "
                              f"'epoch' (each epoch's own draw), got {excerpt(self.cache_captions)}")
        if isinstance(self.text_groups, bool) or not isinstance(self.text_groups, int) or self.text_groups < 1:
            raise ConfigError(f"text_groups must be a whole number >= 1, got {excerpt(self.text_groups)}")
        if self.text_groups > 1 and not self.cache_captions:
            raise ConfigError("text_groups groups the cached caption states by length: set cache_captions "
                              "('epoch' or K) or text_groups: 1")
        if self.cache_captions and self.train_text_last is None:
            raise ConfigError("cache_captions caches the frozen layers of the text tower, but train_text_last is null "
                              "(the whole tower trains): set train_text_last (e.g. 2) or cache_captions: 0")
        if self.shards and (self.cache_views or self.cache_captions or self.class_balance or self.hard_negatives):
            raise ConfigError("cache_views, cache_captions, class_balance and hard_negatives work on the train splits "
                              "held in memory, not on streamed shards: drop shards or set them to 0/false")
        # Under torchrun (WORLD_SIZE set) the global batch is gathered across the processes: refused
        # here, before the run folder is written, when it does not split evenly.
        check_global_batch(self.batch_size, int(os.environ.get("WORLD_SIZE", "1") or 1))

    def model_specs(self) -> dict[str, str]:
        return {"init": self.init} if self.init else {}


def set_trainable(model: nn.Module, image_last: int | None,
                  text_last: int | None) -> tuple[dict[str, int], list[nn.Module]]:
    """Freeze a CLIP model except the tails named by the config; returns parameter counts and the
    frozen units (kept in eval mode while training: frozen BatchNorm keeps its statistics, frozen
    text layers run without dropout, exactly what the caches of ``cache_views``/``cache_captions`` hold)."""
    freeze(model)
    visual, text = getattr(model, "visual", None), getattr(model, "text", None)
    trunk = getattr(visual, "trunk", None)
    frozen: list[nn.Module] = []
    if image_last is None or trunk is None:
        if visual is not None:
            unfreeze(visual)
    else:
        head = [m for m in (getattr(visual, "head", None),) if m is not None]
        frozen = train_only_last(trunk, image_last, extra=head, what="train_image_last")
    layers = getattr(getattr(getattr(text, "transformer", None), "encoder", None), "layer", None)
    if text is None:  # open_clip's built-in text tower lives on the CLIP module itself
        unfreeze(m for name, m in model.named_children() if name not in ("visual",))
    elif text_last is None or layers is None:
        unfreeze(text)
    else:
        if not 1 <= text_last <= len(layers):
            raise ConfigError(f"train_text_last must be between 1 and {len(layers)} for this text tower")
        unfreeze(list(layers)[-text_last:] + [m for m in (getattr(text, "proj", None),) if m is not None])
        # The frozen layers (and the embeddings) run without dropout, as the text cache computes them.
        frozen += [m for m in (getattr(text.transformer, "embeddings", None),) if m is not None]
        frozen += list(layers)[: len(layers) - text_last]
    if isinstance(getattr(model, "logit_scale", None), nn.Parameter):
        model.logit_scale.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}, frozen


def set_dropout(module: nn.Module | None, p: float) -> int:
    """Set every dropout of ``module`` (a text tower) to ``p``: ``nn.Dropout`` layers and the attention
    dropout Hugging Face passes to scaled-dot-product attention (it reads ``self.dropout.p``). On a
    CPU dropout costs more than it seems: drawing the masks is ~10 ns per element, and attention
    dropout forces the slow (math) attention kernel. Returns how many layers were set."""
    n = 0
    for m in (module.modules() if module is not None else ()):
        if isinstance(m, nn.Dropout):
            m.p = float(p)
            n += 1
    return n


def check_global_batch(batch_size: int, world: int) -> None:
    """The global batch must split evenly over the processes (see the module docstring)."""
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} does not split evenly over {world} processes; the contrastive "
                          f"loss gathers every process's embeddings, so use a multiple of {world} "
                          f"(e.g. {batch_size - batch_size % world or world})")


def trim_padding(tokens, pad_id: int | None):
    """Drop the padding columns every caption in the batch has (context 128, captions ~40 tokens).

    Exact for an HF text tower: it masks padding and pools with the attention mask, so trailing
    all-pad columns change nothing but cost ~3x the text-tower compute.
    """
    if pad_id is None or not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens


@register_method
class Contrastive(Method):
    """CLIP-style contrastive alignment; the result is an open_clip folder and a zero-shot classifier."""

    name = "contrastive"
    config_class = ClipTrainConfig
    card_fields = {"base_model": str}
    description = "contrastive image-caption training of a CLIP-style model (dermkit-CLIP by default)"
    tiny_config = {"init": "{clip}", "train_data": ["{data}"], "data": "{data}", "eval_data": [], "batch_size": 8,
                   "train_image_last": None, "train_text_last": None, "num_workers": 0, "epochs": 1,
                   "val_per_dataset": 12, "n_bootstrap": 20}

    def check(self, config: ClipTrainConfig) -> list[str]:
        warnings = super().check(config)
        if config.shards:  # the shards and their manifests exist (a run refuses to start otherwise)
            try:
                ShardReader(config.shards, shuffle_buffer=config.shuffle_buffer)
            except DataError as exc:
                warnings.append(f"shards: {exc}")
        return warnings

    def fit(self, config: ClipTrainConfig, run):
        out_dir = run.out_dir
        if "ph2" in config.train_data:
            print("note: training on PH2 makes its zero-shot numbers no longer zero-shot")
        # The starting model is written once in open_clip's hub layout and loaded back through the
        # registry, so training, saving and later loading all go through the same code path.
        init_dir = out_dir / "init"
        enc = None
        if config.init is None and not (init_dir / "open_clip_config.json").is_file():
            torch.manual_seed(config.engine.seed)
            model, model_cfg, preprocess_cfg = build_dermkit_clip(config.image_tower, embed_dim=config.embed_dim)
            preprocess_cfg = {**preprocess_cfg, "size": config.image_size}
            model_cfg["vision_cfg"]["image_size"] = config.image_size
            if distributed.rank() != 0:  # under torchrun rank 0 alone writes init/; the same seed built the
                # same model here, loaded through a private copy so no process reads a half-written folder
                with tempfile.TemporaryDirectory(prefix="dermkit-clip-init-") as tmp:
                    save_open_clip_folder(model, Path(tmp) / "init", model_cfg, preprocess_cfg)
                    enc = load_encoder(str(Path(tmp) / "init"))
            else:
                save_open_clip_folder(model, init_dir, model_cfg, preprocess_cfg)
        if enc is None:
            enc = load_encoder(str(init_dir) if config.init is None else config.init)
        model = enc.module
        model_cfg, preprocess_cfg = enc.model_cfg, enc.preprocess_cfg
        counts, frozen = set_trainable(model, config.train_image_last, config.train_text_last)
        print(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,}")
        if config.text_dropout is not None:
            set_dropout(getattr(model, "text", None), config.text_dropout)
        engine = run.engine(model)
        prefix, tail = trunk_split(model, frozen) if config.cache_views else (None, None)
        text_prefix, text_tail = text_split(model, config.train_text_last) if config.cache_captions else (None, None)
        pad_id = getattr(getattr(getattr(model, "text", None), "config", None), "pad_token_id", None)

        def tokens_on_device(captions: list[str]):
            tokens = trim_padding(enc.tokenize(captions), pad_id)
            return ({k: v.to(engine.device) for k, v in tokens.items()} if isinstance(tokens, dict)
                    else tokens.to(engine.device))

        size, mean, std = enc.image_size, enc.mean, enc.std
        augment = train_transform(size, mean, std, config.augment)
        if config.shards:
            pairs = ShardPairs(config.shards, int(size * 1.15), augment, batch_size=config.batch_size,
                               seed=config.engine.seed, shuffle_buffer=config.shuffle_buffer,
                               num_workers=config.num_workers)
        else:
            pairs = MemoryPairs(config.train_data, int(size * 1.15), augment, batch_size=config.batch_size,
                                seed=config.engine.seed, caption_seed=config.caption_seed,
                                cache_views=config.cache_views, cache_captions=config.cache_captions,
                                class_balance=config.class_balance, hard_negatives=config.hard_negatives,
                                num_workers=config.num_workers, progress=run.progress,
                                prefix=prefix and (lambda px: prefix(engine.to_device(px))), autocast=engine.autocast,
                                text_prefix=text_prefix and (lambda texts: text_prefix(tokens_on_device(texts))))
        if pairs.n < config.batch_size:
            raise ConfigError(f"batch_size {config.batch_size} is larger than the {pairs.n} training pairs")

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
            if prefix is not None:  # the frozen trunk prefix is the same every epoch: run it once (fp32, as
                # validation runs), so each validation runs only the trained tail
                with torch.inference_mode():
                    pixels = torch.cat([prefix(engine.to_device(pixels[i:i + 128])).cpu()
                                        for i in range(0, len(pixels), 128)])
            val_sets.append((card, pixels, card.labels(rows), load_prompts(card)))

        def encode_text(model: nn.Module, captions: list[str]) -> torch.Tensor:
            if text_tail is not None:  # the trained layers only, from this epoch's cached caption draw
                if config.text_groups == 1:
                    hidden, mask = pairs.text_inputs(captions)
                    return text_tail(hidden.to(engine.device), mask.to(engine.device))
                groups = pairs.text_groups(captions, config.text_groups)  # less padding, the same embeddings
                emb = torch.cat([text_tail(h.to(engine.device), m.to(engine.device)) for _, h, m in groups])
                where = torch.cat([positions for positions, _, _ in groups])
                return emb[torch.argsort(where).to(emb.device)]
            return model.encode_text(tokens_on_device(captions))

        def loss_fn(model: nn.Module, batch) -> torch.Tensor:
            # ``batch``: this process's rows of a global batch; the loss is over the global batch.
            x, captions, caption_ids, negatives = pairs.inputs(batch)
            image_emb = model.encode_image(engine.to_device(x)) if tail is None else tail(engine.to_device(x))
            if negatives is None:
                text_emb, negative_emb, negative_ids = encode_text(model, captions), None, None
            else:  # one text-tower pass for the captions and their hard negatives
                text_emb, negative_emb = encode_text(model, captions + negatives[0]).split(len(captions))
                negative_ids = negatives[1].to(engine.device)
            scale = model.logit_scale.exp().clamp(max=100)
            return global_clip_loss(image_emb, text_emb, scale, caption_ids.to(engine.device), negative_emb,
                                    negative_ids)

        @torch.inference_mode()
        def validate(model: nn.Module) -> dict[str, float]:
            metrics: dict[str, float] = {}
            scores = []
            for card, pixels, labels, prompts in val_sets:
                class_emb = class_embeddings(enc, prompts, card.classes)
                image = (lambda x: enc.encode_image(x, normalize=True)) if tail is None else (
                    lambda x: nn.functional.normalize(tail(x).float(), dim=-1))
                feats = torch.cat([image(engine.to_device(pixels[i:i + 128])).float().cpu()
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

        def batches(epoch: int):
            set_eval(frozen)  # frozen trunk units keep their BatchNorm statistics (after the engine's train())
            return pairs.batches(epoch)

        try:
            state = engine.fit(batches, loss_fn, validate, on_best, steps_per_epoch=pairs.n // config.batch_size,
                               resume=run.resume, batch_size_fn=pairs.rows)
        finally:
            pairs.close()
        if config.shards:
            run.summary.update(shards=[str(p) for p in pairs.reader.paths])
        run.summary.update(train_datasets=config.train_data, pairs=pairs.n, best_epoch=state.best_epoch,
                           best_val_zeroshot_balanced_accuracy=state.best_score, best_val_score=state.best_score,
                           selected_on=f"val {config.engine.select_metric}", epochs_run=state.epoch,
                           clip_model=str(run.model_dir), parameters=counts)
        if state.precision is not None:  # precision: auto on a CPU: what was chosen and why (as Run.fit records it)
            run.summary["precision"] = state.precision
        if not distributed.is_main():  # rank 0 alone writes the model folder and reports
            return None
        # The selected CLIP folder is also a zero-shot classifier of ``data``'s classes: its class
        # embeddings and model.json sit beside the open_clip files (base model "." = this folder).
        return self.classifier(run.model_dir, run, config)

    @staticmethod
    def classifier(folder: Path, run, config: ClipTrainConfig):
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
