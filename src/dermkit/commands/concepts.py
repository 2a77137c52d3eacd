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
