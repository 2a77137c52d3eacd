"""Generative VLMs as closed-ended VQA classifiers (``method: vqa``), with optional LoRA fine-tuning.

The classifier asks each image the card's closed-ended question ("What is the lesion type? Choose
one of: akiec, bcc, ...") and scores every answer option by its length-normalised log-likelihood
under the model (``models/generative.option_probabilities``), so the Predictor returns real class
probabilities: accuracy, calibration and a macro-AUC on the one evaluation layer.

With ``lora: true`` the run first fine-tunes peft LoRA adapters on the language model's linear
layers (vision tower and projector frozen unless asked) on the train split's question -> answer
pairs (written as ``instructions_train.jsonl`` in LLaVA's conversation format), in the one engine
(checkpoints hold only the adapter, resume is exact), selecting the epoch by the val answer loss.
The model folder holds the adapter tensors (``model.safetensors``) and names the base model by path
and fingerprint; the run also writes ``RUN/adapter`` (a peft folder) for ``dermkit vqa run --adapter``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dermkit.data.images import open_image
from dermkit.data.vqa import DEFAULT_TEMPLATE, option_labels, write_instructions
from dermkit.engine.batching import index_batches, steps_per_epoch
from dermkit.engine.loop import EngineConfig
from dermkit.errors import ConfigError, ModelError
from dermkit.methods.base import ClassifierConfig, Method, Predictor, register_method
from dermkit.models.checkpoint import MODEL_WEIGHTS, load_tensors, read_model_card
from dermkit.models.generative import (
    LANGUAGE_LINEAR,
    add_lora,
    answer_batch,
    apply_adapter,
    folder_fingerprint,
    load_generative,
    lora_tensors,
    option_probabilities,
    peft_config_dict,
    save_adapter,
)
from dermkit.runtime import epoch_seed, resolve_device


@dataclass
class VQAConfig(ClassifierConfig):
    model: str = ""  # a transformers image-text-to-text folder (llava-hf layout)
    template: str = DEFAULT_TEMPLATE  # the question; {options} is replaced by the answer options
    options: str = "codes"  # codes (akiec, bcc, ...) | names (readable class names)
    lora: bool = False  # fine-tune LoRA adapters on the train split before predicting
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(LANGUAGE_LINEAR))
    tune_projector: bool = False  # also train the multimodal projector fully
    tune_vision: bool = False  # also train the vision tower fully
    batch_size: int = 4
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=3, lr=2e-4, weight_decay=0.0, warmup_epochs=0.5, select_metric="loss", select_mode="min",
        channels_last=False))

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise ConfigError("model: give the folder of a transformers image-text-to-text model (llava-hf layout)")
        if self.options not in ("codes", "names"):
            raise ConfigError(f"options must be codes or names, got {self.options!r}")
        if "{options}" not in self.template:
            raise ConfigError("template must contain {options} where the answer options go")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_rank must be >= 1, lora_alpha > 0 and lora_dropout in [0, 1)")
        if not self.lora_targets:
            raise ConfigError(f"lora_targets must name language-model linear layers, e.g. {list(LANGUAGE_LINEAR)}")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")


class VQAPredictor(Predictor):
    """Option-likelihood class probabilities of a generative VLM (+ its LoRA adapter)."""

    fits_ood = False  # a generative VLM per image per class: no detector is fitted by default
    method = "vqa"

    def __init__(self, model, processor, model_card: dict, adapter: dict[str, torch.Tensor] | None = None):
        super().__init__(model_card)
        self.model, self.processor, self.adapter = model, processor, adapter

    def predict_paths(self, paths, progress: bool = False) -> np.ndarray:
        self.model.eval()
        question = self.model_card["question"]
        options = self.model_card["options"]
        return np.stack([option_probabilities(self.model, self.processor, open_image(p), question, options)
                         for p in tqdm(paths, desc="vqa options", disable=not progress)]) if len(paths) else \
            np.zeros((0, len(self.classes)))

    def _state(self):
        return dict(self.adapter or {}), self.model_card


class _LoraModel(nn.Module):
    """The peft model for the engine: checkpoints hold only the adapter (and what is tuned fully)."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft = peft_model

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k in self._trainable()}

    def _trainable(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def forward(self, **batch):
        return self.peft(**batch)


@register_method
class VQA(Method):
    name = "vqa"
    config_class = VQAConfig
    card_fields = {"base_model": str, "question": str, "options": list}
    description = "generative VLM (transformers folder) as a closed-ended VQA classifier: option probabilities; LoRA"
    tiny_config = {"data": "{data}", "model": "{vlm}",
                   "template": "what is the lesion type ? choose one of : {options} .",
                   "lora": True, "lora_rank": 2, "epochs": 1, "batch_size": 4, "lr": 1e-3, "n_bootstrap": 20}

    def check(self, config: VQAConfig) -> list[str]:
        warnings = super().check(config)
        folder = Path(config.model).expanduser()
        if folder.exists():
            from dermkit.models.generative import check_transformers_folder

            check_transformers_folder(folder)
        return warnings

    def fit(self, config: VQAConfig, run) -> VQAPredictor:
        card = run.card()
        device = str(resolve_device(config.engine.device))
        model, processor = load_generative(config.model, device="cpu")
        labels = option_labels(card, config.options)
        info = {"model": f"vqa:{Path(config.model).name}" + ("+lora" if config.lora else ""),
                "base_model": str(Path(config.model).expanduser().resolve()),
                "base_fingerprint": folder_fingerprint(config.model), "dataset": card.name, "task": config.task,
                "classes": list(card.classes),
                "negative_name": config.negative_name, "options": labels,
                "question": config.template.format(options=", ".join(labels)), "template": config.template,
                "lora": None}
        if not config.lora:
            predictor = VQAPredictor(model.to(device).eval(), processor, info)
            run.save_best(predictor)
            return predictor
        for split in ("train", "val"):
            write_instructions(card, split, run.out_dir / f"instructions_{split}.jsonl", config.options,
                               config.template)
        return self._fit_lora(config, run, card, model, processor, labels, info, device)

    def _fit_lora(self, config, run, card, model, processor, labels, info, device) -> VQAPredictor:
        torch.manual_seed(config.engine.seed)
        peft_model = add_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets,
                              config.tune_projector, config.tune_vision)
        wrapped = _LoraModel(peft_model)
        answers = dict(zip(card.classes, labels))
        train, val = card.rows("train"), card.rows("val")
        question = info["question"]

        def batch_of(rows, idx):
            sub = rows.iloc[idx]
            images = [open_image(card.image_path(p)) for p in sub["image"]]
            return answer_batch(processor, images, [question] * len(sub), [answers[d] for d in sub["diagnosis"]])

        def make_batches(epoch: int):
            for idx in index_batches(len(train), config.batch_size, epoch_seed(config.engine.seed, epoch)):
                yield batch_of(train, idx)

        def loss_fn(m, batch):
            return m(**{k: v.to(device) for k, v in batch.items()}).loss

        @torch.no_grad()
        def validate(m) -> dict[str, float]:
            total, count = 0.0, 0
            for start in range(0, len(val), config.batch_size):
                batch = batch_of(val, np.arange(start, min(start + config.batch_size, len(val))))
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(loss_fn(m, batch)) * n
                count += n
            return {"loss": total / max(count, 1)}

        lora_info = {"rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                     "targets": list(config.lora_targets), "tune_projector": config.tune_projector,
                     "tune_vision": config.tune_vision,
                     "peft_config": peft_config_dict(peft_model)}
        info = {**info, "lora": lora_info}

        def to_predictor(m, metrics):
            return VQAPredictor(m.peft, processor, dict(info), adapter=lora_tensors(m.peft))

        if len(val) == 0:
            raise ConfigError(f"{card.name} has no val split to select the LoRA epoch on")
        engine = run.engine(wrapped)
        started = time.perf_counter()
        run.fit(engine, make_batches, loss_fn, validate, to_predictor,
                steps_per_epoch=steps_per_epoch(len(train), config.batch_size),
                batch_size_fn=lambda b: len(b["input_ids"]))
        predictor = self.load(run.model_dir, device=device)
        save_adapter(predictor.model, run.out_dir / "adapter")
        trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        run.summary.update(lora_rank=config.lora_rank, trainable_parameters=int(trainable),
                           train_seconds=round(time.perf_counter() - started, 1),
                           adapter=str(run.out_dir / "adapter"))
        return predictor

    def load(self, folder, device: str = "auto") -> VQAPredictor:
        """A vqa model folder on its base model (checked by fingerprint), with its adapter."""
        folder = Path(folder)
        card = read_model_card(folder)
        base = Path(card["base_model"])
        if not (base / "config.json").is_file():
            raise ModelError(f"{folder} was made from the model {base}, which is not there any more; put it back or "
                             f"edit base_model in {folder / 'model.json'}")
        if folder_fingerprint(base) != card.get("base_fingerprint"):
            raise ModelError(f"the base model at {base} has changed since {folder} was made (fingerprint differs); "
                             "the adapter and option scores only fit the original weights")
        device = str(resolve_device(device))
        model, processor = load_generative(base, device="cpu")
        adapter = None
        if card.get("lora"):
            adapter = load_tensors(folder / MODEL_WEIGHTS)
            model = apply_adapter(model, card["lora"]["peft_config"], adapter, where=str(folder / MODEL_WEIGHTS))
        return VQAPredictor(model.to(device).eval(), processor, card, adapter=adapter)
