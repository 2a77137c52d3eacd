"""torch.distributed for the one engine: the process group from torchrun's environment, this
process's share of a batch or a list, collectives that are no-ops on one process, and a launcher.

A run is distributed when it is started by ``torchrun`` (or ``dermkit train --nproc N``, which
starts torchrun), which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address.
Backend: ``nccl`` on GPUs (one per process, ``cuda:LOCAL_RANK``), ``gloo`` on CPUs. Everything here
is a no-op in a single process, so the engine has one code path.

Data: the methods keep building *global* batches from the per-epoch seed (``engine/batching.py``),
and each rank takes its contiguous slice of every global batch (:func:`local_rows`), so a run on
N processes sees exactly the batches of a single-process run with the same global batch size,
and ``--resume`` stays exact. Gradients are averaged by DDP, so with equal slices the update is
the single-process update.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist

from dermkit.errors import ConfigError

__all__ = ["world_size", "rank", "local_rank", "is_main", "init_from_env", "shutdown", "barrier", "broadcast_object",
           "all_reduce_mean", "local_rows", "local_slice", "launch"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (torchrun's ``RANK`` before the process group exists)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (once); returns whether the run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    if device.type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return True


def shutdown() -> None:
    """Leave the process group (after training): what follows runs on each process alone."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (e.g. rank 0's validation metrics)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: float) -> float:
    """The mean of a number over the ranks."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def local_slice(n: int) -> slice:
    """This rank's contiguous part of ``n`` rows (the last ranks get one fewer when uneven)."""
    world, me = world_size(), rank()
    base, extra = divmod(n, world)
    start = me * base + min(me, extra)
    return slice(start, start + base + (1 if me < extra else 0))


def local_rows(batch: Any) -> Any:
    """This rank's rows of a global batch: tensors (first dimension), tuples/lists and dicts of them."""
    if world_size() == 1:
        return batch
    if torch.is_tensor(batch):
        return batch[local_slice(len(batch))]
    if isinstance(batch, dict):
        return {k: local_rows(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        if batch and all(torch.is_tensor(b) or isinstance(b, (list, tuple, dict)) for b in batch):
            return type(batch)(local_rows(b) for b in batch)
        return batch[local_slice(len(batch))]
    return batch


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``dermkit ARGV`` on ``nproc`` processes of this machine through torchrun."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dermkit", *argv]
    return subprocess.call(cmd)
