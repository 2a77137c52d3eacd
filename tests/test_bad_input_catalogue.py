"""The project's bad-input catalogue for the commands (CSV and dataset folders: test_bad_predictions.py,
test_bad_datasets.py; mistyped options: test_cli_usage_errors.py).

Every case: exit status 2, one message that names the file / key / option and says what to do,
no traceback, and no output folder left behind (or, for a finished run, left unchanged).
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from dermkit.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory, clip_folder):
    """A dataset, a CLIP folder and a finished zero-shot run, shared by the cases."""
    import os

    from conftest import make_dataset

    root = tmp_path_factory.mktemp("catalogue")
    os.environ.setdefault("DERMKIT_CACHE", str(root / "cache"))
    data = make_dataset(root)
    other = make_dataset(root, name="other", classes=("ak", "bcc", "mel", "nv"))
    run_dir = root / "finished"
    config = {"method": "zeroshot", "model": str(clip_folder), "data": str(data), "n_bootstrap": 10, "num_workers": 0}
    assert main(["run", _yaml(root / "zs.yaml", config), "--out", str(run_dir)]) == 0
    (root / "notes.txt").write_text("not an image")
    (root / "empty_prompts.yaml").write_text("")
    (root / "model.pt").write_bytes(pickle.dumps({"a": 1}))
    return {"root": root, "data": data, "other": other, "clip": clip_folder, "run": run_dir,
            "model": run_dir / "model", "image": sorted((data / "images").glob("*.jpg"))[0]}


def _yaml(path: Path, content) -> str:
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def _missing_image_copy(w, t) -> str:
    shutil.copytree(w["data"], t / "broken")
    (t / "broken" / "images" / "mel_train_03.jpg").unlink()
    return str(t / "broken")


def _reversed(w, t) -> str:
    """The finished run's test predictions in reverse order (other cases row by row)."""
    import pandas as pd

    pd.read_csv(w["run"] / "eval" / "test" / "predictions.csv").iloc[::-1].to_csv(t / "rev.csv", index=False)
    return str(t / "rev.csv")


def _dicom(path: Path, frames: int = 1, pixels: bool = True) -> str:
    """A small RGB DICOM (``frames`` frames; no pixel data when ``pixels`` is false) with a patient name."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName, ds.Rows, ds.Columns, ds.SamplesPerPixel = "Doe^Jane", 40, 40, 3
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixels:
        ds.PixelData = np.full((frames, 40, 40, 3), 128, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _int32_tiff(path: Path) -> str:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((40, 40), 200_000, dtype=np.int32)).save(path)
    return str(path)


def _cfg(w, **kw):
    base = {"method": "supervised", "data": str(w["data"]), "model": "resnet18", "image_size": 32, "epochs": 1,
            "num_workers": 0}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def _run(w, tmp, **kw):
    return ["run", _yaml(tmp / "c.yaml", _cfg(w, **kw)), "--out", str(tmp / "out")]


# (id, argv builder (world, tmp) -> argv, words the message must hold)
CASES = [
    # ---- dermkit run / configs
    ("run-missing-file", lambda w, t: ["run", str(t / "nope.yaml"), "--out", str(t / "out")],
     ["nope.yaml", "not found"]),
    ("run-invalid-yaml", lambda w, t: ["run", _yaml(t / "c.yaml", "a: [1, 2\n"), "--out", str(t / "out")],
     ["c.yaml", "not valid YAML"]),
    ("run-yaml-list", lambda w, t: ["run", _yaml(t / "c.yaml", "- a\n- b\n"), "--out", str(t / "out")], ["mapping"]),
    ("run-unknown-method", lambda w, t: _run(w, t, method="magic"), ["c.yaml", "method must be one of", "supervised"]),
    ("run-no-method", lambda w, t: _run(w, t, method=None), ["method must be one of"]),
    ("run-unknown-key", lambda w, t: _run(w, t, modle="resnet18"),
     ["c.yaml", "unknown key", "'modle' (did you mean 'model'?)"]),
    ("run-epochs-not-int", lambda w, t: _run(w, t, epochs="ten"), ["c.yaml", "epochs must be an integer", "'ten'"]),
    ("run-negative-lr", lambda w, t: _run(w, t, lr=-1), ["lr must be > 0"]),
    ("run-bool-as-int", lambda w, t: _run(w, t, batch_size=True), ["batch_size must be an integer"]),
    ("run-zero-batch", lambda w, t: _run(w, t, batch_size=0), ["batch_size must be >= 1"]),
    ("run-bad-imbalance", lambda w, t: _run(w, t, imbalance="smote"), ["imbalance must be one of", "smote"]),
    ("run-engine-not-mapping", lambda w, t: _run(w, t, engine=[1, 2]), ["engine must be a mapping"]),
    ("run-missing-dataset", lambda w, t: _run(w, t, data=str(t / "nowhere")), ["nowhere"]),
    ("run-bad-task", lambda w, t: _run(w, t, task="one_vs_one"), ["task must be"]),
    ("run-task-unknown-class", lambda w, t: _run(w, t, task="binary:melanoma"), ["'melanoma'", "is not a class"]),
    ("run-eval-data-other-classes", lambda w, t: _run(w, t, eval_data=[str(w["other"])]), ["eval_data", "classes"]),
    ("run-bad-model-spec", lambda w, t: _run(w, t, model="timm:"), ["timm:"]),
    ("run-unknown-timm-arch", lambda w, t: _run(w, t, model="timm:no_such_net@random"), ["no_such_net"]),
    ("run-bad-probe-fraction", lambda w, t: _run(w, t, method="linear_probe", model=str(w["clip"]), fraction=2,
                                                 image_size=None, epochs=None), ["fraction must be in"]),
    ("run-fusion-no-modality", lambda w, t: _run(w, t, method="fusion", use_derm=False, model=None, image_size=None,
                                                 num_workers=None),
     ["no modality"]),
    ("run-missing-clinical-prompts", lambda w, t: _run(w, t, method="prompt_learning", model=str(w["clip"]),
                                                       clinical_prompts=str(t / "none.yaml"), image_size=None),
     ["clinical_prompts", "not found"]),
    ("run-zeroshot-missing-prompts", lambda w, t: _run(w, t, method="zeroshot", model=str(w["clip"]),
                                                       prompts=str(t / "none.yaml"), image_size=None, epochs=None),
     ["prompts", "not found"]),
    ("run-resume-nothing", lambda w, t: _run(w, t) + ["--resume"], ["--resume", "no run to resume"]),
    ("run-two-configs", lambda w, t: ["run", _yaml(t / "a.yaml", _cfg(w)), _yaml(t / "b.yaml", _cfg(w)),
                                      "--out", str(t / "out")], ["one config", "suite"]),
    ("run-without-out", lambda w, t: ["run", _yaml(t / "c.yaml", _cfg(w))], ["--out"]),
    ("check-eval-data-other-classes", lambda w, t: ["run", "--check", _yaml(t / "c.yaml", _cfg(
        w, eval_data=[str(w["other"])]))], ["c.yaml", "eval_data", "classes"]),
    ("check-bad-config", lambda w, t: ["run", "--check", _yaml(t / "c.yaml", _cfg(w, lr="fast"))],
     ["c.yaml", "lr must be a number"]),
    ("suite-duplicate-names", lambda w, t: ["suite", _yaml(t / "a.yaml", _cfg(w, name="x")),
                                            _yaml(t / "b.yaml", _cfg(w, name="x")), "--out", str(t / "out")],
     ["share the name", "x"]),
    ("suite-one-bad-config", lambda w, t: ["suite", _yaml(t / "a.yaml", _cfg(w)), _yaml(t / "b.yaml", _cfg(w, lr=0)),
                                           "--out", str(t / "out")], ["b.yaml", "lr must be > 0"]),
    ("run-bad-tta", lambda w, t: _run(w, t, tta="rot90"), ["tta must be one of", "flip_rot"]),
    ("run-bad-randaugment", lambda w, t: _run(w, t, randaugment="rand-q3"),
     ["randaugment 'rand-q3'", "rand-m9-mstd0.5"]),
    ("run-negative-mixup", lambda w, t: _run(w, t, mixup=-0.1), ["mixup must be an alpha"]),
    ("run-thickness-mixup", lambda w, t: _run(w, t, thickness="ordinal", mixup=0.2), ["mixup/cutmix", "thickness"]),
    ("run-thickness-no-column", lambda w, t: _run(w, t, thickness="ordinal"),
     ["thickness_column 'breslow_ordinal'", "metadata.csv"]),
    ("run-bad-decision", lambda w, t: _run(w, t, decision="youden"), ["decision must be balanced"]),
    ("run-bad-tracking", lambda w, t: _run(w, t, tracking="wandb"), ["c.yaml", "tracking must be one of: mlflow"]),
    ("run-bad-track-option", lambda w, t: _run(w, t) + ["--track", "tensorboard"], ["--track must be one of: mlflow"]),
    # ---- dermkit serve / predict --explain
    ("serve-no-model-folder", lambda w, t: ["serve", "--model", str(t)], ["model.json"]),
    ("serve-pickle-model", lambda w, t: ["serve", "--model", str(w["root"] / "model.pt")], ["pickle", "safetensors"]),
    ("serve-port-zero", lambda w, t: ["serve", "--model", str(w["model"]), "--port", "0"], ["--port"]),
    # ---- dermkit data import / fetch
    ("data-import-unknown-kind", lambda w, t: ["data", "import", "isic2099", "--from", str(w["data"]), "--out",
                                               str(t / "out")], ["isic2099", "ham10000, isic2017"]),
    ("data-import-not-the-release", lambda w, t: ["data", "import", "ham10000", "--from", str(w["data"]), "--out",
                                                  str(t / "out")], ["HAM10000_metadata", "official release"]),
    ("data-import-missing-from", lambda w, t: ["data", "import", "folder", "--from", str(t / "nope"), "--out",
                                               str(t / "out")], ["nope", "no such file or folder"]),
    ("data-fetch-no-licence", lambda w, t: ["data", "fetch", "pad_ufes20", "--cache", str(t / "cache")],
     ["--accept-licence", "CC BY 4.0"]),
    ("data-fetch-registration", lambda w, t: ["data", "fetch", "derm7pt"],
     ["derm.cs.sfu.ca", "dermkit data import derm7pt"]),
    ("data-shards-missing-image", lambda w, t: ["data", "shards", _missing_image_copy(w, t), "--out", str(t / "out")],
     ["line", "column 'image'", "image file not found", "no shards were written"]),
    ("clip-train-missing-shards", lambda w, t: ["clip-train", "--shards", str(t / "none/{000000..000001}.tar"),
                                                "--data", str(w["data"]), "--init", str(w["clip"]),
                                                "--out", str(t / "out")],
     ["shards:", "000000.tar", "does not exist"]),
    # ---- dermkit compare / evaluate --subgroups / suite --baseline
    ("compare-missing-csv", lambda w, t: ["compare", str(t / "a.csv"), str(t / "b.csv"), "--out", str(t / "out")],
     ["a.csv", "not found"]),
    ("compare-other-cases", lambda w, t: ["compare", str(w["run"]), _reversed(w, t), "--out", str(t / "out")],
     ["row 1 differs", "image id"]),
    ("evaluate-subgroups-unknown-column", lambda w, t: ["evaluate", "--predictions",
                                                        str(w["run"] / "eval" / "test" / "predictions.csv"), "--data",
                                                        str(w["data"]), "--subgroups", "skin", "--out", str(t / "out")],
     ["--subgroups", "skin", "no metadata column"]),
    ("evaluate-bins-without-subgroups", lambda w, t: ["evaluate", "--predictions",
                                                      str(w["run"] / "eval" / "test" / "predictions.csv"), "--bins",
                                                      "age:30", "--out", str(t / "out")], ["--bins", "--subgroups"]),
    ("suite-unknown-baseline", lambda w, t: ["suite", _yaml(t / "c.yaml", _cfg(w)), "--out", str(t / "out"),
                                             "--baseline", "nope"], ["--baseline", "nope"]),
    # ---- dermkit train / clip-train (the same configs through their own commands)
    ("train-config-of-other-method", lambda w, t: ["train", "--config", _yaml(t / "c.yaml", {"method": "zeroshot"}),
                                                   "--out", str(t / "out")], ["method: zeroshot", "dermkit run"]),
    ("train-resume-with-changes", lambda w, t: ["train", "--out", str(w["run"]), "--resume", "--lr", "0.1"],
     ["--resume", "drop", "lr"]),
    ("train-bad-imbalance", lambda w, t: ["train", "--data", str(w["data"]), "--imbalance", "smote",
                                          "--out", str(t / "out")], ["imbalance must be one of"]),
    ("train-unknown-model", lambda w, t: ["train", "--data", str(w["data"]), "--model", "resnet9000",
                                          "--out", str(t / "out")], ["resnet9000"]),
    ("clip-train-config-of-other-method", lambda w, t: ["clip-train", "--config", _yaml(t / "c.yaml", _cfg(w)),
                                                        "--out", str(t / "out")],
     ["method: supervised", "dermkit run"]),
    # ---- predict / evaluate
    ("export-unknown-format", lambda w, t: ["export", "--model", str(w["model"]), "--format", "tflite", "--out",
                                            str(t / "out")], ["tflite", "onnx", "hf"]),
    ("export-missing-model", lambda w, t: ["export", "--model", str(t / "gone"), "--format", "onnx", "--out",
                                           str(t / "out" / "m.onnx")], ["gone"]),
    ("predict-missing-image", lambda w, t: ["predict", str(t / "gone.jpg"), "--model", str(w["model"])], ["gone.jpg"]),
    ("predict-tta-on-zeroshot", lambda w, t: ["predict", str(w["image"]), "--model", str(w["model"]), "--tta", "flip"],
     ["--tta", "no test-time augmentation"]),
    ("predict-text-file", lambda w, t: ["predict", str(w["root"] / "notes.txt"), "--model", str(w["model"])],
     ["notes.txt"]),
    ("predict-no-model-folder", lambda w, t: ["predict", str(w["image"]), "--model", str(t)],
     ["model.json", "is missing"]),
    ("predict-pickle-model", lambda w, t: ["predict", str(w["image"]), "--model", str(w["root"] / "model.pt")],
     ["model.pt", "pickle"]),
    ("predict-top-k-zero", lambda w, t: ["predict", str(w["image"]), "--model", str(w["model"]), "--top-k", "0"],
     ["--top-k", "greater than or equal to 1"]),
    ("predict-meta-on-image-model", lambda w, t: ["predict", str(w["image"]), "--model", str(w["model"]),
                                                  "--meta", "age=50"], ["--meta", "fusion"]),
    ("predict-out-not-csv", lambda w, t: ["predict", str(w["image"]), "--model", str(w["model"]), "--out",
                                          str(t / "p.txt")], ["--out", ".csv"]),
    ("predict-multiframe-dicom", lambda w, t: ["predict", _dicom(t / "cine.dcm", frames=3), "--model",
                                               str(w["model"]), "--out", str(t / "out" / "p.csv")],
     ["cine.dcm", "multi-frame", "3 frames", "export the frame"]),
    ("predict-dicom-without-pixels", lambda w, t: ["predict", _dicom(t / "sr.dcm", pixels=False), "--model",
                                                   str(w["model"])], ["sr.dcm", "no pixel data"]),
    ("predict-image-beyond-16-bits", lambda w, t: ["predict", _int32_tiff(t / "deep.tif"), "--model",
                                                   str(w["model"])], ["deep.tif", "beyond 16 bits"]),
    ("data-import-folder-multiframe-dicom", lambda w, t: ["data", "import", "folder", "--from", str(Path(
        _dicom(t / "src" / "mel" / "cine.dcm", frames=2)).parents[1]), "--out", str(t / "out")],
     ["cine.dcm", "2 frames"]),
    ("ood-fit-no-model-folder", lambda w, t: ["ood", "fit", "--model", str(t), "--data", str(w["data"])],
     ["model.json"]),
    ("ood-fit-acceptance-out-of-range", lambda w, t: ["ood", "fit", "--model", str(w["model"]), "--data",
                                                      str(w["data"]), "--acceptance", "0.2"], ["--acceptance"]),
    ("evaluate-ood-data-unknown", lambda w, t: ["evaluate", "--model", str(w["model"]), "--data", str(w["data"]),
                                                "--out", str(t / "out"), "--ood-data", "nosuchset"], ["nosuchset"]),
    ("evaluate-ood-data-without-model", lambda w, t: ["evaluate", "--predictions", _reversed(w, t), "--out",
                                                      str(t / "out"), "--ood-data", "synthetic"], ["--model"]),
    ("evaluate-nothing-to-evaluate", lambda w, t: ["evaluate", "--out", str(t / "out")], ["--predictions", "--model"]),
    ("evaluate-model-without-data", lambda w, t: ["evaluate", "--model", str(w["model"]), "--out", str(t / "out")],
     ["--data"]),
    ("evaluate-missing-csv", lambda w, t: ["evaluate", "--predictions", str(t / "p.csv"), "--out", str(t / "out")],
     ["p.csv"]),
    ("evaluate-model-other-classes", lambda w, t: ["evaluate", "--model", str(w["model"]), "--data", str(w["other"]),
                                                   "--out", str(t / "out")], ["classes", "ak"]),
    # ---- frozen-encoder commands
    ("zeroshot-empty-prompts", lambda w, t: ["zeroshot", "--model", str(w["clip"]), "--data", str(w["data"]),
                                             "--prompts", str(w["root"] / "empty_prompts.yaml"),
                                             "--out", str(t / "out")],
     ["empty_prompts.yaml", "empty"]),
    ("zeroshot-image-only-model", lambda w, t: ["zeroshot", "--model", "timm:resnet18@random", "--data",
                                                str(w["data"]), "--out", str(t / "out")], ["text encoder", "probe"]),
    ("zeroshot-empty-data", lambda w, t: ["zeroshot", "--model", str(w["clip"]), "--data", ",",
                                          "--out", str(t / "out")], ["--data"]),
    ("probe-fractions-not-numbers", lambda w, t: ["probe", "--model", str(w["clip"]), "--data", str(w["data"]),
                                                  "--fractions", "a,b", "--out", str(t / "out")],
     ["--fractions", "numbers"]),
    ("probe-zero-fraction", lambda w, t: ["probe", "--model", str(w["clip"]), "--data", str(w["data"]),
                                          "--fractions", "0", "--out", str(t / "out")], ["fraction"]),
    ("probe-bad-class-weight", lambda w, t: ["probe", "--model", str(w["clip"]), "--data", str(w["data"]),
                                             "--class-weight", "auto", "--out", str(t / "out")], ["--class-weight"]),
    ("retrieve-image-only-model", lambda w, t: ["retrieve", "--model", "timm:resnet18@random", "--data",
                                                str(w["data"]), "--out", str(t / "out")], ["text encoder"]),
    ("rank-no-texts", lambda w, t: ["rank", str(w["image"]), "--model", str(w["clip"])], ["no candidate texts"]),
    ("rank-missing-texts-file", lambda w, t: ["rank", str(w["image"]), "--model", str(w["clip"]),
                                              "--texts-file", str(t / "t.txt")], ["t.txt", "not found"]),
    ("rank-bad-model-spec", lambda w, t: ["rank", str(w["image"]), "--model", "hf-hub:only-one-part", "--texts", "a"],
     ["hf-hub:"]),
    # ---- concepts
    ("concepts-show-not-a-cbm", lambda w, t: ["concepts", "show", "--model", str(w["model"]), "--data", str(w["data"]),
                                              "--out", str(t / "out")], ["method: cbm"]),
    ("concepts-intervene-missing-model", lambda w, t: ["concepts", "intervene", "--model", str(t / "none"), "--data",
                                                       str(w["data"]), "--zero", "ink", "--out", str(t / "out")],
     ["none", "model.json"]),
    ("run-cbm-without-sae", lambda w, t: ["run", _yaml(t / "c.yaml", {"method": "cbm", "data": str(w["data"]),
                                                                       "sae": str(t / "nosae")}),
                                          "--out", str(t / "out")],
     ["nosae"]),
    ("concepts-bias-data-bad-artefact", lambda w, t: ["concepts", "bias-data", "--data", str(w["data"]), "--out",
                                                      str(t / "out"), "--artefact", "glitter"],
     ["artefact", "glitter"]),
    # ---- vqa
    ("vqa-questions-bad-options", lambda w, t: ["vqa", "questions", "--data", str(w["data"]), "--out",
                                                str(t / "q.jsonl"), "--options", "emoji"], ["--options", "emoji"]),
    ("vqa-score-missing-answers", lambda w, t: ["vqa", "score", "--questions", str(t / "q.jsonl"), "--answers",
                                                str(t / "a.jsonl"), "--data", str(w["data"]), "--out", str(t / "out")],
     ["q.jsonl", "not found"]),
    ("vqa-run-bad-mode", lambda w, t: ["vqa", "run", "--model", str(w["clip"]), "--questions", str(t / "q.jsonl"),
                                       "--data", str(w["data"]), "--out", str(t / "a.jsonl"), "--mode", "dream"],
     ["--mode"]),
    # ---- data
    ("data-check-missing-folder", lambda w, t: ["data", "check", str(t / "nowhere")], ["nowhere"]),
    ("data-split-bad-fractions", lambda w, t: ["data", "split", str(w["data"]), "--train", "0.9", "--out",
                                               str(t / "s.csv"), "--force"], ["fractions", "summing to 1"]),
    ("data-split-existing", lambda w, t: ["data", "split", str(w["data"])], ["--force"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(case, world, tmp_path, capsys):
    _, argv, words = case
    before = (world["run"] / "summary.json").read_text()
    code = main([str(a) for a in argv(world, tmp_path)])
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert code == 2, text
    assert "Traceback" not in text
    for word in words:
        assert word.lower() in " ".join(text.split()).lower(), (word, text)
    assert not (tmp_path / "out").exists(), "a refused command left an output folder"
    assert (world["run"] / "summary.json").read_text() == before


def test_catalogue_is_large_and_covers_every_command():
    from typer.main import get_command

    from dermkit.cli import app

    assert len(CASES) >= 40
    covered = {c[1].__code__.co_consts for c in CASES}
    commands = set(get_command(app).commands) - {"models", "methods", "benchmark"}  # no user input to get wrong
    named = {w for consts in covered for w in consts if isinstance(w, str)}
    missing = {c for c in commands if c not in named and c != "data"}
    assert not missing, f"commands without a bad-input case: {sorted(missing)}"


def test_finished_run_is_not_overwritten(world, tmp_path, capsys):
    config = _yaml(tmp_path / "zs.yaml", {"method": "zeroshot", "model": str(world["clip"]), "data": str(world["data"]),
                                          "num_workers": 0, "n_bootstrap": 10})
    target = tmp_path / "copy"
    shutil.copytree(world["run"], target)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert main(["run", config, "--out", str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
