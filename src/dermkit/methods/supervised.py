"""Supervised image classifiers (timm backbones): train on train, select on val, report on test."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dermkit.data.images import as_path
from dermkit.data.torchdata import ImageDataset, eval_transform, train_transform
from dermkit.engine.batching import drop_last, steps_per_epoch
from dermkit.engine.loop import EngineConfig, epoch_seed, resolve_device, resolve_precision
from dermkit.engine.losses import classification_criterion
from dermkit.errors import ConfigError
from dermkit.methods.base import ClassifierConfig, Method, Predictor, register_method
from dermkit.models.checkpoint import load_model
from dermkit.models.freeze import set_eval, train_only_last
from dermkit.models.registry import create_classifier, model_spec

IMBALANCE = ("weighted_loss", "balanced_sampler", "none")


@dataclass
class TrainConfig(ClassifierConfig):
    """Everything a supervised run depends on; saved as config.yaml in the run folder."""

    data: str = "ham10000"
    model: str = "efficientnet_lite0"  # a registry name or timm:ARCH[.TAG][@random] (see models.specs)
    pretrained: bool | None = None  # None: what the model spec says; false: random init
    image_size: int | None = None  # None: the model's default
    batch_size: int = 32
    eval_batch_size: int = 128
    augment: str = "strong"  # strong | light | none
    imbalance: str = "weighted_loss"  # weighted_loss | balanced_sampler | none
    label_smoothing: float = 0.1
    drop_rate: float = 0.2
    train_last: int | None = None  # train only the last N units (+ head); None = full fine-tuning
    num_workers: int = 2
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> None:
        super().validate()
        if self.imbalance not in IMBALANCE:
            raise ConfigError(f"imbalance must be one of {', '.join(IMBALANCE)}, got {self.imbalance!r}")
        if self.augment not in ("strong", "light", "none"):
            raise ConfigError(f"augment must be strong, light or none, got {self.augment!r}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if self.train_last is not None and self.train_last < 1:
            raise ConfigError("train_last must be >= 1 (or null: fine-tune everything)")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.drop_rate < 1:
            raise ConfigError("label_smoothing and drop_rate must be in [0, 1)")
        if self.num_workers < 0:
            raise ConfigError("num_workers must be >= 0")
        model_spec(self.model)  # unknown model -> clear error before any work


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int = 64,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "predicting",
) -> np.ndarray:
    """Softmax probabilities (N, C) in dataset order; autocast where requested."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    out = []
    for x, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float64)
    return torch.cat(out).double().numpy()


class SupervisedPredictor(Predictor):
    """A trained timm classifier and its eval transform (model.json: architecture, classes, pixels)."""

    method = "supervised"

    def __init__(self, model: nn.Module, card: dict, device: str = "auto", precision: str = "auto"):
        super().__init__(card)
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        self.image_size: int = int(card["image_size"])
        self.transform = eval_transform(self.image_size, card["mean"], card["std"])

    def _state(self):
        return self.model.state_dict(), self.card

    def dataset(self, paths: Sequence[Path], progress: bool = False) -> ImageDataset:
        return ImageDataset([as_path(p) for p in paths], None, self.transform, cache_side=int(self.image_size * 1.15),
                            progress=progress)

    def predict_paths(self, paths, progress: bool = False) -> np.ndarray:
        dataset = self.dataset(paths, progress)
        onnx = self._onnx()
        if onnx is None:
            return predict_proba(self.model, dataset, device=self.device, amp_dtype=self.amp_dtype, progress=progress)
        from tqdm.auto import tqdm

        loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0)
        out = [onnx(x) for x, _ in tqdm(loader, desc="predicting", disable=not progress, leave=False)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, len(self.classes)))

    def _onnx(self):
        """The frozen classifier (+ softmax) on ONNX Runtime where that is the CPU backend, else None."""
        if not hasattr(self, "_onnx_fn"):
            from dermkit.models.encoders.base import model_fingerprint
            from dermkit.models.onnx import inference_backend, onnx_function

            self._onnx_fn = None
            if inference_backend(self.device) == "onnx":
                module = nn.Sequential(self.model, nn.Softmax(dim=1))
                self._onnx_fn = onnx_function(module, (self.image_size, self.image_size),
                                              key=f"classifier-{model_fingerprint(self.model)}")
        return self._onnx_fn

    def saliency_module(self):
        """Grad-CAM on the classifier itself (last spatial layer of a CNN, last block of a ViT)."""
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        from dermkit.models.explain import SaliencyModule, target_layers_for

        def preprocess(image):
            return self.transform(TF.pil_to_tensor(image.convert("RGB")))

        example = preprocess(Image.new("RGB", (self.image_size, self.image_size), (128, 128, 128))).unsqueeze(0)
        layers, reshape, kind = target_layers_for(self.model, example.to(self.device))
        return SaliencyModule(self.model, preprocess, layers, reshape, kind)


@register_method
class Supervised(Method):
    """Fine-tune (or train from scratch) a timm image classifier."""

    name = "supervised"
    config_class = TrainConfig
    description = "timm image classifier, fine-tuned or from scratch (train_last for partial fine-tuning)"
    tiny_config = {"data": "{data}", "model": "timm:test_resnet@random", "image_size": 32, "batch_size": 16,
                   "num_workers": 0, "epochs": 1, "n_bootstrap": 20}

    def fit(self, config: TrainConfig, run) -> SupervisedPredictor:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        card = run.card()
        spec = model_spec(config.model)
        size = config.image_size or spec.default_size
        classes = list(card.classes)
        train_rows, val_rows = card.rows("train"), card.rows("val")
        y_train, y_val = card.labels(train_rows), card.labels(val_rows)

        cache_side = int(size * 1.15)
        paths = lambda rows: [card.image_path(p) for p in rows["image"]]  # noqa: E731
        train_set = ImageDataset(paths(train_rows), y_train, train_transform(size, spec.mean, spec.std, config.augment),
                                 cache_side, run.progress, desc="decoding train")
        val_set = ImageDataset(paths(val_rows), y_val, eval_transform(size, spec.mean, spec.std), cache_side,
                               run.progress, desc="decoding val")

        torch.manual_seed(config.engine.seed)  # head init is part of the experiment: seed it
        model = create_classifier(config.model, len(classes), pretrained=config.pretrained, drop_rate=config.drop_rate)
        frozen = train_only_last(model, config.train_last) if config.train_last else []
        engine = run.engine(model)
        criterion = classification_criterion(y_train, len(classes), config.imbalance, config.label_smoothing).to(engine.device)

        def make_batches(epoch: int):
            set_eval(frozen)  # frozen BatchNorm keeps its pretrained statistics
            generator = torch.Generator().manual_seed(epoch_seed(config.engine.seed, epoch))
            if config.imbalance == "balanced_sampler":
                per_sample = (1.0 / np.bincount(y_train, minlength=len(classes)))[y_train]
                sampler = torch.utils.data.WeightedRandomSampler(per_sample, len(y_train), replacement=True,
                                                                 generator=generator)
                kwargs = {"sampler": sampler}
            else:
                kwargs = {"shuffle": True, "generator": generator}
            return torch.utils.data.DataLoader(
                train_set, batch_size=config.batch_size, drop_last=drop_last(len(train_set), config.batch_size),
                num_workers=config.num_workers, persistent_workers=False, **kwargs,
            )

        def loss_fn(model: nn.Module, batch) -> torch.Tensor:
            x, y = batch
            return criterion(model(engine.to_device(x)), y.to(engine.device))

        def validate(model: nn.Module) -> dict[str, float]:
            from dermkit.evaluate import classification_metrics

            proba = predict_proba(model, val_set, config.eval_batch_size, engine.device, engine.amp_dtype,
                                  run.progress, "validating")
            metrics = classification_metrics(y_val, proba, classes)
            return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

        card_info = {
            "model": config.model, "classes": classes, "image_size": size, "mean": list(spec.mean),
            "std": list(spec.std), "dataset": card.name, "task": config.task, "negative_name": config.negative_name,
            "train_config": config.to_dict(),
            "created_with": {"torch": torch.__version__, "python": platform.python_version()},
        }
        run.fit(engine, make_batches, loss_fn, validate,
                lambda m, metrics: SupervisedPredictor(m, dict(card_info), device=str(engine.device)),
                steps_per_epoch=steps_per_epoch(len(train_set), config.batch_size), batch_size_fn=lambda b: len(b[1]))
        run.summary["model"] = config.model
        return self.load(run.model_dir, device=str(engine.device))

    def load(self, folder, device: str = "auto", precision: str = "auto") -> SupervisedPredictor:
        model, card = load_model(folder)
        return SupervisedPredictor(model, card, device=device, precision=precision)


def benchmark_config(data: str = "ham10000", model: str = "efficientnet_lite0") -> dict[str, Any]:
    """Settings of the main job (``configs/benchmark_lite0_ham10000.yaml``), chosen to finish in
    under 20 minutes on 2 CPU cores.

    Measured on the 2-core CI machine (fp32, channels-last; no bf16 units there), EfficientNet-Lite0
    trains at ~18 img/s at 160 px when every layer learns, ~40 img/s when the stem and the first two
    stages (the high-resolution, most expensive part of the backward pass) stay frozen. HAM10000
    is stored at 200x150 px, so 160 px loses little. Six epochs of the partial fine-tune fit the
    budget; see README.md for the figures.
    """
    return {
        "method": "supervised", "name": "benchmark", "data": data, "model": model, "image_size": 160,
        "batch_size": 32, "augment": "strong", "imbalance": "weighted_loss", "train_last": 7, "num_workers": 1,
        "engine": {"epochs": 6, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 0.5,
                   "select_metric": "balanced_accuracy"},
    }
