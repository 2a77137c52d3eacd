"""dermkit clip-train / zeroshot / probe / retrieve / rank: CLIP-style training and frozen encoders
(zero-shot classification, linear probes, image<->text retrieval and ranking)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dermkit.commands.common import config_for, console, print_frame, relaunch
from dermkit.errors import ConfigError, DataError

_MODEL_HELP = ("Encoder: hf-hub:ORG/NAME, a model folder (open_clip / HF CLIP / dermkit classifier), "
               "local-dir:PATH, openclip:ARCH or timm:NAME.")
_CACHE_HELP = "Feature cache folder (default: $DERMKIT_CACHE/features, else ~/.cache/dermkit/features)."


def register(app: typer.Typer, groups: dict) -> None:
    app.command("clip-train")(clip_train)
    app.command("zeroshot")(zeroshot_cmd)
    app.command("probe")(probe_cmd)
    app.command("retrieve")(retrieve_cmd)
    app.command("rank")(rank_cmd)


def _dataset_list(data: str) -> list[str]:
    names = [d.strip() for d in data.split(",") if d.strip()]
    if not names:
        raise ConfigError("--data is empty; give dataset names or folders separated by commas, e.g. ph2,ham10000")
    return names


def _float_list(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, e.g. 0.01,0.1,1; got {text!r}") from None


def clip_train(
    out: Path = typer.Option(..., help="Run folder: init/ (starting model), model/ (best, open_clip hub layout), "
                                       "checkpoints/, history.csv, tensorboard/."),
    data: Optional[str] = typer.Option(None, help="Comma-separated datasets whose train splits give the image-caption "
                                                  "pairs [default: ham10000,isic2017,derm7pt,pad_ufes20; PH2 stays "
                                                  "unseen]."),
    init: Optional[str] = typer.Option(None, help="Continue from an open_clip model (folder or hf-hub:ORG/NAME) "
                                                  "instead of building dermkit-CLIP from the pip towers."),
    config: Optional[Path] = typer.Option(None, help="Experiment YAML (method: contrastive); options override it."),
    epochs: Optional[int] = typer.Option(None, help="Number of epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Pairs per batch (in-batch negatives)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    image_size: Optional[int] = typer.Option(None, help="Input size for the image tower."),
    train_image_last: Optional[int] = typer.Option(None, help="Trainable last units of a timm image trunk."),
    train_text_last: Optional[int] = typer.Option(None, help="Trainable last layers of an HF text tower."),
    grad_accum: Optional[int] = typer.Option(None, help="Gradient accumulation steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    shards: Optional[str] = typer.Option(None, help="WebDataset shards to stream the image-caption pairs from "
                                                    "(written by `dermkit data shards`), e.g. "
                                                    "'DIR/{000000..000123}.tar'; --data then only names the val "
                                                    "splits that select the model."),
    shuffle_buffer: Optional[int] = typer.Option(None, help="Samples held by the shard stream's shuffle buffer "
                                                            "[default: 1000]."),
    cache_views: Optional[int] = typer.Option(None, help="Run the frozen part of the image trunk once on this many "
                                                         "augmented views per image and train from that cache (an "
                                                         "epoch then costs the trained tail) [default: 0 = off]."),
    cache_captions: Optional[str] = typer.Option(None, help="Run the frozen layers of the text tower once on K "
                                                            "caption draws per pair (epoch e trains on draw e mod K), "
                                                            "or 'epoch': once per epoch on its own draw "
                                                            "[default: 0 = off]."),
    class_balance: Optional[float] = typer.Option(None, help="Draw pairs ~ count(dataset, diagnosis)^-P inside each "
                                                             "dataset: 0 off, 0.5 inverse square root, 1 balanced."),
    hard_negatives: Optional[bool] = typer.Option(None, "--hard-negatives/--no-hard-negatives",
                                                  help="Add each caption with another diagnosis as an extra negative."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished run in --out."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change", help="With --resume: continue even though "
                                             "the config differs from the one the run was trained under (refused "
                                             "otherwise, naming the keys); the changes are recorded in summary.json "
                                             "and model.json."),
    nproc: int = typer.Option(1, min=1, help="Processes on this machine (torch.distributed through torchrun: one "
                                             "per GPU, gloo on CPUs); several machines: torchrun -m dermkit ..."),
) -> None:
    """Align a CLIP-style model (dermkit-CLIP: EfficientNet-Lite image tower + MiniLM text tower) on
    image-caption pairs; captions come from a `caption` column or are written from metadata.
    Selects the epoch with the best mean zero-shot balanced accuracy on the val splits."""
    from dermkit.experiment import run_experiment

    if nproc > 1:
        return relaunch(nproc)
    overrides = dict(train_data=data, init=init, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                     train_image_last=train_image_last, train_text_last=train_text_last, grad_accum=grad_accum,
                     seed=seed, shards=shards, shuffle_buffer=shuffle_buffer, cache_views=cache_views,
                     cache_captions=cache_captions, class_balance=class_balance, hard_negatives=hard_negatives)
    summary = run_experiment(config_for("contrastive", out, config, resume, overrides), out, resume=resume,
                             force=force, allow_config_change=allow_config_change)
    if not summary:  # a torchrun process other than rank 0: rank 0 reports
        return
    console.print(f"best epoch {summary['best_epoch']}: val zero-shot balanced accuracy "
                  f"{summary['best_val_zeroshot_balanced_accuracy']:.4f}; {summary['wall_seconds'] / 60:.1f} min")
    console.print(f"model: [bold]{summary['clip_model']}[/bold] (use it with --model in zeroshot/probe/retrieve; "
                  "it is also a zero-shot classifier for `dermkit predict/evaluate --model`)")


def zeroshot_cmd(
    model: str = typer.Option(..., help=_MODEL_HELP + " Needs a text encoder (CLIP-style)."),
    data: str = typer.Option(..., help="Datasets separated by commas: known names (ph2,ham10000,...) or folders."),
    out: Path = typer.Option(..., help="Output folder: <dataset>/ reports and zeroshot_table.md/.csv."),
    split: str = typer.Option("test", help="Split to classify."),
    prompts: Optional[Path] = typer.Option(None, help="YAML with templates: and/or classes: (names per class); "
                                                      "overrides the packaged and the dataset folder's prompts.yaml."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
) -> None:
    """Zero-shot classification with class-name prompts (CLIP-style), one report per dataset.

    Each class is the averaged embedding of its prompt texts (names x templates); probabilities
    are the softmax of logit_scale x cosine similarity. Writes OUT/<dataset>/ (metrics with CIs,
    plots, report.html, prompts.json) and OUT/zeroshot_table.md with accuracy, balanced accuracy,
    macro AUC (95% CI), macro F1 and the melanoma-vs-rest AUROC (95% CI).
    """
    from dermkit.experiment import run_zeroshot

    table = run_zeroshot(model, _dataset_list(data), out, split=split, n_bootstrap=n_bootstrap, prompts=prompts,
                         cache_dir=cache_dir, seed=seed, device=device)
    print_frame(table[["dataset", "n", "accuracy", "balanced_accuracy", "macro_auc", "macro_f1",
                        "positive_auroc"]], f"zero-shot {model} ({split})")
    console.print(f"table: {out / 'zeroshot_table.md'}")


def probe_cmd(
    model: str = typer.Option(..., help=_MODEL_HELP),
    data: str = typer.Option(..., help="Datasets separated by commas (each needs train, val and test splits)."),
    out: Path = typer.Option(..., help="Output folder: <dataset>/ reports, runs.csv, probe/ and probe_table.md/.csv."),
    fractions: str = typer.Option("0.01,0.1,1", help="Label fractions of train (stratified, >= 1 image per class)."),
    seeds: int = typer.Option(3, help="Random subsets per fraction (mean ± sd over them)."),
    class_weight: str = typer.Option("balanced", help="balanced | none."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the CIs of the full-data report."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
) -> None:
    """Linear probe (logistic regression) on frozen, cached image embeddings.

    C is chosen on val (balanced accuracy) from 1e-3..1e3; each label fraction is run with
    several seeds and reported as mean ± sd; the largest fraction also gets a full report.
    """
    from dermkit.experiment import run_probe

    if class_weight not in ("balanced", "none"):
        raise ConfigError(f"--class-weight must be 'balanced' or 'none', got {class_weight!r}")
    table = run_probe(model, _dataset_list(data), out, fractions=_float_list(fractions, "--fractions"), seeds=seeds,
                      class_weight=None if class_weight == "none" else "balanced", n_bootstrap=n_bootstrap,
                      cache_dir=cache_dir, device=device)
    print_frame(table[["dataset", "fraction", "n_train", "balanced_accuracy_mean", "balanced_accuracy_sd",
                        "macro_auc_mean", "macro_f1_mean"]], f"linear probe {model}")
    console.print(f"table: {out / 'probe_table.md'}")


def retrieve_cmd(
    model: str = typer.Option(..., help=_MODEL_HELP + " Needs a text encoder."),
    data: str = typer.Option(..., help="Dataset name or folder."),
    out: Path = typer.Option(..., help="Output folder: metrics.json, retrieval.md, captions.csv."),
    split: str = typer.Option("test", help="Split whose images and captions are matched."),
    seed: int = typer.Option(0, help="Seed of the caption wording."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
) -> None:
    """Image<->text retrieval: R@1/5/10, median and mean rank, with one metadata caption per image.

    Captions come from the dataset's caption column or are generated from its metadata
    (diagnosis, modality, site, age, sex, dermoscopic criteria...).
    """
    from dermkit.engine.retrieval import run_retrieval

    m = run_retrieval(model, data, split=split, out_dir=out, seed=seed, cache_dir=cache_dir, device=device)
    table = Table("direction", "R@1", "R@5", "R@10", "median rank", "mean rank",
                  title=f"retrieval {model} on {m['dataset']} ({split})")
    for name, key in (("image→text", "image_to_text"), ("text→image", "text_to_image")):
        d = m[key]
        table.add_row(name, *(f"{100 * d[k]:.1f}%" for k in ("R@1", "R@5", "R@10")),
                      f"{d['median_rank']:g}", f"{d['mean_rank']:.1f}")
    console.print(table)
    console.print(f"mean recall {100 * m['mean_recall']:.2f}%  ->  {out / 'metrics.json'}")


def rank_cmd(
    items: list[str] = typer.Argument(..., metavar="IMAGE",
                                      help="The image file, then (optionally) candidate texts."),
    model: str = typer.Option(..., help=_MODEL_HELP + " Needs a text encoder."),
    texts: Optional[list[str]] = typer.Option(None, "--texts", help="Candidate text (repeat the option, or list "
                                                                    "the texts after it)."),
    texts_file: Optional[Path] = typer.Option(None, help="File with one candidate text per line."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
) -> None:
    """Rank candidate texts by similarity to one image, best first.

    Example: dermkit rank --model hf-hub:ORG/NAME lesion.jpg --texts "a melanoma" "a nevus"
    """
    from dermkit.engine.retrieval import rank_texts
    from dermkit.models.encoders import load_encoder

    image, candidates = Path(items[0]), [*(texts or []), *items[1:]]
    if texts_file is not None:
        if not texts_file.is_file():
            raise DataError(f"--texts-file {texts_file} not found")
        candidates += [line.strip() for line in texts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not candidates:
        raise ConfigError("no candidate texts; pass --texts \"a melanoma\" \"a nevus\" or --texts-file FILE")
    enc = load_encoder(model, device=device)
    ranked = rank_texts(enc, image, candidates)
    # Softmax over the candidates with the model's temperature, as in zero-shot classification.
    top = max(s for _, s in ranked) * enc.logit_scale
    weights = [math.exp(s * enc.logit_scale - top) for _, s in ranked]
    probs = [w / sum(weights) for w in weights]
    if as_json:
        print(json.dumps([{"text": t, "similarity": round(s, 6), "probability": round(p, 6)}
                          for (t, s), p in zip(ranked, probs)], indent=2))
        return
    table = Table("rank", "text", "similarity", "probability", title=str(image))
    for i, ((t, s), p) in enumerate(zip(ranked, probs), 1):
        table.add_row(str(i), t, f"{s:.4f}", f"{p:.3f}")
    console.print(table)
