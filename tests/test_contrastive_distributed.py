"""Contrastive training under torch.distributed (2 gloo processes on CPU): in-batch negatives over the
global batch (embeddings gathered with gradients), so the weights equal a one-process run with the same
global batch, from the train splits in memory and from WebDataset shards."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dermkit.errors import ConfigError
from dermkit.models.checkpoint import load_tensors


def _config(clip, data, shards=None, batch_size=8):
    cfg = {"method": "contrastive", "init": str(clip), "train_data": [str(data)], "data": str(data), "eval_data": [],
           "batch_size": batch_size, "train_image_last": None, "train_text_last": None, "num_workers": 0,
           "val_per_dataset": 6, "n_bootstrap": 0, "augment": "light",
           "engine": {"epochs": 2, "lr": 1e-3, "precision": "fp32", "warmup_epochs": 0, "channels_last": False,
                      "device": "cpu", "max_steps_per_epoch": 3, "seed": 1}}
    if shards is not None:
        cfg.update(shards=shards, shuffle_buffer=10)
    return cfg


def _worker(rank, world, port, cfg, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from dermkit.experiment import run_experiment

    try:
        run_experiment(cfg, out, progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run):
    return {k: v for k, v in load_tensors(run / "checkpoints/last.safetensors").items() if k.startswith("model.")}


@pytest.mark.parametrize("source", ["memory", "shards"])
def test_two_processes_give_the_single_process_weights(tmp_path, tiny_dataset, clip_folder, source):
    from dermkit.data.shards import write_shards
    from dermkit.experiment import run_experiment

    shards = None
    if source == "shards":
        manifest = write_shards(tiny_dataset, tmp_path / "shards", maxcount=7)
        shards = str(tmp_path / "shards" / manifest["pattern"])
    cfg = _config(clip_folder, tiny_dataset, shards)
    run_experiment(cfg, tmp_path / "single", progress=False)
    mp.start_processes(_worker, args=(2, _free_port(), cfg, str(tmp_path / "ddp")), nprocs=2, join=True,
                       start_method="spawn")
    single, ddp = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    init = {f"model.{k}": v for k, v in load_tensors(clip_folder / "open_clip_model.safetensors").items()}
    assert set(single) == set(ddp)
    moved = [k for k in single if k in init and not torch.equal(single[k], init[k])]
    assert len(moved) > len(single) // 2  # the comparison is between trained weights, not two copies of init
    for key in single:
        a, b = ddp[key], single[key]
        if key.endswith("attn.in_proj_bias"):
            # The attention *key* bias has a zero gradient in exact arithmetic (softmax ignores a shift
            # shared by all keys): what it gets is rounding noise, which AdamW scales up to lr-sized steps
            # in either run. Compared: the query and value biases.
            width = len(a) // 3
            a, b = torch.cat([a[:width], a[2 * width:]]), torch.cat([b[:width], b[2 * width:]])
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5, msg=key)
    # Every process held the global loss, so the logged loss is the one-process loss.
    history = [json.loads((tmp_path / run / "checkpoints/last.json").read_text())["loop"]["history"]
               for run in ("single", "ddp")]
    assert [h["train_loss"] for h in history[1]] == pytest.approx([h["train_loss"] for h in history[0]], abs=1e-5)


def _gather_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from dermkit.engine.losses import global_clip_loss

    dist.init_process_group("gloo")
    try:
        g = torch.Generator().manual_seed(0)
        img, txt = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
        ids = torch.tensor([0, 1, 1, 2, 3, 4])
        part = slice(3 * rank, 3 * rank + 3)
        mine_img, mine_txt = img[part].clone().requires_grad_(True), txt[part].clone().requires_grad_(True)
        loss = global_clip_loss(mine_img, mine_txt, torch.tensor(3.0), ids[part])
        loss.backward()
        torch.save({"loss": loss.detach(), "img_grad": mine_img.grad, "txt_grad": mine_txt.grad}, f"{out}-{rank}.pt")
        # Both ranks past their last collective before either tears gloo down: destroying the group while
        # the other rank's backward all-gather is still in flight aborts the process ("terminate called
        # without an active exception", seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_gathered_loss_is_the_global_loss_and_its_gradient_is_world_times_the_share(tmp_path):
    """Each process computes the global loss; the gather's backward sums the gradients all processes
    computed for its rows, i.e. world x d(global loss)/d(its rows), which DDP's average turns back into
    the one-process gradient."""
    from dermkit.engine.losses import soft_clip_loss

    mp.start_processes(_gather_worker, args=(2, _free_port(), str(tmp_path / "g")), nprocs=2, join=True,
                       start_method="spawn")
    g = torch.Generator().manual_seed(0)
    img = torch.randn(6, 4, generator=g).requires_grad_(True)
    txt = torch.randn(6, 4, generator=g).requires_grad_(True)
    loss = soft_clip_loss(img, txt, torch.tensor(3.0), torch.tensor([0, 1, 1, 2, 3, 4]))
    loss.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"g-{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
        part = slice(3 * rank, 3 * rank + 3)
        torch.testing.assert_close(got["img_grad"], 2 * img.grad[part], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["txt_grad"], 2 * txt.grad[part], rtol=1e-5, atol=1e-6)


def test_a_global_batch_must_split_evenly_over_the_processes(monkeypatch):
    """With equal slices the engine's share weight n_local * world / n_global is exactly 1, so it leaves
    the gathered (global) loss as it is; uneven slices are refused before anything is written."""
    from dermkit.methods.contrastive import ClipTrainConfig, check_global_batch

    check_global_batch(8, 2)
    check_global_batch(7, 1)
    with pytest.raises(ConfigError, match="batch_size 10 does not split evenly over 4 processes.*multiple of 4"):
        check_global_batch(10, 4)
    ClipTrainConfig.from_dict({"batch_size": 7}).validate()  # one process: any size
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    ClipTrainConfig.from_dict({"batch_size": 8}).validate()
    with pytest.raises(ConfigError, match="batch_size 7 does not split evenly over 2 processes"):
        ClipTrainConfig.from_dict({"batch_size": 7}).validate()
