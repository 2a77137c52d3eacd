"""dermkit compare: is model B really better than model A on the same cases, or within noise?"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer, groups: dict) -> None:
    app.command("compare")(compare_cmd)


def compare_cmd(
    a: Path = typer.Argument(..., metavar="A", help="Predictions of model A (the reference): a predictions CSV, a "
                                                   "report folder or a run folder (its eval/test/predictions.csv)."),
    b: Path = typer.Argument(..., metavar="B", help="Predictions of model B on the same cases, in the same form."),
    out: Path = typer.Option(..., help="Folder: comparison.json, comparison.csv, comparison.md."),
    n_bootstrap: int = typer.Option(1000, min=1, help="Paired bootstrap resamples (same resamples for both models)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    allow_duplicates: bool = typer.Option(False, "--allow-duplicates", help="Rows that share an image id are "
                                          "distinct cases (refused by default)."),
) -> None:
    """Paired comparison of two models on the same cases: B - A for every headline metric.

    Paired bootstrap CIs and p-values (both models on the same resamples, whole lesions drawn
    together when the files have a group column), DeLong's test for the AUC difference (binary,
    or one-vs-rest macro AUC), McNemar's test for accuracy. Files whose images, order, classes
    or targets differ are refused, naming the first mismatch.
    """
    from dermkit.evaluate.compare import compare_predictions, predictions_path, save_comparison
    from dermkit.evaluate.report import format_ci, format_metric

    path_a, path_b = predictions_path(a), predictions_path(b)
    result = compare_predictions(path_a, path_b, n_bootstrap=n_bootstrap, seed=seed,
                                 names=(str(a), str(b)), allow_duplicates=allow_duplicates)
    folder = save_comparison(result, out)
    table = Table("metric", "A", "B", "B - A", "95% CI", "p", title=f"B = {b} vs A = {a} ({result['n']} cases)")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "brier"):
        r = result["metrics"][key]
        table.add_row(key, format_metric(r["a"]), format_metric(r["b"]), format_metric(r["difference"]),
                      format_ci(r["ci"], 4, "[{low}, {high}]"), format_metric(r["p"]))
    console.print(table)
    d, mc = result["delong"], result["mcnemar"]
    if "error" not in d:
        console.print(f"DeLong ({d['what']}): B - A = {d['difference']:.4f}, z = {d['z']:.3f}, p = {d['p']:.4g}")
    console.print(f"McNemar ({mc['method']}): only A correct {mc['only_a_correct']}, only B correct "
                  f"{mc['only_b_correct']}, p = {mc['p']:.4g}")
    console.print(f"comparison: {folder}/comparison.md")
