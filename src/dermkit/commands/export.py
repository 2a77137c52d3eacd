"""dermkit export: a model folder as one ONNX graph or as a Hugging Face Hub folder (see
:mod:`dermkit.methods.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dermkit.commands.common import console


def register(app: typer.Typer, groups: dict) -> None:
    app.command("export")(export_cmd)


def export_cmd(
    model: Path = typer.Option(..., help="Model folder (RUN/model from `dermkit run`/`train`)."),
    format: str = typer.Option(..., "--format", help="onnx: the whole predictor (pixels -> probabilities) as one "
                               "ONNX graph with its preprocessing, classes and fingerprint in the metadata; hf: a "
                               "Hugging Face Hub folder (safetensors, config.json, model.json, README.md model "
                               "card)."),
    out: Path = typer.Option(..., help="onnx: the .onnx file to write; hf: the folder to write."),
    run: Optional[Path] = typer.Option(None, help="hf: the run folder whose summary.json holds the test metrics "
                                                  "(default: the model folder's parent, when it holds one)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Export a model for other tools: ONNX Runtime (--format onnx) or the Hugging Face Hub (--format hf).

    onnx: supervised, zeroshot, linear_probe, contrastive and prompt_learning models (test-time views
    and recalibration included). Before the file is written, plain ONNX Runtime runs it on sample
    images preprocessed from the file's own metadata, and its probabilities must equal the model's
    within 1e-4. hf: the model folder (reloads with dermkit.api.load_predictor to the same outputs,
    checked) plus config.json and a README.md model card: licence of the training data, test metrics
    with 95% CIs from the run's summary.json in the model-index, intended use, limitations, not a
    medical device, the training data's datasheet. Nothing is written when the export is refused.
    """
    from dermkit.methods.export import export_model

    result = export_model(model, format, out, run=run, force=force)
    console.print(f"wrote {result['path']} ({result['format']}, method {result['method']}, "
                  f"{len(result['classes'])} classes, fingerprint {result['fingerprint']})", highlight=False,
                  soft_wrap=True)
    if result["format"] == "onnx":
        console.print(f"checked under ONNX Runtime on {result['samples']} sample images preprocessed from the "
                      f"file's metadata: max |difference| to the model's probabilities {result['max_abs_diff']:.1e}",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"reloaded with load_predictor: max |difference| {result['max_abs_diff']:.1e}; model card "
                      + (f"metrics from {result['summary']}" if result["metrics"] else
                         "says no test metrics are recorded"), highlight=False, soft_wrap=True)
