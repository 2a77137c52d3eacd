"""Command line: every bad input ends with a clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from dermkit.cli import main
from dermkit.models.checkpoint import MODEL_WEIGHTS, save_model
from dermkit.models.registry import create_classifier, load_classifier


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def model_dir(tmp_path):
    """An (untrained) resnet18 model folder at 32 px for the tiny 3-class dataset."""
    torch.manual_seed(0)
    model = create_classifier("resnet18", 3, pretrained=False)
    card = {"model": "resnet18", "classes": ["bcc", "mel", "nv"], "image_size": 32,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return save_model(tmp_path / "model", model, card)


def test_help_explains_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("data", "train", "evaluate", "predict", "benchmark"):
        assert command in out


def test_data_check_ok(tiny_dataset, capsys):
    code, out, _ = run(["data", "check", tiny_dataset], capsys)
    assert code == 0
    assert "ok" in out and "bcc" in out


def test_data_check_reports_row_and_fix(tiny_dataset, capsys):
    meta = tiny_dataset / "metadata.csv"
    df = pd.read_csv(meta)
    df.loc[3, "diagnosis"] = "melanomma"
    df.loc[5, "image"] = "images/does_not_exist.jpg"
    df.to_csv(meta, index=False)
    (tiny_dataset / df.loc[7, "image"]).write_bytes(b"not a jpeg at all")
    code, _, err = run(["data", "check", tiny_dataset], capsys)
    assert code == 2
    assert "line 5" in err and "melanomma" in err  # CSV line = index + 2
    assert "line 7" in err and "does_not_exist.jpg" in err
    assert "line 9" in err
    assert "Fix:" in err
    assert "Traceback" not in err


def test_data_check_unknown_dataset(capsys, tmp_path):
    code, _, err = run(["data", "check", tmp_path / "nowhere"], capsys)
    assert code == 2 and "nowhere" in err


def test_data_split_writes_grouped_splits(tiny_dataset, capsys):
    out_csv = tiny_dataset / "resplit.csv"
    code, _, err = run(["data", "split", tiny_dataset, "--out", out_csv, "--seed", "1", "--force"], capsys)
    assert code == 0, err
    df = pd.read_csv(out_csv)
    assert set(df["split"]) == {"train", "val", "test"}
    assert df.groupby("lesion_id")["split"].nunique().max() == 1
    # Refuses to clobber the existing split column in place without --force.
    code, _, err = run(["data", "split", tiny_dataset], capsys)
    assert code == 2 and "force" in err


def test_model_round_trip_same_predictions(model_dir, tiny_dataset):
    from dermkit.methods.supervised import Supervised

    paths = sorted((tiny_dataset / "images").glob("*.jpg"))[:5]
    a = Supervised().load(model_dir, precision="fp32").predict_paths(paths)
    model, card = load_classifier(model_dir)
    save_model(model_dir.parent / "again", model, card)
    b = Supervised().load(model_dir.parent / "again", precision="fp32").predict_paths(paths)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.shape == (5, 3) and np.allclose(a.sum(1), 1)


def test_predict_prints_topk_json(model_dir, tiny_dataset, capsys):
    image = sorted((tiny_dataset / "images").glob("*.jpg"))[0]
    code, out, err = run(["predict", "--model", model_dir, "--top-k", "2", "--json", image], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result[0]["image"] == str(image) and len(result[0]["top"]) == 2
    assert result[0]["top"][0]["probability"] >= result[0]["top"][1]["probability"]


def test_predict_rejects_non_image(model_dir, tmp_path, capsys):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is a text file")
    code, _, err = run(["predict", "--model", model_dir, fake], capsys)
    assert code == 2 and "notes.jpg" in err and "Traceback" not in err


def test_corrupt_checkpoint_is_a_clear_error(model_dir, tiny_dataset, capsys):
    weights = model_dir / MODEL_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated copy
    image = sorted((tiny_dataset / "images").glob("*.jpg"))[0]
    code, _, err = run(["predict", "--model", model_dir, image], capsys)
    assert code == 2 and "corrupt" in err


def test_pickle_model_is_refused_without_unpickling(tmp_path, tiny_dataset, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model.pth").write_bytes(pickle.dumps(Evil()))
    image = sorted((tiny_dataset / "images").glob("*.jpg"))[0]
    code, _, err = run(["predict", "--model", folder, image], capsys)
    assert code == 2 and "pickle" in err
    code, _, err = run(["predict", "--model", folder / "model.pth", image], capsys)
    assert code == 2 and "pickle" in err
    # Also a torch.save zip renamed to .safetensors.
    torch.save({"w": torch.zeros(1)}, folder / "model.safetensors")
    (folder / "model.json").write_text(json.dumps({"format": "dermkit-classifier", "model": "resnet18",
                                                   "classes": ["a", "b"], "image_size": 32,
                                                   "mean": [0.5] * 3, "std": [0.5] * 3}))
    assert zipfile.is_zipfile(folder / "model.safetensors")
    code, _, err = run(["predict", "--model", folder, image], capsys)
    assert code == 2 and "pickle" in err
    assert not marker.exists()


def test_evaluate_from_predictions_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    classes = ["mel", "nv"]
    y = rng.integers(0, 2, 60)
    p1 = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, 60), 0.01, 0.99)
    frame = pd.DataFrame({"image": [f"img{i}.jpg" for i in range(60)], "target": [classes[i] for i in y],
                          "prediction": [classes[int(p > 0.5)] for p in p1], "prob:mel": 1 - p1, "prob:nv": p1})
    frame.to_csv(tmp_path / "p.csv", index=False)
    code, out, err = run(["evaluate", "--predictions", tmp_path / "p.csv", "--out", tmp_path / "rep",
                          "--n-bootstrap", "100"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    from sklearn.metrics import roc_auc_score

    assert metrics["macro_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert "0.90" in json.dumps(metrics["sensitivity_at_specificity"])
    assert (tmp_path / "rep" / "report.html").is_file()


def test_evaluate_needs_a_source(capsys, tmp_path):
    code, _, err = run(["evaluate", "--out", tmp_path], capsys)
    assert code == 2 and "--predictions" in err


def test_evaluate_model_on_split(model_dir, tiny_dataset, tmp_path, capsys):
    code, out, err = run(["evaluate", "--model", model_dir, "--data", tiny_dataset, "--split", "val",
                          "--out", tmp_path / "rep", "--n-bootstrap", "50"], capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "rep" / "predictions.csv")
    assert len(preds) == 18 and {"prob:bcc", "prob:mel", "prob:nv", "target", "prediction"} <= set(preds.columns)


def test_train_resume_without_run_is_clear(tmp_path, capsys):
    code, _, err = run(["train", "--out", tmp_path / "none", "--resume"], capsys)
    assert code == 2 and "config.yaml" in err


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dermkit", "data", "check", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error" in proc.stderr and "Traceback" not in proc.stderr
