"""``dermkit export``: a model folder as one ONNX graph, or as a folder for the Hugging Face Hub.

**onnx** (:func:`export_onnx`): the whole predictor, preprocessed pixels in, class probabilities
out (``pixels`` float32 ``(N, 3, H, W)`` -> ``probabilities`` float32 ``(N, C)``), including what the
predictor does after its network: softmax, the average over a supervised model's test-time views,
the temperature and class offsets of a recalibrated model. The network is the predictor's own
pixels-to-logits module (``Predictor.saliency_module()``, the module Grad-CAM differentiates), so
every method that has one exports: supervised, zeroshot, linear_probe, contrastive and
prompt_learning (on open_clip and timm image towers). The file's ``metadata_props`` carry what a
deployment needs without dermkit: the preprocessing as data (:mod:`dermkit.models.preprocess_spec`:
``image_size``, ``mean``, ``std``, ``resize`` in words and every step in ``preprocess``), ``classes``,
``fingerprint``, ``method``, ``dermkit_version``. Before anything is written the graph runs under
plain ONNX Runtime on sample images preprocessed from that metadata alone, and its probabilities
must equal the predictor's within 1e-4; otherwise the export is refused.

**hf** (:func:`export_hf`): a dermkit model folder that loads anywhere (``load_predictor`` gives the
same outputs; checked on the sample images before the folder appears), plus ``config.json`` (classes
as ``id2label``, preprocessing, fingerprint) and the model card ``README.md``
(:mod:`dermkit.methods.hub_card`) with the run's test metrics and CIs. A base model that is a local
open_clip folder is copied in (``base_model: "."``); any other local path in ``model.json`` would
not travel with the folder and is refused.

Both write atomically (a temporary file or ``OUT.partial`` folder swapped into place): a refused
or failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dermkit.data.card import load_card
from dermkit.data.card_schema import known_cards, packaged_spec
from dermkit.data.datasheet import datasheet, datasheet_markdown
from dermkit.data.images import open_image
from dermkit.data.outliers import probe_images, synthetic_outliers
from dermkit.data.torchdata import tta_views
from dermkit.errors import ConfigError, DermkitError, ModelError
from dermkit.io import atomic_path, replace_dir, write_json, write_text
from dermkit.methods import load_predictor
from dermkit.methods.base import METHODS, Predictor, Recalibrated, scratch_feature_cache
from dermkit.methods.hub_card import hub_license, hub_readme
from dermkit.models.checkpoint import MODEL_CARD, read_model_card
from dermkit.models.encoders import OPEN_CLIP_BIN, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, model_fingerprint
from dermkit.models.onnx import OnnxFunction, export_module
from dermkit.models.preprocess_spec import apply_steps, describe_transform, final_size, shrink_step, steps_text
from dermkit.models.specs import parse_spec

__all__ = ["FORMATS", "ONNX_TOLERANCE", "NOT_ONE_GRAPH", "export_model", "export_onnx", "export_hf",
           "ProbabilityGraph", "preprocess_steps", "predictor_fingerprint", "read_onnx_metadata"]

FORMATS = ("onnx", "hf")
ONNX_TOLERANCE = 1e-4
#: Methods whose predictor is not one feed-forward function of one image, and why.
NOT_ONE_GRAPH = {
    "vqa": "a generative vision-language model: its class probabilities are likelihoods of answer texts scored "
           "token by token by the language model, not the output of one feed-forward graph",
    "fusion": "it reads several inputs per case (dermoscopic and clinical views, metadata through its own "
              "encoders), which one image tensor cannot carry",
    "sae": "its head (sparse autoencoder codes, then a logistic probe) runs in NumPy on cached embeddings, "
           "not in a traceable network",
    "cbm": "its head (sparse autoencoder concepts, then a sparse logistic probe) runs in NumPy on cached "
           "embeddings, not in a traceable network",
}
#: model.json keys that name another model a loader reads (these must not be local paths in an hf folder).
LOAD_KEYS = ("base_model", "image_encoder", "image_weights", "text_encoder")


# ------------------------------------------------------------------------------ shared


def export_model(model: str | os.PathLike, fmt: str, out: str | os.PathLike, run: str | os.PathLike | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Export the model folder ``model`` in format ``fmt`` (onnx | hf) to ``out``; returns what was
    written and checked (``path``, ``max_abs_diff``, ...)."""
    fmt = str(fmt or "").strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (onnx: one ONNX graph file; hf: a Hugging "
                          f"Face folder with a model card), got {fmt!r}")
    folder = _model_folder(model)
    if fmt == "onnx":
        if run is not None:
            raise ConfigError("--run gives the test metrics of --format hf's model card; --format onnx takes none")
        return export_onnx(folder, out, force=force)
    return export_hf(folder, out, run=run, force=force)


def _version() -> str:
    """``dermkit.__version__`` (the package is imported before any of its modules; importing it here
    would make this layer import the public API above it)."""
    return str(getattr(sys.modules.get("dermkit"), "__version__", "unknown"))


def _model_folder(model: str | os.PathLike) -> Path:
    folder = Path(model).expanduser()
    if not folder.exists():
        raise ModelError(f"--model {folder} does not exist; give a model folder (RUN/model, holding model.json)")
    read_model_card(folder)  # not a folder / no model.json / a pickle: its own clear message
    return folder


def _writable(out: Path) -> None:
    """``out`` can be created: its first existing ancestor is a folder we may write in."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out} cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written: no permission to write in {parent}")


def predictor_fingerprint(predictor: Predictor) -> str:
    """The model's fingerprint: its tensors (weights, head) plus what else decides its outputs (method,
    classes, the base encoder's fingerprint, test-time views, recalibration). The same for a model
    folder, its hf export and its ONNX export."""
    inner = getattr(predictor, "inner", predictor)
    tensors, _ = inner._state()
    card = predictor.model_card
    config = {"method": predictor.method, "classes": list(predictor.classes),
              **{k: card.get(k) for k in ("base_fingerprint", "tta", "temperature", "class_offsets")}}
    return model_fingerprint({k: v for k, v in tensors.items() if torch.is_tensor(v)}, config)


def preprocess_steps(predictor: Predictor) -> list[dict[str, Any]]:
    """The predictor's preprocessing of a decoded RGB image, as data (see :mod:`dermkit.models.preprocess_spec`)."""
    inner = getattr(predictor, "inner", predictor)
    if hasattr(inner, "cache_side") and hasattr(inner, "transform"):  # supervised: decoded + shrunk, then uint8
        return [shrink_step(inner.cache_side)] + describe_transform(inner.transform, tensor_input=True)
    saliency = predictor.saliency_module()
    if saliency is None:
        raise ModelError(f"method {predictor.method!r}: this model has no single image preprocessing to describe")
    return describe_transform(saliency.preprocess)


def _sample_images(folder: Path, size: tuple[int, int]) -> list[Path]:
    """Seven fixed images: four probe images (224 px), two non-square crops of synthetic ones and one
    already at the model's input size (``size`` = height, width), as PNG files in ``folder``."""
    images = list(probe_images())
    synthetic = [image for _, image in synthetic_outliers(8, size=300, seed=0)]
    images += [synthetic[4].crop((0, 0, 300, 190)), synthetic[0].crop((40, 0, 210, 300)),
               images[3].resize((size[1], size[0]))]
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"sample-{i}.png")
        image.save(paths[-1])
    return paths


def _predict(predictor: Predictor, paths: Sequence[Path], scratch: Path) -> np.ndarray:
    """The predictor's probabilities, its image features cached in ``scratch`` (not the user's cache)."""
    with scratch_feature_cache(predictor, scratch):
        return np.asarray(predictor.predict_paths([str(p) for p in paths]), dtype=np.float64)


# ------------------------------------------------------------------------------ onnx


class ProbabilityGraph(nn.Module):
    """pixels -> the predictor's probabilities: ``logits`` (the predictor's network), softmax, the
    mean over test-time views, then ``softmax(log p / temperature + offsets)`` when recalibrated."""

    def __init__(self, logits: nn.Module, tta: str = "none", temperature: float | None = None,
                 offsets: Sequence[float] | None = None):
        super().__init__()
        self.logits, self.tta, self.temperature = logits, tta, temperature
        self.register_buffer("offsets", None if offsets is None else torch.tensor(list(offsets), dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        views = tta_views(pixels, self.tta)
        logits = self.logits(torch.cat(views) if len(views) > 1 else pixels).float()  # the views as one batch
        if len(views) == 1:
            if self.temperature is None and self.offsets is None:
                return torch.softmax(logits, dim=1)
            logp = torch.log_softmax(logits, dim=1)
        else:
            proba = torch.softmax(logits, dim=1).reshape(len(views), -1, logits.shape[-1]).mean(dim=0)
            if self.temperature is None and self.offsets is None:
                return proba
            logp = torch.log(proba)
        if self.temperature is not None:
            logp = logp / self.temperature
        if self.offsets is not None:
            logp = logp + self.offsets
        return torch.softmax(logp, dim=1)


def _not_one_graph(method: str, why: str) -> ModelError:
    supported = "supervised, zeroshot, linear_probe, contrastive and prompt_learning"
    return ModelError(f"method {method!r} cannot be exported as one ONNX graph: {why}. ONNX export supports "
                      f"{supported} (on open_clip and timm image towers); --format hf exports the model folder "
                      "instead, where the models it builds on travel with it")


def probability_graph(predictor: Predictor) -> ProbabilityGraph:
    """The predictor as one traceable module (see :class:`ProbabilityGraph`)."""
    method = predictor.method
    if method in NOT_ONE_GRAPH:
        raise _not_one_graph(method, NOT_ONE_GRAPH[method])
    saliency = predictor.saliency_module()
    if saliency is None:
        raise _not_one_graph(method, "dermkit has no pixels-to-logits network for it (its image tower is not one "
                                     "dermkit can trace, e.g. a transformers CLIP/SigLIP tower)")
    inner = getattr(predictor, "inner", predictor)
    temperature = offsets = None
    if isinstance(predictor, Recalibrated):
        temperature = predictor.temperature
        offsets = None if predictor.offsets is None else predictor.offsets.tolist()
    return ProbabilityGraph(saliency.module, getattr(inner, "tta", "none"), temperature, offsets).eval()


def _onnx_metadata(predictor: Predictor, steps: list[dict], size: tuple[int, int], fingerprint: str) -> dict[str, str]:
    normalize = next((s for s in steps if s["op"] == "normalize"), {"mean": [0.0] * 3, "std": [1.0] * 3})
    inner = getattr(predictor, "inner", predictor)
    notes = [] if getattr(inner, "thickness_kind", None) is None else [
        "the model's Breslow thickness head is not part of this graph (class probabilities only)"]
    values = {
        "format": "dermkit-onnx-predictor", "format_version": 1, "dermkit_version": _version(),
        "method": predictor.method, "model": predictor.name, "classes": list(predictor.classes),
        "fingerprint": fingerprint, "image_size": list(size), "mean": normalize["mean"], "std": normalize["std"],
        "resize": steps_text(steps), "preprocess": steps,
        "input": "pixels: float32 (N, 3, H, W), RGB, the steps of `preprocess` applied to the decoded image "
                 "(EXIF orientation applied)",
        "output": "probabilities: float32 (N, C), columns in the order of `classes`",
        "tta": getattr(inner, "tta", "none"), "notes": notes,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """An exported file's ``metadata_props`` (JSON values decoded), read with plain ONNX Runtime."""
    import onnxruntime as ort

    props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    out = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _check_onnx_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise ConfigError(f"--out {out} is an existing folder; --format onnx writes one file: give a file path such "
                          f"as {out / 'model.onnx'}")
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out}: an ONNX file's name ends in .onnx (e.g. {out.with_suffix('.onnx')})")
    if out.exists() and not force:
        raise ConfigError(f"--out {out} already exists; add --force to replace it")
    _writable(out)


def export_onnx(model: str | os.PathLike, out: str | os.PathLike, force: bool = False,
                tolerance: float = ONNX_TOLERANCE) -> dict[str, Any]:
    """Write the model folder's predictor as one ONNX graph with its metadata (see the module docstring)."""
    folder, out = _model_folder(model), Path(out).expanduser()
    _check_onnx_out(out, force)
    method = read_model_card(folder).get("method", "supervised")
    if method in NOT_ONE_GRAPH:  # before loading a model that may be several GiB
        raise _not_one_graph(method, NOT_ONE_GRAPH[method])
    predictor = load_predictor(folder, device="cpu")
    graph = probability_graph(predictor)
    steps = preprocess_steps(predictor)
    size = final_size(steps)
    fingerprint = predictor_fingerprint(predictor)
    with tempfile.TemporaryDirectory(prefix="dermkit-export-") as scratch:
        scratch = Path(scratch)
        samples = _sample_images(scratch, size)
        expected = _predict(predictor, samples, scratch)
        (scratch / "graph").mkdir()
        draft = scratch / "graph" / "model.onnx"
        example = torch.from_numpy(np.stack([apply_steps(open_image(p), steps) for p in samples[:2]]))
        try:
            export_module(graph, example, draft, input_name="pixels", output_name="probabilities")
        except Exception as exc:  # an op torch's exporter cannot trace: say so, write nothing
            raise _not_one_graph(method, f"torch's ONNX exporter cannot trace it ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if len(list(draft.parent.iterdir())) > 1:  # weights beside the graph (models over 2 GB): one file it is not
            raise ModelError(f"{folder}: the graph's weights exceed ONNX's 2 GB single-file limit; --format onnx "
                             "writes one file, so this model cannot be exported as ONNX (--format hf can)")
        _set_metadata(draft, _onnx_metadata(predictor, steps, size, fingerprint))
        diff, worst = _onnx_check(draft, samples, expected)
        if not diff <= tolerance:
            raise ModelError(f"the exported graph, fed the preprocessing its metadata describes, gives probabilities "
                             f"that differ from the predictor's by {diff:.2e} > {tolerance:g} (sample image "
                             f"{worst}); nothing was written. Please report this model's method and architecture.")
        check = {"samples": len(samples), "max_abs_diff": diff, "tolerance": tolerance}
        _set_metadata(draft, {"check": json.dumps(check)})
        with atomic_path(out) as tmp:
            shutil.copyfile(draft, tmp)
    return {"path": out, "format": "onnx", "method": method, "classes": list(predictor.classes),
            "fingerprint": fingerprint, "image_size": list(size), "max_abs_diff": diff, "samples": len(samples)}


def _onnx_check(path: Path, samples: Sequence[Path], expected: np.ndarray) -> tuple[float, str]:
    """Plain ONNX Runtime on the samples, preprocessed from the file's own metadata only."""
    steps = read_onnx_metadata(path)["preprocess"]
    pixels = np.stack([apply_steps(open_image(p), steps) for p in samples])
    got = OnnxFunction(path)(pixels)
    per_image = np.abs(got.astype(np.float64) - expected).max(axis=1)
    return float(per_image.max()), Path(samples[int(per_image.argmax())]).name


# ------------------------------------------------------------------------------ hf


def _check_hf_out(out: Path, model: Path, force: bool) -> None:
    if out.is_file():
        raise ConfigError(f"--out {out} is a file; --format hf writes a folder: give a folder path")
    resolved, source = out.resolve(), model.resolve()
    if resolved == source or source in resolved.parents:
        raise ConfigError(f"--out {out} is the model folder or inside it; give a new folder elsewhere")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} is a folder that already holds files; add --force to replace it")
    _writable(out)


def _find_summary(model: Path, run: str | os.PathLike | None, model_card: dict) -> tuple[dict | None, Path | None]:
    """The run's summary.json: ``--run DIR`` (or its summary.json), else the model folder's parent's."""
    if run is not None:
        given = Path(run).expanduser()
        path = given / "summary.json" if given.is_dir() else given
        if not path.is_file():
            raise ConfigError(f"--run {given}: no summary.json there; give the run folder `dermkit run` wrote "
                              "(it holds summary.json and model/)")
    else:
        path = model.resolve().parent / "summary.json"
        if not path.is_file():
            return None, None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); give the run's own summary.json with --run") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path} is not a run summary (a JSON object)")
    method = model_card.get("method", "supervised")
    for key, mine in (("method", method), ("dataset", model_card.get("dataset"))):
        if summary.get(key) and mine and summary[key] != mine:
            raise ConfigError(f"{path} is the summary of a run with {key} {summary[key]!r}, but the model folder "
                              f"{model} has {key} {mine!r}; give the run that trained this model with --run")
    return summary, path


def _training_data(model_card: dict, run_dir: Path | None) -> tuple[str | None, str | None, str]:
    """(licence text, datasheet Markdown or None, why there is no datasheet) of the training data."""
    import yaml

    source = None
    config = run_dir / "config.yaml" if run_dir is not None else None
    if config is not None and config.is_file():
        try:
            source = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data")
        except (yaml.YAMLError, AttributeError):
            source = None
    source = source or (model_card.get("train_config") or {}).get("data") or model_card.get("dataset")
    if not isinstance(source, str) or not source:
        return None, None, "the model folder does not record its training dataset"
    try:
        card = load_card(source)
    except DermkitError as exc:
        name = model_card.get("dataset") or source
        text = packaged_spec(name).get("license") if name in known_cards() else None
        return text, None, f"the training dataset {source} is not on this machine ({str(exc).splitlines()[0]})"
    return card.license, datasheet_markdown(datasheet(card)), ""


def _portable_card(model_card: dict, source: Path) -> tuple[dict, Path | None]:
    """``(model.json of the copy, open_clip folder to copy in)``: a local open_clip base model goes
    into the copy (``base_model: "."``); any other local path a loader would read is refused."""
    card, copy_from = dict(model_card), None
    base = card.get("base_model")
    if isinstance(base, str) and base != "." and parse_spec(base).kind in ("folder", "local-dir"):
        copy_from = Path(parse_spec(base).path).expanduser()
        if not (copy_from / OPEN_CLIP_CONFIG).is_file():
            raise ModelError(f"{source / MODEL_CARD}: base_model is the local folder {base}, which is not an open_clip "
                             "folder dermkit can copy beside the head; the hf folder would not load elsewhere. "
                             "--format hf exports models whose base model is named by a model string (timm:..., "
                             "hf-hub:...) or is an open_clip folder")
        card["base_model"] = "."
    for key in LOAD_KEYS:
        value = card.get(key)
        if isinstance(value, str) and value != "." and (Path(value).expanduser().is_absolute()
                                                        or Path(value).expanduser().exists()):
            raise ModelError(f"{source / MODEL_CARD}: {key} is the local path {value}, which would not travel with "
                             f"the folder (method {card.get('method', 'supervised')!r}); --format hf exports models "
                             "whose other models are named by model strings (timm:..., hf-hub:...) or are open_clip "
                             "folders")
    return card, copy_from


def export_hf(model: str | os.PathLike, out: str | os.PathLike, run: str | os.PathLike | None = None,
              force: bool = False) -> dict[str, Any]:
    """Write a Hugging Face Hub folder of the model folder (see the module docstring)."""
    folder, out = _model_folder(model), Path(out).expanduser()
    _check_hf_out(out, folder, force)
    model_card = read_model_card(folder)
    card, copy_from = _portable_card(model_card, folder)  # before loading a model that may be several GiB
    summary, summary_path = _find_summary(folder, run, model_card)
    predictor = load_predictor(folder, device="cpu")
    fingerprint = predictor_fingerprint(predictor)
    try:
        steps = preprocess_steps(predictor)
    except ModelError:
        steps = None  # fusion, VQA...: several inputs or a processor of its own; model.json says the rest
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("*.partial", "*.old"))
        for name in (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, OPEN_CLIP_BIN) if copy_from else ():
            if (copy_from / name).is_file() and not (tmp / name).exists():
                shutil.copyfile(copy_from / name, tmp / name)
        if card != model_card:
            write_json(tmp / MODEL_CARD, card)
        _write_hub_files(tmp, card, predictor, fingerprint, steps, summary, summary_path)
        diff = _reload_check(predictor, tmp, steps)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": out, "format": "hf", "method": predictor.method, "classes": list(predictor.classes),
            "fingerprint": fingerprint, "max_abs_diff": diff, "summary": str(summary_path) if summary_path else None,
            "metrics": bool(summary and summary.get("test"))}


def _write_hub_files(tmp: Path, card: dict, predictor: Predictor, fingerprint: str, steps: list[dict] | None,
                     summary: dict | None, summary_path: Path | None) -> None:
    classes = list(predictor.classes)
    normalize = next((s for s in steps or [] if s["op"] == "normalize"), {})
    write_json(tmp / "config.json", {
        "library_name": "dermkit", "dermkit_version": _version(), "method": predictor.method,
        "model": card.get("model"), "num_labels": len(classes), "id2label": {str(i): c for i, c in enumerate(classes)},
        "label2id": {c: i for i, c in enumerate(classes)}, "task": card.get("task"),
        "image_size": list(final_size(steps)) if steps else None, "mean": normalize.get("mean"),
        "std": normalize.get("std"), "preprocess": steps, "tta": card.get("tta"),
        "base_model": card.get("base_model"), "fingerprint": fingerprint,
        "load_with": "dermkit.api.load_predictor(folder)",
    })
    run_dir = summary_path.parent if summary_path else None
    license_text, sheet, sheet_note = _training_data(card, run_dir)
    dataset = card.get("dataset") or (summary or {}).get("dataset")
    base = card.get("base_model")
    hub_base = parse_spec(base).repo if isinstance(base, str) and base.startswith("hf-hub:") else None
    method = METHODS.get(predictor.method)
    readme = hub_readme(
        name=str((summary or {}).get("name") or predictor.name), model_card={**card, "method": predictor.method},
        method_description=method.description if method else predictor.method, fingerprint=fingerprint,
        license_id=hub_license(license_text), license_text=license_text, datasets=[dataset] if dataset else [],
        summary=summary, summary_source=summary_path.name if summary_path else None, datasheet=sheet,
        datasheet_note=sheet_note, preprocess=steps_text(steps) if steps else None, base_model=hub_base,
        version=_version(), has_ood=(tmp / "ood.json").is_file())
    write_text(tmp / "README.md", readme)


def _reload_check(predictor: Predictor, tmp: Path, steps: list[dict] | None) -> float:
    """The copy loads with ``load_predictor`` and predicts what the original predicts, on the sample images."""
    try:
        copy = load_predictor(tmp, device="cpu")
    except DermkitError as exc:
        raise ModelError(f"the exported folder does not load ({exc}); nothing was written") from exc
    size = final_size(steps) if steps else (224, 224)
    with tempfile.TemporaryDirectory(prefix="dermkit-export-") as scratch:
        scratch = Path(scratch)
        samples = _sample_images(scratch, size)
        (scratch / "a").mkdir()
        (scratch / "b").mkdir()
        expected, got = _predict(predictor, samples, scratch / "a"), _predict(copy, samples, scratch / "b")
    diff = float(np.abs(expected - got).max()) if expected.size else 0.0
    if not diff <= 1e-6:
        raise ModelError(f"the exported folder loads but predicts differently from the model folder (max difference "
                         f"{diff:.2e}); nothing was written")
    return diff
