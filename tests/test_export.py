"""dermkit export: the ONNX graph gives the predictor's probabilities under plain ONNX Runtime with only
the metadata it carries; the hf folder reloads to identical outputs (its open_clip base copied in)
and its model card parses, with the run's test metrics and CIs in the model-index; every refusal
exits 2 with a message and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from PIL import Image

import dermkit
from dermkit.cli import main
from dermkit.errors import ModelError
from dermkit.methods.hub_card import hub_license
from dermkit.models.checkpoint import save_model, write_model_card
from dermkit.models.registry import create_classifier


@pytest.fixture(scope="module")
def world(tmp_path_factory, clip_folder):
    """A dataset; a zero-shot run on a copy of the tiny CLIP; a linear-probe run; a supervised model
    folder with test-time views, a temperature and class offsets (so the graph has all of it)."""
    import os

    from conftest import make_dataset

    root = tmp_path_factory.mktemp("export")
    os.environ.setdefault("DERMKIT_CACHE", str(root / "cache"))
    data = make_dataset(root)
    clip = root / "clip"
    shutil.copytree(clip_folder, clip)
    common = {"data": str(data), "model": str(clip), "num_workers": 0, "n_bootstrap": 10}
    dermkit.run({"method": "zeroshot", **common}, out=root / "zs", progress=False)
    dermkit.run({"method": "linear_probe", "Cs": [1.0], "ood_acceptance": None, **common}, out=root / "probe",
                progress=False)
    torch.manual_seed(0)
    net = create_classifier("timm:test_resnet@random", 3, pretrained=False)
    with torch.no_grad():  # logits spread out, so a wrong preprocessing shows in the probabilities
        net.get_classifier().weight.mul_(30)
    save_model(root / "sup" / "model", net, {
        "method": "supervised", "model": "timm:test_resnet@random", "classes": ["bcc", "mel", "nv"],
        "image_size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3], "dataset": "tiny", "tta": "flip_rot",
        "temperature": 1.7, "class_offsets": [0.2, -0.1, 0.0]})
    images = [data / "images" / f"{c}_test_00.jpg" for c in ("bcc", "mel", "nv")]  # 32 x 32: the input size
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(61, 45), (40, 77), (128, 96)]):  # need resizing (and cropping for CLIP)
        base = np.array([(200, 60, 60), (60, 190, 70), (60, 80, 200)][i], dtype=float)
        pixels = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        images.append(root / f"odd-{i}.png")
        Image.fromarray(pixels, "RGB").save(images[-1])
    return {"root": root, "data": data, "clip": clip, "images": images,
            "models": {"supervised": root / "sup" / "model", "zeroshot": root / "zs" / "model",
                       "linear_probe": root / "probe" / "model"}}


def _export(argv, capsys) -> tuple[int, str]:
    code = main(["export", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out + captured.err


# ------------------------------------------------------------------------------ onnx


def _pil_resize(image: Image.Image, size: tuple[int, int], step: dict) -> Image.Image:
    """(width, height) resize as the step says: Pillow, or torchvision's kernel where the step names it."""
    if image.size == size:
        return image
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[step["interpolation"]]
    if step.get("kernel") != "torchvision":
        return image.resize(size, resample=resample)
    from torchvision.transforms.v2 import functional as TF

    out = TF.resize(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy()), [size[1], size[0]], antialias=True)
    return Image.fromarray(out.permute(1, 2, 0).numpy())


def _preprocess(path: Path, meta: dict, mean=None, std=None) -> np.ndarray:
    """What a deployment does with the file's metadata only: resize as its steps say, scale, normalise."""
    image = Image.open(path).convert("RGB")
    for step in meta["preprocess"]:
        if step["op"] == "shrink" and min(image.size) > step["max_side"]:
            r = step["max_side"] / min(image.size)
            image = image.resize((round(image.width * r), round(image.height * r)), resample=Image.BICUBIC)
        elif step["op"] == "resize":
            image = _pil_resize(image, (step["size"][1], step["size"][0]), step)
        elif step["op"] == "resize_shorter":
            w, h = image.size
            s = step["size"]
            image = _pil_resize(image, (s, int(s * h / w)) if w <= h else (int(s * w / h), s), step)
        elif step["op"] == "center_crop":
            h, w = step["size"]
            top, left = round((image.height - h) / 2), round((image.width - w) / 2)
            image = image.crop((left, top, left + w, top + h))
    assert image.size == tuple(meta["image_size"][::-1])
    x = np.asarray(image, dtype=np.float32) / 255
    mean = np.asarray(meta["mean"] if mean is None else mean, dtype=np.float32)
    std = np.asarray(meta["std"] if std is None else std, dtype=np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)


@pytest.mark.parametrize("method", ["supervised", "zeroshot", "linear_probe"])
def test_onnx_gives_the_predictors_probabilities_with_only_its_metadata(world, method, tmp_path, capsys):
    folder = world["models"][method]
    out = tmp_path / "deploy" / "model.onnx"
    code, text = _export(["--model", folder, "--format", "onnx", "--out", out], capsys)
    assert code == 0, text
    assert "checked under ONNX Runtime" in text
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) if v[:1] in "[{" else v  # lists and objects are JSON
            for k, v in session.get_modelmeta().custom_metadata_map.items()}
    predictor = dermkit.load_predictor(folder, device="cpu")
    assert meta["classes"] == predictor.classes and meta["method"] == method
    assert meta["dermkit_version"] == dermkit.__version__ and len(meta["fingerprint"]) == 32
    assert meta["image_size"] == [32, 32] and meta["check"]["max_abs_diff"] <= 1e-4
    assert "resize" in meta and [i.name for i in session.get_inputs()] == ["pixels"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    expected = predictor.predict_paths(world["images"])

    def run(**kw):
        pixels = np.stack([_preprocess(p, meta, **kw) for p in world["images"]])
        return session.run(None, {"pixels": pixels})[0]

    got = run()
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # The 32 px images need nothing but size, mean and std:
    plain = np.stack([_preprocess(p, {**meta, "preprocess": []}) for p in world["images"][:3]])
    np.testing.assert_allclose(session.run(None, {"pixels": plain})[0], expected[:3], atol=1e-4)
    # ... and the comparison can fail: the same images without the stored normalisation are far off.
    assert np.abs(run(mean=[0, 0, 0], std=[1, 1, 1]) - expected).max() > 1e-2


def test_onnx_fingerprint_is_the_hf_cards_and_force_replaces(world, tmp_path, capsys):
    folder = world["models"]["zeroshot"]
    assert _export(["--model", folder, "--format", "onnx", "--out", tmp_path / "m.onnx"], capsys)[0] == 0
    assert _export(["--model", folder, "--format", "hf", "--out", tmp_path / "hf"], capsys)[0] == 0
    fingerprint = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map[
        "fingerprint"]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["fingerprint"] == fingerprint
    assert f"`{fingerprint}`" in (tmp_path / "hf" / "README.md").read_text()
    (tmp_path / "hf" / "stale.txt").write_text("from before")  # --force replaces both, atomically
    for fmt, out in (("onnx", tmp_path / "m.onnx"), ("hf", tmp_path / "hf")):
        assert _export(["--model", folder, "--format", fmt, "--out", out, "--force"], capsys)[0] == 0
    assert not (tmp_path / "hf" / "stale.txt").exists() and (tmp_path / "hf" / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.onnx"]


def test_onnx_export_that_disagrees_with_the_predictor_is_refused(world, tmp_path, monkeypatch):
    """A graph whose stored preprocessing would not reproduce the predictor is never written."""
    from dermkit.methods import export

    real = export.preprocess_steps

    def shifted(predictor):
        return [{**s, "mean": [m + 0.2 for m in s["mean"]]} if s["op"] == "normalize" else s
                for s in real(predictor)]

    monkeypatch.setattr(export, "preprocess_steps", shifted)
    with pytest.raises(ModelError, match="differ from the predictor's by .* > 0.0001.*nothing was written"):
        export.export_onnx(world["models"]["supervised"], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ hf


def _front_matter(readme: str) -> tuple[dict, str]:
    assert readme.startswith("---\n")
    head, body = readme[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.mark.parametrize("method", ["zeroshot", "supervised"])
def test_hf_folder_reloads_to_identical_outputs(world, method, tmp_path, capsys):
    folder = world["models"][method]
    out = tmp_path / "hub"
    out.mkdir()  # an empty folder may be the target
    code, text = _export(["--model", folder, "--format", "hf", "--out", out], capsys)
    assert code == 0, text
    for name in ("model.safetensors", "model.json", "config.json", "README.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "bcc", "1": "mel", "2": "nv"} and config["library_name"] == "dermkit"
    assert not list(tmp_path.glob("*.partial"))
    expected = dermkit.load_predictor(folder, device="cpu").predict_paths(world["images"])
    if method == "zeroshot":  # the base CLIP travels inside the folder: the original may go
        assert json.loads((out / "model.json").read_text())["base_model"] == "."
        assert (out / "open_clip_config.json").is_file()
        moved = world["clip"].with_name("clip-away")
        world["clip"].rename(moved)
        try:
            got = dermkit.load_predictor(out, device="cpu").predict_paths(world["images"])
            with pytest.raises(ModelError, match="base model"):
                dermkit.load_predictor(folder, device="cpu")
        finally:
            moved.rename(world["clip"])
    else:
        got = dermkit.load_predictor(out, device="cpu").predict_paths(world["images"])
    np.testing.assert_array_equal(got, expected)


def test_hf_card_parses_and_holds_the_runs_test_metrics(world, tmp_path, capsys):
    run = world["root"] / "zs"
    assert _export(["--model", run / "model", "--format", "hf", "--out", tmp_path / "hub"], capsys)[0] == 0
    readme = (tmp_path / "hub" / "README.md").read_text(encoding="utf-8")
    meta, body = _front_matter(readme)
    summary = json.loads((run / "summary.json").read_text())
    assert meta["license"] == "cc0-1.0" and meta["library_name"] == "dermkit" and meta["datasets"] == ["tiny"]
    assert {"dermatology", "skin-lesion", "image-classification", "dermkit"} <= set(meta["tags"])
    (index,) = meta["model-index"]
    (result,) = index["results"]
    assert result["dataset"]["split"] == "test" and result["task"]["type"] == "image-classification"
    metrics = {m["type"]: m for m in result["metrics"]}
    assert set(metrics) == {k for k, v in summary["test"].items() if v is not None} and metrics
    for key, metric in metrics.items():
        assert metric["value"] == summary["test"][key]
        ci = summary["test_ci"][key]
        assert (metric["args"]["ci_low"], metric["args"]["ci_high"], metric["args"]["ci_level"]) == \
               (ci["low"], ci["high"], ci["level"])
    for section in ("## Model description", "## Intended use", "## Limitations", "## Not a medical device",
                    "## Training data", "### Datasheet: tiny", "## Evaluation", "## How to load"):
        assert section in body, section
    assert "**This model is not a medical device.**" in body
    assert "dermkit.api.load_predictor(" in body
    assert f"{summary['test']['balanced_accuracy']:.4f}" in body  # the CI table
    from huggingface_hub import ModelCard

    parsed = ModelCard.load(tmp_path / "hub" / "README.md")  # what the Hub reads
    assert {r.metric_type: r.metric_value for r in parsed.data.eval_results} == \
           {k: v for k, v in summary["test"].items() if v is not None}


def test_hf_card_without_a_summary_records_no_metrics(world, tmp_path, capsys):
    alone = tmp_path / "alone"
    shutil.copytree(world["models"]["zeroshot"], alone)  # no summary.json beside it
    assert _export(["--model", alone, "--format", "hf", "--out", tmp_path / "a"], capsys)[0] == 0
    meta, body = _front_matter((tmp_path / "a" / "README.md").read_text())
    assert "model-index" not in meta and "No test metrics are recorded" in body
    run = world["root"] / "zs"
    assert _export(["--model", alone, "--format", "hf", "--out", tmp_path / "b", "--run", run], capsys)[0] == 0
    meta, _ = _front_matter((tmp_path / "b" / "README.md").read_text())
    assert meta["model-index"][0]["results"][0]["metrics"]


def test_a_preprocessing_step_that_cannot_be_described_is_refused():
    from torchvision import transforms as T

    from dermkit.models.preprocess_spec import describe_transform

    steps = describe_transform(T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3,
                                                                                                   [0.2] * 3)]))
    assert [s["op"] for s in steps] == ["resize_shorter", "center_crop", "to_float", "normalize"]
    with pytest.raises(ModelError, match="cannot describe the preprocessing step ColorJitter"):
        describe_transform(T.Compose([T.Resize(32), T.ColorJitter(0.1), T.ToTensor()]))


def test_hub_licence_ids():
    assert hub_license("CC BY-NC 4.0 (non-commercial); cite Tschandl et al. 2018") == "cc-by-nc-4.0"
    assert hub_license("CC BY 4.0; cite Pacheco et al. 2020.") == "cc-by-4.0"
    assert hub_license("CC BY-NC-SA 4.0") == "cc-by-nc-sa-4.0"
    assert hub_license("CC0 (generated for tests)") == "cc0-1.0"
    assert hub_license("ISIC Archive per-image licences (CC-0 / CC BY-NC); non-commercial research") == "other"
    assert hub_license(None) == "other"


# ------------------------------------------------------------------------------ refusals


def _fake(world, t: Path, **changes) -> Path:
    """A copy of the zero-shot folder with model.json keys changed."""
    folder = t / "fake"
    shutil.copytree(world["models"]["zeroshot"], folder)
    card = json.loads((folder / "model.json").read_text())
    # Written as a dermkit method would have saved it (sealed), so the export decides, not the integrity check.
    write_model_card(folder, {**card, **changes})
    return folder


def _file(t: Path, name: str = "plain.txt") -> Path:
    (t / name).write_text("x")
    return t / name


def _full_folder(t: Path) -> Path:
    (t / "full").mkdir()
    (t / "full" / "keep.txt").write_text("x")
    return t / "full"


def _other_summary(world, t: Path) -> Path:
    (t / "run").mkdir()
    (t / "run" / "summary.json").write_text(json.dumps({"method": "supervised", "dataset": "tiny", "test": {}}))
    return t / "run"


ZS = lambda w: w["models"]["zeroshot"]  # noqa: E731
CASES = [
    ("missing-model", lambda w, t: ["--model", t / "nope", "--format", "onnx", "--out", t / "m.onnx"],
     ["nope", "does not exist"]),
    ("not-a-model-folder", lambda w, t: ["--model", w["data"], "--format", "hf", "--out", t / "hub"],
     ["model.json", "is missing"]),
    ("unknown-format", lambda w, t: ["--model", ZS(w), "--format", "tflite", "--out", t / "m"],
     ["--format must be one of onnx, hf", "'tflite'"]),
    ("onnx-out-is-folder", lambda w, t: ["--model", ZS(w), "--format", "onnx", "--out", t],
     ["is an existing folder", "model.onnx"]),
    ("onnx-out-not-onnx", lambda w, t: ["--model", ZS(w), "--format", "onnx", "--out", t / "m.bin"],
     ["ends in .onnx"]),
    ("onnx-out-exists", lambda w, t: ["--model", ZS(w), "--format", "onnx", "--out", _file(t, "old.onnx")],
     ["already exists", "--force"]),
    ("onnx-out-not-writable", lambda w, t: ["--model", ZS(w), "--format", "onnx", "--out", _file(t) / "m.onnx"],
     ["cannot be written", "plain.txt", "is a file"]),
    ("hf-out-is-file", lambda w, t: ["--model", ZS(w), "--format", "hf", "--out", _file(t)], ["is a file"]),
    ("hf-out-not-empty", lambda w, t: ["--model", ZS(w), "--format", "hf", "--out", _full_folder(t)],
     ["already holds files", "--force"]),
    ("hf-out-not-writable", lambda w, t: ["--model", ZS(w), "--format", "hf", "--out", _file(t) / "hub"],
     ["cannot be written", "is a file"]),
    ("hf-out-inside-model", lambda w, t: ["--model", _fake(w, t), "--format", "hf", "--out", t / "fake" / "hub"],
     ["inside it"]),
    ("hf-run-without-summary", lambda w, t: ["--model", ZS(w), "--format", "hf", "--out", t / "hub", "--run", t],
     ["--run", "no summary.json"]),
    ("hf-run-of-another-model", lambda w, t: ["--model", ZS(w), "--format", "hf", "--out", t / "hub", "--run",
                                              _other_summary(w, t)], ["method 'supervised'", "--run"]),
    ("onnx-with-run", lambda w, t: ["--model", ZS(w), "--format", "onnx", "--out", t / "m.onnx", "--run", t],
     ["--run", "--format onnx"]),
    ("onnx-vqa", lambda w, t: ["--model", _fake(w, t, method="vqa"), "--format", "onnx", "--out", t / "m.onnx"],
     ["'vqa' cannot be exported as one ONNX graph", "generative", "supervised, zeroshot"]),
    ("onnx-fusion", lambda w, t: ["--model", _fake(w, t, method="fusion"), "--format", "onnx", "--out",
                                  t / "m.onnx"], ["'fusion' cannot be exported", "several inputs"]),
    ("onnx-cbm", lambda w, t: ["--model", _fake(w, t, method="cbm"), "--format", "onnx", "--out", t / "m.onnx"],
     ["'cbm' cannot be exported", "NumPy"]),
    ("hf-local-base-not-open-clip", lambda w, t: ["--model", _fake(w, t, base_model=str(w["data"])), "--format",
                                                  "hf", "--out", t / "hub"],
     ["base_model is the local folder", "not an open_clip folder"]),
    ("hf-vqa-local-base", lambda w, t: ["--model", _fake(w, t, method="vqa", base_model=str(w["data"])), "--format",
                                        "hf", "--out", t / "hub"], ["base_model is the local folder", "open_clip"]),
    ("hf-fusion-local-encoder", lambda w, t: ["--model", _fake(w, t, method="fusion", image_encoder=str(w["data"])),
                                              "--format", "hf", "--out", t / "hub"],
     ["image_encoder is the local path", "would not travel"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refusals_exit_2_and_write_nothing(case, world, tmp_path, capsys):
    _, build, words = case
    argv = build(world, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, text = _export(argv, capsys)
    assert code == 2, text
    assert "error:" in text, text
    flat = " ".join(text.split())
    for word in words:
        assert word in flat, (word, text)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
