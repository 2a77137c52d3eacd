"""The robustness stress test end to end (issue 26): `dermkit evaluate --stress`, `suite --stress`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import dermkit
from dermkit.cli import main
from dermkit.methods.stress import run_stress


def _corner_dataset(root: Path, per_class: dict[str, int] | None = None, size: int = 112) -> Path:
    """Two classes told apart only by a bright top-left corner (class "corner") or none ("plain")."""
    per_class = per_class or {"train": 40, "val": 12, "test": 16}
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for cls in ("corner", "plain"):
        for split, n in per_class.items():
            for i in range(n):
                pixels = np.clip(rng.normal(100, 12, (size, size, 3)), 0, 255)
                if cls == "corner":
                    pixels[: size // 3, : size // 3] = 245
                name = f"images/{cls}_{split}_{i:02d}.png"
                Image.fromarray(pixels.astype(np.uint8)).save(root / name)
                rows.append({"image": name, "diagnosis": cls, "split": split, "lesion_id": f"{cls}{split}{i}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    (root / "dataset.yaml").write_text(yaml.safe_dump({"name": "corner", "classes": ["corner", "plain"],
                                                       "group_column": "lesion_id"}))
    return root


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    data = _corner_dataset(root / "corner")
    dermkit.run({"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 48,
                 "batch_size": 16, "num_workers": 0, "epochs": 6, "lr": 1e-2, "n_bootstrap": 20,
                 "ood_acceptance": None}, out=root / "run", progress=False)
    return data, root / "run"


def test_the_clean_row_equals_evaluate_and_darkening_hurts_a_bright_corner_model(corner_run, tmp_path, capsys):
    data, run = corner_run
    out = tmp_path / "rep"
    assert main(["evaluate", "--model", str(run / "model"), "--data", str(data), "--out", str(out),
                 "--n-bootstrap", "50", "--stress", "brightness_down:5,rotation:4,hair:2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "stress.csv")
    assert table["transform"].tolist() == ["clean", "brightness_down", "rotation", "hair"]
    clean = table.iloc[0]
    for key in ("balanced_accuracy", "macro_auc", "accuracy"):
        assert clean[key] == pytest.approx(metrics[key], abs=1e-12)  # the clean row is the evaluation itself
    assert clean["balanced_accuracy"] >= 0.9  # the model learned the corner
    dark = table.set_index("transform").loc["brightness_down"]
    # the corner at half brightness is no brighter than the plain images were: the model loses it
    assert dark["balanced_accuracy"] <= clean["balanced_accuracy"] - 0.2 and dark["flip_rate"] >= 0.2
    assert dark["balanced_accuracy_ci_high"] < 0 and dark["balanced_accuracy_p"] < 0.05
    # a rotated bright corner is still a bright corner to a pooled CNN: darkening is the worst transform
    assert table.set_index("transform").loc["rotation", "flip_rate"] < dark["flip_rate"]
    summary = metrics["stress"]["summary"]
    assert summary["n_conditions"] == 3 and summary["worst"]["transform"] == "brightness_down"
    assert (out / "stress.png").is_file()
    assert "## Robustness stress test" in (out / "report.md").read_text()
    assert "Robustness stress test" in (out / "report.html").read_text()
    assert "stress" in capsys.readouterr().out


def test_every_model_sees_the_same_copies_and_a_second_run_gives_the_same_table(corner_run):
    data, run = corner_run
    predictor = dermkit.load_predictor(run / "model")
    preds = predictor.predict_split(dermkit.load_dataset(data), "test", progress=False)
    first, _ = run_stress(predictor, dermkit.load_dataset(data), preds, "gaussian_noise:3,ink:2", n_bootstrap=20,
                          progress=False)
    second, _ = run_stress(predictor, dermkit.load_dataset(data), preds, "gaussian_noise:3,ink:2", n_bootstrap=20,
                           progress=False)
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize("args, words", [
    (["--stress", "sharpness:2"], ["sharpness", "brightness_down"]),
    (["--stress", "hair:9"], ["severity", "1"]),
])
def test_unknown_transforms_and_severities_are_refused_naming_the_valid_ones(corner_run, tmp_path, capsys, args,
                                                                              words):
    data, run = corner_run
    code = main(["evaluate", "--model", str(run / "model"), "--data", str(data), "--out", str(tmp_path / "x"), *args])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "x").exists()


def test_stress_needs_a_model_and_refuses_a_model_without_an_image_input(corner_run, tmp_path, capsys):
    data, run = corner_run
    preds = run / "eval" / "test" / "predictions.csv"
    assert main(["evaluate", "--predictions", str(preds), "--out", str(tmp_path / "x"), "--stress", "quick"]) == 2
    assert "--stress needs --model" in capsys.readouterr().err

    class MetadataOnly:
        method, main_view, classes = "fusion", None, ["corner", "plain"]

    with pytest.raises(Exception, match="reads no image"):
        run_stress(MetadataOnly(), dermkit.load_dataset(data), pd.read_csv(preds), "quick", progress=False)


def test_suite_stress_puts_each_runs_drop_and_worst_transform_in_the_table(corner_run, tmp_path):
    data, _ = corner_run
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"method": "supervised", "name": "a", "data": str(data),
                                   "model": "timm:test_resnet@random", "image_size": 32, "epochs": 1,
                                   "num_workers": 0, "n_bootstrap": 20, "ood_acceptance": None}))
    assert main(["suite", str(cfg), "--out", str(tmp_path / "suite"), "--stress", "brightness_down:4",
                 "--n-bootstrap", "20"]) == 0
    table = pd.read_csv(tmp_path / "suite" / "suite.csv")
    assert "stress: BACC / AUC drop" in table.columns and "stress: worst (flipped)" in table.columns
    assert table["stress: worst (flipped)"].iloc[0].startswith("brightness_down")
    assert (tmp_path / "suite" / "a" / "stress" / "stress.csv").is_file()
