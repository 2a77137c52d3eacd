"""dermkit data audit: near-duplicates, off-topic images and label issues (issue 24).

The planted-answer tests copy a small slice of HAM10000 into a temporary card (never into the
repo), plant edited copies of test images in train under new lesion ids, non-skin images and
flipped labels, and check that each ranks at the top of its list. The core tests build tiny
synthetic cards and check the scores against hand-made answers and every error path.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from sklearn.metrics import roc_auc_score

from conftest import SHARED_DATA, make_dataset, requires_shared_data
from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.audit import label_issue_scores, mutual_nearest_pairs, near_duplicate_pairs, off_topic_scores
from dermkit.data.hashes import NEAR_DUPLICATE_BITS, hash_distance, hash_pairs, perceptual_hash
from dermkit.errors import DataError

# ------------------------------------------------------------------------------ scores on known answers


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mutual_nearest_pairs_need_both_directions_and_the_cutoff():
    # 0-1 mutual and close; 2's nearest is 1 (not mutual); 3-4 mutual but below the cut-off
    emb = _unit(np.array([[1.0, 0.0, 0.0], [0.999, 0.04, 0.0], [0.95, 0.3, 0.0], [0.0, 0.0, 1.0], [0.0, 0.6, 0.8]]))
    pairs = mutual_nearest_pairs(emb, min_cosine=0.99, block=2)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert pairs[0][2] == pytest.approx(float(emb[0] @ emb[1]))
    assert [(i, j) for i, j, _ in mutual_nearest_pairs(emb, min_cosine=0.5)] == [(0, 1), (3, 4)]
    assert mutual_nearest_pairs(emb[:1], 0.0) == []


def test_off_topic_ranks_the_isolated_point_first():
    rng = np.random.default_rng(0)
    cluster = rng.normal(size=(50, 8)) * 0.05 + np.eye(8)[0]
    outlier = np.eye(8)[[5]]
    scores = off_topic_scores(_unit(np.vstack([cluster, outlier])), k=5)
    assert scores.argmax() == 50
    assert scores[50] > scores[:50].max() + 0.5


def test_near_duplicate_score_ranks_the_closest_pair_first_and_counts_every_pair():
    rng = np.random.default_rng(1)
    emb = _unit(rng.normal(size=(30, 16)))
    emb[7] = _unit(emb[[3]] + 0.01 * rng.normal(size=(1, 16)))[0]  # 3 and 7: nearly the same vector
    hashes = rng.integers(0, 2**63, size=(30, 2, 4), dtype=np.int64).astype(np.uint64)
    hashes[12] = hashes[20]  # 12 and 20: identical perceptual hashes, unrelated embeddings
    stats = near_duplicate_pairs(emb, hashes, max_bits=NEAR_DUPLICATE_BITS, min_cosine=0.99, neighbours=2)
    assert stats.n_pairs == 30 * 29 // 2 == stats.bit_counts.sum() == stats.cos_counts.sum()
    ranked = sorted(stats.candidates.items(), key=lambda kv: -stats.score(*kv[1]))
    top2 = {pair for pair, _ in ranked[:2]}
    assert top2 == {(3, 7), (12, 20)}
    assert stats.score(*stats.candidates[(12, 20)]) == pytest.approx(1.0)
    assert stats.score(*stats.candidates[(3, 7)]) > 0.5  # cosine above the cut-off
    assert all(stats.score(*v) < 0.5 for pair, v in ranked[2:])  # nothing else passes a cut-off
    assert stats.score(NEAR_DUPLICATE_BITS, 0.0) == pytest.approx(0.5)


def test_hashes_match_imagehash_and_find_mirrored_and_resized_copies():
    import imagehash

    rng = np.random.default_rng(2)
    image = Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["GaussianBlur"]).GaussianBlur(4))
    h = perceptual_hash(image)
    bits = np.unpackbits(h[0].astype(">u8").view(np.uint8)).astype(bool)
    assert (bits == imagehash.phash(image, hash_size=16).hash.flatten()).all()
    assert hash_distance(h, perceptual_hash(ImageOps.mirror(image))) == 0
    assert hash_distance(h, perceptual_hash(image.resize((64, 48)))) <= NEAR_DUPLICATE_BITS
    other = Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8))
    assert hash_distance(h, perceptual_hash(other)) > 3 * NEAR_DUPLICATE_BITS
    assert hash_pairs([h, perceptual_hash(other), perceptual_hash(ImageOps.mirror(image))]) == [(0, 2, 0)]


def test_label_issue_scores_put_flipped_labels_first():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=200)
    proba = np.full((200, 3), 0.05)
    proba[np.arange(200), truth] = 0.9
    given = truth.copy()
    flipped = rng.choice(200, size=12, replace=False)
    given[flipped] = (truth[flipped] + 1) % 3
    score, is_issue = label_issue_scores(given, proba)
    assert set(np.argsort(-score)[:12]) == set(flipped)
    assert is_issue[flipped].all() and is_issue.sum() == 12


def test_label_issue_scores_refuse_one_class():
    with pytest.raises(DataError, match="two classes"):
        label_issue_scores(np.zeros(5, dtype=int), np.tile([[1.0, 0.0]], (5, 1)))


# ------------------------------------------------------------------------------ bad input


def test_audit_of_one_image_is_a_clear_error(tmp_path, capsys):
    folder = make_dataset(tmp_path, counts={"train": 1}, classes=("nevus",), name="one")
    assert main(["data", "audit", str(folder), "--out", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err
    assert "at least 2 images" in err and "Traceback" not in err


def test_audit_of_one_class_is_a_clear_error(tmp_path, capsys):
    folder = make_dataset(tmp_path, counts={"train": 4, "val": 2, "test": 2}, classes=("nevus",), name="oneclass")
    assert main(["data", "audit", str(folder), "--out", str(tmp_path / "audit"), "--model", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "one class only" in err and "two classes" in err


def test_audit_with_missing_files_names_them(tiny_dataset, tmp_path, capsys):
    table = pd.read_csv(tiny_dataset / "metadata.csv")
    (tiny_dataset / table["image"][3]).unlink()
    assert main(["data", "audit", str(tiny_dataset), "--out", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err
    assert "1 image(s) missing" in err and f"line 5 {table['image'][3]!r}" in err
    assert not (tmp_path / "audit" / "audit.json").exists()


def test_audit_options_are_checked(tiny_dataset, tmp_path, capsys):
    assert main(["data", "audit", str(tiny_dataset), "--out", str(tmp_path / "a"), "--folds", "1"]) == 2
    assert "--folds must be >= 2" in capsys.readouterr().err
    assert main(["data", "audit", str(tiny_dataset), "--out", str(tmp_path / "a"), "--splits", "train,dev"]) == 2
    assert "unknown split 'dev'" in capsys.readouterr().err


def test_audit_writes_every_file_and_resumes_from_cached_embeddings(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    args = ["data", "audit", str(tiny_dataset), "--out", str(tmp_path / "audit"), "--model", "resnet18",
            "--cache-dir", str(cache), "--folds", "3"]
    assert main(args) == 0
    out = tmp_path / "audit"
    for name in ("near_duplicates.csv", "off_topic.csv", "label_issues.csv", "audit.json", "audit.html"):
        assert (out / name).is_file(), name
    pairs = pd.read_csv(out / "near_duplicates.csv")
    assert list(pairs.columns[:5]) == ["image_a", "image_b", "score", "cross_split", "same_group"]
    assert (pairs["score"].diff().dropna() <= 1e-12).all()  # ranked, best first
    issues = pd.read_csv(out / "label_issues.csv")
    assert list(issues.columns[:4]) == ["image", "label", "suggested", "score"]
    table = pd.read_csv(tiny_dataset / "metadata.csv")
    assert set(issues["image"]) == set(table["image"])
    summary = json.loads((out / "audit.json").read_text())
    assert summary["images"] == len(table)
    assert "how" in summary["off_topic"] and "how" in summary["label_issues"]
    shards = sorted(p.name for p in cache.rglob("shard-*.npy"))
    assert main(args[:4] + [str(tmp_path / "again")] + args[5:]) == 0
    assert sorted(p.name for p in cache.rglob("shard-*.npy")) == shards  # nothing embedded again
    again = pd.read_csv(tmp_path / "again" / "label_issues.csv")
    pd.testing.assert_frame_equal(again, issues)

    # the audit left its encoder and cut-off beside the embeddings: data check uses them, computing nothing
    from dermkit.engine.audit import audit_record, embedding_leaks

    record = audit_record(load_card(tiny_dataset), cache)
    assert record["model"] == "resnet18"
    assert record["cosine_cutoff"] == pytest.approx(summary["near_duplicates"]["cutoff"]["cosine"], abs=1e-6)
    found = embedding_leaks(tiny_dataset, cache)
    assert found.images == found.of == len(table)
    assert all(a["split"] != b["split"] for a, b, _ in found.pairs)
    assert embedding_leaks(tiny_dataset, tmp_path / "empty") is None  # never audited there: hashes only


# ------------------------------------------------------------------------------ planted answers on real images


def _real_slice(tmp_path: Path, n_per_split: dict[str, int]) -> tuple[Path, pd.DataFrame]:
    src = SHARED_DATA / "ham10000"
    table = pd.read_csv(src / "metadata.csv")
    picked = []
    for split, n in n_per_split.items():
        rows = table[table["split"] == split].drop_duplicates("lesion_id")  # one image per lesion: no natural pairs
        per_class = rows.groupby("diagnosis").head(max(2, n // 7))
        picked.append(per_class.head(n))
    rows = pd.concat(picked).reset_index(drop=True)
    root = tmp_path / "slice"
    (root / "images").mkdir(parents=True)
    for rel in rows["image"]:
        shutil.copy(src / rel, root / "images" / Path(rel).name)
    rows["image"] = ["images/" + Path(r).name for r in rows["image"]]
    (root / "dataset.yaml").write_text("name: ham_slice\ngroup_column: lesion_id\n", encoding="utf-8")
    return root, rows


def _copies(image: Image.Image, rng: random.Random) -> dict[str, Image.Image]:
    w, h = image.size
    s = rng.uniform(0.5, 0.9)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=rng.randint(40, 70))
    c = rng.uniform(0.85, 0.95)
    cw, ch = int(w * c), int(h * c)
    return {
        "resized": image.resize((int(w * s), int(h * s))),
        "jpeg": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        "cropped": image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)),
        "flipped": ImageOps.mirror(image),
        "colour": ImageEnhance.Brightness(image).enhance(1.1),
    }


def _non_skin(kind: str) -> Image.Image:
    image = Image.new("RGB", (600, 450), "white")
    draw = ImageDraw.Draw(image)
    if kind == "document":
        for y in range(30, 430, 18):
            draw.line((40, y, 40 + (y * 37) % 480 + 60, y), fill="black", width=3)
    elif kind == "chart":
        colours = ["red", "green", "blue", "yellow", "cyan", "magenta", "black", "grey", "orange", "purple", "brown",
                   "pink"]
        for i, colour in enumerate(colours):
            draw.rectangle((40 + (i % 4) * 130, 40 + (i // 4) * 130, 150 + (i % 4) * 130, 150 + (i // 4) * 130),
                           fill=colour)
    return image  # "blank": a white frame


@pytest.mark.realdata
@pytest.mark.slow
@requires_shared_data
def test_planted_copies_non_skin_images_and_label_flips_rank_at_the_top(tmp_path, monkeypatch, capsys):
    rng = random.Random(0)
    root, rows = _real_slice(tmp_path, {"train": 110, "val": 30, "test": 40})
    planted_pairs = []
    test_rows = rows[rows["split"] == "test"].head(5)
    new = []
    kinds = ("resized", "jpeg", "cropped", "flipped", "colour")
    for (_, row), kind in zip(test_rows.iterrows(), kinds):  # one edit per test image
        copy = _copies(Image.open(root / row["image"]).convert("RGB"), rng)[kind]
        name = f"images/copy_{kind}.jpg"
        copy.save(root / name, quality=90)
        new.append({**row.to_dict(), "image": name, "split": "train", "lesion_id": f"HAM_copy_{kind}"})
        planted_pairs.append(frozenset((row["image"], name)))
    for kind in ("document", "chart", "blank"):
        name = f"images/offtopic_{kind}.jpg"
        _non_skin(kind).save(root / name)
        new.append({**rows.iloc[0].to_dict(), "image": name, "split": "train", "lesion_id": f"HAM_off_{kind}"})
    rows = pd.concat([rows, pd.DataFrame(new)], ignore_index=True)
    classes = sorted(rows["diagnosis"].unique())
    flip_rows = rng.sample([i for i in range(len(rows) - 8) if rows["diagnosis"][i] == "nv"], 8)
    truth = rows["diagnosis"].copy()
    for i in flip_rows:
        rows.loc[i, "diagnosis"] = rng.choice([c for c in ("mel", "bcc", "bkl") if c in classes])
    if "label" in rows.columns:
        rows = rows.drop(columns="label")
    rows.to_csv(root / "metadata.csv", index=False)

    out = tmp_path / "audit"
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))  # data check reads the default cache
    features = tmp_path / "cache" / "features"
    assert main(["data", "audit", str(root), "--out", str(out), "--cache-dir", str(features)]) == 0
    pairs = pd.read_csv(out / "near_duplicates.csv")
    ranked = [frozenset((a, b)) for a, b in zip(pairs["image_a"], pairs["image_b"])]
    positions = [ranked.index(p) for p in planted_pairs]
    assert max(positions) < 10, positions  # every planted copy among the ten top pairs
    top = pairs.head(len(planted_pairs))
    assert top["cross_split"].all() and not top["same_group"].any()

    off = pd.read_csv(out / "off_topic.csv")
    assert set(off["image"].head(3)) == {f"images/offtopic_{k}.jpg" for k in ("document", "chart", "blank")}

    issues = pd.read_csv(out / "label_issues.csv").set_index("image")
    flipped = set(rows["image"][flip_rows])
    candidates = [im for im in rows["image"] if not im.startswith("images/offtopic_")]
    y = [im in flipped for im in candidates]
    auc = roc_auc_score(y, issues.loc[candidates, "score"])
    assert auc > 0.75, auc  # flipped labels rank above clean rows
    assert truth[flip_rows].tolist() != rows["diagnosis"][flip_rows].tolist()

    # data check: every planted copy is a cross-split error, the crop found by the cached embeddings
    capsys.readouterr()
    assert main(["data", "check", str(root)]) == 2
    captured = capsys.readouterr()
    leaks = " ".join(captured.err.split()).split("error [")[1:]  # rich wraps long lines
    for kind in kinds:
        assert any(f"copy_{kind}.jpg" in leak and leak.startswith("near_duplicate_leak") for leak in leaks), kind
    cropped = next(leak for leak in leaks if "copy_cropped.jpg" in leak)
    assert "perceptual-hash" in cropped or "embeddings of efficientnet_lite0" in cropped
    out = " ".join(captured.out.split())
    assert f"embedding check: {len(rows)} of {len(rows)} images had cached efficientnet_lite0 embeddings" in out
