"""dermkit ood: out-of-distribution detectors of model folders (see :mod:`dermkit.methods.ood`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from dermkit.commands.common import console


def register(app: typer.Typer, groups: dict) -> None:
    groups["ood"].command("fit")(ood_fit)


def ood_fit(
    model: Path = typer.Option(..., help="Model folder of any classifying method (RUN/model)."),
    data: str = typer.Option(..., help="The dataset the model was trained on: its train split fits the detector, "
                                       "its val split sets the threshold."),
    acceptance: float = typer.Option(0.95, min=0.5, max=1.0, help="Share of the val split accepted as "
                                                                     "in-distribution (the threshold)."),
    seed: int = typer.Option(0, help="Seed of the k-NN bank subsample and the synthetic outliers."),
) -> None:
    """Fit an out-of-distribution detector into an existing model folder (ood.safetensors + ood.json).

    Mahalanobis and k-NN distances on the image tower's features of the train split, the maximum
    softmax probability; the default score is the one that best separates the val split from
    synthetic non-skin images, its threshold accepts --acceptance of the val split. `dermkit predict`,
    `dermkit serve` and `dermkit evaluate --ood-data` use it from then on.
    """
    from dermkit.api import load_dataset, load_predictor
    from dermkit.methods.ood import fit_detector

    predictor = load_predictor(model)
    detector = fit_detector(predictor, load_dataset(data), out=model, acceptance=acceptance, seed=seed)
    aurocs = ", ".join(f"{name} {value:.3f}" for name, value in detector.val_auroc.items())
    console.print(f"val vs synthetic non-skin images, AUROC: {aurocs}")
    console.print(escape(detector.describe()), soft_wrap=True)
    console.print(f"detector: {Path(model) / 'ood.json'}")
