"""dermkit command line: thin wrappers around the Python API (see README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

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
concepts_app = typer.Typer(help="Concept bottlenecks (method: cbm): concept galleries, validity, interventions.",
                           no_args_is_help=True)
app.add_typer(concepts_app, name="concepts")
console = Console()
err_console = Console(stderr=True)
_ARGV: list[str] = []  # this invocation's arguments (``--nproc`` re-runs them under torchrun)


# --------------------------------------------------------------------------- data
@data_app.command("check")
def data_check(
    dataset: str = typer.Argument(..., help="A known dataset name (ham10000, derm7pt, ph2, isic2017, pad_ufes20; "
                                            "resolved under $DERMKIT_DATA) or a folder with metadata.csv."),
    images: bool = typer.Option(True, "--images/--no-images", help="Decode every image (finds missing, truncated, "
                                                                   "unreadable files and decompression bombs)."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Allow image paths that lead out of the "
                                         "folder through a symlink (e.g. images/ linked to an image store), for "
                                         "this check; 'follow_symlinks: true' in dataset.yaml allows it always."),
) -> None:
    """Validate a dataset folder and print images per class and split, and metadata coverage.

    Exits with status 2 and names the CSV line and the fix for every problem found.
    """
    from dermkit.data import check_dataset, load_card

    card = load_card(dataset)
    result = check_dataset(card, check_images=images, progress=True, follow_symlinks=follow_symlinks or None)
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
    model: Optional[str] = typer.Option(None, help="Model name (see `dermkit models`) or timm:ARCH[.TAG][@random] "
                                                   "[default: efficientnet_lite0]."),
    config: Optional[Path] = typer.Option(None, help="Experiment YAML (method: supervised, or no method); "
                                                     "command-line options override it."),
    epochs: Optional[int] = typer.Option(None, help="Number of epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (AdamW, warm-up then cosine)."),
    image_size: Optional[int] = typer.Option(None, help="Square input size in pixels [default: the model's]."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Pretrained body weights "
                                              "[default: what the model spec says: ImageNet for EfficientNet-Lite]."),
    imbalance: Optional[str] = typer.Option(None, help="weighted_loss | balanced_sampler | none."),
    train_last: Optional[int] = typer.Option(None, help="Fine-tune only the last N units (+ head); default: all."),
    task: Optional[str] = typer.Option(None, help="all | melanoma_vs_rest | binary:CLASS."),
    eval_data: Optional[str] = typer.Option(None, help="More datasets (comma-separated) to report the model on."),
    select_metric: Optional[str] = typer.Option(None, help="Validation metric for model selection [balanced_accuracy]."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without val improvement."),
    precision: Optional[str] = typer.Option(None, help="auto | fp32 | bf16 | fp16 (auto = bf16 where the CPU/GPU has it)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    num_workers: Optional[int] = typer.Option(None, help="Data-loader worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint "
                                                        "(uses the run's saved config.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished run in --out."),
    nproc: int = typer.Option(1, min=1, help="Processes on this machine (torch.distributed through torchrun: one "
                                             "per GPU, gloo on CPUs); several machines: torchrun -m dermkit ..."),
) -> None:
    """Train an image classifier (method: supervised): select on val, report on test (metrics with CIs, plots, HTML).

    The same as `dermkit run CONFIG --out DIR` for a config with `method: supervised`.
    """
    from dermkit.experiment import run_experiment

    if nproc > 1:
        return _launch(nproc)
    overrides = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                     pretrained=pretrained, imbalance=imbalance, train_last=train_last, task=task, eval_data=eval_data,
                     select_metric=select_metric, patience=patience, precision=precision, device=device, seed=seed,
                     num_workers=num_workers)
    raw = _config_for("supervised", out, config, resume, overrides)
    _print_summary(run_experiment(raw, out, resume=resume, force=force))


def _set_tta(predictor, tta: Optional[str]) -> None:
    if tta is None:
        return
    from dermkit.errors import ConfigError

    if not hasattr(predictor, "set_tta"):
        raise ConfigError(f"--tta: a {predictor.method} model has no test-time augmentation (supervised models do)")
    predictor.set_tta(tta)


def _launch(nproc: int) -> int:
    """Re-run this very command on ``nproc`` processes through torchrun (without ``--nproc``)."""
    from dermkit.engine.distributed import launch
    from dermkit.errors import ConfigError

    if int(__import__("os").environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--nproc inside a torchrun process: drop --nproc, torchrun already starts the processes")
    argv, skip = [], False
    for arg in _ARGV:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    return launch(nproc, argv)


def _config_for(method: str, out: Path, config: Optional[Path], resume: bool, overrides: dict) -> dict:
    """One config dialect for the per-method commands: the YAML (or, with --resume, the run's own
    config.yaml) with ``method`` checked, then the command-line options on top."""
    from dermkit.errors import ConfigError
    from dermkit.experiment import load_config

    given = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        raw = load_config(out / "config.yaml") if (out / "config.yaml").is_file() else {}
        extra = sorted(set(given) - {"epochs"})
        if extra:
            raise ConfigError(f"--resume continues the saved run; drop {extra} (only --epochs may change)")
        if config is not None:
            raise ConfigError("--resume reads the run's own config.yaml; drop --config")
    else:
        raw = load_config(config) if config is not None else {}
    if raw.get("method", method) != method:
        raise ConfigError(f"{config or out / 'config.yaml'} is a `method: {raw['method']}` config; run it with "
                          f"`dermkit run {config or out / 'config.yaml'} --out {out}`")
    raw["method"] = method
    if "epochs" in given:  # engine keys may sit at the top level or under engine:
        raw.setdefault("engine", {})
        raw["engine"] = {**(raw["engine"] or {}), "epochs": given.pop("epochs")}
    engine_keys = {"lr", "select_metric", "patience", "precision", "device", "seed", "grad_accum"}
    for key in list(given):
        if key in engine_keys and isinstance(raw.get("engine"), dict):
            raw["engine"][key] = given.pop(key)
    raw.update(given)
    if config is None and not resume:
        raw.setdefault("name", out.name)
    return raw


def _print_summary(summary: dict) -> None:
    if not summary:  # a torchrun process other than rank 0: rank 0 reports
        return
    title = f"{summary.get('model')} on {summary.get('dataset')}"
    table = Table("metric (test)", "value", "95% CI", title=title)
    for key, value in (summary.get("test") or {}).items():
        ci = (summary.get("test_ci") or {}).get(key) or {}
        ci_text = f"{ci['low']:.3f} – {ci['high']:.3f}" if ci.get("low") is not None else ""
        table.add_row(key, "n/a" if value is None else f"{value:.4f}", ci_text)
    console.print(table)
    for t in summary.get("transfer") or []:
        console.print(f"-> {t['eval_dataset']} test: " + ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in t["test"].items()))
    if summary.get("best_epoch") is not None:
        console.print(f"best epoch {summary['best_epoch']} ({summary['selected_on']})")
    console.print(f"wall time {summary['wall_seconds'] / 60:.1f} min")
    if summary.get("report"):
        console.print(f"report: [bold]{summary['report']}/report.html[/bold]")


# --------------------------------------------------------------------------- evaluate / predict
@app.command("evaluate")
def evaluate_cmd(
    out: Path = typer.Option(..., help="Report folder: metrics.json, predictions.csv, report.md/.html, PNG plots."),
    predictions: Optional[Path] = typer.Option(None, help="CSV with image, target, prediction, prob:<class>... columns."),
    model: Optional[Path] = typer.Option(None, help="Model folder of any method (RUN/model from `dermkit run`/`train`)."),
    data: Optional[str] = typer.Option(None, help="Dataset name or folder: with --model, the images to predict "
                                                  "(relabelled for the model's task); with --predictions, only the "
                                                  "metadata for --subgroups (rows linked by image)."),
    split: str = typer.Option("test", help="Split to evaluate (with --model)."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    allow_duplicates: bool = typer.Option(False, "--allow-duplicates", help="Evaluate rows that share an image id "
                                          "as distinct cases (refused by default: usually a copy-paste error)."),
    subgroups: Optional[str] = typer.Option(None, help="Metadata columns separated by commas, e.g. "
                                            "sex,age_band,localization,fitzpatrick: per-subgroup n, balanced accuracy, "
                                            "macro AUC and melanoma sensitivity with CIs, the worst-minus-best gap and "
                                            "a forest plot. NAME_band cuts a numeric column into bands (age: <30, [30, 45), "
                                            "[45, 60), [60, 75), >=75 by default). Columns come from the CSV or --data."),
    bins: Optional[list[str]] = typer.Option(None, "--bins", help="Cut points of a numeric subgroup column, "
                                             "COLUMN:EDGE,EDGE,... (repeatable), e.g. --bins age:40,60."),
    tta: Optional[str] = typer.Option(None, help="Test-time augmentation of a supervised model, overriding the one "
                                                 "saved with it: none | flip (3 views) | flip_rot (8 views)."),
) -> None:
    """Metrics with bootstrap CIs, plots and reports, from a predictions CSV or a model run over a split.

    Refused (exit 2, naming the row and the fix): repeated image ids, missing targets, targets or
    classes that differ only by case, prob: columns that are not probabilities. Warned (in the
    output, metrics.json and the report): a prediction column that disagrees with the
    probabilities, classes absent from the targets, stripped whitespace, missing group ids.
    """
    from rich.markup import escape

    from dermkit.errors import ConfigError
    from dermkit.evaluate import evaluate, read_predictions
    from dermkit.evaluate.report import format_ci, format_metric
    from dermkit.evaluate.subgroups import parse_bins, parse_subgroups

    attributes = parse_subgroups(subgroups) if subgroups is not None else []
    bin_edges = parse_bins(bins)
    if bin_edges and not attributes:
        raise ConfigError("--bins cuts the columns named in --subgroups; add --subgroups (e.g. --subgroups age_band)")
    card = None
    if predictions is not None and model is None:
        preds = read_predictions(predictions, allow_duplicates=allow_duplicates)
        title = f"{predictions.name}"
        if data is not None:
            from dermkit.api import load_dataset

            card = load_dataset(data)
    elif model is not None and data is not None and predictions is None:
        from dermkit.api import load_dataset, load_predictor

        card = load_dataset(data)
        predictor = load_predictor(model)
        _set_tta(predictor, tta)
        preds = predictor.predict_split(card, split)
        title = f"{predictor.name} on {card.name} ({split} split)"
    else:
        raise ConfigError("give either --predictions P.csv, or --model DIR with --data DATASET")
    metadata = None
    if card is not None and attributes:
        metadata = card.table.copy()
        metadata.attrs["source"] = str(card.metadata_csv)  # named when a predicted image is not in it
    report = evaluate(preds, n_bootstrap=n_bootstrap, seed=seed, title=title, allow_duplicates=allow_duplicates,
                      subgroups=attributes or None, bins=bin_edges,
                      metadata=metadata,
                      missing_values=card.missing_values if card is not None else ())
    folder = report.save(out)
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    m = report.metrics
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        ci = format_ci(m.get("ci", {}).get(key), 3, "[{low}, {high}]")
        console.print(f"{key:>18}: {format_metric(m.get(key))}" + ("" if ci == "n/a" else f" {ci}"))
    sel = m.get("selective") or {}
    if sel:
        console.print(f"{'AURC':>18}: {format_metric(sel['aurc'])} (risk-coverage, lower is better)")
    for attribute in (m.get("subgroups") or {}).get("attributes", []):
        gap = attribute["gaps"]["balanced_accuracy"]
        ci = format_ci(gap["ci"], 3, "[{low}, {high}]")
        console.print(f"{'BACC gap ' + attribute['attribute']:>18}: " + (
            "n/a (fewer than two subgroups large enough)" if gap["worst"] is None else
            f"{format_metric(gap['gap'], 3)} {ci} ({escape(str(gap['worst']))} vs {escape(str(gap['best']))})"))
    if m.get("subgroups"):
        console.print(f"subgroups: {folder}/subgroups.csv, {folder}/subgroups_forest.png")
    console.print(f"report: {folder}/report.html")


@app.command("predict")
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (JPEG/PNG/...)."),
    model: Path = typer.Option(..., help="Model folder of any method (RUN/model)."),
    top_k: int = typer.Option(3, min=1, help="How many classes to show per image (>= 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    clinical: Optional[list[Path]] = typer.Option(
        None, "--clinical", help="Fusion models: clinical image of each case (repeat once per image, in order)."),
    meta: Optional[list[str]] = typer.Option(
        None, "--meta", help="Fusion models: metadata KEY=VALUE for all images (repeatable), e.g. --meta age=55."),
    explain: Optional[Path] = typer.Option(
        None, "--explain", help="Write a Grad-CAM heat map of the top class over the image (PNG): OUT.png for one "
                                "image; with several images a folder holding <image>.gradcam.png for each."),
    tta: Optional[str] = typer.Option(None, help="Test-time augmentation of a supervised model, overriding the one "
                                                 "saved with it: none | flip (3 views) | flip_rot (8 views)."),
) -> None:
    """Top-k classes with probabilities for each image (and, with --explain, where the model looked)."""
    from dermkit.api import load_predictor
    from dermkit.data.images import command_line_path

    images = [command_line_path(p) for p in images]  # errors name the file as given, not a CSV row
    predictor = load_predictor(model)
    _set_tta(predictor, tta)
    if clinical or meta:
        from dermkit.errors import ConfigError

        if not hasattr(predictor, "set_extra_inputs"):
            raise ConfigError("--clinical/--meta need a multi-modal (fusion) model")
        pairs = {}
        for item in meta or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--meta {item!r}: write KEY=VALUE, e.g. --meta age=55")
            pairs[key.strip()] = value.strip()
        predictor.set_extra_inputs(clinical=clinical or None, meta=pairs or None)
    proba = predictor.predict_paths(images)
    results = []
    for path, p in zip(images, proba):
        order = p.argsort()[::-1][:top_k]
        results.append({"image": str(path), "top": [{"class": predictor.classes[i], "probability": round(float(p[i]), 6)}
                                                    for i in order]})
    if explain is not None:
        from dermkit.data.images import open_image
        from dermkit.errors import ModelError
        from dermkit.models.explain import saliency_map, save_overlay

        saliency = predictor.saliency_module()
        if saliency is None:
            raise ModelError(f"--explain: a {predictor.method} model has no image tower that Grad-CAM can explain "
                             "(supervised, zero-shot, linear-probe and prompt-learning models can)")
        single = len(images) == 1 and explain.suffix.lower() == ".png"
        for path, p, r in zip(images, proba, results):
            image = open_image(path)
            heat, _ = saliency_map(saliency, image, int(p.argmax()))
            out = explain if single else explain / f"{Path(path).stem}.gradcam.png"
            r["explanation"] = str(save_overlay(out, image, heat))
    if hasattr(predictor, "predict_details"):  # e.g. a thickness, the modalities a fusion model used
        for r, extra in zip(results, predictor.predict_details(images)):
            r.update(extra)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        table = Table("class", "probability", title=r["image"])
        for t in r["top"]:
            table.add_row(t["class"], f"{t['probability']:.3f}")
        console.print(table)
        for key, value in r.items():
            if key not in ("image", "top"):
                console.print(f"  {key}: {value}")


# --------------------------------------------------------------------------- configs and suites
@app.command("run")
def run_cmd(
    configs: list[Path] = typer.Argument(..., metavar="CONFIG", help="YAML config(s) naming their method "
                                         "(see `dermkit methods`); several only with --check."),
    out: Optional[Path] = typer.Option(None, help="Run folder (config.yaml, checkpoints/, model/, eval/, summary.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a run already in --out."),
    check: bool = typer.Option(False, "--check", help="Only validate the configs (keys, types, data folders, model "
                                                      "specs); run nothing. Exit 2 naming the file and key on error."),
    nproc: int = typer.Option(1, min=1, help="Processes on this machine (torch.distributed through torchrun: one "
                                             "per GPU, gloo on CPUs); several machines: torchrun -m dermkit ..."),
) -> None:
    """Run one experiment config with any registered method: train, select on val, report on test."""
    from dermkit.errors import ConfigError
    from dermkit.experiment import check_configs, load_config, run_experiment, suite_table

    if check:
        for path, warnings in check_configs(configs):
            console.print(f"[green]ok[/green] {path}")
            for w in warnings:
                err_console.print(f"  [yellow]warning[/yellow] {w}")
        return
    if len(configs) != 1:
        raise ConfigError(f"`dermkit run` runs one config (got {len(configs)}); use `dermkit suite` for several, "
                          "or --check to validate them")
    if out is None:
        raise ConfigError("give the run folder with --out DIR")
    if nproc > 1:
        return _launch(nproc)
    summary = run_experiment(load_config(configs[0]), out, resume=resume, force=force)
    if not summary:  # a torchrun process other than rank 0: rank 0 reports
        return
    _print_frame(suite_table([summary]), summary["name"])
    if summary.get("report"):
        console.print(f"report: {summary['report']}/report.html")


@app.command("methods")
def methods_cmd() -> None:
    """List the registered methods (the values of `method:` in a config)."""
    from dermkit.methods import METHODS, list_methods

    table = Table("method", "config class", "description")
    for name in list_methods():
        m = METHODS[name]
        table.add_row(name, m.config_class.__name__, m.description)
    console.print(table)


@app.command("suite")
def suite_cmd(
    configs: list[Path] = typer.Argument(..., help="YAML configs, e.g. configs/prompt_learning/*.yaml."),
    out: Path = typer.Option(..., help="Suite folder: one sub-folder per config + suite.md/.csv/.json."),
    rerun: bool = typer.Option(False, "--rerun", help="Rerun configs that already have a summary.json."),
    epochs: Optional[int] = typer.Option(None, help="Override every config's epochs (e.g. a quick smoke run)."),
    subgroups: Optional[str] = typer.Option(None, help="Metadata columns separated by commas (e.g. sex,age_band): "
                                            "adds each run's worst-minus-best balanced-accuracy gap with its CI; full "
                                            "tables and forest plots in OUT/<run>/subgroups/."),
    bins: Optional[list[str]] = typer.Option(None, "--bins", help="Cut points of a numeric subgroup column, "
                                             "COLUMN:EDGE,EDGE,... (repeatable), e.g. --bins age:40,60."),
    baseline: Optional[str] = typer.Option(None, help="A run of the suite (its name) or a run folder: adds every "
                                           "run's paired comparison with it (ΔBACC, ΔAUC with CI and p, DeLong and "
                                           "McNemar p); details in OUT/<run>/compare_vs_<baseline>/."),
    n_bootstrap: int = typer.Option(1000, min=1, help="Bootstrap resamples for --subgroups and --baseline."),
) -> None:
    """Run several configs (ablations) and print one comparison table (ACC, BACC, F1, AUC with 95% CIs).

    Finished runs are reused and interrupted ones resume, so the same command continues a suite.
    """
    from dermkit.errors import ConfigError
    from dermkit.evaluate.subgroups import parse_bins, parse_subgroups
    from dermkit.experiment import run_suite

    attributes = parse_subgroups(subgroups) if subgroups is not None else None
    bin_edges = parse_bins(bins)
    if bin_edges and not attributes:
        raise ConfigError("--bins cuts the columns named in --subgroups; add --subgroups (e.g. --subgroups age_band)")
    table = run_suite(configs, out, rerun=rerun, overrides={"epochs": epochs} if epochs else None,
                      subgroups=attributes, bins=bin_edges, baseline=baseline, n_bootstrap=n_bootstrap)
    _print_frame(table, f"suite ({len(table)} runs), metrics in %, 95% CI")
    console.print(f"table: {out / 'suite.md'}")


# --------------------------------------------------------------------------- main job
@app.command("benchmark")
def benchmark(
    out: Path = typer.Option(Path("runs/benchmark"), help="Run folder."),
    data: str = typer.Option("ham10000", help="Dataset name or folder."),
    model: str = typer.Option("efficientnet_lite0", help="Model name."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted benchmark run."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished benchmark run in --out."),
) -> None:
    """The main job: fine-tune ImageNet EfficientNet-Lite0 on HAM10000 with settings chosen to finish in
    under 20 minutes on 2 CPU cores, select on val, and report on test."""
    from dermkit.experiment import run_experiment
    from dermkit.methods.supervised import benchmark_config

    _print_summary(run_experiment(benchmark_config(data=data, model=model), out, resume=resume, force=force))


# --------------------------------------------------------------------------- frozen encoders
_MODEL_HELP = ("Encoder: hf-hub:ORG/NAME, a model folder (open_clip / HF CLIP / dermkit classifier), "
               "local-dir:PATH, openclip:ARCH or timm:NAME.")
_CACHE_HELP = "Feature cache folder (default: $DERMKIT_CACHE/features, else ~/.cache/dermkit/features)."


def _dataset_list(data: str) -> list[str]:
    from dermkit.errors import ConfigError

    names = [d.strip() for d in data.split(",") if d.strip()]
    if not names:
        raise ConfigError("--data is empty; give dataset names or folders separated by commas, e.g. ph2,ham10000")
    return names


def _float_list(text: str, option: str) -> list[float]:
    from dermkit.errors import ConfigError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, e.g. 0.01,0.1,1; got {text!r}") from None


def _print_frame(frame, title: str) -> None:
    table = Table(*[str(c) for c in frame.columns], title=title)
    for row in frame.itertuples(index=False):
        table.add_row(*["" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command("clip-train")
def clip_train(
    out: Path = typer.Option(..., help="Run folder: init/ (starting model), model/ (best, open_clip hub layout), "
                                       "checkpoints/, history.csv, tensorboard/."),
    data: Optional[str] = typer.Option(None, help="Comma-separated datasets whose train splits give the image-caption "
                                                  "pairs [default: ham10000,isic2017,derm7pt,pad_ufes20; PH2 stays unseen]."),
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
    shards: Optional[str] = typer.Option(None, help="WebDataset shards to stream the image-caption pairs from (written "
                                                    "by `dermkit data shards`), e.g. 'DIR/{000000..000123}.tar'; --data "
                                                    "then only names the val splits that select the model."),
    shuffle_buffer: Optional[int] = typer.Option(None, help="Samples held by the shard stream's shuffle buffer "
                                                            "[default: 1000]."),
    cache_views: Optional[int] = typer.Option(None, help="Run the frozen part of the image trunk once on this many "
                                                         "augmented views per image and train from that cache (an "
                                                         "epoch then costs the trained tail) [default: 0 = off]."),
    cache_captions: Optional[int] = typer.Option(None, help="Run the frozen layers of the text tower once on this many "
                                                            "caption draws per pair; epoch e trains on draw e mod K "
                                                            "[default: 0 = off]."),
    class_balance: Optional[float] = typer.Option(None, help="Draw pairs ~ count(dataset, diagnosis)^-P inside each "
                                                             "dataset: 0 off, 0.5 inverse square root, 1 balanced."),
    hard_negatives: Optional[bool] = typer.Option(None, "--hard-negatives/--no-hard-negatives",
                                                  help="Add each caption with another diagnosis as an extra negative."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished run in --out."),
    nproc: int = typer.Option(1, min=1, help="Processes on this machine (torch.distributed through torchrun: one "
                                             "per GPU, gloo on CPUs); several machines: torchrun -m dermkit ..."),
) -> None:
    """Align a CLIP-style model (dermkit-CLIP: EfficientNet-Lite image tower + MiniLM text tower) on
    image-caption pairs; captions come from a `caption` column or are written from metadata.
    Selects the epoch with the best mean zero-shot balanced accuracy on the val splits."""
    from dermkit.experiment import run_experiment

    if nproc > 1:
        return _launch(nproc)
    overrides = dict(train_data=data, init=init, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                     train_image_last=train_image_last, train_text_last=train_text_last, grad_accum=grad_accum,
                     seed=seed, shards=shards, shuffle_buffer=shuffle_buffer, cache_views=cache_views,
                     cache_captions=cache_captions, class_balance=class_balance, hard_negatives=hard_negatives)
    summary = run_experiment(_config_for("contrastive", out, config, resume, overrides), out, resume=resume,
                             force=force)
    if not summary:  # a torchrun process other than rank 0: rank 0 reports
        return
    console.print(f"best epoch {summary['best_epoch']}: val zero-shot balanced accuracy "
                  f"{summary['best_val_zeroshot_balanced_accuracy']:.4f}; {summary['wall_seconds'] / 60:.1f} min")
    console.print(f"model: [bold]{summary['clip_model']}[/bold] (use it with --model in zeroshot/probe/retrieve; "
                  "it is also a zero-shot classifier for `dermkit predict/evaluate --model`)")


@app.command("zeroshot")
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
    from dermkit.methods.zeroshot import run_zeroshot

    table = run_zeroshot(model, _dataset_list(data), out, split=split, n_bootstrap=n_bootstrap, prompts=prompts,
                         cache_dir=cache_dir, seed=seed, device=device)
    _print_frame(table[["dataset", "n", "accuracy", "balanced_accuracy", "macro_auc", "macro_f1",
                        "positive_auroc"]], f"zero-shot {model} ({split})")
    console.print(f"table: {out / 'zeroshot_table.md'}")


@app.command("probe")
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
    from dermkit.errors import ConfigError
    from dermkit.methods.linear_probe import run_probe

    if class_weight not in ("balanced", "none"):
        raise ConfigError(f"--class-weight must be 'balanced' or 'none', got {class_weight!r}")
    table = run_probe(model, _dataset_list(data), out, fractions=_float_list(fractions, "--fractions"), seeds=seeds,
                      class_weight=None if class_weight == "none" else "balanced", n_bootstrap=n_bootstrap,
                      cache_dir=cache_dir, device=device)
    _print_frame(table[["dataset", "fraction", "n_train", "balanced_accuracy_mean", "balanced_accuracy_sd",
                        "macro_auc_mean", "macro_f1_mean"]], f"linear probe {model}")
    console.print(f"table: {out / 'probe_table.md'}")


@app.command("retrieve")
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
    from dermkit.methods.retrieval import run_retrieval

    m = run_retrieval(model, data, split=split, out_dir=out, seed=seed, cache_dir=cache_dir, device=device)
    table = Table("direction", "R@1", "R@5", "R@10", "median rank", "mean rank",
                  title=f"retrieval {model} on {m['dataset']} ({split})")
    for name, key in (("image→text", "image_to_text"), ("text→image", "text_to_image")):
        d = m[key]
        table.add_row(name, *(f"{100 * d[k]:.1f}%" for k in ("R@1", "R@5", "R@10")),
                      f"{d['median_rank']:g}", f"{d['mean_rank']:.1f}")
    console.print(table)
    console.print(f"mean recall {100 * m['mean_recall']:.2f}%  ->  {out / 'metrics.json'}")


@app.command("rank")
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
    import math

    from dermkit.errors import ConfigError, DataError
    from dermkit.methods.retrieval import rank_texts
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


# --------------------------------------------------------------------------- concepts
def _cbm(model: Path):
    from dermkit.api import load_predictor
    from dermkit.errors import ConfigError

    predictor = load_predictor(model)
    if getattr(predictor, "method", None) != "cbm":
        raise ConfigError(f"{model} is a `{getattr(predictor, 'method', '?')}` model; concepts need a concept "
                          "bottleneck (a `method: cbm` run's model folder)")
    return predictor


@concepts_app.command("intervene")
def concepts_intervene(
    model: Path = typer.Option(..., help="Model folder of a `method: cbm` run."),
    data: str = typer.Option(..., help="Dataset name or folder (relabelled for the model's task)."),
    zero: str = typer.Option(..., help="Concepts to switch off, separated by commas: latent ids, concept names of "
                                       "the model, or text queries matched to its nearest concept (e.g. 'ink,ruler')."),
    out: Path = typer.Option(..., help="Folder: before/ and after/ reports, intervention.json."),
    split: str = typer.Option("test", help="Split to evaluate."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
    per_query: int = typer.Option(1, min=1, help="Concepts zeroed per text query (its nearest ones)."),
) -> None:
    """Zero the activations of some concepts (e.g. artefacts) and report the metrics before and after."""
    from dermkit.api import load_dataset
    from dermkit.methods.cbm import intervene

    predictor = _cbm(model)
    result = intervene(predictor, load_dataset(data), zero.split(","), out, split=split, n_bootstrap=n_bootstrap,
                       per_query=per_query)
    for z in result["zeroed"]:
        console.print(f"zeroed latent {z['latent']} ({predictor.concept_name(z['latent'])}) for {z['item']!r} "
                      f"[{z['how']}]")
    table = Table("metric", "before", "after", title=f"intervention on {data} ({split})")
    for key in result["before"]:
        b, a = result["before"][key], result["after"][key]
        table.add_row(key, "n/a" if b is None else f"{b:.4f}", "n/a" if a is None else f"{a:.4f}")
    console.print(table)
    console.print(f"reports: {out}/before, {out}/after")


@concepts_app.command("show")
def concepts_show(
    model: Path = typer.Option(..., help="Model folder of a `method: cbm` run."),
    data: str = typer.Option(..., help="Dataset name or folder whose images fill the gallery."),
    out: Path = typer.Option(..., help="Folder: concepts.html (gallery) and validity.csv."),
    split: str = typer.Option("test", help="Split whose images are shown."),
    top: int = typer.Option(8, min=1, help="Top-activating images per concept."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the validity CIs."),
) -> None:
    """An HTML gallery of the model's concepts (top-activating images, name, weight) and, where the
    dataset annotates concepts (Derm7pt, PH2), each named concept's AUROC against the annotation."""
    from dermkit.api import load_dataset
    from dermkit.methods.cbm import concept_gallery

    page = concept_gallery(_cbm(model), load_dataset(data), out, split=split, top=top, n_bootstrap=n_bootstrap)
    console.print(f"gallery: {page}\nvalidity: {out / 'validity.csv'}")


@concepts_app.command("bias-data")
def concepts_bias_data(
    data: str = typer.Option(..., help="Dataset name or folder (with an images/ folder and a positive class)."),
    out: Path = typer.Option(..., help="Folder for the two biased dataset folders (biased/, biased_test/)."),
    artefact: str = typer.Option("ink", help="ink (a purple ink mark) | ruler (a ruler bar along one edge)."),
    fraction: float = typer.Option(0.8, help="Fraction of the positive train/val images (and of the negative "
                                             "test images in biased_test/) that get the artefact."),
    seed: int = typer.Option(0, help="Random seed of which images get it and where it is drawn."),
) -> None:
    """Build a shortcut on purpose: the artefact drawn on most melanomas of train/val (biased/, test clean)
    and on most non-melanomas of test (biased_test/). Only edited images are written; the rest link back."""
    from dermkit.data.artefacts import biased_copies

    biased, biased_test = biased_copies(data, out, kind=artefact, fraction=fraction, seed=seed)
    console.print(f"wrote {biased} and {biased_test}")


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


def _register_command_modules() -> None:
    """Every ``dermkit.commands`` module adds its commands (see that package's docstring)."""
    import importlib
    import pkgutil

    from dermkit import commands

    groups = {"data": data_app, "concepts": concepts_app}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"dermkit.commands.{info.name}").register(app, groups)


_register_command_modules()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one clear message and exit 2, never a traceback.

    Usage errors (unknown option or command, bad value, missing option) print the usage line and
    click's one-line error (with its "Did you mean" suggestion) and exit 2; a DermkitError prints
    ``error: ...`` and exits 2; Ctrl-C exits 130.
    """
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    exits, click_errors, aborts = _click_exception_classes()
    try:
        result = app(args=argv, standalone_mode=False)
    except DermkitError as exc:
        from rich.markup import escape

        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return _exit(2, argv)
    except exits as exc:
        return _exit(_interrupted(exc.exit_code), argv)
    except click_errors as exc:
        exc.show()  # usage + "Try 'dermkit ... --help'" + "Error: ..." on stderr
        return _exit(exc.exit_code, argv)
    except (*aborts, KeyboardInterrupt):
        return _exit(_interrupted(130), argv)
    return _exit(_interrupted(result) if isinstance(result, int) else 0, argv)


def _click_exception_classes() -> tuple[tuple, tuple, tuple]:
    """(Exit, ClickException, Abort) classes of standalone click and of typer's vendored click.

    typer 0.29 raises its own vendored copies (``typer._click.exceptions``, ``typer.exceptions``)
    that do not derive from click's; both are caught so neither a typer upgrade nor a command
    that raises a standalone ``click`` exception ends in a traceback.
    """
    import importlib

    found: dict[str, list[type]] = {"Exit": [], "ClickException": [], "Abort": []}
    for module in ("typer.exceptions", "typer._click.exceptions", "typer._click", "typer", "click.exceptions"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name, classes in found.items():
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in classes:
                classes.append(cls)
    return tuple(found["Exit"]), tuple(found["ClickException"]), tuple(found["Abort"])


def _interrupted(code: int) -> int:
    # typer turns Ctrl-C inside a command into Exit(130): say how to continue.
    if code == 130:
        err_console.print("interrupted; resume a training run with --resume")
    return code


def _exit(code: int, argv) -> int:
    if argv is None:  # called as the console script
        sys.exit(code)
    return code
