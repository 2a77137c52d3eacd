"""dermkit concepts: concept bottlenecks (method: cbm): interventions, concept galleries and validity, and
datasets with a shortcut built on purpose."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from dermkit.commands.common import console
from dermkit.errors import ConfigError


def register(app: typer.Typer, groups: dict) -> None:
    groups["concepts"].command("intervene")(concepts_intervene)
    groups["concepts"].command("show")(concepts_show)
    groups["concepts"].command("bias-data")(concepts_bias_data)
    groups["concepts"].command("sweep")(concepts_sweep)
    groups["concepts"].command("bias-experiment")(concepts_bias_experiment)
    groups["concepts"].command("learn")(concepts_learn)


def _list(option: str, text: str, kind):
    """``"8,16,32"`` -> ``[8, 16, 32]``; ConfigError naming the option for a value that does not parse."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"--{option} must be a comma-separated list of {kind.__name__} values, "
                          f"got {text!r}") from None


def _cbm(model: Path):
    from dermkit.api import load_predictor

    predictor = load_predictor(model)
    if getattr(predictor, "method", None) != "cbm":
        raise ConfigError(f"{model} is a `{getattr(predictor, 'method', '?')}` model; concepts need a concept "
                          "bottleneck (a `method: cbm` run's model folder)")
    return predictor


def concepts_intervene(
    model: Path = typer.Option(..., help="Model folder of a `method: cbm` run."),
    data: str = typer.Option(..., help="Dataset name or folder (relabelled for the model's task)."),
    zero: str = typer.Option(..., help="Concepts to switch off, separated by commas: latent ids, concept names of "
                                       "the model, or text queries matched to its nearest concept (e.g. 'ink,ruler')."),
    out: Path = typer.Option(..., help="Folder: before/ and after/ reports, intervention.json."),
    split: str = typer.Option("test", help="Split to evaluate."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
    per_query: int = typer.Option(1, min=1, help="Concepts zeroed per text query (its nearest ones)."),
    min_similarity: float = typer.Option(0.15, min=-1.0, max=1.0,
                                         help="A text query matches only concepts at least this similar (cosine); "
                                              "none that close is an error, not a guess."),
    ablation: str = typer.Option("zero", help="How a concept is switched off: zero (its activation set to 0, "
                                              "PanDerm-2's) or mean (set to its training mean: its contribution is "
                                              "0 for every image, so the decision threshold still fits; the same "
                                              "AUROC)."),
) -> None:
    """Zero the activations of some concepts (e.g. artefacts) and report the metrics before and after."""
    from dermkit.api import load_dataset
    from dermkit.methods.cbm import ABLATIONS, intervene

    if ablation not in ABLATIONS:
        raise ConfigError(f"--ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    predictor = _cbm(model)
    result = intervene(predictor, load_dataset(data), zero.split(","), out, split=split, n_bootstrap=n_bootstrap,
                       per_query=per_query, min_similarity=min_similarity, ablation=ablation)
    for z in result["zeroed"]:
        console.print(f"zeroed latent {z['latent']} ({predictor.concept_name(z['latent'])}; "
                      f"{_sureness(predictor, z['latent'])}) for {z['item']!r} [{z['how']}]")
    table = Table("metric", "before", "after", title=f"intervention on {data} ({split})")
    for key in result["before"]:
        b, a = result["before"][key], result["after"][key]
        table.add_row(key, "n/a" if b is None else f"{b:.4f}", "n/a" if a is None else f"{a:.4f}")
    console.print(table)
    console.print(f"reports: {out}/before, {out}/after")


def _num(value, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if value != value else f"{value:.{digits}f}"


def _sureness(predictor, latent: int) -> str:
    """"text similarity 0.213, margin 0.018" for one of the model's concepts (n/a where unnamed)."""
    for c in predictor.concepts:
        if int(c["latent"]) == int(latent):
            text = f"text similarity {_num(c.get('similarity'))}, margin {_num(c.get('margin'))}"
            if not c.get("name") and c.get("candidate"):
                text += f", closest name {c['candidate']!r} not kept"
            return text
    return "not a concept of the model"


def concepts_show(
    model: Path = typer.Option(..., help="Model folder of a `method: cbm` run."),
    data: str = typer.Option(..., help="Dataset name or folder whose images fill the gallery."),
    out: Path = typer.Option(..., help="Folder: concepts.html (gallery), validity.csv, validity_matrix.csv, "
                                       "best_latents.csv."),
    split: str = typer.Option("test", help="Split whose images are shown and on which validity is reported."),
    select_split: str = typer.Option("val", help="Split on which the best latent per annotation is chosen."),
    top: int = typer.Option(8, min=1, help="Top-activating images per concept."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the validity CIs."),
) -> None:
    """An HTML gallery of the model's concepts (top-activating images, name, margin, weight), sorted by
    validity, and, where the dataset annotates concepts (Derm7pt, PH2, or `concept_annotations:` in its
    card), every concept's AUROC against every annotation: each named concept against its own name's
    annotation, and per annotation the best latent (chosen on --select-split, reported on --split)."""
    from dermkit.api import load_dataset
    from dermkit.evaluate.concepts import BEST_LATENT_NOTE
    from dermkit.methods.cbm import concept_gallery, order_by_validity

    predictor = _cbm(model)
    if split == select_split:
        raise ConfigError(f"--select-split must differ from --split ({split}): the best latent per annotation "
                          "chosen and reported on one split is optimistic")
    result = concept_gallery(predictor, load_dataset(data), out, split=split, top=top, n_bootstrap=n_bootstrap,
                             select_split=select_split)
    validity = {int(r["latent"]): r for r in result["validity"].to_dict("records")}
    table = Table("latent", "concept", "similarity", "margin", "weight", f"AUROC ({split}) [95% CI]", "annotation",
                  title=f"concepts of {predictor.name}, sorted by validity")
    for c in order_by_validity(predictor, result["validity"]):
        v = validity.get(int(c["latent"]), {})
        auroc = (f"{_num(v.get('auroc'))} [{_num(v.get('low'))}, {_num(v.get('high'))}]"
                 if v.get("auroc") is not None and v.get("auroc") == v.get("auroc") else v.get("note", ""))
        name = predictor.concept_name(int(c["latent"]))
        if not c.get("name") and c.get("candidate"):
            name += f" (closest: {c['candidate']})"
        table.add_row(str(c["latent"]), name, _num(c.get("similarity")), _num(c.get("margin")),
                      _num(c.get("weight")), auroc, str(v.get("column") or ""))
    console.print(table)
    if result["best"] is not None:
        best = Table("annotation", "best latent", f"AUROC ({select_split})", f"AUROC ({split}) [95% CI]",
                     "name matches", title="best latent per annotation")
        for r in result["best"].to_dict("records"):
            best.add_row(r["annotation"], str(r["concept"] or ""), _num(r.get(f"{select_split}_auroc")),
                         f"{_num(r.get('auroc'))} [{_num(r.get('low'))}, {_num(r.get('high'))}]"
                         if r.get("auroc") is not None and r.get("auroc") == r.get("auroc") else r["note"],
                         "" if r["name_matches"] is None else ("yes" if r["name_matches"] else "no"))
        console.print(best)
        console.print(f"note: {BEST_LATENT_NOTE.format(select=select_split, split=split)}")
    else:
        console.print(f"{data} declares no concept annotations: no validity (add concept_annotations: to its card)")
    console.print(f"gallery: {result['page']}\nvalidity: {out / 'validity.csv'}")


def concepts_bias_data(
    data: str = typer.Option(..., help="Dataset name or folder (with an images/ folder and a positive class)."),
    out: Path = typer.Option(..., help="Folder for the two biased dataset folders (biased/, biased_test/)."),
    artefact: str = typer.Option("ink", help="ink (a purple ink mark) | ruler (a ruler bar along one edge) | hair "
                                             "(dark strands) | vignette (dark dermoscope corners) | bubbles (gel "
                                             "bubbles)."),
    fraction: float = typer.Option(0.8, help="Fraction of the positive train/val images (and of the negative "
                                             "test images in biased_test/) that get the artefact."),
    seed: int = typer.Option(0, help="Random seed of which images get it and where it is drawn."),
) -> None:
    """Build a shortcut on purpose: the artefact drawn on most melanomas of train/val (biased/, test clean)
    and on most non-melanomas of test (biased_test/). Only edited images are written; the rest link back."""
    from dermkit.data.artefacts import biased_copies

    biased, biased_test = biased_copies(data, out, kind=artefact, fraction=fraction, seed=seed)
    console.print(f"wrote {biased} and {biased_test}")


def concepts_sweep(
    model: str = typer.Option(..., help="Encoder spec or model folder whose (cached) embeddings the SAEs learn."),
    data: str = typer.Option(..., help="Datasets separated by commas: the SAEs train on all their train splits; the "
                                       "first one's val split measures every point and its labels fit the probe."),
    out: Path = typer.Option(..., help="Folder: sweep.csv, sweep.json, sweep.png."),
    activations: str = typer.Option("topk", help="topk and/or relu_l1, separated by commas."),
    k: str = typer.Option("8,16,32,64", help="TopK: active latents per image, separated by commas."),
    l1: str = typer.Option("3e-5,1e-4,3e-4,1e-3", help="ReLU + L1: L1 strengths, separated by commas."),
    expansions: str = typer.Option("4,8", help="Latents per embedding dimension, separated by commas."),
    epochs: int = typer.Option(50, help="Training epochs of every point."),
    seed: int = typer.Option(0, help="Seed of every point (initialisation and batch order)."),
    lr: float = typer.Option(5e-4, help="Adam learning rate."),
    batch_size: int = typer.Option(4096, help="SAE minibatch size."),
    max_l0: float = typer.Option(32.0, help="Recommendation: largest val mean L0 allowed."),
    max_dead: float = typer.Option(0.5, help="Recommendation: largest dead-latent share allowed."),
    device: str = typer.Option("auto", help="cpu, cuda or auto (encoder and SAE training)."),
    cache_dir: Path = typer.Option(None, help="Feature cache folder (default: the dermkit cache)."),
    num_workers: int = typer.Option(2, min=0, help="Image-loading workers for the embeddings."),
) -> None:
    """Train a grid of SAEs on cached embeddings and plot the L0 vs FVU frontier, the dead-latent
    share and a probe's accuracy from the codes; marks a recommended point (chosen on val)."""
    from dermkit.evaluate.sae_sweep import save_sweep
    from dermkit.methods.sae import sweep_embeddings
    from dermkit.models.sae_sweep import PROBE, RECOMMEND_RULE, SweepSettings, check_grid, run_sweep, sweep_grid

    points = sweep_grid(_list("activations", activations, str), _list("k", k, int), _list("l1", l1, float),
                        _list("expansions", expansions, int))
    settings = SweepSettings(epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, device=device, max_l0=max_l0,
                             max_dead=max_dead)
    settings.validate()  # bad options stop here, before any embedding is computed
    datasets = [d.strip() for d in data.split(",") if d.strip()]
    emb = sweep_embeddings(model, datasets, cache_dir=cache_dir, num_workers=num_workers, device=device)
    check_grid(points, emb["x_sae"].shape[1])
    table = run_sweep(points, emb["x_sae"], emb["x_val"], (emb["x_train"], emb["y_train"], emb["y_val"]),
                      emb["classes"], settings, progress=True)
    rule = RECOMMEND_RULE.format(max_l0=max_l0, max_dead=max_dead)
    meta = {"encoder": emb["encoder"], "encoder_fingerprint": emb["fingerprint"], "data": datasets,
            "probe_dataset": emb["dataset"], "n_sae_train": int(len(emb["x_sae"])), "n_val": int(len(emb["x_val"])),
            "d_in": int(emb["x_sae"].shape[1]), "extra_data": emb["extra_data"], "probe": PROBE,
            "recommendation_rule": rule, "frontier": "Pareto on (val mean L0, val FVU), both minimised"}
    paths = save_sweep(table, out, meta, title=f"SAE sweep on {emb['encoder']} ({', '.join(datasets)})")
    shown = table.copy()
    for col in ("train_fvu", "val_fvu", "dead_fraction", "probe_val_balanced_accuracy"):
        shown[col] = shown[col].map(lambda v: f"{v:.3f}")
    shown["val_mean_l0"] = shown["val_mean_l0"].map(lambda v: f"{v:.1f}")
    shown["mark"] = ["recommended" if r else ("frontier" if f else "") for r, f in zip(table["recommended"],
                                                                                      table["frontier"])]
    grid = Table("activation", "expansion", "k", "l1", "FVU train", "FVU val", "L0 val", "dead", "probe BACC val", "",
                 title=f"SAE sweep ({len(table)} points; probe: {PROBE})")
    for _, r in shown.iterrows():
        grid.add_row(r["activation"], str(r["expansion"]), "" if r["k"] is None or r["k"] != r["k"] else
                     str(int(r["k"])), "" if r["l1"] is None or r["l1"] != r["l1"] else f"{r['l1']:g}",
                     r["train_fvu"], r["val_fvu"], r["val_mean_l0"], r["dead_fraction"],
                     r["probe_val_balanced_accuracy"], r["mark"])
    console.print(grid)
    chosen = table[table["recommended"]]
    if len(chosen):
        c = chosen.iloc[0]
        knob = f"k: {int(c['k'])}" if c["activation"] == "topk" else f"l1: {c['l1']:g}"
        console.print(f"recommended ({rule}): activation: {c['activation']}, expansion: {int(c['expansion'])}, "
                      f"{knob} (val FVU {c['val_fvu']:.3f}, L0 {c['val_mean_l0']:.1f})")
    else:
        console.print(f"no point meets the rule ({rule}); widen the grid or relax --max-l0/--max-dead")
    console.print(f"sweep: {paths['csv']}, {paths['json']}, {paths['png']}")


def concepts_bias_experiment(
    config: Path = typer.Argument(..., help="The experiment's YAML (e.g. configs/concepts/bias_experiment.yaml): "
                                            "model, data, task, artefact, fraction, seed, sae:, cbm:, query, "
                                            "per_query, query_min_similarity, ink_auroc, ink_auroc_sensitivity, "
                                            "shortcut_share, severity, n_bootstrap."),
    out: Path = typer.Option(..., help="Folder: bias_experiment.md/.json, ink_latents.csv and the runs (data/, sae/, "
                                       "cbm_biased/, cbm_clean/)."),
    force: bool = typer.Option(False, "--force", help="Replace the runs already in --out."),
) -> None:
    """The concept-bias experiment from one config: a shortcut drawn on purpose (biased data), an SAE, a CBM
    trained on biased and one on clean data, interventions (the concepts nearest a text query; the concepts
    that separate inked copies from their clean originals on train/val), the share of the AUROC gap each
    recovers on the artefact test split, and, when none recovers half, which step failed."""
    from dermkit.bias_experiment import run_bias_experiment

    result = run_bias_experiment(config, out, force=force)
    table = Table("model", "AUROC", "BACC", "gap recovered", title="concept-bias experiment (artefact test split)")
    for r in result["rows"]:
        table.add_row(r["model"], "n/a" if r["auroc"] is None else f"{100 * r['auroc']:.1f}",
                      "n/a" if r["balanced_accuracy"] is None else f"{100 * r['balanced_accuracy']:.1f}",
                      "" if r.get("recovered") is None else f"{100 * r['recovered']:.0f}%")
    console.print(table)
    console.print(f"diagnosis: {result['diagnosis']}\nreport: {out / 'bias_experiment.md'}")


def concepts_learn(
    sae: Path = typer.Option(..., help="Model folder of a `method: sae` run: the concept is learned in its encoder's "
                                       "embedding space (the CBM that uses it names the same folder as `sae:`)."),
    data: str = typer.Option(..., help="Dataset name or folder with a column that marks the concept."),
    column: str = typer.Option(..., help="The column that marks the concept, e.g. blue_whitish_veil on Derm7pt."),
    name: str = typer.Option(..., help="The concept's name (what `concepts intervene --zero` and galleries call it)."),
    out: Path = typer.Option(..., help="Folder for the concept (concepts.safetensors + concepts.json); give it to a "
                                       "CBM config as `example_concepts:`."),
    positive: str = typer.Option(",".join(("1", "true", "yes", "present")),
                                 help="Column values that mean the concept is there, separated by commas "
                                      "(case-insensitive); other values mean it is not, empty cells are left out."),
    split: str = typer.Option("train", help="The split whose images define the concept."),
    num_workers: int = typer.Option(2, min=0, help="Image-loading workers for the embeddings."),
    cache_dir: Path = typer.Option(None, help="Feature cache folder (default: the dermkit cache)."),
) -> None:
    """Learn a concept from examples: the direction from the mean embedding of images without it to the mean of
    images with it (a concept activation vector, TCAV). A CBM with `example_concepts:` puts it in its
    bottleneck as a named concept, and takes its direction out of what the SAE sees, so switching it off
    removes it from the model."""
    from dermkit.methods.cbm import learn_concepts

    learned = learn_concepts(sae, data, column, name, out, positive=_list("positive", positive, str), split=split,
                             cache_dir=cache_dir, num_workers=num_workers)
    info = learned.info[0]
    console.print(f"learned {name!r} from {info['n_with']} images with it and {info['n_without']} without "
                  f"({info['source']}); separation AUROC {info['separation_auroc']:.3f} (in-sample)")
    console.print(f"wrote {out}; use it with `example_concepts: {out}` in a `method: cbm` config")
