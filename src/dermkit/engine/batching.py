"""One rule for turning a training set into the batches of an epoch.

An epoch is a permutation of the training rows drawn from ``(seed, epoch)`` (so a resumed run
sees the same batches), cut into ``steps_per_epoch(n, batch_size)`` full batches. The last partial
batch is dropped, as ``DataLoader(drop_last=True)`` does for image loaders, so every step has the
same size and a rare class is not over-weighted by a tiny last batch; the rows it drops differ
from epoch to epoch. A training set no larger than one batch is a single batch of all rows.
"""

from __future__ import annotations

import torch

__all__ = ["steps_per_epoch", "drop_last", "epoch_order", "index_batches"]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps of one epoch under the rule above (at least 1 for a non-empty set)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return max(1, n // batch_size) if n > 0 else 0


def drop_last(n: int, batch_size: int) -> bool:
    """What to pass as ``DataLoader(drop_last=...)`` so image loaders follow the same rule."""
    return n > batch_size


def epoch_order(n: int, seed: int) -> torch.Tensor:
    """The permutation of ``range(n)`` for one epoch's seed (see ``runtime.epoch_seed``)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def index_batches(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Row indices of each batch of one epoch, in order."""
    order = epoch_order(n, seed)
    steps = steps_per_epoch(n, batch_size)
    if n <= batch_size:
        return [order] if n else []
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
