"""The supervised method's Breslow thickness head (Derma-Fusion-Net's dual-head model on a timm
backbone): masked loss, the head on pre-logits features, target parsing, a run end to end with the
thickness report, `dermkit predict`'s "predicted class / thickness / confidence", exact resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import dermkit
from conftest import SHARED_DATA, killed_after_first_checkpoint, make_dataset
from dermkit.errors import ConfigError, DataError
from dermkit.experiment import run_experiment
from dermkit.models.checkpoint import load_tensors
from dermkit.models.thickness import (
    attach_thickness_head,
    forward_with_thickness,
    thickness_loss,
    thickness_values,
)


def _with_thickness(tmp_path, kind: str = "ordinal", name: str = "thick"):
    """The tiny dataset where melanomas (only) have a Breslow bin (ordinal) or a thickness in mm."""
    root = make_dataset(tmp_path, name=name)
    df = pd.read_csv(root / "metadata.csv", dtype=str)
    rng = np.random.default_rng(0)
    mel = df["diagnosis"] == "mel"
    if kind == "ordinal":
        df["breslow_ordinal"] = np.where(mel, rng.integers(0, 4, len(df)).astype(str), None)
    else:
        df["thickness"] = np.where(mel, np.round(rng.uniform(0.2, 3.0, len(df)), 2).astype(str), None)
    df.to_csv(root / "metadata.csv", index=False)
    return root


def _config(root, epochs: int = 2, **kw) -> dict:
    cfg = {"method": "supervised", "data": str(root), "model": "timm:test_resnet@random", "image_size": 32,
           "batch_size": 8, "num_workers": 0, "n_bootstrap": 20, "augment": "light", "thickness": "ordinal",
           "engine": {"epochs": epochs, "lr": 3e-3, "precision": "fp32", "warmup_epochs": 0.5}}
    cfg.update(kw)
    return cfg


def _tiny_model(kind: str):
    from dermkit.models.registry import create_classifier

    torch.manual_seed(0)
    model = create_classifier("timm:test_resnet@random", 3, pretrained=False)
    attach_thickness_head(model, kind, 4)
    return model.eval()


# ------------------------------------------------------------------------------ the loss


def test_ordinal_loss_ignores_rows_without_a_target():
    raw = torch.tensor([[2.0, 0.5, -1.0], [9.0, 9.0, 9.0], [0.3, -0.2, -2.0], [-5.0, 4.0, 1.0]], requires_grad=True)
    target = torch.tensor([2.0, float("nan"), 0.0, float("nan")])
    loss = thickness_loss("ordinal", raw, target)
    # By hand: CORAL = per row, sum over thresholds k of BCE(logit_k, [bin > k]); mean over rows 0 and 2.
    def bce(z, y):
        return -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    row0 = bce(2.0, 1) + bce(0.5, 1) + bce(-1.0, 0)
    row2 = bce(0.3, 0) + bce(-0.2, 0) + bce(-2.0, 0)
    assert loss.item() == pytest.approx((row0 + row2) / 2, rel=1e-6)
    loss.backward()
    assert raw.grad[[1, 3]].abs().sum() == 0 and raw.grad[[0, 2]].abs().sum() > 0
    # Whatever the head says on rows without a target, the loss is the same.
    other = raw.detach().clone()
    other[[1, 3]] = torch.randn(2, 3) * 10
    assert thickness_loss("ordinal", other, target).item() == pytest.approx(loss.item(), rel=1e-6)


def test_regression_loss_is_standardised_and_masked():
    raw = torch.tensor([0.5, 100.0, -0.2], requires_grad=True)
    target = torch.tensor([2.0, float("nan"), 0.5])
    stats = {"mean": 1.0, "std": 2.0}
    loss = thickness_loss("regression", raw, target, stats)
    z = torch.tensor([(2.0 - 1) / 2, (0.5 - 1) / 2])
    expected = torch.nn.functional.smooth_l1_loss(torch.tensor([0.5, -0.2]), z)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert raw.grad[1] == 0


def test_a_batch_without_targets_gives_zero_loss_but_a_gradient_graph():
    raw = torch.randn(4, 3, requires_grad=True)
    loss = thickness_loss("ordinal", raw, torch.full((4,), float("nan")))
    assert loss.item() == 0
    loss.backward()
    assert raw.grad is not None and raw.grad.abs().sum() == 0


def test_thickness_values_read_bins_and_mm():
    point, expected = thickness_values("ordinal", np.array([[5.0, 5.0, -5.0], [-5.0, -5.0, -5.0]]), None)
    assert point.tolist() == [2, 0] and expected == pytest.approx([2.0, 0.02], abs=0.01)
    mm, _ = thickness_values("regression", np.array([1.0, -3.0]), {"mean": 1.0, "std": 0.5})
    assert mm.tolist() == [1.5, 0.0]  # clamped at 0 mm


# ------------------------------------------------------------------------------ the head


@pytest.mark.parametrize("kind,width", [("ordinal", 3), ("regression", None)])
def test_head_reads_the_pre_logits_features_and_leaves_the_class_head_alone(kind, width):
    model = _tiny_model(kind)
    x = torch.randn(2, 3, 32, 32)
    logits, raw = forward_with_thickness(model, x)
    torch.testing.assert_close(logits, model(x))
    assert raw.shape == ((2, width) if width else (2,))
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(raw, model.thickness_head(features))


def test_head_refuses_a_model_without_a_linear_head():
    with pytest.raises(ConfigError, match="linear"):
        attach_thickness_head(torch.nn.Conv2d(3, 3, 1), "ordinal")


# ------------------------------------------------------------------------------ targets and config


def test_targets_are_parsed_and_bad_values_named(tmp_path):
    from dermkit.data import load_card
    from dermkit.methods.supervised import thickness_targets

    root = _with_thickness(tmp_path)
    card = load_card(root)
    rows = card.rows("train")
    values = thickness_targets(card, rows, "breslow_ordinal", "ordinal")
    mel = (rows["diagnosis"] == "mel").to_numpy()
    assert np.isfinite(values[mel]).all() and np.isnan(values[~mel]).all()
    df = pd.read_csv(root / "metadata.csv", dtype=str)
    first_mel_train = df.index[(df["diagnosis"] == "mel") & (df["split"] == "train")][0]
    df.loc[first_mel_train, "breslow_ordinal"] = "7"
    df.to_csv(root / "metadata.csv", index=False)
    card = load_card(root)
    with pytest.raises(DataError, match=rf"line {first_mel_train + 2}: breslow_ordinal = '7'"):
        thickness_targets(card, card.rows("train"), "breslow_ordinal", "ordinal")
    with pytest.raises(ConfigError, match="thickness_column 'depth'"):
        thickness_targets(card, card.rows("train"), "depth", "regression")


@pytest.mark.parametrize("change,message", [
    ({"thickness": "depth"}, "thickness must be ordinal, regression"),
    ({"thickness": None, "thickness_column": "x"}, "thickness_column is set"),
    ({"mixup": 0.2}, "mixup/cutmix"),
    ({"alpha": 0.0, "beta": 0.0}, "alpha and beta"),
    ({"beta": -1.0}, "alpha and beta"),
])
def test_bad_thickness_configs_are_refused_before_writing(tmp_path, change, message):
    root = _with_thickness(tmp_path)
    with pytest.raises(ConfigError, match=message):
        run_experiment(_config(root, **change), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_missing_thickness_column_fails_the_check(tmp_path):
    root = make_dataset(tmp_path)  # no breslow_ordinal column
    with pytest.raises(ConfigError, match="breslow_ordinal"):
        run_experiment(_config(root), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ end to end


def test_ordinal_run_reports_thickness_and_predict_prints_it(tmp_path, capsys):
    from dermkit.cli import main

    root = _with_thickness(tmp_path)
    out = tmp_path / "run"
    summary = run_experiment(_config(root, task="melanoma_vs_rest", tta="flip"), out, progress=False)
    assert summary["thickness"]["kind"] == "ordinal" and {"qwk", "accuracy", "mae_bins"} <= set(summary["thickness"])
    assert "QWK" in summary["table_extra"]["thickness (test)"]
    for name in ("thickness.json", "thickness.md", "thickness_agreement.png", "thickness_distribution.png",
                 "report.md", "metrics.json"):
        assert (out / "eval" / "test" / name).is_file(), name
    t = json.loads((out / "eval/test/thickness.json").read_text())
    assert t["n"] == 6  # the 6 test melanomas; other rows have no target
    history = pd.read_csv(out / "history.csv")
    assert "val_thickness_qwk" in history.columns

    card = json.loads((out / "model/model.json").read_text())
    assert card["thickness"]["kind"] == "ordinal" and card["thickness"]["column"] == "breslow_ordinal"
    assert card["tta"] == "flip"
    predictor = dermkit.load_predictor(out / "model")
    assert type(predictor).__name__ == "ThicknessPredictor" and predictor.tta == "flip"

    # The report's predictions table carries the thickness, equal to the predictor's.
    saved = pd.read_csv(out / "eval/test/predictions.csv")
    preds = predictor.predict(root, split="test")
    np.testing.assert_allclose(saved["thickness"].to_numpy(), preds.thickness)
    np.testing.assert_allclose(saved.filter(like="prob:").to_numpy(), preds.proba, atol=1e-5)
    table = pd.read_csv(out / "eval/test/thickness_predictions.csv")
    mel = saved[saved["target"] == "mel"]
    assert table["thickness_pred"].tolist() == mel["thickness"].tolist()

    image = root / "images" / "mel_test_00.jpg"
    details = predictor.predict_details([image])[0]
    assert list(details) == ["predicted class", "thickness", "confidence"]
    assert details["predicted class"] in ("other", "mel") and "bin" in details["thickness"]
    p = predictor.predict_paths([image])[0]
    assert details["confidence"] == f"{p.max():.2f}"

    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model"), str(image)]) in (0, None)
    printed = capsys.readouterr().out
    assert "predicted class:" in printed and "thickness:" in printed and "confidence:" in printed


def test_regression_run_predicts_mm(tmp_path):
    root = _with_thickness(tmp_path, "regression")
    out = tmp_path / "run"
    summary = run_experiment(_config(root, epochs=1, thickness="regression"), out, progress=False)
    assert summary["thickness"]["kind"] == "regression" and {"mae", "rmse", "mape"} <= set(summary["thickness"])
    card = json.loads((out / "model/model.json").read_text())
    stats = card["thickness"]["stats"]
    train = pd.read_csv(root / "metadata.csv")
    train = train[(train["split"] == "train") & train["thickness"].notna()]["thickness"]
    assert stats["mean"] == pytest.approx(train.mean()) and stats["std"] == pytest.approx(train.std())
    predictor = dermkit.load_predictor(out / "model")
    details = predictor.predict_details([root / "images" / "nv_test_00.jpg"])[0]
    assert details["thickness"].endswith(" mm") and float(details["thickness"].split()[0]) >= 0


def test_model_folders_without_a_head_load_as_before(tmp_path):
    from dermkit.models.checkpoint import save_model
    from dermkit.models.registry import create_classifier, load_classifier

    model = create_classifier("timm:test_resnet@random", 3, pretrained=False)
    card = {"model": "timm:test_resnet@random", "classes": ["a", "b", "c"], "image_size": 32,
            "mean": [0.5] * 3, "std": [0.5] * 3}
    save_model(tmp_path / "old", model, card)
    loaded, read = load_classifier(tmp_path / "old")
    assert not hasattr(loaded, "thickness_head") and read["classes"] == ["a", "b", "c"]
    predictor = dermkit.load_predictor(tmp_path / "old")
    assert type(predictor).__name__ == "SupervisedPredictor" and predictor.tta == "none"
    assert not hasattr(predictor, "predict_details")
    # ... and a folder with a head loads with it (weights strict), also as an image encoder folder.
    thick = _tiny_model("ordinal")
    save_model(tmp_path / "new", thick, {**card, "thickness": {"kind": "ordinal", "bins": ["a", "b", "c", "d"]}})
    loaded, _ = load_classifier(tmp_path / "new")
    torch.testing.assert_close(loaded.thickness_head.bias, thick.thickness_head.bias)
    from dermkit.models.encoders import load_encoder

    assert load_encoder(str(tmp_path / "new")).encode_image(torch.zeros(1, 3, 32, 32)).shape[0] == 1


def test_resume_is_exact_with_the_thickness_head_and_every_lever(tmp_path, monkeypatch):

    root = _with_thickness(tmp_path)
    cfg = _config(root, randaugment="rand-m9-n2-mstd0.5", tta="flip_rot", imbalance="balanced_sampler",
                  ema=0.9, layer_decay=0.75, max_steps_per_epoch=3)
    straight = tmp_path / "straight"
    run_experiment(cfg, straight, progress=False)

    split = tmp_path / "split"
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, split, progress=False)
    run_experiment(cfg, split, resume=True, progress=False)

    a = load_tensors(straight / "checkpoints/last.safetensors")
    b = load_tensors(split / "checkpoints/last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("model.thickness_head.") for k in a)
    assert any(k.startswith("ema.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    history_a = json.loads((straight / "checkpoints/last.json").read_text())["loop"]["history"]
    history_b = json.loads((split / "checkpoints/last.json").read_text())["loop"]["history"]
    assert [h["train_loss"] for h in history_a] == pytest.approx([h["train_loss"] for h in history_b], abs=1e-6)


# ------------------------------------------------------------------------------ the shipped config


def test_derm7pt_config_parses():
    from pathlib import Path

    from dermkit.methods import get_method

    path = Path(__file__).resolve().parents[1] / "configs/supervised/derm7pt_melanoma_breslow.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw.pop("method") == "supervised"
    config = get_method("supervised").config(raw, str(path))
    assert config.thickness_kind == "ordinal" and config.task == "melanoma_vs_rest" and config.train_last is None


@pytest.mark.skipif(SHARED_DATA is None or not (SHARED_DATA / "derm7pt" / "metadata.csv").is_file(),
                    reason="Derm7pt not found in the shared datasets (set DERMKIT_DATA)")
def test_derm7pt_config_passes_the_check():
    from pathlib import Path

    from dermkit.experiment import check_configs

    path = Path(__file__).resolve().parents[1] / "configs/supervised/derm7pt_melanoma_breslow.yaml"
    [(name, warnings)] = check_configs([path])
    assert warnings == []
