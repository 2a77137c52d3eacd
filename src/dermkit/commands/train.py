"""dermkit train / run / suite / benchmark (experiments of any method) and the lists of models and methods."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from dermkit.commands.common import config_for, console, err_console, print_frame, relaunch
from dermkit.errors import ConfigError

SEEDS_HELP = ("Seeds separated by commas, e.g. 0,1,2: one full run per seed in OUT/seed-N/ (finished seeds reused, "
              "interrupted ones continued with --resume), mean ± sample sd (ddof=1) in OUT/seeds.md; overrides the "
              "config's seeds.")


def register(app: typer.Typer, groups: dict) -> None:
    app.command("models")(models)
    app.command("train")(train)
    app.command("run")(run_cmd)
    app.command("methods")(methods_cmd)
    app.command("suite")(suite_cmd)
    app.command("benchmark")(benchmark)


def models() -> None:
    """List the named models (any timm architecture also works as timm:NAME)."""
    from dermkit.models.registry import list_models

    table = Table("name", "description")
    for name, desc in list_models():
        table.add_row(name, desc)
    console.print(table)


TRACK_HELP = ("Log to MLflow: mlflow | none (default: the config's `tracking:` key). The resolved config, per-epoch "
              "metrics, test metrics with CIs, the report and model folders; to $MLFLOW_TRACKING_URI, else to a local "
              "store ")
RUN_TRACK_HELP = TRACK_HELP + "mlruns/ beside --out (in its parent folder)."


def train(
    out: Path = typer.Option(..., help="Run folder: config.yaml, checkpoints/, model/, history.csv, tensorboard/, "
                                       "eval/test/."),
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
    select_metric: Optional[str] = typer.Option(None, help="Validation metric for model selection "
                                                           "[balanced_accuracy]."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without val improvement."),
    precision: Optional[str] = typer.Option(None, help="auto | fp32 | bf16 | fp16 (auto = bf16 where the CPU/GPU "
                                                       "has it)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    num_workers: Optional[int] = typer.Option(None, help="Data-loader worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint "
                                                        "(uses the run's saved config.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a finished run in --out."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change", help="With --resume: continue even though "
                                             "the config differs from the one the run was trained under (refused "
                                             "otherwise, naming the keys); the changes are recorded in summary.json "
                                             "and model.json."),
    nproc: int = typer.Option(1, min=1, help="Processes on this machine (torch.distributed through torchrun: one "
                                             "per GPU, gloo on CPUs); several machines: torchrun -m dermkit ..."),
    track: Optional[str] = typer.Option(None, "--track", help=RUN_TRACK_HELP),
) -> None:
    """Train an image classifier (method: supervised): select on val, report on test (metrics with CIs, plots, HTML).

    The same as `dermkit run CONFIG --out DIR` for a config with `method: supervised`.
    """
    from dermkit.experiment import run_experiment

    if nproc > 1:
        return relaunch(nproc)
    overrides = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                     pretrained=pretrained, imbalance=imbalance, train_last=train_last, task=task, eval_data=eval_data,
                     select_metric=select_metric, patience=patience, precision=precision, device=device, seed=seed,
                     num_workers=num_workers)
    raw = config_for("supervised", out, config, resume, overrides)
    _print_summary(run_experiment(raw, out, resume=resume, force=force, track=track,
                                  allow_config_change=allow_config_change))


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


def run_cmd(
    configs: list[Path] = typer.Argument(..., metavar="CONFIG", help="YAML config(s) naming their method "
                                         "(see `dermkit methods`); several only with --check."),
    out: Optional[Path] = typer.Option(None, help="Run folder (config.yaml, checkpoints/, model/, eval/, "
                                                  "summary.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a run already in --out."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change", help="With --resume: continue even though "
                                             "the config differs from the one the run was trained under (refused "
                                             "otherwise, naming the keys); the changes are recorded in summary.json "
                                             "and model.json."),
    check: bool = typer.Option(False, "--check", help="Only validate the configs (keys, types, data folders, model "
                                                      "specs); run nothing. Exit 2 naming the file and key on error."),
    nproc: int = typer.Option(1, min=1, help="Processes on this machine (torch.distributed through torchrun: one "
                                             "per GPU, gloo on CPUs); several machines: torchrun -m dermkit ..."),
    track: Optional[str] = typer.Option(None, "--track", help=RUN_TRACK_HELP),
    seeds: Optional[str] = typer.Option(None, help=SEEDS_HELP),
) -> None:
    """Run one experiment config with any registered method: train, select on val, report on test.

    With --seeds (or `seeds: [0, 1, 2]` in the config): one full run per seed in OUT/seed-N/, then
    OUT/summary.json and seeds.md/.html with mean, sample sd, min and max across seeds; OUT/model is
    the seed with the best val score."""
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
        return relaunch(nproc)
    raw = load_config(configs[0])
    if seeds is not None:
        from dermkit.seeds import parse_seeds

        raw["seeds"] = parse_seeds(seeds)
    summary = run_experiment(raw, out, resume=resume, force=force, track=track,
                             allow_config_change=allow_config_change)
    if not summary:  # a torchrun process other than rank 0: rank 0 reports
        return
    print_frame(suite_table([summary]), summary["name"])
    if summary.get("seeds"):
        console.print(f"seeds: {out / 'seeds.md'} ({summary['seeds']['selection']})")
    elif summary.get("report"):
        console.print(f"report: {summary['report']}/report.html")


def methods_cmd() -> None:
    """List the registered methods (the values of `method:` in a config)."""
    from dermkit.methods import METHODS, list_methods

    table = Table("method", "config class", "description")
    for name in list_methods():
        m = METHODS[name]
        table.add_row(name, m.config_class.__name__, m.description)
    console.print(table)


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
    n_bootstrap: int = typer.Option(1000, min=1, help="Bootstrap resamples for --subgroups, --baseline and --stress."),
    stress: Optional[str] = typer.Option(None, help="Robustness stress test of every run's model on its test split "
                                         "(quick | full | a family | NAME[:SEVERITY],...; see `dermkit evaluate "
                                         "--help`): each run's mean relative drop and worst transform in the table, "
                                         "details in OUT/<run>/stress/. The same transformed images for every run."),
    track: Optional[str] = typer.Option(None, "--track", help=TRACK_HELP + "OUT/mlruns/; every run of the suite in one "
                                        "MLflow experiment named after OUT's folder."),
    seeds: Optional[str] = typer.Option(None, help=SEEDS_HELP + " Every config of the suite; its table shows "
                                        "mean ± sd per run, and --baseline compares seed pair by seed pair."),
) -> None:
    """Run several configs (ablations) and print one comparison table (ACC, BACC, F1, AUC with 95% CIs).

    Finished runs are reused and interrupted ones resume, so the same command continues a suite.
    """
    from dermkit.evaluate.subgroups import parse_bins, parse_subgroups
    from dermkit.experiment import run_suite

    attributes = parse_subgroups(subgroups) if subgroups is not None else None
    bin_edges = parse_bins(bins)
    if bin_edges and not attributes:
        raise ConfigError("--bins cuts the columns named in --subgroups; add --subgroups (e.g. --subgroups age_band)")
    if stress is not None:
        from dermkit.data.stress import parse_stress

        parse_stress(stress)  # a wrong name fails before any run
    overrides = {"epochs": epochs} if epochs else {}
    if seeds is not None:
        from dermkit.seeds import parse_seeds

        overrides["seeds"] = parse_seeds(seeds)
    table = run_suite(configs, out, rerun=rerun, overrides=overrides or None,
                      subgroups=attributes, bins=bin_edges, baseline=baseline, n_bootstrap=n_bootstrap, stress=stress,
                      track=track)
    print_frame(table, f"suite ({len(table)} runs), metrics in %, 95% CI")
    console.print(f"table: {out / 'suite.md'}")


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
