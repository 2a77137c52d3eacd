"""`precision: auto` on a CPU decides by speed, not by a flag (issue 29 item 4): the choice rule, its
cache, a probe that leaves the training untouched, and a resumed run that keeps its precision."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import dermkit.runtime as runtime
from dermkit.engine.loop import Engine, EngineConfig
from dermkit.runtime import choose_cpu_precision


def test_no_native_bf16_means_fp32_without_measuring(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    dtype, record = choose_cpu_precision("m", lambda d: pytest.fail("measured"), cache_file=tmp_path / "p.json")
    assert dtype is None and record["precision"] == "fp32" and "emulated" in record["reason"]
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("fp32_s, bf16_s, want", [(1.0, 0.4, "bf16"), (1.0, 0.95, "fp32"), (1.0, 1.3, "fp32")])
def test_bf16_only_when_clearly_faster_and_cached(monkeypatch, tmp_path, fp32_s, bf16_s, want):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    calls = []

    def measure(dtype):
        calls.append(dtype)
        return bf16_s if dtype is torch.bfloat16 else fp32_s

    cache = tmp_path / "precision.json"
    dtype, record = choose_cpu_precision("Net trainable=10", measure, cache_file=cache)
    assert record["precision"] == want and (dtype is torch.bfloat16) == (want == "bf16")
    assert record["bf16_speedup"] == pytest.approx(fp32_s / bf16_s, abs=1e-3) and record["probed"]
    assert calls == [None, torch.bfloat16]
    # the second time the same model on the same CPU is not measured again
    dtype2, again = choose_cpu_precision("Net trainable=10", lambda d: pytest.fail("measured twice"), cache_file=cache)
    assert dtype2 == dtype and again["cached"] and again["precision"] == want
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and runtime.cpu_identity() in next(iter(stored))
    # another model shape is measured on its own
    choose_cpu_precision("Other trainable=99", measure, cache_file=cache)
    assert len(calls) == 4 and len(json.loads(cache.read_text())) == 2


def test_a_damaged_cache_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    cache = tmp_path / "precision.json"
    cache.write_text("{not json")
    _, record = choose_cpu_precision("m", lambda d: 1.0, cache_file=cache)
    assert record["probed"] and json.loads(cache.read_text())


def _train(out, precision, epochs=2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    engine = Engine(model, EngineConfig(epochs=epochs, lr=0.05, warmup_epochs=0, channels_last=False,
                                        precision=precision, device="cpu", select_metric="loss", select_mode="min"),
                    out, progress=False)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)

    def batches(epoch):
        for i in range(0, 32, 8):
            yield x[i:i + 8], y[i:i + 8]

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    def validate(m):
        with torch.no_grad():
            return {"loss": float(nn.functional.cross_entropy(m(x), y))}

    state = engine.fit(batches, loss_fn, validate, lambda m, metrics: None, steps_per_epoch=4)
    return engine, state


def test_the_probe_leaves_training_untouched_and_resume_keeps_the_choice(monkeypatch, tmp_path):
    """With the rule forced to fp32, an auto run (which times the first batch on the model: BatchNorm
    statistics, gradients and the RNG are put back) gives exactly the weights of an fp32 run."""
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtime, "BF16_MIN_SPEEDUP", 1e9)
    auto, state = _train(tmp_path / "auto", "auto")
    fp32, _ = _train(tmp_path / "fp32", "fp32")
    assert state.precision["precision"] == "fp32" and state.precision["probed"]
    for (name, a), (_, b) in zip(auto.module.state_dict().items(), fp32.module.state_dict().items()):
        assert torch.equal(a, b), name
    meta = json.loads((tmp_path / "auto" / "checkpoints" / "last.json").read_text())
    assert meta["loop"]["precision"]["precision"] == "fp32"

    # a resumed run takes the recorded precision and does not probe again
    import dermkit.engine.loop as loop

    record = {**state.precision, "precision": "bf16"}
    meta["loop"]["precision"] = record
    meta["loop"]["epoch"] = 1
    (tmp_path / "auto" / "checkpoints" / "last.json").write_text(json.dumps(meta))
    monkeypatch.setattr(loop, "choose_cpu_precision", lambda *a, **k: pytest.fail("probed on resume"))
    engine = Engine(nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)),
                    EngineConfig(epochs=2, lr=0.05, warmup_epochs=0, channels_last=False, precision="auto",
                                 device="cpu", select_metric="loss", select_mode="min"),
                    tmp_path / "auto", progress=False)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    engine.fit(lambda e: iter([(x[:8], y[:8])]), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
               lambda m: {"loss": 1.0}, lambda m, metrics: None, steps_per_epoch=1, resume=True)
    assert engine.amp_dtype is torch.bfloat16 and engine.state.precision["precision"] == "bf16"


def test_fixed_precisions_and_gpus_are_not_probed(monkeypatch, tmp_path):
    import dermkit.engine.loop as loop

    monkeypatch.setattr(loop, "choose_cpu_precision", lambda *a, **k: pytest.fail("probed"))
    _, state = _train(tmp_path / "fp32", "fp32", epochs=1)
    assert state.precision is None
