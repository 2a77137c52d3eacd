"""Zero-shot classification with a vision-language encoder (CLIP-style): ``method: zeroshot``.

Each class becomes one text embedding: its prompt texts (class names x templates, see
:mod:`dermkit.data.prompts`) are embedded, L2-normalised, averaged and re-normalised (the
CLIP_benchmark ensemble). An image's class probabilities are the softmax of
``logit_scale * cosine(image, class)``. Image embeddings come from the feature cache, so a
prompt sweep over the same model and images runs only the text encoder.

The saved classifier folder holds the class embeddings (``model.safetensors``) and names its
encoder by spec and fingerprint (``model.json``), so ``dermkit predict/evaluate --model`` load it.

    >>> run({"method": "zeroshot", "model": "hf-hub:org/derm-clip", "data": "ph2"}, out="runs/zs")

Several datasets, one table (``dermkit zeroshot``): :func:`dermkit.experiment.run_zeroshot` runs
:func:`zeroshot_report` per dataset and :func:`write_zeroshot_table`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from dermkit import io
from dermkit.data.card import DatasetCard
from dermkit.data.prompts import prompt_spec
from dermkit.errors import ConfigError
from dermkit.evaluate import evaluate
from dermkit.evaluate.tables import markdown_table, number, with_ci
from dermkit.methods.base import (
    ClassEmbeddingPredictor,
    ClassifierConfig,
    DatasetResult,
    Method,
    portable_spec,
    register_method,
)
from dermkit.models.encoders import load_encoder
from dermkit.models.text import class_embeddings, require_text

__all__ = ["ZeroShotConfig", "ZeroShotPredictor", "ZeroShot", "zeroshot_classifier", "zeroshot_report",
           "write_zeroshot_table", "positive_vs_rest"]


@dataclass
class ZeroShotConfig(ClassifierConfig):
    """``model``: any CLIP-style encoder spec; ``prompts``: a prompt YAML (default: the card's)."""

    data: str = "ph2"
    model: str = "runs/dermkit_clip/model"
    prompts: str | None = None
    batch_size: int = 64
    num_workers: int = 2
    cache_dir: str | None = None
    device: str = "cpu"

    def validate(self) -> None:
        super().validate()
        if self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("batch_size must be >= 1 and num_workers >= 0")
        if self.prompts is not None and not Path(self.prompts).expanduser().is_file():
            raise ConfigError(f"prompts: {self.prompts} not found; give a YAML with templates: and/or classes:")


class ZeroShotPredictor(ClassEmbeddingPredictor):
    """An encoder + one prompt-ensemble text embedding per class."""

    method = "zeroshot"


def _card_prompts(card: DatasetCard, prompts) -> dict[str, list[str]]:
    """Class -> texts: given as a mapping, or from a prompt file / the card's prompts."""
    if isinstance(prompts, Mapping):
        return {c: list(v) for c, v in prompts.items()}
    return prompt_spec(card, prompts).texts()


def zeroshot_classifier(enc, card: DatasetCard, prompts=None, spec: str | None = None, task: str | None = None,
                        negative_name: str = "other skin lesion", **kwargs) -> ZeroShotPredictor:
    """The zero-shot classifier of ``enc`` for ``card``'s classes (prompt file or the card's prompts)."""
    require_text(enc)
    texts = _card_prompts(card, prompts)
    emb = class_embeddings(enc, texts, card.classes)
    info = {"model": f"zero-shot {enc.name}", "classes": list(card.classes), "dataset": card.name,
            "task": task, "negative_name": negative_name,
            "base_model": "." if spec == "." else portable_spec(spec or enc.source),
            "base_fingerprint": enc.fingerprint, "logit_scale": float(enc.logit_scale), "prompts": texts}
    return ZeroShotPredictor(enc, emb, info, **kwargs)


@register_method
class ZeroShot(Method):
    """Class-name prompt ensembles on a CLIP-style model; nothing is trained."""

    name = "zeroshot"
    config_class = ZeroShotConfig
    card_fields = {"base_model": str}
    description = "CLIP-style zero-shot classification with prompt ensembles"
    tiny_config = {"data": "{data}", "model": "{clip}", "num_workers": 0, "n_bootstrap": 20}

    def fit(self, config: ZeroShotConfig, run) -> ZeroShotPredictor:
        enc = load_encoder(config.model, device=config.device)
        predictor = zeroshot_classifier(enc, run.card(), config.prompts, spec=config.model, task=config.task,
                                        negative_name=config.negative_name, cache_dir=config.cache_dir,
                                        batch_size=config.batch_size, num_workers=config.num_workers)
        run.save_best(predictor)
        run.summary["model"] = predictor.name
        return predictor

    def load(self, folder, device: str = "auto") -> ZeroShotPredictor:
        return ZeroShotPredictor.from_folder(folder, device)


# ------------------------------------------------------------------------------ many datasets, one table


def positive_vs_rest(preds: pd.DataFrame, positive: str, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """AUROC of one class against all others, with its bootstrap CI.

    Computed by the evaluation layer on a binary table (score = the class's probability, target
    = class vs rest), so the CI uses the same stratified (and, with a ``group`` column, grouped)
    percentile bootstrap as every other metric.
    """
    rest = f"not {positive}"
    p = preds[f"prob:{positive}"].to_numpy(dtype=float)
    frame = pd.DataFrame({
        "image": preds["image"].to_numpy(),
        "target": np.where(preds["target"] == positive, positive, rest),
        "prediction": np.where(preds["prediction"] == positive, positive, rest),
        f"prob:{rest}": 1.0 - p,
        f"prob:{positive}": p,  # second class = the positive one for binary metrics
    })
    if "group" in preds.columns:
        frame["group"] = preds["group"].to_numpy()
    if frame["target"].nunique() < 2:
        return {"class": positive, "auroc": None, "low": None, "high": None,
                "note": "the split does not contain both the class and other classes"}
    metrics = evaluate(frame, n_bootstrap=n_bootstrap, seed=seed).metrics
    ci = metrics["ci"]["macro_auc"]
    return {"class": positive, "auroc": metrics["macro_auc"], "low": ci["low"], "high": ci["high"],
            "n_positive": int((frame["target"] == positive).sum()), "n": int(len(frame)),
            "method": "binary evaluate(): class probability vs rest, stratified percentile bootstrap"}


def zeroshot_report(enc, card: DatasetCard, out_dir: str | os.PathLike, model_spec: str, split: str = "test",
                    n_bootstrap: int = 1000, prompts: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None, seed: int = 0, progress: bool = True) -> DatasetResult:
    """The zero-shot classifier of ``enc`` for ``card``, evaluated on ``split``.

    Writes ``out_dir``: the evaluation report (metrics.json, predictions.csv, report.md/.html,
    plots), ``model/`` (the zero-shot classifier folder that ``dermkit predict`` loads),
    ``prompts.json`` with the texts used, and ``positive_vs_rest.json`` for a card with a positive
    class. The table row: dataset, n, classes, accuracy, balanced accuracy, macro AUC with 95% CI,
    macro F1, and the positive class's (melanoma's) one-vs-rest AUROC with 95% CI.
    """
    spec = prompt_spec(card, prompts)
    out = Path(out_dir)
    predictor = zeroshot_classifier(enc, card, prompts, spec=model_spec, cache_dir=cache_dir)
    preds = predictor.predict_split(card, split, progress=progress)
    report = evaluate(preds, n_bootstrap=n_bootstrap, seed=seed,
                      title=f"Zero-shot {enc.name} on {card.name} ({split} split)")
    report.save(out)
    predictor.save(out / "model")
    io.write_json(out / "prompts.json", {**spec.to_dict(), "texts": spec.texts()})
    m = report.metrics
    row = {
        "dataset": card.name, "split": split, "n": m["n"], "classes": len(card.classes),
        "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
        "macro_auc": m["macro_auc"], "macro_auc_low": m["ci"]["macro_auc"]["low"],
        "macro_auc_high": m["ci"]["macro_auc"]["high"], "macro_f1": m["macro_f1"],
        "positive_class": card.positive_class, "positive_auroc": None,
        "positive_auroc_low": None, "positive_auroc_high": None,
    }
    if card.positive_class is not None:
        pos = positive_vs_rest(preds, card.positive_class, n_bootstrap=n_bootstrap, seed=seed)
        io.write_json(out / "positive_vs_rest.json", pos)
        row.update(positive_auroc=pos["auroc"], positive_auroc_low=pos["low"], positive_auroc_high=pos["high"])
    return DatasetResult(predictor, report, preds, out, [row], {"model": predictor.name, "split": split})


def write_zeroshot_table(out_dir: str | os.PathLike, rows: Sequence[dict], encoder_name: str, split: str,
                         n_bootstrap: int) -> pd.DataFrame:
    """``out_dir/zeroshot_table.csv`` + ``.md`` from the rows of :func:`zeroshot_report` (with a mean row
    over several datasets); returns the table."""
    out = Path(out_dir)
    table = pd.DataFrame(list(rows))
    io.write_csv(out / "zeroshot_table.csv", table)

    header = ["Dataset", "n", "Classes", "Accuracy", "Balanced acc.", "Macro AUC (95% CI)", "Macro F1",
              "Melanoma-vs-rest AUROC (95% CI)"]
    lines = []
    for r in table.to_dict("records"):
        auroc = with_ci(r["positive_auroc"], r["positive_auroc_low"], r["positive_auroc_high"])
        pos = "—" if r["positive_class"] is None else f"{auroc} [{r['positive_class']}]"
        lines.append([r["dataset"], r["n"], r["classes"], number(r["accuracy"]), number(r["balanced_accuracy"]),
                      with_ci(r["macro_auc"], r["macro_auc_low"], r["macro_auc_high"]), number(r["macro_f1"]), pos])
    if len(table) > 1:
        mean = table[["accuracy", "balanced_accuracy", "macro_auc", "macro_f1"]].astype(float).mean()
        lines.append(["**mean**", "", "", number(mean["accuracy"]), number(mean["balanced_accuracy"]),
                      number(mean["macro_auc"]), number(mean["macro_f1"]), ""])
    io.write_text(out / "zeroshot_table.md", (
        f"# Zero-shot: {encoder_name} ({split} split)\n\n" + markdown_table(header, lines) +
        f"\nProbabilities: softmax of logit_scale x cosine similarity to the prompt-ensemble class "
        f"embedding. 95% CIs: percentile bootstrap ({n_bootstrap} resamples, stratified by class, "
        "grouped by lesion/patient where the dataset has a group column). The melanoma column is "
        "the one-vs-rest AUROC of the dataset's positive class [named in brackets], computed by a "
        "binary evaluation of that class's probability against all other classes.\n"))
    return table
