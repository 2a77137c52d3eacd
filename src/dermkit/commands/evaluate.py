"""dermkit evaluate / predict / compare: metrics with CIs from predictions or a model, top-k predictions,
and the paired comparison of two models (is B really better than A on the same cases, or within noise?)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from dermkit.commands.common import console, err_console
from dermkit.errors import ConfigError, ModelError


def register(app: typer.Typer, groups: dict) -> None:
    app.command("evaluate")(evaluate_cmd)
    app.command("predict")(predict)
    app.command("compare")(compare_cmd)


def evaluate_cmd(
    out: Path = typer.Option(..., help="Report folder: metrics.json, predictions.csv, report.md/.html, PNG plots."),
    predictions: Optional[Path] = typer.Option(None, help="CSV with image, target, prediction, prob:<class>... "
                                                          "columns."),
    model: Optional[Path] = typer.Option(None, help="Model folder of any method (RUN/model from `dermkit run`/"
                                                    "`train`)."),
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
                                            "a forest plot. NAME_band cuts a numeric column into bands (age: <30, "
                                            "[30, 45), [45, 60), [60, 75), >=75 by default). Columns come from the "
                                            "CSV or --data."),
    bins: Optional[list[str]] = typer.Option(None, "--bins", help="Cut points of a numeric subgroup column, "
                                             "COLUMN:EDGE,EDGE,... (repeatable), e.g. --bins age:40,60."),
    tta: Optional[str] = typer.Option(None, help="Test-time augmentation of a supervised model, overriding the one "
                                                 "saved with it: none | flip (3 views) | flip_rot (8 views)."),
    stress: Optional[str] = typer.Option(None, "--stress", help="With --model: robustness stress test: the metrics "
                                         "on the split and on seeded, transformed copies made on the fly (nothing is "
                                         "written to the dataset). quick (12 transforms x severities 2 and 4) | full "
                                         "(25 transforms x 1-5) | a family (acquisition, corruption, artefact) | "
                                         "NAME[:SEVERITY],... (e.g. hair:3,motion_blur). Writes stress.csv and "
                                         "stress.png; paired-bootstrap differences to clean and flip rates."),
    ood_data: Optional[str] = typer.Option(None, "--ood-data", help="With --model: out-of-distribution detection "
                                           "of the model's detector, --split images vs each of these, separated by "
                                           "commas: datasets (their test split, else every row; NAME:COLUMN for "
                                           "another image column, e.g. derm7pt:clinic_image), 'synthetic' "
                                           "(generated non-skin images) or 'bundled' (sample photos of installed "
                                           "packages). AUROC and FPR at 95% TPR of each score with CIs, a histogram."),
) -> None:
    """Metrics with bootstrap CIs, plots and reports, from a predictions CSV or a model run over a split.

    Refused (exit 2, naming the row and the fix): repeated image ids, missing targets, targets or
    classes that differ only by case, prob: columns that are not probabilities. Warned (in the
    output, metrics.json and the report): a prediction column that disagrees with the
    probabilities, classes absent from the targets, stripped whitespace, missing group ids.
    """
    from dermkit.evaluate import evaluate, read_predictions
    from dermkit.evaluate.subgroups import parse_bins, parse_subgroups
    from dermkit.evaluate.tables import format_ci, format_metric

    others = _ood_sets(ood_data, model)  # checked before anything is predicted
    if stress is not None:
        if model is None:
            raise ConfigError("--stress needs --model (the model predicts each transformed copy)")
        from dermkit.data.stress import parse_stress

        parse_stress(stress)
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
        preds = predictor.predict_split(card, split, keep_excluded=True)
        title = f"{predictor.name} on {card.name} ({split} split)"
    else:
        raise ConfigError("give either --predictions P.csv, or --model DIR with --data DATASET")
    excluded, excluded_note = None, ""
    if card is not None and card.exclude is not None:
        excluded, excluded_note = _excluded_rows(preds, card)
    metadata = None
    if card is not None and attributes:
        metadata = card.analysis_table()  # + fitzpatrick (I-VI) whatever the release calls it
        metadata.attrs["source"] = str(card.metadata_csv)  # named when a predicted image is not in it
    report = evaluate(preds, n_bootstrap=n_bootstrap, seed=seed, title=title, allow_duplicates=allow_duplicates,
                      subgroups=attributes or None, bins=bin_edges,
                      metadata=metadata,
                      missing_values=card.missing_values if card is not None else (),
                      excluded=excluded, excluded_note=excluded_note)
    if ood_data is not None:
        from dermkit.methods.ood import evaluate_detection

        kept = report.predictions["image"].tolist()
        proba = report.predictions[[f"prob:{c}" for c in predictor.classes]].to_numpy()
        report.metrics["ood"], report.ood_scores = evaluate_detection(
            predictor, [card.image_path(rel) for rel in kept], proba, others, id_name=f"{card.name} {split}",
            n_boot=n_bootstrap, seed=seed)
    if stress is not None:
        from dermkit.evaluate.stress import stress_json
        from dermkit.methods.stress import run_stress

        table, summary = run_stress(predictor, predictor.task_card(card), report.predictions, stress, seed=seed,
                                    n_bootstrap=n_bootstrap)
        report.stress, report.metrics["stress"] = table, stress_json(table, summary)
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
    if m.get("stress"):
        console.print(f"{'stress':>18}: {escape(m['stress']['summary']['line'])}", soft_wrap=True)
    for name, entry in (m.get("ood") or {}).get("sets", {}).items():
        r = entry["scores"][m["ood"]["default"]]
        console.print(f"{'OOD ' + m['ood']['default']:>18}: vs {escape(name)}: AUROC {format_metric(r['auroc'])} "
                      f"{format_ci(r['ci']['auroc'], 3, '[{low}, {high}]')}, FPR95 {format_metric(r['fpr95'])}, "
                      f"{entry['accepted']:.1%} accepted", soft_wrap=True)
    console.print(f"report: {folder}/report.html")


def _ood_sets(ood_data: Optional[str], model) -> list[str]:
    """The ``--ood-data`` entries, each dataset's card loaded once to fail early on a wrong name."""
    if ood_data is None:
        return []
    if model is None:
        raise ConfigError("--ood-data needs --model (the model's out-of-distribution detector scores the images)")
    from dermkit.data import load_card
    from dermkit.methods.ood import BUNDLED, SYNTHETIC

    others = [s.strip() for s in ood_data.split(",") if s.strip()]
    if not others:
        raise ConfigError("--ood-data: name at least one dataset, 'synthetic' or 'bundled'")
    for spec in others:
        if spec not in (SYNTHETIC, BUNDLED):
            load_card(spec.partition(":")[0])
    return others


def _excluded_rows(preds, card):
    """Which predictions are of images in the card's exclusion list, and a note naming the list: the
    report shows its metrics on the rows left (the cleaned split) beside the full split."""
    excluded = card.is_excluded(preds["image"])
    if not excluded.any():
        return None, ""
    return excluded, (f"{int(excluded.sum())} of {len(preds)} predicted images are in the exclusion list "
                      f"{card.exclude_csv} of dataset {card.name}")


def predict(
    images: list[Path] = typer.Argument(..., help="Image files (JPEG/PNG/..., or DICOM: .dcm or the DICM marker)."),
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
    out_csv: Optional[Path] = typer.Option(None, "--out", help="Also write FILE.csv: one row per image with image, "
                                       "prob:<class> for every class, prediction, ood_score, in_domain, quality."),
) -> None:
    """Top-k classes with probabilities for each image, and whether to trust them.

    Every image also gets an image-quality check (blank, over/under-exposed, blurry, tiny: the
    measured value and the limit it broke) and, when the model folder has an out-of-distribution
    detector (fitted by `dermkit run`, or `dermkit ood fit`), its OOD score (higher = further from
    the training data) and in_domain yes/no. With --explain, where the model looked.
    """
    from dermkit.api import load_predictor
    from dermkit.data.images import command_line_path
    from dermkit.evaluate.predictions import predictions_frame
    from dermkit.methods.ood import TRUST_KEYS, assess, trust_fields, trust_text

    images = [command_line_path(p) for p in images]  # errors name the file as given, not a CSV row
    predictor = load_predictor(model)
    _set_tta(predictor, tta)
    if clinical or meta:
        if not hasattr(predictor, "set_extra_inputs"):
            raise ConfigError("--clinical/--meta need a multi-modal (fusion) model")
        pairs = {}
        for item in meta or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--meta {item!r}: write KEY=VALUE, e.g. --meta age=55")
            pairs[key.strip()] = value.strip()
        predictor.set_extra_inputs(clinical=clinical or None, meta=pairs or None)
    if out_csv is not None and out_csv.suffix.lower() != ".csv":
        raise ConfigError(f"--out {out_csv}: give a .csv file name (one row per image)")
    proba = predictor.predict_paths(images)
    checks = assess(predictor, images, proba=proba)
    results = []
    for path, p, check in zip(images, proba, checks):
        order = p.argsort()[::-1][:top_k]
        results.append({"image": str(path), "top": [{"class": predictor.classes[i],
                                                     "probability": round(float(p[i]), 6)} for i in order],
                        **trust_fields(check)})
    if explain is not None:
        from dermkit.data.images import open_image
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
    if out_csv is not None:
        from dermkit import io

        table = predictions_frame([str(p) for p in images], proba, predictor.classes)
        table = table[["image", *(f"prob:{c}" for c in predictor.classes), "prediction"]]
        for key in ("ood_score", "in_domain", "quality"):
            table[key] = [r[key] for r in results]
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        io.write_csv(out_csv, table)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        table = Table("class", "probability", title=r["image"])
        for t in r["top"]:
            table.add_row(t["class"], f"{t['probability']:.3f}")
        console.print(table)
        console.print(f"  {escape(trust_text(r))}", soft_wrap=True)
        for key, value in r.items():
            if key not in ("image", "top", *TRUST_KEYS):
                console.print(f"  {key}: {value}")
    if out_csv is not None:
        console.print(f"predictions: {out_csv}")


def _set_tta(predictor, tta: Optional[str]) -> None:
    if tta is None:
        return

    if not hasattr(predictor, "set_tta"):
        raise ConfigError(f"--tta: a {predictor.method} model has no test-time augmentation (supervised models do)")
    predictor.set_tta(tta)


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

    Two multi-seed runs (made with --seeds): seed i of A against seed i of B, the mean difference
    with a bootstrap over seeds and cases and a paired t-test over seeds, and whether the difference
    is smaller than the spread across seeds (see comparison.md).
    """
    from dermkit.evaluate.compare import compare_predictions, predictions_path, save_comparison
    from dermkit.evaluate.tables import format_ci, format_metric
    from dermkit.seeds import is_seed_run

    if is_seed_run(a) or is_seed_run(b):
        return _compare_seeds(a, b, out, n_bootstrap, seed, allow_duplicates)
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


def _compare_seeds(a: Path, b: Path, out: Path, n_bootstrap: int, seed: int, allow_duplicates: bool) -> None:
    """`dermkit compare` of two multi-seed runs: comparison.md/.json/.csv and a table on screen."""
    from dermkit.evaluate.seed_compare import save_seed_comparison, verdict
    from dermkit.evaluate.tables import format_ci, format_metric, format_p
    from dermkit.seeds import compare_seed_folders

    result = compare_seed_folders(a, b, n_bootstrap=n_bootstrap, seed=seed, names=(str(a), str(b)),
                                  allow_duplicates=allow_duplicates)
    folder = save_seed_comparison(result, out)
    table = Table("metric", "A mean ± sd", "B mean ± sd", "B - A", "95% CI (seeds x cases)", "p", "p (t, seeds)",
                  "seed sd", title=f"B = {b} vs A = {a} ({result['n_seed_pairs']} seed pairs, {result['n']} cases)")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        r = result["metrics"][key]
        table.add_row(key, f"{format_metric(r['a_mean'])} ± {format_metric(r['a_sd'])}",
                      f"{format_metric(r['b_mean'])} ± {format_metric(r['b_sd'])}", format_metric(r["difference"]),
                      format_ci(r["hierarchical"]["ci"], 4, "[{low}, {high}]"), format_p(r["hierarchical"]["p"]),
                      format_p(r["seed_t"]["p"]), format_metric(r["seed_spread"]))
    console.print(table)
    for key in ("balanced_accuracy", "macro_auc"):
        console.print(escape(verdict(result, key)))
    console.print(f"comparison: {folder}/comparison.md")
