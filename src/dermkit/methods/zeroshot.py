"""Zero-shot classification with a vision-language encoder (CLIP-style).

Each class becomes one text embedding: its prompt texts (class names x templates, see
:mod:`dermkit.data.prompts`) are embedded, L2-normalised, averaged and re-normalised (the
CLIP_benchmark ensemble). An image's class probabilities are the softmax of
``logit_scale * cosine(image, class)``. Image embeddings come from the feature cache, so a
prompt sweep over the same model and images runs only the text encoder.

    >>> preds = zeroshot_predict(load_encoder("hf-hub:org/derm-clip"), load_card("ph2"))
    >>> run_zeroshot("hf-hub:org/derm-clip", ["ph2", "ham10000"], "runs/zs")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from dermkit import io
from dermkit.data.card import DatasetCard, load_card
from dermkit.errors import DataError, ModelError

__all__ = [
    "require_text",
    "encode_texts",
    "class_embeddings",
    "zeroshot_proba",
    "zeroshot_predict",
    "run_zeroshot",
    "positive_vs_rest",
    "split_groups",
    "markdown_table",
]


def require_text(enc, what: str = "zero-shot classification") -> None:
    """ModelError unless ``enc`` has a text encoder."""
    if not getattr(enc, "has_text", False):
        raise ModelError(
            f"{what} needs a vision-language model with a text encoder, but {enc.name!r} is "
            "image-only; use a CLIP-style model (hf-hub:ORG/NAME, openclip:ARCH or a CLIP folder), "
            "or `dermkit probe` (linear probe) for image-only encoders"
        )


@torch.inference_mode()
def encode_texts(enc, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (N, D) float32 on the CPU."""
    require_text(enc, "encoding text")
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = enc.tokenize(list(texts[start:start + batch_size]))
        out.append(enc.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, int(enc.embed_dim))


def class_embeddings(enc, prompts: Mapping[str, Sequence[str]], classes: Sequence[str] | None = None) -> torch.Tensor:
    """One embedding per class (C, D): mean of its normalised text embeddings, re-normalised."""
    classes = list(prompts) if classes is None else list(classes)
    missing = [c for c in classes if not prompts.get(c)]
    if missing:
        raise DataError(f"no prompt texts for class(es) {', '.join(map(repr, missing))}; "
                        "give each class at least one name and template")
    texts = [t for c in classes for t in prompts[c]]
    emb = encode_texts(enc, texts)
    out, start = [], 0
    for c in classes:
        n = len(prompts[c])
        out.append(emb[start:start + n].mean(dim=0))
        start += n
    return torch.nn.functional.normalize(torch.stack(out), dim=-1)


def zeroshot_proba(image_features: np.ndarray, class_emb: torch.Tensor | np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over ``logit_scale * cosine`` (float64 rows summing to 1)."""
    img = torch.as_tensor(np.asarray(image_features), dtype=torch.float64)
    txt = torch.as_tensor(np.asarray(class_emb), dtype=torch.float64)
    logits = float(logit_scale) * img @ txt.T
    return torch.softmax(logits, dim=1).numpy()


def split_groups(card: DatasetCard, rows: pd.DataFrame) -> list[str] | None:
    """Lesion/patient id per row for the grouped bootstrap (a row without an id is its own group)."""
    if not card.group_column or card.group_column not in rows.columns:
        return None
    col = rows[card.group_column]
    return col.where(col.notna(), rows["image"]).astype(str).tolist()


def _resolve_prompts(card: DatasetCard, prompts) -> dict[str, list[str]]:
    from dermkit.data.prompts import load_prompts

    if prompts is None or isinstance(prompts, (str, os.PathLike)):
        return load_prompts(card, prompts)
    return {c: list(v) for c, v in dict(prompts).items()}


def zeroshot_predict(
    enc,
    card: DatasetCard | str | os.PathLike,
    split: str = "test",
    prompts: Mapping[str, Sequence[str]] | str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Zero-shot predictions for one split, in the evaluation layer's predictions format.

    ``prompts``: class -> texts, a prompt YAML file, or None for the dataset's default prompts.
    """
    from dermkit.engine.features import extract_split_features
    from dermkit.predictor import predictions_frame

    require_text(enc)
    card = load_card(card)
    texts = _resolve_prompts(card, prompts)
    class_emb = class_embeddings(enc, texts, card.classes)
    features, _, rows = extract_split_features(enc, card, split, cache_dir=cache_dir, batch_size=batch_size,
                                               num_workers=num_workers, progress=progress)
    proba = zeroshot_proba(features, class_emb, enc.logit_scale)
    return predictions_frame(rows["image"].tolist(), proba, card.classes, rows["diagnosis"].tolist(),
                             split_groups(card, rows))


def positive_vs_rest(preds: pd.DataFrame, positive: str, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """AUROC of one class against all others, with its bootstrap CI.

    Computed by the evaluation layer on a binary table (score = the class's probability, target
    = class vs rest), so the CI uses the same stratified (and, with a ``group`` column, grouped)
    percentile bootstrap as every other metric.
    """
    from dermkit.evaluate import evaluate

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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table ("|" in cells escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _with_ci(value, low, high) -> str:
    if value is None or low is None or (isinstance(low, float) and not np.isfinite(low)):
        return _num(value)
    return f"{_num(value)} ({_num(low)}–{_num(high)})"


def _folder_names(cards: Sequence[DatasetCard]) -> list[str]:
    names, seen = [], {}
    for card in cards:
        base = card.name
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def run_zeroshot(
    model_spec: str,
    datasets: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    split: str = "test",
    n_bootstrap: int = 1000,
    prompts: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    enc=None,
) -> pd.DataFrame:
    """Zero-shot evaluation of one model on several datasets; returns the summary table.

    Writes ``out_dir/<dataset>/`` (the evaluation report: metrics.json, predictions.csv,
    report.md/.html, plots; prompts.json with the texts used; positive_vs_rest.json for
    datasets with a positive class) and ``out_dir/zeroshot_table.md`` + ``.csv`` (dataset, n,
    classes, accuracy, balanced accuracy, macro AUC with 95% CI, macro F1, and the positive
    class's (melanoma's) one-vs-rest AUROC with 95% CI). ``enc`` skips loading ``model_spec``.
    """
    from dermkit.data.prompts import prompt_spec
    from dermkit.evaluate import evaluate

    if not datasets:
        raise DataError("no datasets given; pass one or more dataset names or folders")
    if enc is None:
        from dermkit.models.vlm import load_encoder

        enc = load_encoder(model_spec, device=device)
    require_text(enc)
    out = Path(out_dir)
    cards = [load_card(d) for d in datasets]
    specs = [prompt_spec(c, prompts) for c in cards]  # fail on a bad prompt file before any compute
    rows = []
    for card, spec, folder in zip(cards, specs, _folder_names(cards)):
        preds = zeroshot_predict(enc, card, split, spec.texts(), cache_dir=cache_dir, progress=progress)
        report = evaluate(preds, n_bootstrap=n_bootstrap, seed=seed,
                          title=f"Zero-shot {enc.name} on {card.name} ({split} split)")
        report.save(out / folder)
        io.write_json(out / folder / "prompts.json", {**spec.to_dict(), "texts": spec.texts()})
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
            io.write_json(out / folder / "positive_vs_rest.json", pos)
            row.update(positive_auroc=pos["auroc"], positive_auroc_low=pos["low"], positive_auroc_high=pos["high"])
        rows.append(row)
    table = pd.DataFrame(rows)
    io.write_csv(out / "zeroshot_table.csv", table)
    io.write_text(out / "zeroshot_table.md", _zeroshot_markdown(table, enc, split, n_bootstrap))
    io.write_json(out / "run.json", {"method": "zeroshot", "model": model_spec, "encoder": enc.name,
                                     "fingerprint": enc.fingerprint, "split": split,
                                     "datasets": [str(d) for d in datasets], "prompts": None if prompts is None
                                     else str(prompts), "n_bootstrap": n_bootstrap, "seed": seed})
    return table


def _zeroshot_markdown(table: pd.DataFrame, enc, split: str, n_bootstrap: int) -> str:
    header = ["Dataset", "n", "Classes", "Accuracy", "Balanced acc.", "Macro AUC (95% CI)", "Macro F1",
              "Melanoma-vs-rest AUROC (95% CI)"]
    rows = []
    for r in table.to_dict("records"):
        pos = "—" if r["positive_class"] is None else (
            f"{_with_ci(r['positive_auroc'], r['positive_auroc_low'], r['positive_auroc_high'])} [{r['positive_class']}]")
        rows.append([r["dataset"], r["n"], r["classes"], _num(r["accuracy"]), _num(r["balanced_accuracy"]),
                     _with_ci(r["macro_auc"], r["macro_auc_low"], r["macro_auc_high"]), _num(r["macro_f1"]), pos])
    if len(table) > 1:
        mean = table[["accuracy", "balanced_accuracy", "macro_auc", "macro_f1"]].astype(float).mean()
        rows.append(["**mean**", "", "", _num(mean["accuracy"]), _num(mean["balanced_accuracy"]),
                     _num(mean["macro_auc"]), _num(mean["macro_f1"]), ""])
    return (f"# Zero-shot: {enc.name} ({split} split)\n\n" + markdown_table(header, rows) +
            f"\nProbabilities: softmax of logit_scale x cosine similarity to the prompt-ensemble class "
            f"embedding. 95% CIs: percentile bootstrap ({n_bootstrap} resamples, stratified by class, "
            "grouped by lesion/patient where the dataset has a group column). The melanoma column is "
            "the one-vs-rest AUROC of the dataset's positive class [named in brackets], computed by a "
            "binary evaluation of that class's probability against all other classes.\n")
