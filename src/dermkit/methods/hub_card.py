"""The README.md model card of a Hugging Face folder written by ``dermkit export --format hf``.

:func:`hub_readme` renders it from what dermkit knows about the model, nothing else: YAML front
matter (licence, datasets, tags, library, and a ``model-index`` whose metrics are the test metrics
and 95% CIs of the run's summary.json, each CI as ``args`` of its metric), then the sections a
reader of a medical-imaging model card looks for: description, intended use, limitations, not a
medical device, training data (with the datasheet of the training data where dermkit could compute
it), evaluation (the CI table) and how to load it. Without a summary the card says that no test
metrics are recorded; no number is ever made up.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import yaml

from dermkit.evaluate.metrics import is_undefined
from dermkit.evaluate.tables import format_ci, format_metric, markdown_table

__all__ = ["hub_readme", "hub_license", "METRIC_NAMES", "TAGS"]

TAGS = ("dermatology", "skin-lesion", "image-classification", "dermkit")
METRIC_NAMES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1",
                "macro_auc": "Macro AUROC (one-vs-rest)"}
# Licence texts of dataset cards ("CC BY-NC 4.0 (non-commercial); cite ...") -> Hub licence ids.
_CC = re.compile(r"^\s*CC[ -]?(BY(?:-NC)?(?:-SA|-ND)?)\s+(\d\.\d)\b", re.IGNORECASE)
_CC0 = re.compile(r"^\s*CC[ -]?0\b", re.IGNORECASE)


def hub_license(text: str | None) -> str:
    """The Hub licence id of a dataset card's licence text: ``cc-by-nc-4.0`` for "CC BY-NC 4.0 ...",
    ``cc0-1.0`` for "CC0 ..."; ``other`` when the text names no single Creative Commons licence
    (the card's Training data section then quotes the text)."""
    if not text:
        return "other"
    match = _CC.match(text)
    if match:
        return f"cc-{match.group(1).lower()}-{match.group(2)}"
    return "cc0-1.0" if _CC0.match(text) else "other"


def _metric_entries(test: Mapping | None, test_ci: Mapping | None) -> list[dict[str, Any]]:
    out = []
    for key, value in (test or {}).items():
        if is_undefined(value):
            continue
        entry: dict[str, Any] = {"type": key, "name": METRIC_NAMES.get(key, key.replace("_", " ")),
                                 "value": float(value)}
        ci = (test_ci or {}).get(key) or {}
        if not is_undefined(ci.get("low")) and not is_undefined(ci.get("high")):
            level = ci.get("level", 0.95)
            entry["name"] += f" ({100 * float(level):g}% CI {float(ci['low']):.4f} to {float(ci['high']):.4f})"
            entry["args"] = {"ci_low": float(ci["low"]), "ci_high": float(ci["high"]), "ci_level": float(level)}
        out.append(entry)
    return out


def _results(summary: Mapping | None) -> list[tuple[str, Mapping, Mapping]]:
    """(dataset, test metrics, test CIs) of the run's own test split and of each transfer test."""
    if not summary or not summary.get("test"):
        return []
    rows = [(str(summary.get("dataset") or "test data"), summary.get("test"), summary.get("test_ci"))]
    rows += [(str(t.get("eval_dataset")), t.get("test"), t.get("test_ci")) for t in summary.get("transfer") or []
             if t.get("test")]
    return rows


def front_matter(name: str, license_id: str, datasets: Sequence[str], method: str,
                 summary: Mapping | None, task: str | None, base_model: str | None = None) -> dict[str, Any]:
    """The YAML metadata block of the card (a dict; :func:`hub_readme` dumps it)."""
    meta: dict[str, Any] = {"license": license_id, "library_name": "dermkit", "pipeline_tag": "image-classification",
                            "tags": [*TAGS, method.replace("_", "-")], "datasets": list(datasets)}
    if base_model:
        meta["base_model"] = base_model
    results = []
    for dataset, test, test_ci in _results(summary):
        metrics = _metric_entries(test, test_ci)
        if metrics:
            label = f"{dataset} (test split" + (f", task {task})" if task and task != "all" else ")")
            results.append({"task": {"type": "image-classification", "name": "Image classification"},
                            "dataset": {"name": label, "type": dataset, "split": "test"}, "metrics": metrics})
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return meta


def _eval_section(summary: Mapping | None, summary_source: str | None) -> str:
    rows = _results(summary)
    if not rows:
        why = ("this model folder has no run summary (summary.json) beside it and none was given with --run"
               if summary is None else f"the run summary {summary_source} holds no test metrics")
        return (f"No test metrics are recorded for this model: {why}. Evaluate it on a test split you trust with "
                "`dermkit evaluate --model . --data DATASET --out REPORT` before relying on it.\n")
    lines = [f"Test metrics of the run (`{summary_source}`), with 95% bootstrap confidence intervals (resampled by "
             "patient or lesion where the dataset records one):\n"]
    for dataset, test, test_ci in rows:
        table = [[METRIC_NAMES.get(k, k), format_metric(v), format_ci((test_ci or {}).get(k))]
                 for k, v in (test or {}).items()]
        lines.append(f"**{dataset}**, test split\n\n" + markdown_table(["Metric", "Value", "95% CI"], table) + "\n")
    return "\n".join(lines)


def _demote(markdown: str) -> str:
    """The datasheet's headings two levels down, so they nest under "Training data"."""
    return re.sub(r"^(#+) ", lambda m: "#" * min(6, len(m.group(1)) + 2) + " ", markdown, flags=re.MULTILINE)


def hub_readme(*, name: str, model_card: Mapping, method_description: str, fingerprint: str, license_id: str,
               license_text: str | None, datasets: Sequence[str], summary: Mapping | None,
               summary_source: str | None, datasheet: str | None, datasheet_note: str, preprocess: str | None,
               base_model: str | None, version: str, has_ood: bool) -> str:
    """The whole README.md (front matter + sections); ``datasheet`` is the training data's datasheet
    in Markdown or None (``datasheet_note`` then says why)."""
    method = str(model_card.get("method") or "supervised")
    classes = list(model_card.get("classes") or [])
    task = model_card.get("task")
    meta = front_matter(name, license_id, datasets, method, summary, task, base_model)
    head = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"
    data = ", ".join(datasets) or "the dataset recorded in model.json"
    base = model_card.get("base_model")
    parts = [
        f"# {name}\n",
        "## Model description\n",
        f"A skin-lesion image classifier made with dermkit {version}: method "
        f"`{method}` ({method_description}), model `{model_card.get('model') or method}`"
        + (f" on the frozen base model `{'this folder' if base == '.' else base}`" if base else "") + ".\n",
        f"- Classes ({len(classes)}): " + ", ".join(f"`{c}`" for c in classes) + "\n"
        + (f"- Task: `{task}`\n" if task and task != "all" else "")
        + f"- Preprocessing: {preprocess or 'see model.json'}\n"
        + f"- Model fingerprint: `{fingerprint}` (the same in `dermkit export --format onnx` of this model)\n"
        + ("- Test-time augmentation: `" + str(model_card.get("tta")) + "`\n"
           if model_card.get("tta") not in (None, "none") else "")
        + ("- Recalibrated after training (temperature and/or class offsets in model.json)\n"
           if model_card.get("temperature") is not None or model_card.get("class_offsets") is not None else ""),
        "## Intended use\n",
        "Research on automated classification of skin-lesion images of the kind it was trained on ("
        f"{data}): benchmarking, error analysis, and as a baseline for further work. Its outputs are class "
        "probabilities for the classes above, nothing else.\n",
        "## Limitations\n",
        "- It knows only the classes above: every image gets a probability for each of them, whatever it shows.\n"
        "- Its test metrics come from the test split of its training dataset; performance on other devices, clinics, "
        "populations and skin types is unknown until measured (see the datasheet below for who is in the data).\n"
        "- Dataset labels carry their own errors (the datasheet states how diagnoses were made).\n"
        + ("- An out-of-distribution detector (ood.json) flags images unlike the training data when loaded with "
           "dermkit; it is not perfect either.\n" if has_ood else ""),
        "## Not a medical device\n",
        "**This model is not a medical device.** It has not been cleared or approved by any regulator, has not "
        "been validated prospectively, and must not be used to diagnose, treat, triage or rule out any "
        "condition, or to replace the judgement of a qualified clinician. Anyone concerned about a skin lesion "
        "should see a doctor.\n",
        "## Training data\n",
        f"Trained on **{data}**. Licence of the data: {license_text or 'not stated in the dataset card'}"
        + (f" (Hub licence id `{license_id}`)" if license_id != "other" else "")
        + ". The model's licence follows the data's terms.\n",
        _demote(datasheet) if datasheet else f"No datasheet: {datasheet_note}.\n",
        "## Evaluation\n",
        _eval_section(summary, summary_source),
        "## How to load\n",
        "The folder is a dermkit model folder (`model.json` + `model.safetensors`):\n\n"
        "```python\nimport dermkit\n\npredictor = dermkit.api.load_predictor(\"path/to/this/folder\")\n"
        "predictor.predict([\"lesion.jpg\"]).proba   # (N, C) probabilities, columns in predictor.classes\n```\n\n"
        "or `dermkit predict lesion.jpg --model path/to/this/folder`.\n",
    ]
    return head + "\n" + "\n".join(parts)
