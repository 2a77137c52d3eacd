"""Supervised image classifiers (timm backbones): train on train, select on val, report on test."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermkit.data import load_card
from dermkit.data.torchdata import ImageDataset, eval_transform, train_transform
from dermkit.config import config_from_dict
from dermkit.engine.loop import Engine, EngineConfig, epoch_seed, replace_dir
from dermkit.errors import ConfigError
from dermkit.io import write_json, write_text
from dermkit.models.checkpoint import load_model, save_model
from dermkit.models.registry import create_classifier, model_spec
from dermkit.predictor import predict_proba, predictions_frame

IMBALANCE = ("weighted_loss", "balanced_sampler", "none")


@dataclass
class TrainConfig:
    """Everything a supervised run depends on; saved as config.yaml in the run folder."""

    data: str = "ham10000"
    model: str = "efficientnet_lite0"
    pretrained: bool | None = None  # None: the model's default (ImageNet for EfficientNet-Lite)
    image_size: int | None = None  # None: the model's default
    batch_size: int = 32
    eval_batch_size: int = 128
    augment: str = "strong"  # strong | light | none
    imbalance: str = "weighted_loss"  # weighted_loss | balanced_sampler | none
    label_smoothing: float = 0.1
    drop_rate: float = 0.2
    train_last: int | None = None  # train only the last N blocks (+ head); None = full fine-tuning
    num_workers: int = 2
    n_bootstrap: int = 1000
    engine: EngineConfig = field(default_factory=EngineConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        self.engine.validate()
        if self.imbalance not in IMBALANCE:
            raise ConfigError(f"imbalance must be one of {IMBALANCE}, got {self.imbalance!r}")
        if self.augment not in ("strong", "light", "none"):
            raise ConfigError("augment must be strong, light or none")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        model_spec(self.model)  # unknown model -> clear error before any work


def trainable_units(model: nn.Module) -> list[nn.Module]:
    """Top-level blocks in forward order (timm stages expanded), the unit of partial fine-tuning."""
    units: list[nn.Module] = []
    for name, child in model.named_children():
        if name in ("blocks", "stages", "layers") and isinstance(child, nn.Sequential):
            units.extend(child)
        elif any(True for _ in child.parameters()):
            units.append(child)
    return units


def freeze_all_but_last(model: nn.Module, n: int) -> list[nn.Module]:
    """Freeze every unit but the last ``n``; returns the frozen units (kept in eval mode when training)."""
    units = trainable_units(model)
    if not 1 <= n <= len(units):
        raise ConfigError(f"train_last must be between 1 and {len(units)} for this model")
    frozen = units[: len(units) - n]
    for unit in frozen:
        for p in unit.parameters():
            p.requires_grad_(False)
    return frozen


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over the samples (classes absent -> 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing where each *sample* is weighted by its class weight.

    torch's ``CrossEntropyLoss(weight=..., label_smoothing=...)`` also multiplies the smoothing
    term by every class's weight, which with HAM10000's 60:1 imbalance pushes all predictions
    towards the rare classes and puts the starting loss far above log(C).
    """

    def __init__(self, class_weights: torch.Tensor, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("class_weights", class_weights.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = nn.functional.cross_entropy(logits.float(), target, reduction="none",
                                                 label_smoothing=self.label_smoothing)
        w = self.class_weights[target]
        return (per_sample * w).sum() / w.sum().clamp_min(1e-12)


def train_classifier(config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, select on val, evaluate on test. Writes the run folder; returns the test metrics."""
    import yaml

    from dermkit.evaluate import classification_metrics, evaluate

    config.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    card = load_card(config.data)
    spec = model_spec(config.model)
    size = config.image_size or spec.default_size
    classes = list(card.classes)

    train_rows, val_rows, test_rows = card.rows("train"), card.rows("val"), card.rows("test")
    y_train, y_val = card.labels(train_rows), card.labels(val_rows)
    write_text(out_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    cache_side = int(size * 1.15)
    paths = lambda rows: [card.image_path(p) for p in rows["image"]]  # noqa: E731
    train_set = ImageDataset(paths(train_rows), y_train, train_transform(size, spec.mean, spec.std, config.augment),
                             cache_side, progress, desc="decoding train")
    val_set = ImageDataset(paths(val_rows), y_val, eval_transform(size, spec.mean, spec.std), cache_side, progress,
                           desc="decoding val")

    seed_model = config.engine.seed
    torch.manual_seed(seed_model)  # head init is part of the experiment: seed it
    model = create_classifier(config.model, len(classes), pretrained=config.pretrained, drop_rate=config.drop_rate)
    frozen = freeze_all_but_last(model, config.train_last) if config.train_last else []

    engine = Engine(model, config.engine, out_dir, progress=progress)
    weights = class_weights(y_train, len(classes)) if config.imbalance == "weighted_loss" else torch.ones(len(classes))
    criterion = WeightedCrossEntropy(weights, config.label_smoothing).to(engine.device)

    def make_batches(epoch: int):
        for unit in frozen:  # frozen BatchNorm keeps its pretrained statistics
            unit.eval()
        generator = torch.Generator().manual_seed(epoch_seed(config.engine.seed, epoch))
        if config.imbalance == "balanced_sampler":
            per_sample = (1.0 / np.bincount(y_train, minlength=len(classes)))[y_train]
            sampler = torch.utils.data.WeightedRandomSampler(per_sample, len(y_train), replacement=True, generator=generator)
            kwargs = {"sampler": sampler}
        else:
            kwargs = {"shuffle": True, "generator": generator}
        return torch.utils.data.DataLoader(
            train_set, batch_size=config.batch_size, drop_last=len(train_set) > config.batch_size,
            num_workers=config.num_workers, persistent_workers=False, **kwargs,
        )

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return criterion(model(engine.to_device(x)), y.to(engine.device))

    def validate(model: nn.Module) -> dict[str, float]:
        proba = predict_proba(model, val_set, config.eval_batch_size, engine.device, engine.amp_dtype, progress, "validating")
        metrics = classification_metrics(y_val, proba, classes)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

    def model_card(metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return {
            "model": config.model, "classes": classes, "image_size": size, "mean": list(spec.mean), "std": list(spec.std),
            "dataset": card.name, "val_metrics": metrics, "train_config": config.to_dict(),
            "created_with": {"torch": torch.__version__, "python": platform.python_version()},
        }

    def on_best(model: nn.Module, metrics: dict[str, float]) -> None:
        tmp = out_dir / "model.partial"
        save_model(tmp, model, {**model_card(metrics), "epoch": engine.state.epoch + 1})
        replace_dir(tmp, out_dir / "model")

    steps = len(train_set) // config.batch_size if len(train_set) > config.batch_size else 1
    state = engine.fit(make_batches, loss_fn, validate, on_best, steps_per_epoch=steps, resume=resume,
                       batch_size_fn=lambda b: len(b[1]))

    # Report on test with the selected (best-on-val) weights.
    best_model, best_card = load_model(out_dir / "model")
    test_set = ImageDataset(paths(test_rows), card.labels(test_rows), eval_transform(size, spec.mean, spec.std),
                            cache_side, progress, desc="decoding test")
    proba = predict_proba(best_model.to(engine.device), test_set, config.eval_batch_size, engine.device,
                          engine.amp_dtype, progress, "testing")
    groups = None
    if card.group_column:
        col = test_rows[card.group_column]
        groups = col.where(col.notna(), test_rows["image"]).astype(str).tolist()
    preds = predictions_frame(test_rows["image"].tolist(), proba, classes, test_rows["diagnosis"].tolist(), groups)
    report = evaluate(preds, n_bootstrap=config.n_bootstrap, seed=config.engine.seed,
                      title=f"{config.model} on {card.name} (test split)")
    report_dir = report.save(out_dir / "eval" / "test")
    summary = {
        "dataset": card.name, "model": config.model, "best_epoch": state.best_epoch,
        "epochs_run": state.epoch, "wall_seconds": round(time.perf_counter() - started, 1),
        "selected_on": f"val {config.engine.select_metric}", "best_val_score": state.best_score,
        "report": str(report_dir), "test": {k: report.metrics.get(k) for k in
                                          ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
        "test_ci": {k: report.metrics.get("ci", {}).get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
    }
    write_json(out_dir / "summary.json", summary)
    return summary


def benchmark_config(data: str = "ham10000", model: str = "efficientnet_lite0") -> TrainConfig:
    """Settings of the main job, chosen to finish in under 20 minutes on 2 CPU cores.

    Measured on the 2-core CI machine (fp32, channels-last; no bf16 units there), EfficientNet-Lite0
    trains at ~18 img/s at 160 px when every layer learns, ~40 img/s when the stem and the first two
    stages (the high-resolution, most expensive part of the backward pass) stay frozen. HAM10000
    is stored at 200x150 px, so 160 px loses little. Six epochs of the partial fine-tune fit the
    budget; see README.md for the figures.
    """
    return TrainConfig(
        data=data,
        model=model,
        image_size=160,
        batch_size=32,
        augment="strong",
        imbalance="weighted_loss",
        train_last=7,
        num_workers=1,
        engine=EngineConfig(epochs=6, lr=1e-3, weight_decay=0.05, warmup_epochs=0.5, select_metric="balanced_accuracy"),
    )


def run_config(raw: dict[str, Any], out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Entry point of ``dermkit run``/``dermkit suite`` (see dermkit.experiment)."""
    return train_classifier(TrainConfig.from_dict(raw), out_dir, resume=resume, progress=progress)
