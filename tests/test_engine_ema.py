"""The engine's exponential moving average of the weights (``ema:``): it is the average that is
validated, selected and saved; the average equals a hand computation; resume with it stays exact."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import killed_after_first_checkpoint
from dermkit.engine.loop import Engine, EngineConfig
from dermkit.errors import ConfigError


def _engine(tmp_path, **kw):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    config = EngineConfig(epochs=kw.pop("epochs", 2), lr=0.1, warmup_epochs=0, max_grad_norm=None, channels_last=False,
                          precision="fp32", device="cpu", select_metric="score", **kw)
    return Engine(model, config, tmp_path, progress=False)


def _fit(engine, seen, resume=False):
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1] * 4)

    def batches(epoch):
        for i in range(0, 8, 4):
            yield x[i:i + 4], y[i:i + 4]

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    def validate(m):
        seen.append(copy.deepcopy(m.state_dict()))
        return {"score": float(len(seen))}  # every epoch is the best: on_best sees each epoch's weights

    saved = []
    engine.fit(batches, loss_fn, validate, lambda m, metrics: saved.append(copy.deepcopy(m.state_dict())),
               steps_per_epoch=2, resume=resume)
    return saved


def test_ema_is_validated_selected_and_equals_a_hand_computation(tmp_path):
    engine = _engine(tmp_path, ema=0.5, ema_warmup=False)
    raw = []
    original_step = engine._optimizer_step

    def step_and_record(factor):
        original_step(factor)
        raw.append({k: v.detach().clone() for k, v in engine.model.state_dict().items()})

    engine._optimizer_step = step_and_record
    initial = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}
    seen = []
    saved = _fit(engine, seen)
    # By hand: timm's first update copies the weights (decay 0 at step 1), then ema = 0.5 ema + 0.5 w.
    ema = {k: v.clone() for k, v in initial.items()}
    for i, weights in enumerate(raw):
        d = 0.0 if i == 0 else 0.5
        ema = {k: d * ema[k] + (1 - d) * weights[k] for k in ema}
    for key in ema:
        torch.testing.assert_close(saved[-1][key], ema[key], rtol=0, atol=1e-6)
        torch.testing.assert_close(seen[-1][key], ema[key], rtol=0, atol=1e-6)
    assert any((saved[-1][k] - raw[-1][k]).abs().max() > 1e-6 for k in ema)  # not the raw weights
    tensors_path = tmp_path / "checkpoints" / "last.safetensors"
    from dermkit.models.checkpoint import load_tensors

    assert any(k.startswith("ema.") for k in load_tensors(tensors_path))


def test_resume_with_ema_is_exact(tmp_path, monkeypatch):
    straight = _engine(tmp_path / "a", ema=0.9)
    _fit(straight, [])
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        _fit(_engine(tmp_path / "b", ema=0.9), [])
    assert json.loads((tmp_path / "b/checkpoints/last.json").read_text())["loop"]["epoch"] == 1
    resumed = _engine(tmp_path / "b", ema=0.9, epochs=2)
    _fit(resumed, [], resume=True)
    for a, b in ((straight.ema.module, resumed.ema.module), (straight.model, resumed.model)):
        for key, value in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=1e-6)


def test_bad_ema_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="ema"):
        _engine(tmp_path, ema=1.5)


def test_layer_decay_gives_earlier_blocks_smaller_learning_rates(tmp_path):
    import timm

    model = timm.create_model("test_resnet", num_classes=3)
    config = EngineConfig(epochs=1, lr=0.1, layer_decay=0.5, channels_last=False, precision="fp32", device="cpu")
    engine = Engine(model, config, tmp_path, progress=False)
    scales = sorted({g["lr_scale"] for g in engine.optimizer.param_groups})
    assert scales[-1] == 1.0 and scales[0] < 0.2 and all(b == pytest.approx(a * 2) for a, b in zip(scales, scales[1:]))
    head = {id(p) for p in model.get_classifier().parameters()}
    assert all(g["lr_scale"] == 1.0 for g in engine.optimizer.param_groups if {id(p) for p in g["params"]} & head)
    with pytest.raises(ConfigError, match="layer_decay"):
        Engine(nn.Linear(2, 2), EngineConfig(layer_decay=0.5, channels_last=False), tmp_path, progress=False)
