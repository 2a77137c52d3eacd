"""Prompt learning on a CLIP-style model: CoOp, KgCoOp and clinical-guided CoOp, with optional
partial tuning of the image tower's tail (IFT), trained from cached tail inputs.

One module, one model, the variants are config values:

``variant: coop``
    learnable context vectors ``[V]_1..[V]_M`` before each class name (Zhou et al. 2022); the
    loss is cross-entropy over ``logit_scale * cos(image, class text)``. ``class_specific``
    gives each class its own context; ``ctx_init`` starts from a phrase's token embeddings.
``variant: kgcoop``
    adds ``kg_weight * mean_c ||t_c - t_c^hand||^2`` over L2-normalised features: the learned
    class text features stay near the hand-crafted prompt ensemble's (Yao et al. 2023).
``variant: cgcoop``
    adds ``clinical_weight * mean_c (1 - cos(t_c, t_c^clin))``: each learned class feature is
    aligned with fixed clinical prompts built from the 7-point checklist
    (``data/checklists/clinical_7point.yaml``), the seed's clinical guidance.
``ift: true``
    the image tower's tail learns too: ``visual.ln_post`` + ``visual.proj`` of an open_clip
    ViT (exactly the seed's choice), or the last ``ift_units`` trunk units + projection head of
    a timm tower; the default 1 unit is the analogue of ``ln_post`` + ``proj`` (dermkit-CLIP:
    the final ``bn2`` norm + the projection head). BatchNorm in the tail keeps its pretrained
    statistics (eval mode), so the tail is a pure function of its input.

Speed: everything before the tail is frozen, so its output is computed once per image and
training reads that cache; an epoch costs the text encoder on C prompts per batch plus the
tail. ``cache: false`` re-encodes every image every step: same maths (tested to give the same
logits), kept for the benchmark in ``benchmarks/prompt_cache_speed.py``.

The text side runs the frozen text tower from token *embeddings* (context vectors spliced in
after the start token) for open_clip's own text transformer and for Hugging Face text towers
(open_clip ``CustomTextCLIP``, e.g. dermkit-CLIP's MiniLM or PanDerm-2's).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from dermkit.data.prompts import load_prompts
from dermkit.engine.batching import index_batches, steps_per_epoch
from dermkit.engine.features import map_images
from dermkit.engine.loop import EngineConfig
from dermkit.engine.losses import classification_criterion
from dermkit.errors import ConfigError, ModelError
from dermkit.evaluate import classification_metrics
from dermkit.inputs import MAX_YAML_CHARS, load_yaml, read_text
from dermkit.methods.base import ClassifierConfig, Method, Predictor, load_base_encoder, portable_spec, register_method
from dermkit.models.checkpoint import MODEL_WEIGHTS, load_tensors, read_model_card
from dermkit.models.encoders import load_encoder
from dermkit.models.explain import encoder_saliency
from dermkit.models.freeze import freeze, unfreeze
from dermkit.models.freeze import units as model_units
from dermkit.models.integrity import state_dict_problem
from dermkit.models.text import class_embeddings, require_text
from dermkit.runtime import epoch_seed, resolve_device

__all__ = [
    "PromptConfig",
    "PromptModel",
    "TextPrompter",
    "ImageTail",
    "clinical_prompts",
    "PromptLearning",
    "PromptPredictor",
]

VARIANTS = ("coop", "kgcoop", "cgcoop")
METHOD = "prompt_learning"


@dataclass
class PromptConfig(ClassifierConfig):
    """Everything a prompt-learning run depends on; saved as config.yaml in the run folder."""

    data: str = "derm7pt"
    task: str | None = "melanoma_vs_rest"  # see dermkit.data.tasks; all = the card's classes
    negative_name: str = "benign skin lesion"  # readable name of the negative class of a binary task
    model: str = "runs/dermkit_clip/model"  # any open_clip model load_encoder reads
    variant: str = "cgcoop"
    n_ctx: int = 4
    ctx_init: str | None = "a dermoscopic image of a"  # None: random N(0, 0.02) context
    class_specific: bool = False
    kg_weight: float = 8.0
    clinical_weight: float = 1.0
    clinical_prompts: str | None = None  # YAML file; default: the packaged 7-point prompts
    ift: bool = True
    ift_units: int = 1  # timm towers: trunk units in the tail (1 = the final norm, like ViT's ln_post)
    tail_lr_scale: float = 0.1  # the pretrained tail learns at this fraction of lr (the context at lr)
    cache: bool = True
    imbalance: str = "weighted_loss"  # weighted_loss | none
    batch_size: int = 32
    num_workers: int = 1
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=30, lr=2e-3, weight_decay=0.0, warmup_epochs=1, select_metric="balanced_accuracy",
        channels_last=False))

    def validate(self) -> None:
        super().validate()
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.n_ctx < 1 and not self.ctx_init:
            raise ConfigError("n_ctx must be >= 1 (or give ctx_init)")
        if self.imbalance not in ("weighted_loss", "none"):
            raise ConfigError(f"imbalance must be weighted_loss or none, got {self.imbalance!r}")
        if self.ift_units < 1:
            raise ConfigError("ift_units must be >= 1")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("batch_size must be >= 1 and num_workers >= 0")
        if self.kg_weight < 0 or self.clinical_weight < 0 or self.tail_lr_scale < 0:
            raise ConfigError("kg_weight, clinical_weight and tail_lr_scale must be >= 0")
        if self.clinical_prompts is not None and not Path(self.clinical_prompts).expanduser().is_file():
            raise ConfigError(f"clinical_prompts: {self.clinical_prompts} not found")


# ------------------------------------------------------------------------------ clinical prompts


def clinical_prompts(classes: Sequence[str], path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Clinical sentences per class from the packaged 7-point file or ``path``."""
    if path is None:
        text = resources.files("dermkit.data").joinpath("checklists/clinical_7point.yaml").read_text(encoding="utf-8")
        where = "packaged clinical_7point.yaml"
    else:
        if not Path(path).is_file():
            raise ConfigError(f"clinical_prompts file {path} not found")
        text, where = read_text(path, "clinical_prompts file", ConfigError, MAX_YAML_CHARS), str(path)
    spec = load_yaml(text, where) or {}
    table = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a 'classes:' mapping of class -> list of sentences")
    missing = [c for c in classes if not table.get(c)]
    if missing:
        raise ConfigError(f"{where} has no clinical prompts for {missing}; add a list of sentences per class "
                          "under 'classes:' and pass it as clinical_prompts: FILE")
    return {c: [str(s) for s in table[c]] for c in classes}


# ------------------------------------------------------------------------------ text side


class TextPrompter(nn.Module):
    """Learnable context + frozen text tower -> one (unnormalised) feature per class.

    Prompts are ``<start> [V]_1 .. [V]_M <class name>. <end>``: the text tower's own tokenizer
    writes them with placeholder words, and the placeholder embeddings are replaced by the
    context. The text tower is held outside the module's parameters (it is frozen and saved with
    the base model), so ``state_dict()`` is just the context.
    """

    def __init__(self, enc, class_texts: Sequence[str], n_ctx: int = 4, ctx_init: str | None = None,
                 class_specific: bool = False, seed: int = 0):
        super().__init__()
        model = enc.module
        text = getattr(model, "text", None)
        if text is not None and hasattr(text, "transformer") and hasattr(text, "pooler"):
            self.kind = "hf"
            embed = text.transformer.get_input_embeddings()
            self.pad_id = int(text.config.pad_token_id)
        elif hasattr(model, "token_embedding") and hasattr(model, "positional_embedding"):
            self.kind = "open_clip"
            embed = model.token_embedding
            self.pad_id = 0
        else:
            raise ModelError(f"{enc.name}: prompt learning needs an open_clip model (open_clip text transformer or "
                             "a Hugging Face text tower); transformers CLIPModel folders are not supported yet")
        # Not submodules: the text tower is frozen and saved with the base model, not here.
        object.__setattr__(self, "_embed", embed)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_enc", enc)
        if ctx_init:
            init_ids = enc.tokenize([ctx_init])[0]
            used = init_ids[(init_ids != self.pad_id)]
            n_ctx = len(used) - 2  # minus start and end tokens
            if n_ctx < 1:
                raise ConfigError(f"ctx_init {ctx_init!r} has no tokens")
        self.n_ctx = int(n_ctx)
        placeholder = " ".join(["X"] * self.n_ctx)
        ids = enc.tokenize([f"{placeholder} {name}." for name in class_texts])
        ids = _trim(ids, self.pad_id)
        if ids.shape[1] <= self.n_ctx + 1:
            raise ModelError("the prompts do not fit the text encoder's context length")
        self.register_buffer("token_ids", ids, persistent=False)
        with torch.no_grad():
            width = self._embed.weight.shape[1]
            if ctx_init:
                init = self._embed(init_ids[1:1 + self.n_ctx].to(self._embed.weight.device)).float().cpu()
                ctx = init.expand(len(class_texts), -1, -1).clone() if class_specific else init.clone()
            else:
                g = torch.Generator().manual_seed(seed)
                shape = (len(class_texts), self.n_ctx, width) if class_specific else (self.n_ctx, width)
                ctx = torch.randn(shape, generator=g) * 0.02
        self.ctx = nn.Parameter(ctx)

    def embeddings(self) -> torch.Tensor:
        """Token embeddings (C, L, W) with the context spliced in after the start token."""
        ids = self.token_ids
        base = self._embed(ids)
        ctx = self.ctx.to(base.dtype)
        if ctx.ndim == 2:
            ctx = ctx.unsqueeze(0).expand(ids.shape[0], -1, -1)
        return torch.cat([base[:, :1], ctx, base[:, 1 + self.n_ctx:]], dim=1)

    def encode(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The frozen text tower from token embeddings; equals ``encode_text(ids)`` for their embeddings."""
        model = self._model
        if self.kind == "hf":
            text = model.text
            mask = (ids != self.pad_id).long()
            out = text.transformer(inputs_embeds=embeds, attention_mask=mask)
            return text.proj(text.pooler(out, mask))
        from open_clip.transformer import text_global_pool

        length = ids.shape[1]
        x = embeds + model.positional_embedding[:length].to(embeds.dtype)
        mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        x = text_global_pool(x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        proj = model.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def forward(self) -> torch.Tensor:
        return self.encode(self.embeddings(), self.token_ids)


def _trim(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop all-padding columns (exact: padding is masked, or after the pooled token under a causal mask)."""
    used = (ids != pad_id).any(dim=0).nonzero()
    return ids[:, : int(used.max()) + 1] if len(used) else ids


# ------------------------------------------------------------------------------ image side


class ImageTail(nn.Module):
    """The image tower split into a frozen prefix (run once, cached) and a tail (trained or not).

    ``prefix(pixels)`` -> what enters the tail; ``forward(cached)`` -> image features. With
    ``trainable=False`` the prefix is the whole tower and the tail the identity. The tail's
    modules are the tower's own (shared, not copied): after training, the base model's
    ``encode_image`` already uses the tuned tail.
    """

    def __init__(self, enc, trainable: bool, units: int = 2):
        super().__init__()
        visual = enc.module.visual
        object.__setattr__(self, "_enc", enc)
        object.__setattr__(self, "_visual", visual)
        self.trainable = bool(trainable)
        self.kind = "none"
        self.description = "frozen image tower"
        if not self.trainable:
            return
        if hasattr(visual, "ln_post") and hasattr(visual, "transformer") and hasattr(visual, "_embeds"):
            if getattr(visual, "attn_pool", None) is not None:
                raise ConfigError("ift on an attention-pooled ViT (CoCa) is not supported; set ift: false")
            self.kind = "vit"
            self.ln_post = visual.ln_post
            if isinstance(visual.proj, nn.Parameter):
                self.proj = visual.proj
            self.description = "visual.ln_post" + (" + visual.proj" if isinstance(visual.proj, nn.Parameter) else "")
        elif hasattr(visual, "trunk") and hasattr(visual.trunk, "forward_head"):
            self.kind = "timm"
            steps = model_units(visual.trunk, forward_chain=True)
            if not 1 <= units < len(steps):
                raise ConfigError(f"ift_units must be between 1 and {len(steps) - 1} for this image tower")
            object.__setattr__(self, "_prefix_steps", steps[:-units])
            self.units = nn.ModuleList(steps[-units:])
            self.head = visual.head
            names = [type(m).__name__ for m in steps[-units:]]
            self.description = f"last {units} trunk units ({', '.join(names)}) + visual.head"
        else:
            raise ConfigError(f"{enc.name}: no known tail to tune in {type(visual).__name__}; set ift: false")

    def train(self, mode: bool = True):
        # The tail is a pure function of its input: BatchNorm keeps its pretrained statistics and
        # dropout stays off, so cached and uncached training see the same numbers.
        return super().train(False)

    @torch.no_grad()
    def prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self._visual
        if self.kind == "none":
            return self._enc.module.encode_image(pixels, normalize=False).float()
        if self.kind == "vit":
            x = visual.transformer(visual._embeds(pixels))
            if visual.final_ln_after_pool:
                return visual._global_pool(x)[0]
            if visual.pool_type == "tok":
                return x[:, 0]  # LayerNorm is per token: ln_post(x)[:, 0] == ln_post(x[:, 0])
            return x
        x = pixels
        for step in self._prefix_steps:
            x = step(x)
        return x

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        visual = self._visual
        if self.kind == "none":
            return cached
        if self.kind == "vit":
            x = self.ln_post(cached)
            if cached.ndim == 3:  # avg-pooled towers: all tokens cached
                x = visual._global_pool(x)[0]
            return x @ self.proj if hasattr(self, "proj") else x
        x = cached
        for step in self.units:
            x = step(x)
        return self.head(visual.trunk.forward_head(x))


# ------------------------------------------------------------------------------ the model


class PromptModel(nn.Module):
    """Learned prompts + image tail; ``forward(cached) -> logits``. ``state_dict`` = what was learned."""

    def __init__(self, enc, class_texts: Sequence[str], config: PromptConfig):
        super().__init__()
        object.__setattr__(self, "enc", enc)
        self.prompter = TextPrompter(enc, class_texts, config.n_ctx, config.ctx_init, config.class_specific,
                                     seed=config.engine.seed)
        self.image_tail = ImageTail(enc, config.ift, config.ift_units)
        self.register_buffer("logit_scale", torch.tensor(float(enc.logit_scale)))
        self.tail_lr_scale = float(config.tail_lr_scale)
        freeze(enc.module)
        if config.ift:
            unfreeze(self.image_tail)

    def lr_scales(self):
        """Parameter groups for the engine: new context at lr, pretrained tail at a fraction of it."""
        return [(self.prompter.parameters(), 1.0), (self.image_tail.parameters(), self.tail_lr_scale)]

    def text_features(self) -> torch.Tensor:
        return F.normalize(self.prompter().float(), dim=-1)

    def image_features(self, cached: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tail(cached).float(), dim=-1)

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(cached) @ self.text_features().T

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Uncached path: pixels -> logits."""
        return self(self.image_tail.prefix(pixels))


def guidance_loss(text: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """KgCoOp: mean squared distance; CgCoOp: mean (1 - cosine). Both on normalised features."""
    if kind == "kgcoop":
        return ((text - target) ** 2).sum(dim=-1).mean()
    return (1.0 - F.cosine_similarity(text, target, dim=-1)).mean()


# ------------------------------------------------------------------------------ cached inputs


def tail_inputs(model: PromptModel, paths: Sequence[Path], batch_size: int = 64, num_workers: int = 1,
                progress: bool = True, desc: str = "caching") -> torch.Tensor:
    """The tail's input for every image (the cache), in order, on the CPU."""
    model.enc.module.eval()
    return map_images(model.enc, paths, lambda px: model.image_tail.prefix(px.to(model.enc.device)),
                      batch_size, num_workers, progress, desc)


def pixels_of(enc, paths: Sequence[Path], num_workers: int = 1, progress: bool = True,
              desc: str = "decoding") -> torch.Tensor:
    """Preprocessed pixels of every image (the uncached path), decoded once."""
    return map_images(enc, paths, lambda px: px, 64, num_workers, progress, desc)


# ------------------------------------------------------------------------------ training


def _split(card, split: str):
    rows = card.rows(split)
    return rows, card.labels(rows), [card.image_path(p) for p in rows["image"]]


def _class_texts(card) -> list[str]:
    return [card.class_names[c] for c in card.classes]


@torch.no_grad()
def _proba(model: PromptModel, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    text = model.text_features()
    out = []
    for start in range(0, len(inputs), batch_size):
        img = model.image_features(inputs[start:start + batch_size].to(model.logit_scale.device))
        out.append(torch.softmax(model.logit_scale * img @ text.T, dim=1).double().cpu())
    return torch.cat(out).numpy()


class PromptPredictor(Predictor):
    """A trained prompt learner on its base model."""

    method = "prompt_learning"

    def __init__(self, model: PromptModel, model_card: dict):
        super().__init__(model_card)
        self.model = model.eval()

    def _state(self):
        return self.model.state_dict(), self.model_card

    def predict_paths(self, paths, progress: bool = False) -> np.ndarray:
        return _proba(self.model, tail_inputs(self.model, [Path(p) for p in paths], progress=progress, desc="encoding"))

    def image_features(self, paths, progress: bool = False) -> np.ndarray:
        """The image embeddings the learned prompts are compared with (the tuned tail included)."""
        inputs = tail_inputs(self.model, [Path(p) for p in paths], progress=progress, desc="encoding")
        self.model.eval()
        with torch.no_grad():
            return torch.cat([self.model.image_features(inputs[i:i + 256].to(self.model.logit_scale.device)).float()
                              .cpu() for i in range(0, len(inputs), 256)]).numpy()

    def saliency_module(self):
        """Grad-CAM through the whole image tower (its tuned tail included) against the learned prompts."""
        model = self.model
        with torch.no_grad():
            text = model.text_features().detach()
        # The tail's modules are the tower's own, so encode_image already includes the tuned tail.
        return encoder_saliency(model.enc, lambda emb: model.logit_scale * emb @ text.to(emb.device).T)


@register_method
class PromptLearning(Method):
    """CoOp / KgCoOp / CgCoOp (+ IFT) on a frozen CLIP-style model, from cached tail inputs."""

    name = "prompt_learning"
    config_class = PromptConfig
    card_fields = {"base_model": str, "base_fingerprint": str, "prompt_config": dict,
                   "n_ctx": int, "class_texts": list}
    description = "CoOp, KgCoOp, clinical-guided CoOp, optional image-tail tuning (IFT); cached"
    tiny_config = {"data": "{data}", "model": "{clip}", "task": "melanoma_vs_rest", "variant": "coop", "ift": False,
                   "batch_size": 8, "num_workers": 0, "epochs": 1, "n_bootstrap": 20}

    def fit(self, config: PromptConfig, run) -> PromptPredictor:
        card = run.card()
        classes = card.classes
        device = resolve_device(config.engine.device)
        enc = load_encoder(config.model, device=str(device))
        require_text(enc, "prompt learning")
        base_fingerprint = enc.fingerprint

        torch.manual_seed(config.engine.seed)
        model = PromptModel(enc, _class_texts(card), config)
        with torch.no_grad():
            hand = class_embeddings(enc, load_prompts(card), classes).to(device)
            clinical = (class_embeddings(enc, clinical_prompts(classes, config.clinical_prompts), classes).to(device)
                        if config.variant == "cgcoop" else None)
        guide = {"coop": None, "kgcoop": hand, "cgcoop": clinical}[config.variant]
        guide_weight = {"coop": 0.0, "kgcoop": config.kg_weight, "cgcoop": config.clinical_weight}[config.variant]

        _, y_train, train_paths = _split(card, "train")
        _, y_val, val_paths = _split(card, "val")
        if config.cache:
            train_x = tail_inputs(model, train_paths, num_workers=config.num_workers, progress=run.progress,
                                  desc="caching train")
        else:
            train_x = pixels_of(enc, train_paths, config.num_workers, run.progress, "decoding train")
        val_x = tail_inputs(model, val_paths, num_workers=config.num_workers, progress=run.progress, desc="caching val")
        y_train_t = torch.as_tensor(np.array(y_train))
        criterion = classification_criterion(y_train, len(classes), config.imbalance).to(device)
        engine = run.engine(model)

        def make_batches(epoch: int):
            for idx in index_batches(len(y_train_t), config.batch_size, epoch_seed(config.engine.seed, epoch)):
                yield train_x[idx], y_train_t[idx]

        def loss_fn(m: PromptModel, batch) -> torch.Tensor:
            x, y = batch
            x = x.to(device)
            inputs = x if config.cache else m.image_tail.prefix(x)
            text = m.text_features()
            logits = m.logit_scale * m.image_features(inputs) @ text.T
            loss = criterion(logits, y.to(device))
            if guide is not None:
                loss = loss + guide_weight * guidance_loss(text, guide, config.variant)
            return loss

        def validate(m: PromptModel) -> dict[str, float]:
            metrics = classification_metrics(y_val, _proba(m, val_x), classes)
            return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

        card_info = {
            "model": f"{config.variant}{'+ift' if config.ift else ''}", "classes": classes,
            "class_texts": _class_texts(card), "task": config.task, "negative_name": config.negative_name,
            "dataset": card.name, "base_model": portable_spec(config.model), "base_fingerprint": base_fingerprint,
            "prompt_config": config.to_dict(), "image_tail": model.image_tail.description,
            "image_size": enc.image_size, "logit_scale": float(model.logit_scale), "n_ctx": model.prompter.n_ctx,
        }
        started = time.perf_counter()
        run.fit(engine, make_batches, loss_fn, validate, lambda m, metrics: PromptPredictor(m, dict(card_info)),
                steps_per_epoch=steps_per_epoch(len(y_train), config.batch_size), batch_size_fn=lambda b: len(b[1]))
        run.summary.update(
            variant=config.variant, ift=config.ift, image_tail=model.image_tail.description,
            train_seconds=round(time.perf_counter() - started, 1), seconds_per_epoch=median_epoch_seconds(run.out_dir),
            trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
        return self.load(run.model_dir, device=str(device), encoder=enc)

    def load(self, folder, device: str = "auto", encoder=None) -> PromptPredictor:
        """A prompt-learning model folder on its base model (which must be unchanged)."""
        folder = Path(folder)
        card = read_model_card(folder)
        device = str(resolve_device(device))
        if encoder is None:
            encoder = load_base_encoder(card["base_model"], card["base_fingerprint"], folder, device=device)
        config = PromptConfig.from_dict(card["prompt_config"])
        config.ctx_init = None  # the context comes from the weights below; only its length matters
        config.n_ctx = int(card["n_ctx"])
        model = PromptModel(encoder, card["class_texts"], config)
        state = load_tensors(folder / MODEL_WEIGHTS)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{folder / MODEL_WEIGHTS} does not match the prompt model described in model.json: "
                             f"{state_dict_problem(exc)}") from None
        return PromptPredictor(model.to(device), card)


def median_epoch_seconds(out_dir: Path) -> float | None:
    """Median seconds per epoch from the engine's history.csv (None if it has no timing)."""
    path = Path(out_dir) / "history.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if "train_seconds" in frame.columns and len(frame):
        return round(float(frame["train_seconds"].median()), 3)
    return None
