"""The supervised recipe's levers as config keys: mixup/cutmix with soft targets (weighted loss),
RandAugment, test-time augmentation in the Predictor (both inference backends), validation of every
key, and exact resume with every lever on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import dermkit
from conftest import SHARED_DATA, killed_after_first_checkpoint
from dermkit.data.torchdata import randaugment_transform, train_transform, tta_views
from dermkit.engine.losses import WeightedCrossEntropy
from dermkit.errors import ConfigError
from dermkit.experiment import run_experiment
from dermkit.methods.supervised import TrainConfig, make_mixer, mix_batch
from dermkit.models.checkpoint import load_tensors, save_model

ROOT = Path(__file__).resolve().parents[1]


def _config(data, epochs: int = 2, **kw) -> dict:
    cfg = {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
           "batch_size": 8, "num_workers": 0, "n_bootstrap": 20, "augment": "light",
           "engine": {"epochs": epochs, "lr": 3e-3, "precision": "fp32", "warmup_epochs": 0.5}}
    cfg.update(kw)
    return cfg


# ------------------------------------------------------------------------------ soft-target loss


def test_one_hot_soft_targets_give_the_hard_loss():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 3, 3, 2, 0])
    criterion = WeightedCrossEntropy(torch.tensor([0.5, 2.0, 1.0, 4.0]), label_smoothing=0.1)
    soft = torch.nn.functional.one_hot(y, 4).float()
    assert criterion(logits, soft).item() == pytest.approx(criterion(logits, y).item(), rel=1e-6)


def test_mixed_targets_smooth_as_timm_and_weight_by_the_mix():
    from timm.data.mixup import mixup_target

    torch.manual_seed(1)
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    lam, eps, w = 0.7, 0.1, torch.tensor([3.0, 1.0, 0.5])
    mixed = mixup_target(y, 3, lam, smoothing=0.0)  # lam * onehot(y) + (1 - lam) * onehot(y flipped)
    got = WeightedCrossEntropy(w, label_smoothing=eps)(logits, mixed)
    # By hand: timm's smoothed mixed target, and each row weighted by lam * w[a] + (1 - lam) * w[b].
    target = mixup_target(y, 3, lam, smoothing=eps)
    per_row = -(target * torch.log_softmax(logits, dim=1)).sum(1)
    row_w = lam * w[y] + (1 - lam) * w[y.flip(0)]
    assert got.item() == pytest.approx(((per_row * row_w).sum() / row_w.sum()).item(), rel=1e-6)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mix_batch_mixes_images_and_targets_alike(mixup, cutmix):
    config = TrainConfig(mixup=mixup, cutmix=cutmix)
    mixer = make_mixer(config, 3)
    np.random.seed(3)
    x = torch.rand(5, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 1, 0])
    original = x.clone()
    mixed, soft = mix_batch(mixer, x.clone(), y, 3)
    assert soft.shape == (5, 3) and torch.allclose(soft.sum(1), torch.ones(5))
    # The odd image out stays as it is, with its one-hot target.
    torch.testing.assert_close(mixed[4], original[4])
    assert soft[4].tolist() == [1.0, 0.0, 0.0]
    # Rows 0..3 are paired with their mirror (3..0): lam read from the targets must explain the pixels.
    lam = float(soft[0, 0])  # row 0 is class 0, its partner (row 3) class 1
    assert 0 < lam < 1 and soft[0, 1].item() == pytest.approx(1 - lam)
    pair = original[:4].flip(0)
    if mixup:
        torch.testing.assert_close(mixed[:4], lam * original[:4] + (1 - lam) * pair)
    else:  # cutmix: each pixel comes from the image or its partner, the partner's share is 1 - lam
        from_self = (mixed[:4] == original[:4]).all(dim=1)
        from_pair = (mixed[:4] == pair).all(dim=1)
        assert (from_self | from_pair).all()
        assert (~from_self[0]).float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
    # Same seed, same mix: what makes a resumed epoch identical.
    np.random.seed(3)
    again, soft_again = mix_batch(mixer, original.clone(), y, 3)
    torch.testing.assert_close(again, mixed)
    torch.testing.assert_close(soft_again, soft)


def test_mixing_is_off_by_default():
    assert make_mixer(TrainConfig(), 3) is None and make_mixer(TrainConfig(mixup=0.2, mix_prob=0.0), 3) is None


# ------------------------------------------------------------------------------ RandAugment


def test_randaugment_joins_the_train_transform():
    from timm.data.auto_augment import RandAugment
    from torchvision.transforms import v2

    transform = train_transform(32, (0.5,) * 3, (0.5,) * 3, "strong", "rand-m9-n2-mstd0.5")
    kinds = [type(t) for t in transform.transforms]
    assert RandAugment in kinds and v2.ColorJitter not in kinds  # as timm: RandAugment replaces colour jitter
    x = transform(torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    only = train_transform(32, (0.5,) * 3, (0.5,) * 3, "none", "rand-m9")
    assert [type(t) for t in only.transforms][0] is v2.Resize and RandAugment in [type(t) for t in only.transforms]
    # RandAugment at magnitude 10 with every op applied changes the pixels; the spec is what timm reads.
    torch.manual_seed(0)
    ra = randaugment_transform("rand-m10-n3-p1.0-mstd0", 32, (0.5,) * 3)
    assert ra.num_layers == 3 and all(op.prob == 1.0 and op.magnitude == 10 for op in ra.ops)


@pytest.mark.parametrize("spec", ["m9-rand", "rand-x9", "rand-m9.5", "auto"])
def test_bad_randaugment_specs_are_config_errors(spec):
    with pytest.raises(ConfigError, match="randaugment"):
        TrainConfig(randaugment=spec).validate()


# ------------------------------------------------------------------------------ test-time augmentation


def test_tta_views_are_the_flips_and_the_eight_symmetries():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert len(tta_views(x, "none")) == 1
    flips = tta_views(x, "flip")
    a = x.numpy()
    expected = [a, a[..., ::-1], a[..., ::-1, :]]
    assert all(np.array_equal(v.numpy(), e) for v, e in zip(flips, expected))
    views = [v.numpy() for v in tta_views(x, "flip_rot")]
    dihedral = [np.rot90(a, k, axes=(-2, -1)) for k in range(4)]
    dihedral += [d[..., ::-1] for d in dihedral]
    assert len(views) == 8
    for d in dihedral:  # every symmetry of the square, each once
        assert sum(np.array_equal(v, d) for v in views) == 1
    with pytest.raises(ValueError, match="tta"):
        tta_views(x, "rot")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random tiny classifier's model folder (tta none) and a 32x32 lossless test image."""
    from dermkit.models.registry import create_classifier

    torch.manual_seed(0)
    model = create_classifier("timm:test_resnet@random", 3, pretrained=False)
    with torch.no_grad():  # a head far from uniform, so the views' probabilities differ
        model.get_classifier().weight.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp("tta")
    card = {"model": "timm:test_resnet@random", "classes": ["a", "b", "c"], "image_size": 32,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    save_model(folder / "model", model, card)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels[:8, :16] = (250, 20, 20)  # an asymmetric blob, so every view is a different image
    Image.fromarray(pixels).save(folder / "img.png")
    return folder


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("mode,transposes", [
    ("flip", [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM]),
    ("flip_rot", [None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
                  Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
                  Image.Transpose.TRANSVERSE]),
])
def test_tta_averages_the_views_probabilities(tiny_classifier, monkeypatch, backend, mode, transposes):
    monkeypatch.setenv("DERMKIT_INFERENCE", backend)
    image = tiny_classifier / "img.png"
    # By hand: each view saved as its own image, predicted without TTA, probabilities averaged.
    plain = dermkit.load_predictor(tiny_classifier / "model")
    assert plain.tta == "none"
    views = []
    for i, t in enumerate(transposes):
        view = Image.open(image) if t is None else Image.open(image).transpose(t)
        view.save(tiny_classifier / f"view_{mode}_{i}.png")
        views.append(tiny_classifier / f"view_{mode}_{i}.png")
    each = plain.predict_paths(views)
    assert np.ptp(each, axis=0).max() > 1e-3  # the views really disagree
    plain.set_tta(mode)
    np.testing.assert_allclose(plain.predict_paths([image])[0], each.mean(axis=0), atol=1e-5)
    # Saved with the model: a reloaded predictor (evaluate --model, predict, serve) uses it.
    plain.save(tiny_classifier / f"model_{mode}")
    reloaded = dermkit.load_predictor(tiny_classifier / f"model_{mode}")
    assert json.loads((tiny_classifier / f"model_{mode}" / "model.json").read_text())["tta"] == mode
    np.testing.assert_allclose(reloaded.predict_paths([image])[0], each.mean(axis=0), atol=1e-5)


def test_set_tta_refuses_unknown_modes(tiny_classifier):
    with pytest.raises(ConfigError, match="tta must be"):
        dermkit.load_predictor(tiny_classifier / "model").set_tta("rotate")


def test_evaluate_command_uses_the_saved_tta(tiny_dataset, tmp_path, capsys):
    from dermkit.cli import main

    out = tmp_path / "run"
    run_experiment(_config(tiny_dataset, epochs=1, tta="flip_rot"), out, progress=False)
    predictor = dermkit.load_predictor(out / "model")
    assert predictor.tta == "flip_rot"
    expected = predictor.predict_split(tiny_dataset, "test", progress=False)
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(tiny_dataset), "--out",
                 str(tmp_path / "eval"), "--n-bootstrap", "10"]) in (0, None)
    saved = __import__("pandas").read_csv(next((tmp_path / "eval").rglob("predictions.csv")))
    np.testing.assert_allclose(saved.filter(like="prob:").to_numpy(), expected.filter(like="prob:").to_numpy(),
                               atol=1e-5)
    predictor.set_tta("none")
    plain = predictor.predict_split(tiny_dataset, "test", progress=False)
    assert not np.allclose(plain.filter(like="prob:").to_numpy(), expected.filter(like="prob:").to_numpy())


# ------------------------------------------------------------------------------ config keys


@pytest.mark.parametrize("change,message", [
    ({"mixup": -0.1}, "mixup must be an alpha"),
    ({"cutmix": float("inf")}, "cutmix must be an alpha"),
    ({"mix_prob": 1.5}, "mix_prob must be a probability"),
    ({"tta": "rot90"}, "tta must be one of none, flip, flip_rot"),
    ({"randaugment": "rand-q3"}, "randaugment 'rand-q3'"),
    ({"mixup": "lots"}, "mixup must be a number"),
])
def test_bad_lever_values_are_refused_before_writing(tiny_dataset, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(_config(tiny_dataset, **change), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_is_exact_with_every_lever_on(tiny_dataset, tmp_path, monkeypatch):

    cfg = _config(tiny_dataset, mixup=0.4, cutmix=1.0, mix_prob=0.8, randaugment="rand-m9-n2-mstd0.5",
                  tta="flip", imbalance="weighted_loss", ema=0.9, layer_decay=0.75, max_steps_per_epoch=3)
    straight = tmp_path / "straight"
    run_experiment(cfg, straight, progress=False)

    split = tmp_path / "split"
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, split, progress=False)
    assert json.loads((split / "checkpoints/last.json").read_text())["loop"]["epoch"] == 1
    run_experiment(cfg, split, resume=True, progress=False)

    a = load_tensors(straight / "checkpoints/last.safetensors")
    b = load_tensors(split / "checkpoints/last.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    history_a = json.loads((straight / "checkpoints/last.json").read_text())["loop"]["history"]
    history_b = json.loads((split / "checkpoints/last.json").read_text())["loop"]["history"]
    assert [h["train_loss"] for h in history_a] == pytest.approx([h["train_loss"] for h in history_b], abs=1e-6)
    # The levers are really on: the same run without mixing trains differently.
    plain = tmp_path / "plain"
    run_experiment({**cfg, "mixup": 0.0, "cutmix": 0.0}, plain, progress=False)
    history_c = json.loads((plain / "checkpoints/last.json").read_text())["loop"]["history"]
    assert history_c[0]["train_loss"] != pytest.approx(history_a[0]["train_loss"], abs=1e-4)


def test_num_workers_keep_mixing_and_randaugment_reproducible(tiny_dataset, tmp_path):
    cfg = _config(tiny_dataset, epochs=1, mixup=0.4, randaugment="rand-m9-mstd0.5", num_workers=1,
                  max_steps_per_epoch=3)
    a = run_experiment(cfg, tmp_path / "a", progress=False)
    b = run_experiment(cfg, tmp_path / "b", progress=False)
    assert a["best_val_score"] == b["best_val_score"]
    ta, tb = (load_tensors(tmp_path / d / "model/model.safetensors") for d in "ab")
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------ the shipped config


def test_reference_config_parses_with_every_lever():
    from dermkit.methods import get_method

    path = ROOT / "configs/supervised/ham10000_reference.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw.pop("method") == "supervised"
    method = get_method("supervised")
    config = method.config(dict(raw), str(path))
    # the shipped recipe: what the file says is what the run gets
    assert config.tta == raw["tta"] and config.imbalance == raw["imbalance"]
    assert config.engine.layer_decay == raw["engine"]["layer_decay"]
    assert config.mixing == bool(raw["mixup"] or raw["cutmix"])
    # every lever the file lists is a key of that same config: switching each on still parses
    levers = dict(raw, mixup=0.2, cutmix=1.0, randaugment="rand-m9-mstd0.5", train_last=7,
                  model="efficientnet_lite2", imbalance="balanced_sampler", tta="flip",
                  engine=dict(raw["engine"], ema=0.998, epochs=1))
    config = method.config(levers, str(path))
    assert config.mixing and config.randaugment == "rand-m9-mstd0.5" and config.tta == "flip"
    assert config.engine.ema == 0.998 and config.train_last == 7


@pytest.mark.skipif(SHARED_DATA is None, reason="shared datasets not found (set DERMKIT_DATA)")
def test_reference_config_passes_the_check():
    from dermkit.experiment import check_configs

    [(_, warnings)] = check_configs([ROOT / "configs/supervised/ham10000_reference.yaml"])
    assert warnings == []
