"""Linear probe: logistic regression on frozen (cached) image embeddings.

For each label fraction (default 1%, 10%, 100% of train, stratified, at least one image per
class) and seed, a multinomial logistic regression (lbfgs) is fit on standardised embeddings
for every C of a log grid; the C with the best balanced accuracy on the *full* val split is kept
and scored on test. Results are reported as mean ± sd over seeds. The 100% fraction (or the
largest one given) is also written as a full evaluation report with bootstrap CIs.

Works with any encoder :func:`dermkit.models.encoders.load_encoder` returns (CLIP image towers,
``timm:NAME``, dermkit classifier folders): only ``encode_image`` is used, through the feature
cache, so sweeping fractions, seeds and C never re-runs the encoder.

``method: linear_probe`` fits one probe (one fraction and seed); ``dermkit probe`` sweeps several
datasets (:func:`dermkit.experiment.run_probe`, which runs :func:`probe_sweep` per dataset and
:func:`write_probe_table`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dermkit import io
from dermkit.data.card import DatasetCard
from dermkit.data.split import row_groups
from dermkit.engine.features import extract_split_features
from dermkit.errors import ConfigError
from dermkit.evaluate import classification_metrics, evaluate
from dermkit.evaluate.predictions import predictions_frame
from dermkit.evaluate.tables import markdown_table
from dermkit.methods.base import (
    ClassifierConfig,
    DatasetResult,
    EncoderHeadPredictor,
    Method,
    portable_spec,
    register_method,
)
from dermkit.models.encoders import load_encoder
from dermkit.models.linear import DEFAULT_CS, LinearProbe, check_probe_settings, fit_probe, stratified_subsample

__all__ = [
    "DEFAULT_CS",
    "DEFAULT_FRACTIONS",
    "LinearProbe",
    "ProbeConfig",
    "ProbePredictor",
    "stratified_subsample",
    "fit_probe",
    "probe_predictor",
    "check_sweep",
    "probe_sweep",
    "write_probe_table",
    "probe_markdown",
]

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)


def _row_metrics(y_true, proba, classes) -> dict:
    m = classification_metrics(y_true, proba, classes)
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1")}


def _mean_sd(values: pd.Series) -> tuple[float, float]:
    values = values.astype(float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


@dataclass
class ProbeConfig(ClassifierConfig):
    """``method: linear_probe``: logistic regression on a frozen encoder's cached embeddings.

    ``fraction`` of train (stratified, ``seed``) is used; C is chosen on val from ``Cs``.
    """

    model: str = "timm:tf_efficientnet_lite0"
    fraction: float = 1.0
    seed: int = 0
    Cs: list[float] = field(default_factory=lambda: list(DEFAULT_CS))
    class_weight: str | None = "balanced"
    max_iter: int = 1000
    batch_size: int = 64
    num_workers: int = 2
    cache_dir: str | None = None
    device: str = "cpu"

    def validate(self) -> None:
        super().validate()
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        check_probe_settings(self.Cs, self.class_weight, self.max_iter)
        if self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("batch_size must be >= 1, num_workers >= 0")


class ProbePredictor(EncoderHeadPredictor):
    """A frozen encoder + a fitted :class:`LinearProbe` on its (cached) embeddings."""

    method = "linear_probe"

    def __init__(self, enc, probe: LinearProbe, model_card: dict, **kwargs):
        super().__init__(enc, model_card, **kwargs)
        self.probe = probe

    def _state(self):
        return self.probe.tensors(), {**self.model_card, "C": self.probe.C,
                                      "val_balanced_accuracy": {f"{c:g}": v for c, v in self.probe.val_scores.items()},
                                      "probe": self.probe.info}

    def head(self, features: np.ndarray) -> np.ndarray:
        return self.probe.predict_proba(features)

    def saliency_logits(self, embeddings):
        import torch

        p = self.probe
        as_t = lambda a: torch.as_tensor(np.asarray(a)).to(embeddings)  # noqa: E731
        return ((embeddings - as_t(p.mean)) / as_t(p.scale)) @ as_t(p.coef).T + as_t(p.intercept)


def probe_predictor(enc, probe: LinearProbe, spec: str, dataset: str, task=None, negative_name="other skin lesion",
                    **kwargs) -> ProbePredictor:
    card = {"model": f"linear probe {enc.name}", "classes": list(probe.classes), "dataset": dataset, "task": task,
            "negative_name": negative_name, "base_model": portable_spec(spec), "base_fingerprint": enc.fingerprint}
    return ProbePredictor(enc, probe, card, **kwargs)


@register_method
class LinearProbeMethod(Method):
    """Logistic regression on frozen embeddings, C chosen on val."""

    name = "linear_probe"
    config_class = ProbeConfig
    card_fields = {"base_model": str, "C": float}
    description = "logistic-regression linear probe on frozen, cached embeddings (C chosen on val)"
    tiny_config = {"data": "{data}", "model": "{clip}", "num_workers": 0, "Cs": [0.1, 1.0], "n_bootstrap": 20}

    def fit(self, config: ProbeConfig, run) -> ProbePredictor:
        card = run.card()
        enc = load_encoder(config.model, device=config.device)
        kw = dict(cache_dir=config.cache_dir, batch_size=config.batch_size, num_workers=config.num_workers,
                  progress=run.progress)
        x_tr, y_tr, _ = extract_split_features(enc, card, "train", **kw)
        x_va, y_va, _ = extract_split_features(enc, card, "val", **kw)
        idx = stratified_subsample(y_tr, config.fraction, config.seed)
        probe = fit_probe(x_tr[idx], y_tr[idx], x_va, y_va, card.classes, Cs=config.Cs,
                          class_weight=config.class_weight, max_iter=config.max_iter)
        probe.info.update(fraction=config.fraction, seed=config.seed)
        predictor = probe_predictor(enc, probe, config.model, card.name, config.task, config.negative_name,
                                    cache_dir=config.cache_dir, batch_size=config.batch_size,
                                    num_workers=config.num_workers)
        run.save_best(predictor)
        run.summary.update(model=predictor.name, C=probe.C, n_train=int(len(idx)),
                           selected_on="val balanced_accuracy", best_val_score=probe.val_scores[probe.C])
        return predictor

    def load(self, folder, device: str = "auto") -> ProbePredictor:
        enc, card, tensors = ProbePredictor.read(folder, device)
        t = {k: v.numpy() for k, v in tensors.items()}
        scores = {float(k): v for k, v in (card.get("val_balanced_accuracy") or {}).items()}
        probe = LinearProbe(list(card["classes"]), t["coef"], t["intercept"], t["mean"], t["scale"], float(card["C"]),
                            scores, dict(card.get("probe") or {}))
        return ProbePredictor(enc, probe, card)


def check_sweep(fractions: Sequence[float], seeds: int) -> list[float]:
    """The sorted, distinct label fractions of a probe sweep; a ConfigError for an unusable setting."""
    fractions = sorted({float(f) for f in fractions})
    if not fractions:
        raise ConfigError("no label fractions given; e.g. --fractions 0.01,0.1,1")
    for f in fractions:
        if not 0 < f <= 1:
            raise ConfigError(f"label fraction must be in (0, 1], got {f}")
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    return fractions


def probe_sweep(enc, card: DatasetCard, out_dir: str | os.PathLike, model_spec: str,
                fractions: Sequence[float] = DEFAULT_FRACTIONS, seeds: int = 3, Cs: Sequence[float] = DEFAULT_CS,
                class_weight: str | None = "balanced", n_bootstrap: int = 1000,
                cache_dir: str | os.PathLike | None = None, progress: bool = True) -> DatasetResult:
    """Linear probes of ``enc`` on ``card`` for every label fraction x seed (``fractions`` as
    :func:`check_sweep` returns them).

    Writes ``out_dir``: ``runs.csv`` (every fraction x seed: n_train, chosen C, val and test
    metrics), the evaluation report of the largest fraction (its first seed) and that probe as a
    classifier folder (``model/``, loaded by ``dermkit predict/evaluate --model``). The table rows:
    per fraction, n_train and balanced accuracy / macro AUC / macro F1 mean ± sd over seeds. A
    fraction that keeps the whole training set is fit once (every seed would give the same model).
    """
    out = Path(out_dir)
    classes = card.classes
    feats = {s: extract_split_features(enc, card, s, cache_dir=cache_dir, progress=progress)
             for s in ("train", "val", "test")}
    (x_tr, y_tr, _), (x_va, y_va, _), (x_te, y_te, rows_te) = feats["train"], feats["val"], feats["test"]
    runs, final = [], None
    for fraction in fractions:
        seen: set[tuple[int, ...]] = set()
        for seed in range(seeds):
            idx = stratified_subsample(y_tr, fraction, seed)
            key = tuple(idx.tolist())
            if key in seen:
                continue  # same subset as an earlier seed (e.g. the 100% fraction)
            seen.add(key)
            probe = fit_probe(x_tr[idx], y_tr[idx], x_va, y_va, classes, Cs=Cs, class_weight=class_weight)
            proba = probe.predict_proba(x_te)
            runs.append({"dataset": card.name, "fraction": fraction, "seed": seed, "n_train": len(idx),
                         "C": probe.C, "val_balanced_accuracy": probe.val_scores[probe.C],
                         "converged": probe.info["converged"], **_row_metrics(y_te, proba, classes)})
            if fraction == fractions[-1] and final is None:
                final = (probe, proba, seed, len(idx))
    runs_df = pd.DataFrame(runs)
    io.write_csv(out / "runs.csv", runs_df)
    probe, proba, seed, n_train = final
    preds = predictions_frame(rows_te["image"].tolist(), proba, classes, rows_te["diagnosis"].tolist(),
                              row_groups(rows_te, card.group_column))
    report = evaluate(preds, n_bootstrap=n_bootstrap, seed=0,
                      title=f"Linear probe {enc.name} on {card.name} (test split, "
                            f"{fractions[-1]:.0%} of train, C={probe.C:g})")
    report.save(out)
    probe.info.update(fraction=fractions[-1], seed=seed)
    predictor = probe_predictor(enc, probe, model_spec, card.name, cache_dir=cache_dir)
    predictor.save(out / "model")
    table_rows = []
    for fraction, group in runs_df.groupby("fraction", sort=True):
        row = {"dataset": card.name, "fraction": fraction, "n_train": int(group["n_train"].iloc[0]),
               "n_seeds": int(len(group))}
        for metric in ("balanced_accuracy", "macro_auc", "macro_f1"):
            row[f"{metric}_mean"], row[f"{metric}_sd"] = _mean_sd(group[metric])
        table_rows.append(row)
    # The summary fields of a ``method: linear_probe`` run, for the saved (largest-fraction) probe.
    summary = {"model": predictor.name, "C": probe.C, "n_train": int(n_train), "selected_on": "val balanced_accuracy",
               "best_val_score": probe.val_scores[probe.C], "fraction": fractions[-1], "seed": seed}
    return DatasetResult(predictor, report, preds, out, table_rows, summary)


def write_probe_table(out_dir: str | os.PathLike, rows: Sequence[dict], encoder_name: str, Cs: Sequence[float],
                      class_weight: str | None) -> pd.DataFrame:
    """``out_dir/probe_table.csv`` + ``.md`` from the rows of :func:`probe_sweep`; returns the table."""
    out = Path(out_dir)
    table = pd.DataFrame(list(rows))
    io.write_csv(out / "probe_table.csv", table)
    io.write_text(out / "probe_table.md", probe_markdown(table, encoder_name, Cs, class_weight))
    return table


def probe_markdown(table: pd.DataFrame, encoder_name: str, Cs: Sequence[float], class_weight: str | None) -> str:
    """The probe table in Markdown: mean ± sd per dataset and label fraction, and how it was made."""
    def pm(r, metric):
        mean, sd = r[f"{metric}_mean"], r[f"{metric}_sd"]
        if not np.isfinite(mean):
            return "n/a"
        return f"{mean:.3f} ± {sd:.3f}"

    rows = [[r["dataset"], f"{r['fraction']:g}", r["n_train"], r["n_seeds"], pm(r, "balanced_accuracy"),
             pm(r, "macro_auc"), pm(r, "macro_f1")] for r in table.to_dict("records")]
    header = ["Dataset", "Label fraction", "n train", "Seeds", "Balanced acc.", "Macro AUC", "Macro F1"]
    grid = ", ".join(f"{c:g}" for c in sorted(Cs))
    return (f"# Linear probe: {encoder_name} (test split)\n\n" + markdown_table(header, rows) +
            f"\nLogistic regression (lbfgs, class_weight={class_weight}) on standardised frozen embeddings; "
            f"C chosen from {{{grid}}} by balanced accuracy on the full val split. Label fractions are "
            "class-stratified subsets of train (at least one image per class); mean ± sd over seeds "
            "(sample sd; a fraction equal to the whole training set is fit once).\n")
