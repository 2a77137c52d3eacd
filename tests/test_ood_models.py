"""Out-of-distribution detectors in model folders (issue 25): fitted when a run ends, checked by
fingerprint when loaded, used by ``dermkit predict`` (--json, --out) and ``evaluate --ood-data``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dermkit
from conftest import SHARED_DATA, make_dataset, requires_shared_data
from dermkit.cli import main
from dermkit.data.outliers import synthetic_outliers
from dermkit.evaluate.ood import OODDetector
from dermkit.methods.ood import NO_DETECTOR, assess, fit_detector


def _train(root: Path, name: str = "run", seed: int = 0, **extra) -> Path:
    data = make_dataset(root, size=64)
    cfg = {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
           "batch_size": 16, "num_workers": 0, "epochs": 2, "n_bootstrap": 20, "engine": {"seed": seed}, **extra}
    dermkit.run(cfg, out=root / name, progress=False)
    return root / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ood")
    return root, _train(root)


def _outlier_files(folder: Path, n: int = 8) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (kind, image) in enumerate(synthetic_outliers(n, size=64, seed=3)):
        path = folder / f"{i}-{kind}.png"
        image.save(path)
        paths.append(path)
    return paths


def test_a_run_fits_and_saves_a_detector_that_accepts_the_stated_share_of_val(trained):
    root, run = trained
    model = run / "model"
    assert (model / "ood.json").is_file() and (model / "ood.safetensors").is_file()
    card = json.loads((model / "ood.json").read_text())
    assert card["acceptance"] == 0.95 and card["default"] in card["thresholds"]
    assert card["domain"].endswith("(tiny)")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ood"]["default"] == card["default"]
    predictor = dermkit.load_predictor(model)
    detector = predictor.ood
    assert detector is not None and predictor.ood_note == ""
    # acceptance on val equals the stated rate (ceil(0.95 n) / n, ties aside)
    data = dermkit.load_dataset(root / "tiny")
    val = [data.image_path(p) for p in data.rows("val")["image"]]
    features, proba = predictor.image_features(val), predictor.predict_paths(val)
    accepted = detector.in_domain(features, proba).mean()
    assert accepted == pytest.approx(np.ceil(0.95 * len(val)) / len(val), abs=1 / len(val))
    assert accepted == pytest.approx(detector.val_accepted[detector.default])


def test_saved_and_loaded_detectors_give_identical_scores(trained, tmp_path):
    root, run = trained
    predictor = dermkit.load_predictor(run / "model")
    paths = _outlier_files(tmp_path / "out", 4)
    in_memory = fit_detector(predictor, root / "tiny", out=tmp_path / "copy", progress=False)
    loaded = OODDetector.load(tmp_path / "copy")
    features, proba = predictor.image_features(paths), predictor.predict_paths(paths)
    for name, values in in_memory.scores(features, proba).items():
        np.testing.assert_array_equal(values, loaded.scores(features, proba)[name])


def test_predict_shows_ood_score_in_domain_and_quality_and_writes_a_csv(trained, tmp_path, capsys):
    root, run = trained
    data = dermkit.load_dataset(root / "tiny")
    own = data.image_path(data.rows("test")["image"].iloc[0])
    noise = _outlier_files(tmp_path / "out", 1)[0]
    out = tmp_path / "preds" / "p.csv"
    assert main(["predict", str(own), str(noise), "--model", str(run / "model"), "--json", "--out", str(out)]) == 0
    results = json.loads(capsys.readouterr().out)
    for r in results:
        assert {"ood_score", "in_domain", "ood_limit", "ood_scores", "quality", "quality_flags"} <= set(r)
        assert set(r["ood_scores"]) == {"mahalanobis", "knn", "msp"}
    assert results[1]["ood_score"] > results[0]["ood_score"]
    table = pd.read_csv(out)
    classes = dermkit.load_predictor(run / "model").classes
    assert list(table.columns) == ["image", *(f"prob:{c}" for c in classes), "prediction", "ood_score", "in_domain",
                                   "quality"]
    assert len(table) == 2 and table["ood_score"].tolist() == pytest.approx([r["ood_score"] for r in results])
    assert main(["predict", str(noise), "--model", str(run / "model")]) == 0  # the table form says it in words
    assert "in domain:" in " ".join(capsys.readouterr().out.split())
    assert main(["predict", str(own), "--model", str(run / "model"), "--out", str(tmp_path / "p.txt")]) == 2
    assert "give a .csv file name" in capsys.readouterr().err


def test_a_folder_without_a_detector_still_predicts_and_says_so(trained, tmp_path, capsys):
    root, run = trained
    bare = tmp_path / "bare"
    shutil.copytree(run / "model", bare)
    (bare / "ood.json").unlink()
    (bare / "ood.safetensors").unlink()
    predictor = dermkit.load_predictor(bare)
    assert predictor.ood is None and predictor.ood_note == NO_DETECTOR
    image = _outlier_files(tmp_path / "out", 1)[0]
    check = assess(predictor, [image])[0]
    assert check["ood_score"] is None and check["in_domain"] is None and "dermkit ood fit" in check["ood_note"]
    assert main(["predict", str(image), "--model", str(bare), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["in_domain"] is None
    # `dermkit ood fit` adds one to the existing folder
    assert main(["ood", "fit", "--model", str(bare), "--data", str(root / "tiny")]) == 0
    assert "AUROC" in capsys.readouterr().out
    assert dermkit.load_predictor(bare).ood is not None


def test_a_detector_of_another_encoder_is_refused_by_fingerprint(trained, tmp_path):
    root, run = trained
    other = _train(tmp_path, "other", seed=7, ood_acceptance=None)
    assert not (other / "model" / "ood.json").exists()  # ood_acceptance: null fits none
    for name in ("ood.json", "ood.safetensors"):
        shutil.copy(run / "model" / name, other / "model" / name)
    with pytest.warns(UserWarning, match="fitted on another encoder"):
        predictor = dermkit.load_predictor(other / "model")
    assert predictor.ood is None and "refit" in predictor.ood_note and "dermkit ood fit" in predictor.ood_note


def test_evaluate_with_ood_data_reports_auroc_fpr95_and_a_histogram(trained, tmp_path, capsys):
    root, run = trained
    other = make_dataset(tmp_path, name="other", classes=("bcc", "mel", "nv"), size=64, seed=5, noise=90.0)
    out = tmp_path / "rep"
    assert main(["evaluate", "--model", str(run / "model"), "--data", str(root / "tiny"), "--out", str(out),
                 "--n-bootstrap", "50", "--ood-data", f"synthetic,{other}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ood = metrics["ood"]
    assert ood["n_id"] == 18 and len(ood["sets"]) == 2
    synthetic = next(v for k, v in ood["sets"].items() if k.startswith("synthetic"))
    assert set(synthetic["scores"]) == {"mahalanobis", "knn", "msp"}
    r = synthetic["scores"][ood["default"]]
    assert 0.0 <= r["ci"]["auroc"]["low"] <= r["auroc"] <= r["ci"]["auroc"]["high"] <= 1.0
    assert r["auroc"] > 0.8  # generated non-skin images are far from the training colours
    assert (out / "ood_scores.png").is_file()
    assert "## Out-of-distribution detection" in (out / "report.md").read_text()
    assert "OOD" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(run / "model"), "--data", str(root / "tiny"), "--out", str(tmp_path / "x"),
                 "--ood-data", "nosuchdataset"]) == 2


@pytest.mark.realdata
@pytest.mark.slow
@requires_shared_data
def test_a_detector_fitted_on_dermoscopy_flags_clinical_photos_and_non_skin_images(tmp_path):
    """A linear probe on frozen EfficientNet-Lite0 features of a HAM10000 slice: its detector scores
    PAD-UFES-20 smartphone photos and synthetic non-skin images above held-out HAM10000 images."""
    table = pd.read_csv(SHARED_DATA / "ham10000" / "metadata.csv")
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    picked = pd.concat([table[table["split"] == s].groupby("diagnosis").head(n)
                        for s, n in (("train", 30), ("val", 10), ("test", 8))])
    for rel in picked["image"]:
        shutil.copy(SHARED_DATA / "ham10000" / rel, root / "images" / Path(rel).name)
    picked = picked.assign(image=["images/" + Path(r).name for r in picked["image"]]).drop(columns=["label"],
                                                                                           errors="ignore")
    picked.to_csv(root / "metadata.csv", index=False)
    (root / "dataset.yaml").write_text("name: ham_slice\nmodality: dermoscopy\ngroup_column: lesion_id\n")
    dermkit.run({"method": "linear_probe", "data": str(root), "model": "efficientnet_lite0", "n_bootstrap": 20},
                out=tmp_path / "probe", progress=False)
    predictor = dermkit.load_predictor(tmp_path / "probe" / "model")
    assert predictor.ood is not None and "dermoscopic images of skin lesions" in predictor.ood.domain
    card = dermkit.load_dataset(root)
    held_out = [card.image_path(p) for p in card.rows("test")["image"]]
    pad = pd.read_csv(SHARED_DATA / "pad_ufes20" / "metadata.csv").head(40)
    clinical = [SHARED_DATA / "pad_ufes20" / p for p in pad["image"]]
    non_skin = _outlier_files(tmp_path / "outliers", 16)
    from sklearn.metrics import roc_auc_score

    def default_scores(paths):
        return predictor.ood.score(predictor.image_features(paths), predictor.predict_paths(paths))

    held = default_scores(held_out)
    for name, paths, floor in (("clinical", clinical, 0.8), ("non-skin", non_skin, 0.95)):
        scores = default_scores(paths)
        auroc = roc_auc_score([0] * len(held) + [1] * len(scores), np.concatenate([held, scores]))
        assert auroc > floor, (name, auroc)
    # the image-quality gate flags what it should and passes real dermoscopy
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 300), (128, 128, 128)).save(blank)
    checks = assess(predictor, [held_out[0], blank])
    assert checks[0]["quality"].ok and not checks[1]["quality"].ok
