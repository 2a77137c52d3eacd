"""dermkit command line: thin wrappers around the Python API (see README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from dermkit.errors import DermkitError

app = typer.Typer(
    name="dermkit",
    help="Skin-lesion AI toolkit: validate datasets, train classifiers, evaluate with CIs, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset cards: validate a dataset folder, make splits.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


# --------------------------------------------------------------------------- data
@data_app.command("check")
def data_check(
    dataset: str = typer.Argument(..., help="A known dataset name (ham10000, derm7pt, ph2, isic2017, pad_ufes20; "
                                            "resolved under $DERMKIT_DATA) or a folder with metadata.csv."),
    images: bool = typer.Option(True, "--images/--no-images", help="Decode every image (finds missing, truncated, "
                                                                   "unreadable files and decompression bombs)."),
) -> None:
    """Validate a dataset folder and print images per class and split, and metadata coverage.

    Exits with status 2 and names the CSV line and the fix for every problem found.
    """
    from dermkit.data import check_dataset, load_card

    card = load_card(dataset)
    result = check_dataset(card, check_images=images, progress=True)
    console.print(f"[bold]{card.name}[/bold]  {card.root}")
    console.print(_frame_table(result.summary.reset_index(), "images per class and split"))
    if result.metadata_coverage is not None and len(result.metadata_coverage):
        console.print(_frame_table(result.metadata_coverage, "metadata coverage"))
    errors = [p for p in result.problems if p.severity == "error"]
    warnings = [p for p in result.problems if p.severity != "error"]
    for p in warnings:
        err_console.print(f"[yellow]warning[/yellow] {_problem_text(p)}")
    for p in errors:
        err_console.print(f"[red]error[/red] {_problem_text(p)}")
    if errors:
        err_console.print(f"[red]{len(errors)} error(s)[/red] in {card.root / 'metadata.csv'}")
        raise typer.Exit(2)
    console.print(f"[green]ok[/green]: {len(card.table)} rows, {len(warnings)} warning(s)")


def _problem_text(p) -> str:
    from rich.markup import escape

    return escape(f"[{p.kind}] {p.message} Fix: {p.fix}")  # messages already name the metadata.csv line


@data_app.command("split")
def data_split(
    dataset: str = typer.Argument(..., help="Dataset folder (or known name) whose metadata.csv gets a 'split' column."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same split."),
    train: float = typer.Option(0.70, help="Fraction of groups for train."),
    val: float = typer.Option(0.15, help="Fraction for val."),
    test: float = typer.Option(0.15, help="Fraction for test."),
    group_column: Optional[str] = typer.Option(None, help="Column whose rows must stay together (lesion/patient id). "
                                                          "Default: the card's group column."),
    out: Optional[Path] = typer.Option(None, help="Write the new CSV here instead of replacing metadata.csv."),
    force: bool = typer.Option(False, help="Replace an existing non-empty split column."),
) -> None:
    """Make stratified, group-aware train/val/test splits (deterministic for a seed)."""
    from dermkit.data import load_card
    from dermkit.data.split import write_split

    card = load_card(dataset)
    path = write_split(card, out_csv=out, seed=seed, fractions=(train, val, test), group=group_column, force=force)
    console.print(f"wrote splits to {path}")


@app.command("models")
def models() -> None:
    """List the named models (any timm architecture also works as timm:NAME)."""
    from dermkit.models.registry import list_models

    table = Table("name", "description")
    for name, desc in list_models():
        table.add_row(name, desc)
    console.print(table)


# --------------------------------------------------------------------------- train
@app.command("train")
def train(
    out: Path = typer.Option(..., help="Run folder: config.yaml, checkpoints/, model/, history.csv, tensorboard/, eval/test/."),
    data: Optional[str] = typer.Option(None, help="Dataset name or folder [default: ham10000]."),
    model: Optional[str] = typer.Option(None, help="Model name (see `dermkit models`) or timm:ARCH [default: efficientnet_lite0]."),
    config: Optional[Path] = typer.Option(None, help="YAML with any TrainConfig keys; command-line options override it."),
    epochs: Optional[int] = typer.Option(None, help="Number of epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (AdamW, warm-up then cosine)."),
    image_size: Optional[int] = typer.Option(None, help="Square input size in pixels [default: the model's]."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="ImageNet weights "
                                              "[default: yes for EfficientNet-Lite, no for ResNet]."),
    imbalance: Optional[str] = typer.Option(None, help="weighted_loss | balanced_sampler | none."),
    train_last: Optional[int] = typer.Option(None, help="Fine-tune only the last N blocks (+ head); default: all."),
    select_metric: Optional[str] = typer.Option(None, help="Validation metric for model selection [balanced_accuracy]."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without val improvement."),
    precision: Optional[str] = typer.Option(None, help="auto | fp32 | bf16 | fp16 (auto = bf16 where the CPU/GPU has it)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    num_workers: Optional[int] = typer.Option(None, help="Data-loader worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint "
                                                        "(uses the run's saved config.yaml)."),
) -> None:
    """Train an image classifier: select on val, report on test (metrics with CIs, plots, HTML)."""
    from dermkit.methods.supervised import TrainConfig, train_classifier

    cfg = _train_config(out, config, resume, dict(
        data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
        pretrained=pretrained, imbalance=imbalance, train_last=train_last, select_metric=select_metric,
        patience=patience, precision=precision, device=device, seed=seed, num_workers=num_workers))
    summary = train_classifier(cfg, out, resume=resume)
    _print_summary(summary)


def _train_config(out: Path, config: Optional[Path], resume: bool, overrides: dict):
    import yaml

    from dermkit.errors import ConfigError
    from dermkit.methods.supervised import TrainConfig

    raw: dict = {}
    saved = out / "config.yaml"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found; start the run without --resume first")
        raw = yaml.safe_load(saved.read_text()) or {}
        given = {k: v for k, v in overrides.items() if v is not None and k != "epochs"}
        if given:
            raise ConfigError(f"--resume continues the saved run; drop {sorted(given)} (only --epochs may change)")
    elif config is not None:
        if not config.is_file():
            raise ConfigError(f"config file {config} not found")
        raw = yaml.safe_load(config.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{config} must hold a mapping of TrainConfig keys")
    cfg = TrainConfig.from_dict(raw)
    for key, value in overrides.items():
        if value is None:
            continue
        if hasattr(cfg, key):
            setattr(cfg, key, value)
        else:
            setattr(cfg.engine, key, value)
    return cfg


def _print_summary(summary: dict) -> None:
    table = Table("metric (test)", "value", "95% CI", title=f"{summary['model']} on {summary['dataset']}")
    for key, value in summary["test"].items():
        ci = summary.get("test_ci", {}).get(key) or {}
        ci_text = f"{ci['low']:.3f} – {ci['high']:.3f}" if ci.get("low") is not None else ""
        table.add_row(key, "n/a" if value is None else f"{value:.4f}", ci_text)
    console.print(table)
    console.print(f"best epoch {summary['best_epoch']} ({summary['selected_on']}), wall time "
                  f"{summary['wall_seconds'] / 60:.1f} min")
    console.print(f"report: [bold]{summary['report']}/report.html[/bold]")


# --------------------------------------------------------------------------- evaluate / predict
@app.command("evaluate")
def evaluate_cmd(
    out: Path = typer.Option(..., help="Report folder: metrics.json, predictions.csv, report.md/.html, PNG plots."),
    predictions: Optional[Path] = typer.Option(None, help="CSV with image, target, prediction, prob:<class>... columns."),
    model: Optional[Path] = typer.Option(None, help="Trained model folder (from `dermkit train`: RUN/model)."),
    data: Optional[str] = typer.Option(None, help="Dataset name or folder (with --model)."),
    split: str = typer.Option("test", help="Split to evaluate (with --model)."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
) -> None:
    """Metrics with bootstrap CIs, plots and reports, from a predictions CSV or a model run over a split."""
    from dermkit.errors import ConfigError
    from dermkit.evaluate import evaluate, read_predictions

    groups = None
    if predictions is not None and model is None:
        preds = read_predictions(predictions)
        title = f"{predictions.name}"
    elif model is not None and data is not None and predictions is None:
        from dermkit.data import load_card
        from dermkit.predictor import Predictor

        card = load_card(data)
        predictor = Predictor.load(model)
        preds = predictor.predict_split(card, split)
        title = f"{predictor.card['model']} on {card.name} ({split} split)"
    else:
        raise ConfigError("give either --predictions P.csv, or --model DIR with --data DATASET")
    report = evaluate(preds, groups=groups, n_bootstrap=n_bootstrap, seed=seed, title=title)
    folder = report.save(out)
    m = report.metrics
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        ci = m.get("ci", {}).get(key) or {}
        value = m.get(key)
        ci_text = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci.get("low") is not None else ""
        console.print(f"{key:>18}: {'n/a' if value is None else f'{value:.4f}'}{ci_text}")
    console.print(f"report: {folder}/report.html")


@app.command("predict")
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (JPEG/PNG/...)."),
    model: Path = typer.Option(..., help="Trained model folder (RUN/model)."),
    top_k: int = typer.Option(3, help="How many classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Top-k classes with probabilities for each image."""
    from dermkit.predictor import Predictor

    predictor = Predictor.load(model)
    proba = predictor.predict_paths(images)
    results = []
    for path, p in zip(images, proba):
        order = p.argsort()[::-1][: max(1, top_k)]
        results.append({"image": str(path), "top": [{"class": predictor.classes[i], "probability": round(float(p[i]), 6)}
                                                    for i in order]})
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        table = Table("class", "probability", title=r["image"])
        for t in r["top"]:
            table.add_row(t["class"], f"{t['probability']:.3f}")
        console.print(table)


# --------------------------------------------------------------------------- main job
@app.command("benchmark")
def benchmark(
    out: Path = typer.Option(Path("runs/benchmark"), help="Run folder."),
    data: str = typer.Option("ham10000", help="Dataset name or folder."),
    model: str = typer.Option("efficientnet_lite0", help="Model name."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted benchmark run."),
) -> None:
    """The main job: fine-tune ImageNet EfficientNet-Lite0 on HAM10000 with settings chosen to finish in
    under 20 minutes on 2 CPU cores, select on val, and report on test."""
    from dermkit.methods.supervised import benchmark_config, train_classifier

    cfg = benchmark_config(data=data, model=model)
    summary = train_classifier(cfg, out, resume=resume)
    _print_summary(summary)


# --------------------------------------------------------------------------- entry point
def _frame_table(frame, title: str) -> Table:
    table = Table(*[str(c) for c in frame.columns], title=title)
    for row in frame.itertuples(index=False):
        table.add_row(*[_fmt(v) for v in row])
    return table


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value != int(value) else str(int(value))
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one clear message and exit 2, never a traceback."""
    try:
        result = app(args=argv, standalone_mode=False)
    except DermkitError as exc:
        from rich.markup import escape

        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return _exit(2, argv)
    except click.exceptions.Exit as exc:
        return _exit(exc.exit_code, argv)
    except click.ClickException as exc:
        exc.show()
        return _exit(exc.exit_code, argv)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted; resume a training run with --resume")
        return _exit(130, argv)
    return _exit(result if isinstance(result, int) else 0, argv)


def _exit(code: int, argv) -> int:
    if argv is None:  # called as the console script
        sys.exit(code)
    return code
