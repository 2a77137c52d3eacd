"""Sparse autoencoder on frozen, cached embeddings: ``method: sae`` (PanDerm-2's concept discovery, step 1).

An SAE (:mod:`dermkit.models.sae`) is trained, unsupervised, on the L2-normalised embeddings of
the run's train split plus the train splits of ``extra_data`` (images whose bytes also appear in
the run's val or test split are left out, so the test images are never seen, not even unlabelled;
exact duplicates are used once).
Its latents are PanDerm-2's candidate concepts. An SAE is not a classifier, so to fit the method
contract the run's model is a *concept-bottleneck probe*: a logistic regression (standardised
inputs, ``class_weight``, C chosen from ``Cs`` by balanced accuracy on val) on the SAE activations
of the run's (task-relabelled) card. ``dermkit run`` reports that probe on test like any other
method, and ``dermkit predict/evaluate --model`` load it.

The model folder holds the SAE (``sae.W_enc``, ``sae.b_enc``, ``sae.W_dec``, ``sae.b_dec``), the
probe (``coef``, ``intercept``, ``mean``, ``scale``) and names the encoder by spec and
fingerprint. ``run.summary["sae"]`` holds the SAE's train/val FVU, mean L0 and dead latents;
``sae_history.csv`` the loss per epoch. ``SAEPredictor.activations(paths or embeddings)`` gives
the latent activations for later concept work; ``SAEPredictor.sae.atoms`` the dictionary.

``init_sae``: a safetensors SAE state dict in any layout
:meth:`~dermkit.models.sae.SparseAutoencoder.from_state_dict` reads (e.g. PanDerm-2's
``autoencoder.pth`` converted once with ``safetensors.torch.save_file``) to start from;
with ``epochs: 0`` it is used as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dermkit import io
from dermkit.data.card import load_card
from dermkit.data.images import as_path
from dermkit.engine.features import content_hash, extract_features, extract_split_features
from dermkit.errors import ConfigError, ModelError
from dermkit.methods.base import ClassifierConfig, EncoderHeadPredictor, Method, portable_spec, register_method
from dermkit.models.checkpoint import load_tensors
from dermkit.models.encoders import load_encoder
from dermkit.models.linear import DEFAULT_CS, LinearProbe, check_probe_settings, fit_probe
from dermkit.models.sae import SAETrainConfig, SparseAutoencoder, resolve_activation, sae_metrics, train_sae

__all__ = ["SAEConfig", "SAEPredictor", "SAEMethod", "sweep_embeddings"]

_PROBE = ("coef", "intercept", "mean", "scale")


@dataclass
class SAEConfig(SAETrainConfig, ClassifierConfig):
    """``method: sae``. SAE keys: those of :class:`~dermkit.models.sae.SAETrainConfig`:
    ``activation`` (``auto`` by default: PanDerm-2's ReLU + L1 recipe on embeddings of PanDerm-2's
    width, 768, TopK with ``k`` = 32 active latents on any other width, see
    :func:`~dermkit.models.sae.resolve_activation`; or relu_l1 | topk), ``expansion`` (latents per
    embedding dimension), ``k`` (topk), ``l1``, ``lr``, ``batch_size``, ``epochs``, ``resample_every`` (epochs;
    0 = no dead-latent resampling), and ``seed``; ``extra_data``: more datasets whose train splits
    add SAE training embeddings; ``init_sae``: start from a saved SAE. Probe keys: ``Cs``,
    ``class_weight``, ``max_iter``. Encoder keys: ``model``, ``encode_batch_size``, ``num_workers``,
    ``cache_dir``, ``device`` (also trains the SAE)."""

    model: str = "timm:tf_efficientnet_lite0"
    activation: str = "auto"
    extra_data: list[str] = field(default_factory=list)
    seed: int = 0
    init_sae: str | None = None
    Cs: list[float] = field(default_factory=lambda: list(DEFAULT_CS))
    class_weight: str | None = "balanced"
    max_iter: int = 1000
    encode_batch_size: int = 64
    num_workers: int = 2
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config"):
        raw = dict(raw or {})
        if isinstance(raw.get("extra_data"), str):  # "isic2019,derm7pt" from a command line
            raw["extra_data"] = [d.strip() for d in raw["extra_data"].split(",") if d.strip()]
        return super().from_dict(raw, where)

    def validate(self) -> None:
        ClassifierConfig.validate(self)
        SAETrainConfig.validate(self)
        if self.epochs == 0 and not self.init_sae:
            raise ConfigError("epochs must be >= 1 unless init_sae names an SAE to use as it is")
        if self.init_sae is not None and not Path(self.init_sae).expanduser().is_file():
            raise ConfigError(f"init_sae: {self.init_sae} not found; give a .safetensors SAE state dict")
        check_probe_settings(self.Cs, self.class_weight, self.max_iter)
        if self.encode_batch_size < 1 or self.num_workers < 0:
            raise ConfigError("encode_batch_size must be >= 1, num_workers >= 0")


# ------------------------------------------------------------------------------ predictor


class SAEPredictor(EncoderHeadPredictor):
    """A frozen encoder -> SAE latents -> logistic-regression probe over the classes."""

    method = "sae"

    def __init__(self, enc, sae: SparseAutoencoder, probe: LinearProbe, model_card: dict, **kwargs):
        super().__init__(enc, model_card, **kwargs)
        self.sae = sae.cpu().eval()
        self.probe = probe

    def _state(self):
        tensors = {f"sae.{k}": v.detach().float() for k, v in self.sae.state_dict().items()}
        tensors.update(self.probe.tensors())
        return tensors, {**self.model_card, "sae": {**dict(self.model_card.get("sae") or {}), **self.sae.config()}}

    def activations(self, images, progress: bool = False) -> np.ndarray:
        """SAE latent activations ``(N, n_latents)`` of image paths or of ``(N, D)`` embeddings."""
        if isinstance(images, (np.ndarray, torch.Tensor)):
            return self.sae.activations(images)
        paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        feats = extract_features(self.enc, [as_path(p) for p in paths], cache_dir=self.cache_dir,
                                 batch_size=self.batch_size, num_workers=self.num_workers, progress=progress)
        return self.sae.activations(feats)

    def head(self, features: np.ndarray) -> np.ndarray:
        return self.probe.predict_proba(self.sae.activations(features))


# ------------------------------------------------------------------------------ the method


def _extra_train_features(enc, extra_data: list[str], card, kw: dict) -> tuple[list[np.ndarray], list[dict]]:
    """Train-split embeddings of ``extra_data``, minus images whose bytes are in the run's val/test
    split (never seen, not even unlabelled) or already used (the run's train, an earlier dataset)."""
    if not extra_data:
        return [], []
    held_out = {content_hash(card.image_path(p)) for s in ("val", "test") for p in card.rows(s)["image"]}
    used = {content_hash(card.image_path(p)) for p in card.rows("train")["image"]}
    feats, info = [], []
    for name in extra_data:
        other = load_card(name)
        paths = [other.image_path(p) for p in other.rows("train")["image"]]
        keep, left_out, duplicates = [], 0, 0
        for p in paths:
            h = content_hash(p)
            if h in held_out:
                left_out += 1
            elif h in used:
                duplicates += 1
            else:
                used.add(h)
                keep.append(p)
        feats.append(extract_features(enc, keep, **kw))
        info.append({"dataset": other.name, "n_train": len(paths), "used": len(keep),
                     "left_out_in_run_val_or_test": left_out, "duplicates_skipped": duplicates})
    return feats, info


def sweep_embeddings(model: str, data: list[str], cache_dir=None, batch_size: int = 64, num_workers: int = 2,
                     device: str = "auto", progress: bool = True) -> dict:
    """What ``dermkit concepts sweep`` trains on, built as ``method: sae`` builds it: the SAE's
    training embeddings (the first dataset's train split plus the train splits of the others, minus
    images in the first dataset's val/test split or already used), and the first dataset's labelled
    train and val embeddings for the probe. Embeddings come from (and go to) the feature cache."""
    if not data:
        raise ConfigError("--data needs at least one dataset name or folder")
    enc = load_encoder(model, device=device)
    card = load_card(data[0])
    kw = dict(cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers, progress=progress)
    x_tr, y_tr, _ = extract_split_features(enc, card, "train", **kw)
    x_va, y_va, _ = extract_split_features(enc, card, "val", **kw)
    if len(x_va) == 0:
        raise ConfigError(f"{card.name} has no val split; the sweep measures every point on val")
    extra, info = _extra_train_features(enc, list(data[1:]), card, kw)
    return {"encoder": enc.name, "fingerprint": enc.fingerprint, "dataset": card.name, "classes": list(card.classes),
            "x_sae": np.concatenate([x_tr, *extra]) if extra else x_tr, "x_train": x_tr, "y_train": y_tr,
            "x_val": x_va, "y_val": y_va, "extra_data": info}


def _fmt(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


@register_method
class SAEMethod(Method):
    """Sparse autoencoder on cached embeddings (PanDerm-2 concept discovery) + a probe on its latents."""

    name = "sae"
    config_class = SAEConfig
    card_fields = {"base_model": str, "C": float}
    description = ("sparse autoencoder on frozen, cached embeddings (PanDerm-2 concept discovery) with a "
                   "logistic-regression probe on its latents")
    tiny_config = {"data": "{data}", "model": "{clip}", "num_workers": 0, "expansion": 2, "epochs": 5,
                   "batch_size": 64, "l1": 1e-3, "lr": 1e-3, "Cs": [0.1, 1.0], "n_bootstrap": 20}

    def fit(self, config: SAEConfig, run) -> SAEPredictor:
        card = run.card()
        enc = load_encoder(config.model, device=config.device)
        kw = dict(cache_dir=config.cache_dir, batch_size=config.encode_batch_size, num_workers=config.num_workers,
                  progress=run.progress)
        x_tr, y_tr, _ = extract_split_features(enc, card, "train", **kw)
        x_va, y_va, _ = extract_split_features(enc, card, "val", **kw)
        extra, extra_info = _extra_train_features(enc, config.extra_data, card, kw)
        x_sae = np.concatenate([x_tr, *extra]) if extra else x_tr

        activation, reason = resolve_activation(config.activation, x_sae.shape[1])
        init = _load_init_sae(config, activation) if config.init_sae else None
        if init is not None and init.d_in != x_sae.shape[1]:
            raise ModelError(f"init_sae {config.init_sae} reads {init.d_in}-D embeddings; {enc.name} gives "
                             f"{x_sae.shape[1]}-D ones")
        if config.epochs > 0:
            train_config = SAETrainConfig(**{f: getattr(config, f) for f in SAETrainConfig.__dataclass_fields__})
            train_config.activation = activation
            sae, history = train_sae(x_sae, train_config, seed=config.seed, progress=run.progress, init=init)
        else:
            sae, history = init, []
        if history:
            io.write_csv(run.out_dir / "sae_history.csv", pd.DataFrame(history))

        a_tr, a_va = sae.activations(x_tr), sae.activations(x_va)
        probe = fit_probe(a_tr, y_tr, a_va, y_va, card.classes, Cs=config.Cs, class_weight=config.class_weight,
                          max_iter=config.max_iter)
        C, scores, converged = probe.C, probe.val_scores, probe.info["converged"]
        stats = {"train": sae_metrics(sae, x_sae), "val": sae_metrics(sae, x_va)}
        sae_info = {**sae.config(), "activation_requested": config.activation, "activation_reason": reason,
                    "expansion": round(sae.n_latents / sae.d_in, 3), "l1": config.l1, "lr": config.lr,
                    "batch_size": config.batch_size, "epochs": config.epochs, "seed": config.seed,
                    "resample_every": config.resample_every, "init_sae": config.init_sae,
                    "n_train_embeddings": int(len(x_sae)), "extra_data": extra_info,
                    "final_loss": history[-1]["loss"] if history else None}
        info = {"model": f"SAE probe {enc.name}", "classes": list(card.classes), "dataset": card.name,
                "task": config.task, "negative_name": config.negative_name,
                "base_model": portable_spec(config.model), "base_fingerprint": enc.fingerprint,
                "sae": sae_info, "sae_metrics": stats, "C": C,
                "val_balanced_accuracy": {f"{c:g}": v for c, v in scores.items()},
                "probe": {"class_weight": config.class_weight, "max_iter": config.max_iter, "converged": converged,
                          "n_train": int(len(y_tr)), "input": "standardised SAE activations"}}
        predictor = SAEPredictor(enc, sae, probe, info, cache_dir=config.cache_dir,
                                 batch_size=config.encode_batch_size, num_workers=config.num_workers)
        run.save_best(predictor)
        run.summary.update(model=predictor.name, C=C, n_train=int(len(y_tr)),
                           selected_on="val balanced_accuracy (probe on SAE activations)",
                           best_val_score=scores[C], epochs_run=config.epochs,
                           sae={**sae_info, "train": stats["train"], "val": stats["val"]})
        val = stats["val"]
        run.table_extra.update({"SAE latents": str(sae.n_latents), "SAE FVU (val)": _fmt(val["fvu"]),
                                "SAE L0 (val)": "n/a" if not np.isfinite(val["mean_l0"]) else f"{val['mean_l0']:.1f}",
                                "SAE dead (train)": f"{stats['train']['dead']}/{sae.n_latents}"})
        return predictor

    def load(self, folder, device: str = "auto") -> SAEPredictor:
        enc, card, tensors = SAEPredictor.read(folder, device)
        meta = card.get("sae") or {}
        state = {k[len("sae."):]: v for k, v in tensors.items() if k.startswith("sae.")}
        missing = [k for k in _PROBE if k not in tensors]
        if missing or not state:
            raise ModelError(f"{folder} is not an SAE model folder: model.safetensors lacks "
                             f"{missing or ['sae.* weights']}")
        sae = SparseAutoencoder.from_state_dict(state, activation=meta.get("activation", "relu_l1"), k=meta.get("k"))
        t = {k: tensors[k].numpy() for k in _PROBE}
        probe = LinearProbe(list(card["classes"]), t["coef"], t["intercept"], t["mean"], t["scale"], float(card["C"]))
        return SAEPredictor(enc, sae, probe, card)


def _load_init_sae(config: SAEConfig, activation: str) -> SparseAutoencoder:
    state = load_tensors(Path(config.init_sae).expanduser())
    return SparseAutoencoder.from_state_dict(state, activation=activation,
                                             k=config.k if activation == "topk" else None)
