"""dermkit vqa: generative VLMs as closed-ended VQA classifiers (questions, runs, LoRA, honest scoring)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from dermkit import io
from dermkit.commands.common import console
from dermkit.errors import ConfigError

vqa_app = typer.Typer(help="Generative VLMs as closed-ended VQA classifiers: questions, answers from a local "
                           "model (free text or option probabilities), LoRA fine-tuning, honest answer scoring.",
                      no_args_is_help=True)


def register(app: typer.Typer, groups: dict) -> None:
    app.add_typer(vqa_app, name="vqa")


@vqa_app.command("questions")
def vqa_questions(
    data: str = typer.Option(..., help="Dataset name or folder."),
    out: Path = typer.Option(..., help="Question file to write (JSONL: question_id, image, text, answer)."),
    split: str = typer.Option("test", help="Split to ask about."),
    options: str = typer.Option("codes", help="codes (akiec, bcc, ...) | names (readable class names)."),
    template: str = typer.Option("What is the lesion type? Choose one of: {options}.",
                                 help="Question text; {options} is replaced by the list of classes."),
) -> None:
    """Closed-ended questions in LLaVA-Med's format, one per image; images relative to the dataset folder."""
    from dermkit.api import load_dataset
    from dermkit.data.vqa import write_questions

    card = load_dataset(data)
    path = write_questions(card, split, out, options=options, template=template)
    console.print(f"wrote {len(card.rows(split))} questions to {path} (images relative to {card.root})")


@vqa_app.command("score")
def vqa_score(
    questions: Path = typer.Option(..., help="The questions file (from `dermkit vqa questions`)."),
    answers: Path = typer.Option(..., help="Answers: LLaVA-Med answer JSONL (question_id, text, ...) or CSV "
                                           "question_id,text."),
    data: str = typer.Option(..., help="The dataset the questions come from (its classes, names and synonyms)."),
    out: Path = typer.Option(..., help="Folder: answers_table.csv (raw -> parsed -> why), vqa.json, the report."),
    aliases: Optional[Path] = typer.Option(None, help="YAML {class: [more aliases]} added to the packaged ones."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
) -> None:
    """Parse free-text answers to classes (synonyms, plurals, abbreviations, negations) and evaluate them.

    No answer is dropped: missing (no line for the question), ambiguous (two classes) and invalid
    (no class) answers count as wrong, and the coverage is reported. An empty answers file, a
    question answered twice or an answer longer than 65,536 characters is refused. Answers carry
    no probabilities, so AUC comes from hard
    (one-hot) predictions; the report says so.
    """
    from dermkit.api import load_dataset
    from dermkit.data.vqa import score_answers
    from dermkit.evaluate import evaluate

    card = load_dataset(data)
    table, frame = score_answers(card, questions, answers, aliases)
    hard = frame.attrs.get("hard", True)
    report = evaluate(frame, n_bootstrap=n_bootstrap, title=f"VQA answers {answers.name} on {card.name}"
                      + (" (AUC from hard predictions)" if hard else " (option-likelihood probabilities)"))
    if hard:
        report.warnings.insert(0, "answers carry no probabilities: AUC and calibration come from hard (one-hot) "
                                  "predictions; missing, ambiguous and invalid answers count as wrong")
    report.save(out)
    counts = table["status"].value_counts().to_dict()
    summary = {"n": int(len(table)), "coverage": float((table["status"] == "ok").mean()),
               "status": {k: int(v) for k, v in counts.items()},
               "accuracy": float(table["correct"].mean()), "balanced_accuracy": report.metrics["balanced_accuracy"],
               "macro_f1": report.metrics["macro_f1"], "macro_auc_from_hard_predictions": report.metrics["macro_auc"],
               "answers": str(answers), "questions": str(questions)}
    io.write_csv(out / "answers_table.csv", table)
    io.write_json(out / "vqa.json", summary)
    console.print(f"{summary['n']} questions, coverage {summary['coverage']:.1%} ({summary['status']}); accuracy "
                  f"{summary['accuracy']:.4f}, balanced accuracy {summary['balanced_accuracy']:.4f} "
                  "(unparsed answers count as wrong)")
    console.print(f"report: {out}/report.html, rows: {out}/answers_table.csv")


@vqa_app.command("run")
def vqa_run(
    model: Path = typer.Option(..., help="A transformers image-text-to-text model folder (llava-hf layout: "
                                         "config.json, model.safetensors, processor files)."),
    questions: Path = typer.Option(..., help="The questions file (from `dermkit vqa questions`)."),
    data: str = typer.Option(..., help="The dataset the questions come from (images are relative to it)."),
    out: Path = typer.Option(..., help="Answers JSONL (appended; answered question ids are skipped on a rerun)."),
    mode: str = typer.Option("generate", help="generate (greedy free text) | options (each option scored by its "
                                              "length-normalised log-likelihood -> class probabilities)."),
    options: str = typer.Option("codes", help="Options mode: codes | names (as in the questions)."),
    max_new_tokens: int = typer.Option(32, min=1, help="Generate mode: new tokens per answer."),
    adapter: Optional[Path] = typer.Option(None, help="A LoRA adapter to apply: RUN/adapter of `dermkit vqa lora` "
                                                      "(or any peft folder with adapter_model.safetensors)."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
) -> None:
    """Answer closed-ended questions with a generative VLM (resumable); score them with `dermkit vqa score`."""
    from dermkit.api import load_dataset
    from dermkit.data.vqa import option_labels, read_questions
    from dermkit.models.generative import answer_questions, load_generative

    if mode not in ("generate", "options") or options not in ("codes", "names"):
        raise ConfigError("--mode must be generate or options, --options codes or names")
    card = load_dataset(data)
    qs = read_questions(questions)
    io.output_file(out, "--out (the answers file)")  # a folder or a path under a file: refused before loading
    net, processor = load_generative(model, device=device, adapter=adapter)
    labels = option_labels(card, options)
    started = time.perf_counter()
    model_id = Path(model).name + (f"+{Path(adapter).name}" if adapter else "")
    counts = answer_questions(net, processor, qs, card.root, out, mode=mode, options=labels, classes=card.classes,
                              max_new_tokens=max_new_tokens, model_id=model_id)
    console.print(f"answered {counts['answered']} (skipped {counts['skipped']} already answered) in "
                  f"{time.perf_counter() - started:.1f} s -> {out}")


@vqa_app.command("lora")
def vqa_lora(
    model: Path = typer.Option(..., help="A transformers image-text-to-text model folder (llava-hf layout)."),
    data: str = typer.Option(..., help="Dataset name or folder: trains on its train split, selects on val."),
    out: Path = typer.Option(..., help="Run folder: instructions_*.jsonl, checkpoints/, model/, adapter/, eval/."),
    options: str = typer.Option("codes", help="Answers as codes (akiec, ...) or names (readable class names)."),
    template: str = typer.Option("What is the lesion type? Choose one of: {options}.",
                                 help="Question text; {options} is replaced by the list of classes."),
    epochs: int = typer.Option(3, min=1, help="Training epochs."),
    lr: float = typer.Option(2e-4, help="Peak learning rate of the adapter (AdamW, warm-up + cosine)."),
    batch_size: int = typer.Option(4, min=1, help="Question-answer pairs per step."),
    grad_accum: int = typer.Option(1, min=1, help="Steps accumulated per optimizer step."),
    rank: int = typer.Option(8, min=1, help="LoRA rank."),
    alpha: float = typer.Option(16.0, help="LoRA alpha (the update is scaled by alpha / rank)."),
    targets: str = typer.Option(",".join(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj")),
                                help="Language-model linear layers that get adapters (comma-separated)."),
    tune_projector: bool = typer.Option(False, "--tune-projector", help="Also train the multimodal projector."),
    tune_vision: bool = typer.Option(False, "--tune-vision", help="Also train the vision tower (memory!)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 (autocast)."),
    n_bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the test report's 95% CIs."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite a run already in --out."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change", help="With --resume: continue even though "
                                             "the config differs from the one the run was trained under (refused "
                                             "otherwise, naming the keys); the changes are recorded in summary.json "
                                             "and model.json."),
) -> None:
    """LoRA fine-tuning of a generative VLM on a dataset's closed-ended questions (method: vqa, lora: true).

    Writes the instruction JSONL (question -> answer) from the card, trains peft adapters on the
    language model in the one engine (checkpoints, exact --resume, history.csv), selects the epoch
    by val answer loss, saves the adapter as safetensors (RUN/adapter) and reports option-likelihood
    probabilities on the test split. Use the adapter with `dermkit vqa run --adapter RUN/adapter`.
    """
    from dermkit.experiment import run_experiment
    from dermkit.models.generative import memory_estimate

    layers = [t.strip() for t in targets.split(",") if t.strip()]
    estimate = memory_estimate(model, dtype_bytes=4 if device in ("cpu",) or precision == "fp32" else 2,
                               lora_rank=rank, targets=layers)
    console.print(_estimate_text(estimate))
    config = {"method": "vqa", "name": out.name, "model": str(model), "data": data, "options": options,
              "template": template, "lora": True, "lora_rank": rank, "lora_alpha": alpha, "lora_targets": layers,
              "tune_projector": tune_projector, "tune_vision": tune_vision, "batch_size": batch_size,
              "epochs": epochs, "lr": lr, "grad_accum": grad_accum, "device": device, "precision": precision,
              "n_bootstrap": n_bootstrap}
    summary = run_experiment(config, out, resume=resume, force=force, allow_config_change=allow_config_change)
    test = summary.get("test") or {}
    console.print(f"adapter: {summary.get('adapter')} ({summary.get('trainable_parameters')} trainable parameters); "
                  f"test balanced accuracy {test.get('balanced_accuracy', float('nan')):.4f}, macro-AUC "
                  f"{test.get('macro_auc', float('nan')):.4f} (option probabilities); report: {summary.get('report')}")


@vqa_app.command("estimate")
def vqa_estimate(
    model: Path = typer.Option(..., help="A transformers model folder; only its config.json is read."),
    dtype_bytes: int = typer.Option(2, min=1, max=4, help="Bytes per weight: 2 (bf16/fp16), 4 (fp32)."),
    rank: int = typer.Option(8, min=1, help="LoRA rank for the training estimate."),
) -> None:
    """Memory a model needs for `vqa run` and `vqa lora`, from its config alone (nothing is loaded)."""
    from dermkit.models.generative import memory_estimate

    console.print(_estimate_text(memory_estimate(model, dtype_bytes=dtype_bytes, lora_rank=rank)))


def _estimate_text(e: dict) -> str:
    text = (f"model: {e['parameters'] / 1e9:.2f} B parameters, weights {e['weights_gib']:.2f} GiB at "
            f"{e['dtype_bytes']} bytes each")
    if "lora_parameters" in e:
        text += (f"; LoRA: {e['lora_parameters'] / 1e6:.2f} M adapter parameters, about "
                 f"{e['lora_training_gib']:.2f} GiB for weights + adapter + its gradients and AdamW state "
                 "(activations extra; they grow with batch size)")
    return text
