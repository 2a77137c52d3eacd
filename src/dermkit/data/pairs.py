"""Image-caption pairs for contrastive training, as global batches per epoch.

:class:`PairSource`: the image paths of the train (or any) splits of several dataset cards (a
dataset with a clinical second view adds those photos as pairs of their own), their captions for
a seed (:func:`dermkit.data.captions.captions_with_negatives`: a ``caption`` column, or captions
written from metadata, with optional hard negatives) and the epoch's order (a permutation, or
class-balanced draws inside each dataset).

Two sources of global batches share one interface, so the contrastive method runs either:
:class:`MemoryPairs` (the splits decoded once into memory; optionally the frozen image-trunk
prefix run once on N augmented views per image, and the frozen text layers once on K caption
draws) and :class:`ShardPairs` (streamed from WebDataset shards, :mod:`dermkit.data.shards`).
Both have ``n`` (pairs), ``batches(epoch)`` (the epoch's global batches, a function of the seeds
and the epoch only, so a resumed run sees the same batches), ``inputs(batch)`` -> ``(pixels or
cached prefix outputs, captions, caption ids, hard negatives or None)`` for this process's rows
of a global batch, ``rows(batch)`` and ``close()``. A caption id is the same number for identical
texts of one epoch (the loss counts identical captions as positives of each other).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dermkit.data.captions import captions_with_negatives
from dermkit.data.card import load_card
from dermkit.data.shards import ShardReader, decode_shard_image
from dermkit.data.torchdata import decode_all
from dermkit.errors import DataError, ModelError
from dermkit.runtime import epoch_seed

__all__ = ["PairSource", "MemoryPairs", "ShardPairs"]


class PairSource:
    """Image paths of all training pairs plus a caption generator per epoch."""

    def __init__(self, datasets: list[str], split: str):
        self.parts = []  # (card, modality or None, path list)
        groups: list[str] = []  # "dataset/diagnosis" of every pair (class-balanced sampling)
        for name in datasets:
            card = load_card(name)
            rows = card.rows(split)
            diagnoses = [f"{card.name}/{d}" for d in rows["diagnosis"].astype(str)]
            self.parts.append((card, None, [card.image_path(p) for p in rows["image"]]))
            groups += diagnoses
            view = card.second_view_column
            if view and view in rows.columns:
                ok = rows[view].notna()
                if ok.all():
                    self.parts.append((card, "clinical", [card.image_path(p) for p in rows[view]]))
                    groups += diagnoses
        self.split = split
        self.paths = [p for _, _, paths in self.parts for p in paths]
        self.groups = np.asarray(groups)
        if not self.paths:
            raise DataError(f"no {split} images in {datasets}")

    def captions(self, seed: int, negatives: bool = False) -> tuple[list[str], list[str] | None]:
        """Every pair's caption for ``seed``, and (``negatives``) its hard negative (the caption
        itself where a row has none, which the loss then counts as a positive)."""
        captions: list[str] = []
        others: list[str] = []
        for card, modality, _ in self.parts:
            for caption, negative in captions_with_negatives(card, self.split, seed=seed, modality=modality,
                                                             negatives=negatives):
                captions.append(caption)
                others.append(caption if negative is None else negative)
        return captions, (others if negatives else None)

    def weights(self, power: float) -> np.ndarray:
        """Sampling probability of every pair: count(dataset, diagnosis)^-power, normalised inside each
        dataset to that dataset's share of the pairs (so balancing classes never reweights datasets)."""
        _, inverse, counts = np.unique(self.groups, return_inverse=True, return_counts=True)
        w = counts[inverse].astype(float) ** -power
        datasets = np.asarray([g.split("/", 1)[0] for g in self.groups])
        for name in np.unique(datasets):
            mask = datasets == name
            w[mask] *= mask.sum() / w[mask].sum()
        return w / w.sum()

    def order(self, epoch_seed_: int, power: float) -> np.ndarray:
        """The epoch's pairs: a permutation (``power`` 0) or as many weighted draws with replacement."""
        rng = np.random.default_rng(epoch_seed_)
        n = len(self.paths)
        return rng.permutation(n) if power == 0 else rng.choice(n, size=n, replace=True, p=self.weights(power))


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), i


def _length_chunks(texts: list[str], size: int):
    """``texts`` in chunks of ``size``, shortest first (by characters: padding follows length)."""
    ordered = sorted(texts, key=len)
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


class MemoryPairs:
    """The ``split`` of ``datasets``, decoded once into memory (global batches of (pixels, row index)).

    ``batch_size``: pairs per global batch (the last partial batch is dropped: in-batch negatives);
    ``seed``: the run's seed (epoch order, augmentations of cached views); ``caption_seed``: the
    caption draws; ``class_balance`` p: draw each epoch's pairs with weight count(dataset,
    diagnosis)^-p (:meth:`PairSource.order`); ``hard_negatives``: each caption also with another
    diagnosis (``inputs`` returns them with their caption ids).

    With ``cache_views`` N, ``prefix`` (pixels -> what enters the trained tail of the image tower)
    runs once on N augmented views of every image (each view under its own seed, so a rebuilt cache
    is the same: resume stays exact) and a global batch is (view index, row index): an epoch no
    longer touches the prefix. With ``cache_captions`` K, ``text_prefix`` (texts -> (hidden, mask)
    of the frozen text layers) runs once on K caption draws, epoch e uses draw e mod K, and
    :meth:`text_inputs` gives a batch's cached hidden states; with ``cache_captions="epoch"`` it
    runs at the start of each epoch on that epoch's own draw (exact for any number of epochs, one
    draw in memory; the same frozen-layer work as per step, done once per distinct text, in
    length-sorted chunks). ``autocast`` (a context manager factory) wraps both caches' forward passes.
    """

    def __init__(self, datasets: Sequence[str], max_side: int, augment: Callable, *, batch_size: int, seed: int,
                 caption_seed: int = 0, cache_views: int = 0, cache_captions: int | str = 0,
                 class_balance: float = 0.0,
                 hard_negatives: bool = False, num_workers: int = 0, split: str = "train", progress: bool = False,
                 prefix: Callable | None = None, autocast: Callable | None = None,
                 text_prefix: Callable | None = None):
        self.batch_size, self.seed, self.caption_seed = batch_size, seed, caption_seed
        self.cache_views, self.cache_captions, self.class_balance = cache_views, cache_captions, class_balance
        self.hard_negatives, self.num_workers = hard_negatives, num_workers
        self.source = PairSource(list(datasets), split)
        images = decode_all(self.source.paths, max_side, progress=progress, desc=f"decoding {split}")
        self.n = len(images)
        self.cache: torch.Tensor | None = None
        if cache_views:
            self.cache = self._build_cache(images, augment, prefix, autocast, progress)
            images = []
        self.dataset = _Indexed(images, augment)
        self.captions: list[str] = []
        self.caption_ids: list[int] = []
        self.negatives: list[str] | None = None
        self.negative_ids: list[int] = []
        self.text_cache: list[dict[str, torch.Tensor]] = []
        self.text_table: dict[str, torch.Tensor] = {}
        self.text_epoch: int | None = None  # the epoch whose draw text_table holds (cache_captions="epoch")
        self._text_prefix, self._autocast, self._progress = text_prefix, autocast, progress
        if cache_captions and cache_captions != "epoch":
            self.text_cache = [self._text_table(self._draw(k), f"caching the frozen text layers (caption draw {k + 1} "
                                                                f"of {cache_captions})")
                               for k in range(int(cache_captions))]

    def _caption_seed(self, epoch: int) -> int:
        """The caption draw of an epoch: its own, or draw ``epoch mod cache_captions`` from the text cache."""
        k = self.cache_captions
        return epoch_seed(self.caption_seed, epoch % k if k and k != "epoch" else epoch)

    def _draw(self, epoch: int) -> list[str]:
        """The distinct texts (captions and hard negatives) of an epoch's caption draw."""
        captions, negatives = self.source.captions(self._caption_seed(epoch), negatives=self.hard_negatives)
        return list(dict.fromkeys(captions + (negatives or [])))

    def _text_table(self, texts: list[str], desc: str) -> dict[str, torch.Tensor]:
        """Every text -> the frozen text layers' output for its real tokens (fp16), computed in
        batches of similar length."""
        table: dict[str, torch.Tensor] = {}
        with tqdm(total=len(texts), desc=desc, disable=not self._progress, leave=False) as bar:
            for chunk in _length_chunks(texts, 256):
                with torch.inference_mode(), self._autocast():
                    hidden, mask = self._text_prefix(chunk)
                if bool((mask[:, 1:] > mask[:, :-1]).any()):
                    raise ModelError("cache_captions needs a tokenizer that pads on the right; "
                                     "set cache_captions: 0")
                hidden, lengths = hidden.to("cpu", torch.float16), mask.sum(dim=1).tolist()
                for text, h, n in zip(chunk, hidden, lengths):
                    table[text] = h[: int(n)].clone()
                bar.update(len(chunk))
        return table

    def text_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, mask) of ``texts`` from this epoch's caption draw, padded to the longest."""
        rows = [self.text_table[t] for t in texts]
        lengths = torch.tensor([len(r) for r in rows])
        hidden = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).float()
        return hidden, (torch.arange(hidden.shape[1])[None, :] < lengths[:, None]).long()

    def text_groups(self, texts: list[str], groups: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``texts`` in up to ``groups`` groups of similar length, each ``(positions, hidden, mask)``
        padded to its own longest text (``positions``: where its rows sit in ``texts``): the trained
        layers then run on little padding. Concatenating a function of each group and putting the
        rows back at ``positions`` gives what one padded batch gives (padding is masked)."""
        lengths = torch.tensor([len(self.text_table[t]) for t in texts])
        order = torch.argsort(lengths, stable=True)
        out = []
        for positions in torch.tensor_split(order, min(max(1, groups), len(texts))):
            if len(positions):
                out.append((positions, *self.text_inputs([texts[i] for i in positions.tolist()])))
        return out

    def _build_cache(self, images, augment, prefix, autocast, progress: bool) -> torch.Tensor:
        views, n, chunk = self.cache_views, len(images), 128
        cache = None
        with tqdm(total=views * n, desc=f"caching the frozen image trunk ({views} views)", disable=not progress) as bar:
            for view in range(views):
                for start in range(0, n, chunk):
                    pixels = []
                    for i in range(start, min(n, start + chunk)):
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(epoch_seed(self.seed, 1 + view) * 1_000_003 + i)
                            pixels.append(augment(images[i]))
                    with torch.inference_mode(), autocast():
                        out = prefix(torch.stack(pixels)).to("cpu", torch.float16)
                    if cache is None:
                        cache = torch.empty((views, n, *out.shape[1:]), dtype=torch.float16)
                    cache[view, start:start + len(out)] = out
                    bar.update(len(out))
        return cache

    def batches(self, epoch: int):
        captions, negatives = self.source.captions(self._caption_seed(epoch), negatives=self.hard_negatives)
        texts = list(dict.fromkeys(captions + (negatives or [])))  # the epoch's distinct texts
        if self.text_cache:
            self.text_table = self.text_cache[epoch % self.cache_captions]
        elif self.cache_captions == "epoch" and self.text_epoch != epoch:
            self.text_table = {}  # one draw in memory: free the last before building the next
            self.text_table = self._text_table(texts, f"epoch {epoch + 1}: the frozen text layers on its caption draw")
            self.text_epoch = epoch
        index = {c: k for k, c in enumerate(texts)}  # one id per text this epoch
        self.captions, self.caption_ids = captions, [index[c] for c in captions]
        self.negatives, self.negative_ids = negatives, [index[c] for c in negatives or []]
        seed = epoch_seed(self.seed, epoch)
        if self.cache is None and not self.class_balance:
            generator = torch.Generator().manual_seed(seed)
            # Contrastive batches must be full (in-batch negatives): always drop the last partial one.
            return torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True,
                                               drop_last=True, generator=generator, num_workers=self.num_workers)
        order = torch.from_numpy(self.source.order(seed, self.class_balance))
        if self.cache is None:  # class-balanced draws of decoded images
            return torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=order.tolist(),
                                               drop_last=True, num_workers=self.num_workers)
        views = torch.from_numpy(np.random.default_rng([seed, 2]).integers(self.cache_views, size=len(order)))
        bs = self.batch_size
        return ((views[i:i + bs], order[i:i + bs]) for i in range(0, len(order) - bs + 1, bs))

    def inputs(self, batch):
        x, idx = batch
        rows = idx.tolist()
        if self.cache is not None:  # x: the view of each row
            x = self.cache[x, idx].float()
        negatives = None if self.negatives is None else (
            [self.negatives[i] for i in rows], torch.tensor([self.negative_ids[i] for i in rows]))
        return x, [self.captions[i] for i in rows], torch.tensor([self.caption_ids[i] for i in rows]), negatives

    @staticmethod
    def rows(batch) -> int:
        return len(batch[1])

    def close(self) -> None:
        pass


class ShardPairs:
    """Pairs streamed from WebDataset shards (:class:`dermkit.data.shards.ShardReader`).

    A global batch is ``(augmentation seeds, samples, captions, caption ids)``: raw image bytes, so a
    process decodes (in ``num_workers`` threads) and augments only the rows of its slice, each image
    under its own seed (epoch seed, position), which makes the pixels independent of which process
    made them.
    """

    def __init__(self, shards: Sequence[str | Path], max_side: int, augment: Callable, *, batch_size: int, seed: int,
                 shuffle_buffer: int = 1000, num_workers: int = 1):
        self.max_side, self.augment = max_side, augment
        self.batch_size, self.seed = batch_size, seed
        self.reader = ShardReader(shards, shuffle_buffer=shuffle_buffer)
        self.n = len(self.reader)
        self.pool = ThreadPoolExecutor(max_workers=max(1, num_workers))

    def batches(self, epoch: int):
        seed = epoch_seed(self.seed, epoch)
        chunk: list = []
        for position, sample in enumerate(self.reader.epoch(seed)):
            chunk.append(sample)
            if len(chunk) == self.batch_size:  # full batches only (in-batch negatives)
                captions = [s.caption(epoch) for s in chunk]
                index = {c: k for k, c in enumerate(dict.fromkeys(captions))}
                first = position + 1 - len(chunk)
                seeds = torch.tensor([(seed * 1_000_003 + first + k) % 2**62 for k in range(len(chunk))])
                yield seeds, chunk, captions, torch.tensor([index[c] for c in captions])
                chunk = []

    def inputs(self, batch):
        seeds, samples, captions, caption_ids = batch
        images = list(self.pool.map(lambda s: decode_shard_image(s, self.max_side), samples))
        pixels = []
        for seed, image in zip(seeds.tolist(), images):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                pixels.append(self.augment(image))
        return torch.stack(pixels), list(captions), caption_ids, None

    @staticmethod
    def rows(batch) -> int:
        return len(batch[0])

    def close(self) -> None:
        self.pool.shutdown(wait=False)
