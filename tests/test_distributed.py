"""torch.distributed in the one engine, on 2 CPU processes (gloo): the same weights as one process
with the same global batch (uneven slices included), and a distributed run killed after an epoch
resumes to the same result. Rank 0 alone writes."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dermkit.engine.batching import index_batches
from dermkit.engine.loop import Engine, EngineConfig
from dermkit.models.checkpoint import load_tensors
from dermkit.runtime import epoch_seed

N, BATCH = 14, 7  # two steps an epoch; 7 rows split 4 + 3 over two processes


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, 5, generator=g), torch.randint(0, 3, (N,), generator=g)


def _train(out, resume=False, die_after_first_epoch=False, grad_accum=1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    config = EngineConfig(epochs=2, lr=0.05, warmup_epochs=0, channels_last=False, precision="fp32", device="cpu",
                          select_metric="loss", select_mode="min", grad_accum=grad_accum, ema=0.9)
    engine = Engine(model, config, out, progress=False)
    x, y = _data()
    if die_after_first_epoch:
        original = engine.save_checkpoint

        def save_then_die():
            original()
            raise SystemExit(3)

        engine.save_checkpoint = save_then_die

    def batches(epoch):
        for idx in index_batches(N, BATCH, epoch_seed(0, epoch)):
            yield x[idx], y[idx]

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    def validate(m):
        with torch.no_grad():
            return {"loss": float(nn.functional.cross_entropy(m(x), y))}

    engine.fit(batches, loss_fn, validate, lambda m, metrics: None, steps_per_epoch=2, resume=resume,
               batch_size_fn=lambda b: len(b[1]))
    return engine


def _worker(rank, world, port, out, resume, die, grad_accum):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    try:
        engine = _train(out, resume=resume, die_after_first_epoch=die, grad_accum=grad_accum)
        assert engine.distributed and isinstance(engine.model, nn.parallel.DistributedDataParallel)
        dist.barrier()  # no rank destroys the group while the other is still in a collective
    except SystemExit:
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out, resume=False, die=False, grad_accum=1):
    mp.start_processes(_worker, args=(2, _free_port(), str(out), resume, die, grad_accum), nprocs=2, join=True,
                       start_method="spawn")


def _assert_same(a, b):
    ta, tb = load_tensors(a / "checkpoints/last.safetensors"), load_tensors(b / "checkpoints/last.safetensors")
    keys = [k for k in ta if k.startswith(("model.", "ema."))]
    assert keys and set(keys) <= set(tb)
    for key in keys:
        torch.testing.assert_close(tb[key], ta[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_gloo_processes_give_the_single_process_weights(tmp_path, grad_accum):
    _train(tmp_path / "single", grad_accum=grad_accum)
    _spawn(tmp_path / "ddp", grad_accum=grad_accum)
    _assert_same(tmp_path / "single", tmp_path / "ddp")
    history = json.loads((tmp_path / "ddp/checkpoints/last.json").read_text())["loop"]["history"]
    single = json.loads((tmp_path / "single/checkpoints/last.json").read_text())["loop"]["history"]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in single], abs=1e-5)
    assert not any(p.name.startswith("checkpoints") and p.name != "checkpoints" for p in (tmp_path / "ddp").iterdir())


def test_a_distributed_run_killed_after_an_epoch_resumes_to_the_same_result(tmp_path):
    _train(tmp_path / "single")
    _spawn(tmp_path / "ddp", die=True)
    assert json.loads((tmp_path / "ddp/checkpoints/last.json").read_text())["loop"]["epoch"] == 1
    _spawn(tmp_path / "ddp", resume=True)
    assert json.loads((tmp_path / "ddp/checkpoints/last.json").read_text())["loop"]["epoch"] == 2
    _assert_same(tmp_path / "single", tmp_path / "ddp")


def test_local_rows_split_a_batch_without_overlap(monkeypatch):
    from dermkit.engine import distributed

    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.local_rows({"x": torch.arange(8), "y": (torch.arange(8), torch.arange(8) * 2)}))
    assert torch.cat([p["x"] for p in parts]).tolist() == list(range(8))
    assert [len(p["x"]) for p in parts] == [3, 3, 2]
    assert torch.cat([p["y"][1] for p in parts]).tolist() == [2 * i for i in range(8)]


def _extract_worker(rank, world, port, clip, paths, cache, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import numpy as np
    import torch.distributed as dist

    from dermkit.engine import distributed
    from dermkit.engine.features import extract_features
    from dermkit.models.encoders import load_encoder

    distributed.init_from_env(torch.device("cpu"))
    try:
        feats = extract_features(load_encoder(clip), paths, cache_dir=cache, num_workers=0, progress=False)
        np.save(f"{out}-{rank}.npy", feats)
        dist.barrier()  # no rank destroys the group while the other is still in a collective
    finally:
        dist.destroy_process_group()


def test_sharded_extraction_encodes_each_image_once(tmp_path, tiny_dataset, clip_folder):
    import numpy as np

    from dermkit.engine.features import extract_features
    from dermkit.models.encoders import load_encoder

    paths = sorted(str(p) for p in (tiny_dataset / "images").glob("*.jpg"))[:10]
    mp.start_processes(_extract_worker, args=(2, _free_port(), str(clip_folder), paths, str(tmp_path / "cache"),
                                              str(tmp_path / "feats")), nprocs=2, join=True, start_method="spawn")
    shards = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("shard-*.json")]
    assert len(shards) == 2 and sorted(s["rows"] for s in shards) == [5, 5]  # one share each, no overlap
    assert len({h for s in shards for h in s["hashes"]}) == 10
    reference = extract_features(load_encoder(clip_folder), paths, use_cache=False, num_workers=0, progress=False)
    for rank in (0, 1):  # every process gets all the features, in order
        np.testing.assert_allclose(np.load(tmp_path / f"feats-{rank}.npy"), reference, atol=1e-5)


@pytest.mark.parametrize("method", ["supervised", "prompt_learning"])
def test_dermkit_run_nproc_2_trains_and_rank_0_alone_writes(method, tiny_dataset, clip_folder, tmp_path, monkeypatch):
    import yaml

    from dermkit.cli import main
    from dermkit.methods.base import METHODS

    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    config = {k: (str(tiny_dataset) if v == "{data}" else str(clip_folder) if v == "{clip}" else v)
              for k, v in METHODS[method].tiny_config.items()}
    config.update(method=method, epochs=2, num_workers=0)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--nproc", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["test"]["balanced_accuracy"] is not None
    history = json.loads((out / "checkpoints/last.json").read_text())["loop"]["history"]
    assert len(history) == 2
    import dermkit

    assert dermkit.load_predictor(out / "model").classes
