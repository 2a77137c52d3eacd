"""The training engine end to end on the tiny dataset: learns, writes a run folder, resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dermkit
from conftest import killed_after_first_checkpoint
from dermkit.engine.loop import lr_factor
from dermkit.engine.losses import WeightedCrossEntropy, class_weights
from dermkit.errors import ConfigError, DataError
from dermkit.experiment import run_experiment
from dermkit.methods.supervised import TrainConfig
from dermkit.models.checkpoint import load_tensors
from dermkit.models.freeze import train_only_last
from dermkit.models.registry import create_classifier


def tiny_config(data, epochs=3, **engine) -> dict:
    # resnet18 at 32 px is the cheapest real timm network; fp32 keeps the comparison exact.
    return {"method": "supervised", "data": str(data), "model": "resnet18", "image_size": 32, "batch_size": 8,
            "num_workers": 0, "n_bootstrap": 50, "augment": "light",
            "engine": {"epochs": epochs, "lr": 3e-3, "precision": "fp32", "warmup_epochs": 0.5, **engine}}


def train_classifier(config: dict, out, resume=False, progress=False) -> dict:
    return run_experiment(config, out, resume=resume, progress=progress)


def test_lr_schedule_warms_up_then_decays_to_floor():
    total, warm = 100, 10
    factors = [lr_factor(s, total, warm, 0.01) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # monotone decay after warm-up
    assert factors[-1] == pytest.approx(0.01)


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_weighted_loss_weights_samples_not_smoothing():
    logits = torch.zeros(4, 3)
    target = torch.tensor([0, 0, 0, 1])
    loss = WeightedCrossEntropy(torch.tensor([0.5, 2.0, 9.0]), label_smoothing=0.1)(logits, target)
    assert loss.item() == pytest.approx(np.log(3))  # uniform logits: log C whatever the weights
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0]])
    per = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0]), reduction="none")
    got = WeightedCrossEntropy(torch.tensor([1.0, 3.0, 1.0]))(logits, torch.tensor([0, 0]))
    assert got.item() == pytest.approx(per.mean().item())
    got = WeightedCrossEntropy(torch.tensor([1.0, 3.0, 1.0]))(logits, torch.tensor([0, 1]))
    per = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), reduction="none")
    assert got.item() == pytest.approx((per[0] + 3 * per[1]).item() / 4)


def test_partial_finetuning_freezes_early_units():
    model = create_classifier("resnet18", 3, pretrained=False)
    frozen = train_only_last(model, 2)  # layer4 + fc learn
    assert all(not p.requires_grad for unit in frozen for p in unit.parameters())
    assert (all(p.requires_grad for p in model.fc.parameters())
            and all(p.requires_grad for p in model.layer4.parameters()))
    assert not any(p.requires_grad for p in model.layer3.parameters())
    with pytest.raises(ConfigError):
        train_only_last(model, 99)


def test_pretrained_efficientnet_lite_loads_offline():
    scratch = create_classifier("efficientnet_lite0", 5, pretrained=False)
    torch.manual_seed(0)
    pretrained = create_classifier("efficientnet_lite0", 5)
    stem = pretrained.conv_stem.weight
    assert not torch.equal(stem, scratch.conv_stem.weight)
    # ImageNet first-layer filters are smooth edge/colour detectors, far from random init scale.
    assert stem.abs().mean() > 3 * scratch.conv_stem.weight.abs().mean() or stem.std() > scratch.conv_stem.weight.std()
    assert pretrained.classifier.out_features == 5


def test_train_beats_chance_and_writes_run_folder(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    summary = train_classifier(tiny_config(tiny_dataset, epochs=4), out, progress=False)
    # Three colour classes: chance is 1/3 balanced accuracy.
    assert summary["test"]["balanced_accuracy"] > 0.6, summary
    for name in ("config.yaml", "history.csv", "summary.json", "model/model.safetensors", "model/model.json",
                 "checkpoints/last.safetensors", "checkpoints/last.json", "eval/test/metrics.json",
                 "eval/test/report.html", "eval/test/confusion_matrix.png", "eval/test/roc.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((out / "eval/test/metrics.json").read_text())
    assert (metrics["ci"]["balanced_accuracy"]["low"] <= metrics["balanced_accuracy"]
            <= metrics["ci"]["balanced_accuracy"]["high"])
    assert metrics["bootstrap"]["grouped"] is True  # the tiny card has a lesion_id group column

    # Round trip: the saved model predicts what the run reported.
    predictor = dermkit.load_predictor(out / "model")
    from dermkit.data import load_card

    preds = predictor.predict_split(load_card(tiny_dataset), "test", progress=False)
    saved = __import__("pandas").read_csv(out / "eval/test/predictions.csv")
    np.testing.assert_allclose(preds.filter(like="prob:").to_numpy(), saved.filter(like="prob:").to_numpy(), atol=1e-5)


def test_resume_continues_to_the_same_result(tiny_dataset, tmp_path, monkeypatch):

    straight = tmp_path / "straight"
    train_classifier(tiny_config(tiny_dataset, epochs=2), straight, progress=False)

    # Kill the second run right after its first checkpoint, then resume it.
    split = tmp_path / "split"
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_config(tiny_dataset, epochs=2), split, progress=False)
    assert json.loads((split / "checkpoints/last.json").read_text())["loop"]["epoch"] == 1
    train_classifier(tiny_config(tiny_dataset, epochs=2), split, resume=True, progress=False)

    a = load_tensors(straight / "checkpoints/last.safetensors")
    b = load_tensors(split / "checkpoints/last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    history_a = json.loads((straight / "checkpoints/last.json").read_text())["loop"]["history"]
    history_b = json.loads((split / "checkpoints/last.json").read_text())["loop"]["history"]
    assert [h["train_loss"] for h in history_a] == pytest.approx([h["train_loss"] for h in history_b], abs=1e-6)


def test_unknown_config_key_is_reported():
    with pytest.raises(ConfigError, match="unknown key.*lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 0.1})


def test_shipped_configs_parse_and_match_benchmark():
    from pathlib import Path

    import yaml

    from dermkit.experiment import check_configs, load_config
    from dermkit.methods.supervised import benchmark_config

    root = Path(__file__).resolve().parents[1] / "configs"
    shipped = sorted(root.glob("**/*.yaml"))
    # one dialect: every config names its method, or (a study of several runs) its experiment
    raws = {p: yaml.safe_load(p.read_text()) for p in shipped}
    studies = [p for p, raw in raws.items() if raw.get("experiment")]
    assert all(raw.get("method") for p, raw in raws.items() if p not in studies)
    # Configs whose data an earlier step writes (the bias experiment's inked copies under runs/) are
    # refused by --check exactly as `run` would refuse them until that step has run.
    generated = [p for p, raw in raws.items()
                 if any(str(d).startswith("runs/") for d in [raw.get("data"), *(raw.get("eval_data") or [])])]
    runnable = [p for p in shipped if p not in studies and p not in generated]
    assert len(check_configs(runnable)) == len(runnable)
    for p in generated:
        if not all((root.parent / str(d)).is_dir() for d in [raws[p]["data"], *(raws[p].get("eval_data") or [])]
                   if str(d).startswith("runs/")):
            with pytest.raises(DataError, match="does not exist"):
                check_configs([p])
    from dermkit.bias_experiment import load_bias_config

    assert [p.name for p in studies] == ["bias_experiment.yaml"]
    assert all(load_bias_config(p)["model"] for p in studies)
    raw = {k: v for k, v in load_config(root / "benchmark_lite0_ham10000.yaml").items()
           if k not in ("method", "name", "_source")}
    bench = {k: v for k, v in benchmark_config().items() if k not in ("method", "name")}
    assert TrainConfig.from_dict(raw).to_dict() == TrainConfig.from_dict(bench).to_dict()
