"""WebDataset shards of image-caption pairs, for corpora larger than memory.

:func:`write_shards` turns a dataset card (or a plain image-caption CSV) into tar shards written
with the ``webdataset`` library, one sample per image-caption pair::

    000000.tar:  000000000.jpg   the image bytes as stored (a JPEG or PNG file is copied as is;
                                 any other format is re-encoded once as PNG)
                 000000000.txt   the caption (a ``caption`` column, else written from metadata by
                                 :func:`dermkit.data.captions.captions_for_split`, as the
                                 contrastive method writes it)
                 000000000.captions.json   only with ``captions_per_image`` K > 1: K caption
                                 variants, variant k = the one the contrastive method draws in epoch k
                 000000000.json  the row's metadata, typed (numbers, true/false, text; null = missing)
    manifest.json                sample counts per shard, shard names, the source card

Every image is checked (exists, decodes completely) before it is written; a missing or
unreadable image refuses the whole card with a ``DataError`` naming the metadata.csv line and
file. Shards are written into a temporary folder next to ``out`` that is renamed at the end, so
a failure leaves nothing half-written.

:class:`ShardReader` streams them back. The order of an epoch is a pure function of its seed:
the shard list is shuffled with the seed, the samples then pass a seeded shuffle buffer. So
epoch k is the same sequence every time it is read, whether on one process or on every rank
of a distributed run; ``skip`` drops the first K samples of that sequence without decoding an
image (a resumable position inside an epoch). dermkit's engine re-runs an interrupted epoch from
its start (each epoch re-seeds from (seed, epoch)), so an exact resume needs only this per-epoch
determinism, not a saved reader state.

Distributed runs: every rank reads the same sequence and builds the same *global* batches; the
engine hands each rank its slice (:func:`dermkit.engine.distributed.local_rows`), and a rank
decodes only the images of its slice. That keeps a run on N processes identical to a
one-process run with the same global batch size (``split_by_node`` would give each rank other
shards and so other batches), at the cost of every rank reading every shard's bytes.

Reading never unpickles: only ``jpg``/``png``/``txt``/``json`` members are used, decoded by
dermkit itself (no webdataset decoders), and shard names are local files only (no ``pipe:`` or
URLs, which webdataset would open as commands or downloads).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from dermkit.data.captions import captions_for_split
from dermkit.data.card import DatasetCard, load_card
from dermkit.data.card_schema import BOOLEAN_FALSE, BOOLEAN_TRUE, SPLITS, infer_type
from dermkit.data.images import (
    PathResolver,
    csv_image_path,
    decode_image_bytes,
    read_image_bytes,
)
from dermkit.data.metadata_csv import csv_lines, read_metadata
from dermkit.errors import ConfigError, DataError
from dermkit.io import write_json
from dermkit.runtime import epoch_seed
from dermkit.values import is_unknown

__all__ = ["write_shards", "ShardReader", "ShardSample", "read_manifest", "expand_shards", "decode_shard_image",
           "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "dermkit-webdataset-shards"
_IMAGE_EXT = {"JPEG": "jpg", "PNG": "png"}


# ------------------------------------------------------------------------------ writing


@dataclass
class _Pair:
    path: Path  # an ImagePath that names its metadata.csv line
    captions: list[str]
    meta: dict[str, Any]


def _typed(value: Any, kind: str, missing: Sequence[str]) -> Any:
    """A metadata cell as JSON: a number, true/false or text by the column's type; None when missing
    (a cell that does not parse as its type stays text: writing shards is not `dermkit data check`)."""
    if is_unknown(value, missing):
        return None
    text = str(value).strip()
    if kind == "numeric":
        try:
            number = float(text)
        except ValueError:
            return text
        if not math.isfinite(number):
            return text
        return int(number) if number.is_integer() and "." not in text else number
    if kind == "boolean":
        key = text.casefold()
        return True if key in BOOLEAN_TRUE else False if key in BOOLEAN_FALSE else text
    return text


def _card_pairs(card: DatasetCard, split: str, captions_per_image: int, caption_seed: int,
                second_view: bool) -> list[_Pair]:
    """The pairs the contrastive method trains on for ``card``'s ``split``, in its order."""
    rows = card.rows(split)
    columns = card.metadata_columns
    missing = card.missing_values
    metas = []
    for _, row in rows.iterrows():
        meta = {"dataset": card.name, "split": split, "csv_line": int(row["csv_line"]), "image": row["image"],
                "diagnosis": None if pd.isna(row.get("diagnosis")) else row["diagnosis"]}
        if card.group_column and card.group_column in rows.columns:
            meta["group"] = None if pd.isna(row[card.group_column]) else str(row[card.group_column])
        meta.update({c: _typed(row.get(c), kind, missing) for c, kind in columns.items() if c in rows.columns})
        metas.append(meta)
    views: list[tuple[str | None, str]] = [(None, "image")]
    view = card.second_view_column
    # As the contrastive method: a second view (Derm7pt's clinical photos) joins as its own pairs
    # when every row has one.
    if second_view and view and view in rows.columns and rows[view].notna().all():
        views.append(("clinical", view))
    pairs: list[_Pair] = []
    for modality, column in views:
        variants = [captions_for_split(card, split, seed=epoch_seed(caption_seed, k), modality=modality)
                    for k in range(captions_per_image)]
        for i, rel in enumerate(rows[column].tolist()):
            pairs.append(_Pair(card.image_path(rel), [v[i] for v in variants],
                               {**metas[i], "view": column, "image": rel}))
    return pairs


def _csv_pairs(path: Path) -> list[_Pair]:
    """Pairs of a plain CSV with ``image`` (relative to the CSV's folder) and ``caption`` columns."""
    table = read_metadata(path)
    for column in ("image", "caption"):
        if column not in table.columns:
            raise DataError(f"{path} line 1 (header): no {column!r} column; an image-caption CSV needs 'image' "
                            "(a path relative to the CSV's folder) and 'caption', or pass a dataset card "
                            "(a folder with metadata.csv) whose captions are written from metadata")
    if table.empty:
        raise DataError(f"{path} has no rows; add one image-caption pair per line")
    lines = csv_lines(table)
    empty = table["caption"].isna() | (table["caption"].astype(str).str.strip() == "")
    if empty.any():
        raise DataError(f"{path} line {int(lines[empty].iloc[0])}, column 'caption': empty caption "
                        f"({int(empty.sum())} rows); write a caption or remove the row")
    resolver = PathResolver(path.parent)
    others = [c for c in table.columns if c not in ("image", "caption")]
    types = {c: infer_type(table[c].dropna()) for c in others}
    pairs = []
    for i, (_, row) in enumerate(table.iterrows()):
        where = f"{path} line {int(lines.iloc[i])}, column 'image' ({row['image']!r})"
        try:
            image = resolver(row["image"])
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        meta = {"source": path.name, "csv_line": int(lines.iloc[i]), "image": row["image"], "view": "image"}
        meta.update({c: _typed(row[c], types[c], frozenset()) for c in others})
        pairs.append(_Pair(csv_image_path(image, where), [str(row["caption"]).strip()], meta))
    return pairs


def _refuse_missing(pairs: list[_Pair]) -> None:
    """All missing files at once (cheap ``isfile`` checks) before hours of writing start."""
    missing = [p for p in pairs if not os.path.isfile(p.path)]
    if missing:
        try:
            read_image_bytes(missing[0].path)
        except DataError as exc:
            first = str(exc)
        else:  # pragma: no cover - appeared between the two checks
            first = f"{missing[0].path}: image file not found"
        more = f" ({len(missing)} of {len(pairs)} listed images are missing)" if len(missing) > 1 else ""
        raise DataError(f"{first}{more}; no shards were written")


def _image_member(path: Path) -> tuple[str, bytes]:
    """``(extension, bytes)`` of an image after a complete decode (errors name the CSV line)."""
    import warnings

    from PIL import Image

    data = read_image_bytes(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = decode_image_bytes(data, path, convert=False)
    ext = _IMAGE_EXT.get(im.format or "")
    if ext is not None:
        return ext, data
    buf = io.BytesIO()  # TIFF, BMP, ...: re-encoded once, losslessly
    decode_image_bytes(data, path).save(buf, format="PNG")
    return "png", buf.getvalue()


def write_shards(source: str | os.PathLike | DatasetCard, out: str | os.PathLike, split: str = "train",
                 maxcount: int = 10_000, maxsize: float = 1e9, captions_per_image: int = 1, caption_seed: int = 0,
                 second_view: bool = True, force: bool = False, progress: bool = False) -> dict:
    """Write ``source``'s image-caption pairs as WebDataset tar shards in ``out``; returns the manifest.

    ``source``: a dataset card (known name, folder or its metadata.csv; the rows of ``split``,
    captions from a ``caption`` column or written from metadata, plus second-view pairs such as
    Derm7pt's clinical photos, as the contrastive method uses them), or any other CSV file with
    ``image`` (relative to the CSV's folder) and ``caption`` columns (every row).
    ``maxcount``/``maxsize`` (bytes) bound each shard. ``captions_per_image`` K > 1 stores K
    metadata-caption variants (variant k = the contrastive method's captions of epoch k, drawn
    from ``caption_seed``). ``out`` must be new or empty unless ``force``.
    """
    import webdataset as wds
    from tqdm.auto import tqdm

    if maxcount < 1 or not maxsize > 0:
        raise ConfigError(f"maxcount must be >= 1 and maxsize > 0, got {maxcount} and {maxsize}")
    if captions_per_image < 1:
        raise ConfigError(f"captions_per_image must be >= 1, got {captions_per_image}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise DataError(f"{out} already exists and is not empty; choose a new --out folder or pass --force to "
                        "replace it")
    path = Path(source) if not isinstance(source, DatasetCard) else None
    if path is not None and path.is_file() and path.suffix.lower() in (".csv", ".tsv") and path.name != "metadata.csv":
        pairs, origin = _csv_pairs(path), {"csv": str(path.resolve())}
    else:
        card = load_card(source)
        pairs = _card_pairs(card, split, captions_per_image, caption_seed, second_view)
        origin = {"card": card.name, "root": str(card.root.resolve()), "split": split, "caption_seed": caption_seed,
                  "captions_per_image": captions_per_image}
    _refuse_missing(pairs)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    shards: list[dict[str, Any]] = []

    def finished(fname: str) -> None:  # called as each shard is closed, before its count is reset
        shards.append({"name": Path(fname).name, "samples": sink.count, "bytes": Path(fname).stat().st_size})

    try:
        # mtime fixed: the same card gives byte-identical shards.
        with wds.ShardWriter(str(tmp / "%06d.tar"), maxcount=maxcount, maxsize=maxsize, post=finished, verbose=0,
                             mtime=0.0, encoder=False) as sink:
            for n, pair in enumerate(tqdm(pairs, desc="writing shards", disable=not progress, leave=False)):
                ext, data = _image_member(pair.path)
                sample = {"__key__": f"{n:09d}", ext: data, "txt": pair.captions[0].encode("utf-8"),
                          "json": json.dumps({**pair.meta, "format": ext}, default=_json_value).encode("utf-8")}
                if captions_per_image > 1:
                    sample["captions.json"] = json.dumps(pair.captions).encode("utf-8")
                sink.write(sample)
        manifest = {"format": FORMAT, "version": 1, "samples": len(pairs), "shards": shards,
                    "pattern": f"{{{shards[0]['name'][:-4]}..{shards[-1]['name'][:-4]}}}.tar",
                    "keys": sorted({"txt", "json"} | ({"captions.json"} if captions_per_image > 1 else set())),
                    "captions_per_image": captions_per_image, "source": origin,
                    "webdataset": getattr(wds, "__version__", None)}
        write_json(tmp / MANIFEST, manifest)
        _swap_in(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, DataError):
            raise DataError(f"{exc}; no shards were written") from None
        raise
    return manifest


def _json_value(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN
        return None
    return str(obj)


def _swap_in(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


# ------------------------------------------------------------------------------ reading


def read_manifest(folder: str | os.PathLike) -> dict:
    """``folder/manifest.json`` of a shard folder; DataError saying how to make one."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: shards need the manifest `dermkit data shards` writes beside them "
                        "(sample counts per shard)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc}); write the shards again with `dermkit data shards`") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{path} is not a dermkit shard manifest (format {FORMAT!r}); write the shards with "
                        "`dermkit data shards`")
    return manifest


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Local shard files of brace patterns (``'DIR/{000000..000012}.tar'``) or lists of them.

    Patterns follow webdataset's grammar (``expand_urls``: braces, ``::`` between patterns).
    URLs and ``pipe:`` commands are refused: shards are local files.
    """
    from webdataset.shardlists import expand_urls

    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not items:
        raise ConfigError("no shards given; pass a pattern such as 'DIR/{000000..000012}.tar'")
    paths: list[Path] = []
    for item in items:
        expanded = []
        for url in expand_urls(os.fspath(item)):
            scheme = url.split(":", 1)[0] if ":" in url else ""
            if len(scheme) > 1 and "/" not in scheme and "\\" not in scheme:
                raise ConfigError(f"shard {url!r}: only local tar files are read (no URLs or pipe: commands); "
                                  "copy the shards to a local or mounted folder")
            expanded.append(Path(url).expanduser())
        missing = [p for p in expanded if not p.is_file()]
        if missing:
            count = f" ({len(missing)} of the {len(expanded)} it names)" if len(expanded) > 1 else ""
            raise DataError(f"shard {missing[0]} (from {os.fspath(item)!r}) does not exist{count}; check the "
                            "pattern's folder and number range (the manifest.json beside the shards lists them)")
        paths += expanded
    dupes = sorted({str(p) for p in paths if paths.count(p) > 1})
    if dupes:
        raise ConfigError(f"shard {dupes[0]} is named twice; every shard should be read once an epoch")
    return paths


@dataclass
class ShardSample:
    """One image-caption pair as read: undecoded image bytes (``ext`` jpg/png), its captions and metadata."""

    key: str
    shard: str
    image: bytes
    ext: str
    captions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def caption(self, epoch: int = 0) -> str:
        """The caption of ``epoch`` (variant ``epoch % K`` when the shards hold K variants)."""
        return self.captions[epoch % len(self.captions)]

    @property
    def name(self) -> str:
        return f"{self.shard}:{self.key}.{self.ext}"


class ShardReader:
    """A deterministic stream of :class:`ShardSample` from local shards (see the module docstring).

    ``shards``: a brace pattern, or a list of patterns/files; the sample count of every shard comes
    from the ``manifest.json`` in its folder. ``shuffle_buffer``: samples held for shuffling
    (webdataset's shuffle; 0 or 1 = the shards' own order, after the shard order is shuffled).
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], shuffle_buffer: int = 1000):
        if shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.paths = expand_shards(shards)
        self.shuffle_buffer = int(shuffle_buffer)
        manifests: dict[Path, dict] = {}
        self.counts: dict[Path, int] = {}
        for path in self.paths:
            folder = path.parent
            if folder not in manifests:
                manifests[folder] = read_manifest(folder)
            listed = {s.get("name"): s.get("samples") for s in manifests[folder]["shards"] if isinstance(s, dict)}
            if not isinstance(listed.get(path.name), int):
                raise DataError(f"{folder / MANIFEST} does not list shard {path.name}; the folder holds shards of "
                                "another write: write them again with `dermkit data shards`")
            self.counts[path] = listed[path.name]
        self.manifests = manifests

    def __len__(self) -> int:
        return sum(self.counts.values())

    def epoch(self, seed: int, skip: int = 0) -> Iterator[ShardSample]:
        """The samples of the epoch whose seed is ``seed`` (same seed, same order), after the first ``skip``."""
        import webdataset as wds

        if skip < 0:
            raise ConfigError(f"skip must be >= 0, got {skip}")
        order = list(self.paths)
        random.Random(f"{seed}:shards").shuffle(order)
        stream: Iterator[dict] = itertools.chain.from_iterable(self._samples(p) for p in order)
        if self.shuffle_buffer > 1:
            stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                 rng=random.Random(f"{seed}:samples"))(stream)
        for raw in itertools.islice(stream, skip, None):
            yield self._sample(raw)

    @staticmethod
    def _samples(path: Path) -> Iterator[dict]:
        """Raw members of one shard grouped by key (webdataset's tar expander), nothing decoded."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        try:
            with open(path, "rb") as fh:
                yield from group_by_keys(tar_file_expander([{"url": str(path), "stream": fh}]))
        except (OSError, tarfile.TarError, ValueError, EOFError) as exc:
            raise DataError(f"shard {path} cannot be read as a tar file ({exc}); write the shards again with "
                            "`dermkit data shards`") from None

    @staticmethod
    def _sample(raw: dict) -> ShardSample:
        shard, key = raw.get("__url__", "?"), raw.get("__key__", "?")
        ext = next((e for e in ("jpg", "png") if e in raw), None)
        if ext is None or "txt" not in raw:
            raise DataError(f"shard {shard}, sample {key}: no jpg/png image or no txt caption (members: "
                            f"{sorted(k for k in raw if not k.startswith('__'))}); write the shards with "
                            "`dermkit data shards`")
        try:
            captions = [raw["txt"].decode("utf-8")]
            if "captions.json" in raw:
                captions = [str(c) for c in json.loads(raw["captions.json"])] or captions
            meta = json.loads(raw["json"]) if "json" in raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"shard {shard}, sample {key}: unreadable caption or metadata ({exc}); write the "
                            "shards again") from None
        return ShardSample(key, str(shard), raw[ext], ext, captions, meta)


def decode_shard_image(sample: ShardSample, max_side: int | None = None):
    """A sample's image as a uint8 CHW tensor (shorter side shrunk to ``max_side``), decoded with
    dermkit's checks; errors name the shard and key."""
    import warnings

    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = decode_image_bytes(sample.image, Path(sample.name))
    if max_side is not None and min(img.size) > max_side:
        ratio = max_side / min(img.size)
        img = img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), resample=3)
    return TF.pil_to_tensor(img)
