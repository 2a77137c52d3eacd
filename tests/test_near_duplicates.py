"""Near-duplicate images (perceptual hashes): ``data check`` reports them across splits, ``data split``
and the importers keep them in one split.

A copy of a test image (resized, re-encoded as JPEG, mirrored or brightened) is added to train under
a new lesion id: on a synthetic card of smooth random images and on a slice of real HAM10000
images (``realdata``; skipped when the shared datasets are absent).
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageEnhance, ImageOps

from conftest import SHARED_DATA, make_dataset, requires_shared_data
from dermkit.cli import main
from dermkit.data import check_dataset, effective_groups, load_card, make_splits, write_split
from dermkit.data.hashes import NEAR_DUPLICATE_BITS, hash_distance, perceptual_hash
from dermkit.data.near_duplicates import image_hash, row_links
from dermkit.data.releases import import_csv


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _reencode(quality: int):
    return lambda im: Image.open(io.BytesIO(_jpeg(im, quality)))


COPIES = {
    "resized": lambda im: im.resize((round(im.width * 0.6), round(im.height * 0.6)), Image.Resampling.BILINEAR),
    "jpeg-q50": _reencode(50),
    "mirrored": ImageOps.mirror,
    "brightened": lambda im: ImageEnhance.Brightness(im).enhance(1.12),
}


def _smooth(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A random smooth image: detail at every frequency a 256-bit pHash looks at (unlike the tiny
    dataset's pixel noise or a flat colour)."""
    small = rng.integers(40, 216, size=(16, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def _smooth_card(tmp_path: Path) -> Path:
    """The tiny dataset (3 classes x 16/6/6, lesion_id groups) with smooth random images."""
    root = make_dataset(tmp_path)
    rng = np.random.default_rng(7)
    for rel in pd.read_csv(root / "metadata.csv")["image"]:
        (root / rel).write_bytes(_jpeg(_smooth(rng)))
    return root


def _add_copy(root: Path, of_row: int, how: str, split: str = "train", lesion: str | None = None,
              name: str | None = None) -> tuple[int, str, str]:
    """Append a row whose image is a ``how`` copy of row ``of_row``'s image; returns (CSV line of
    the copy, the original's path, the copy's path)."""
    df = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    original = df.loc[of_row].copy()
    rel = f"images/{name or f'copy_{how}_{of_row}'}.jpg"
    with Image.open(root / original["image"]) as im:
        im.load()
        (root / rel).write_bytes(_jpeg(COPIES[how](im)))
    row = original.copy()
    row["image"], row["split"] = rel, split
    if "lesion_id" in df.columns:
        row["lesion_id"] = lesion or f"L_copy_{how}_{of_row}"
    df = pd.concat([df, row.to_frame().T], ignore_index=True)
    df.to_csv(root / "metadata.csv", index=False)
    return len(df) + 1, original["image"], rel


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _check(root: Path, **kw):
    return check_dataset(load_card(root), progress=False, **kw)


def _kinds(result) -> set[str]:
    return {p.kind for p in result.problems}


def _first_row(root: Path, split: str) -> int:
    df = pd.read_csv(root / "metadata.csv")
    return int(df.index[df["split"] == split][0])


def _cli(root: Path, capsys) -> tuple[int, str]:
    code = main(["data", "check", str(root)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _assert_names_pair(problem, original_line, original, copy_line, copy, splits=("test", "train")):
    text = problem.message
    assert f"line {original_line} image {original!r} ({splits[0]})" in text, text
    assert f"line {copy_line} image {copy!r} ({splits[1]})" in text, text
    bits = int(re.search(r"(\d+) of 256 perceptual-hash bits differ", text).group(1))
    assert bits <= NEAR_DUPLICATE_BITS
    assert problem.csv_line == min(original_line, copy_line) and problem.column == "image"


# ------------------------------------------------------------------------------ data check
@pytest.mark.parametrize("how", list(COPIES))
def test_copy_in_another_split_is_an_error_naming_both(how, tmp_path, capsys):
    root = _smooth_card(tmp_path)
    assert _check(root).ok  # smooth random images: no near-duplicates to begin with
    of = _first_row(root, "test")
    line, original, copy = _add_copy(root, of, how)
    result = _check(root)
    assert not result.ok
    (problem,) = result.errors
    assert problem.kind == "near_duplicate_leak"
    _assert_names_pair(problem, of + 2, original, line, copy)
    assert "one split" in problem.fix and "group id in 'lesion_id'" in problem.fix and "keep one copy" in problem.fix

    code, output = _cli(root, capsys)
    assert code == 2 and "Traceback" not in output
    squashed = _squash(output)
    assert "near_duplicate_leak" in squashed and _squash(original) in squashed and _squash(copy) in squashed
    assert f"line{of + 2}" in squashed and f"line{line}" in squashed


def test_copy_in_the_same_split_is_a_warning(tmp_path, capsys):
    root = _smooth_card(tmp_path)
    of = _first_row(root, "val")
    line, original, copy = _add_copy(root, of, "resized", split="val")
    result = _check(root)
    assert result.ok, result.format()
    (warning,) = [p for p in result.problems if p.kind == "near_duplicates"]
    assert warning.severity == "warning" and "harmless" in warning.fix
    _assert_names_pair(warning, of + 2, original, line, copy, splits=("val", "val"))
    code, output = _cli(root, capsys)
    assert code == 0, output


def test_shared_group_and_identical_copies_are_not_reported_twice(tmp_path):
    root = _smooth_card(tmp_path)
    df = pd.read_csv(root / "metadata.csv")
    of = _first_row(root, "test")
    # The copy keeps the original's lesion id: a group leak, not also a near-duplicate leak.
    _add_copy(root, of, "jpeg-q50", lesion=df["lesion_id"][of])
    result = _check(root)
    assert "group_leak" in _kinds(result) and "near_duplicate_leak" not in _kinds(result)

    root = _smooth_card(tmp_path / "identical")
    of = _first_row(root, "test")
    line, original, copy = _add_copy(root, of, "mirrored")
    shutil.copy(root / original, root / copy)  # byte-identical: duplicate_image_leak only
    kinds = _kinds(_check(root))
    assert "duplicate_image_leak" in kinds and not kinds & {"near_duplicate_leak", "near_duplicates"}


def test_declared_copies_are_not_reported_twice(tmp_path):
    root = _smooth_card(tmp_path)
    of = _first_row(root, "test")
    line, original, copy = _add_copy(root, of, "brightened")
    df = pd.read_csv(root / "metadata.csv")
    df["duplicate_of"] = ""
    df.loc[line - 2, "duplicate_of"] = original
    df.to_csv(root / "metadata.csv", index=False)
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    spec.update(duplicate_column="duplicate_of", id_column="image")
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    kinds = _kinds(_check(root))
    assert "duplicate_image_leak" in kinds and "near_duplicate_leak" not in kinds


def test_without_images_there_is_no_near_duplicate_check(tmp_path):
    root = _smooth_card(tmp_path)
    _add_copy(root, _first_row(root, "test"), "resized")
    assert _check(root, check_images=False).ok


def test_flat_images_have_no_hash(tmp_path):
    """Every flat image has the same pHash: two different plain colours are not a pair."""
    assert image_hash(Image.new("RGB", (40, 30), (200, 60, 60))) is None
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1)))
    assert image_hash(gradient) is None
    assert image_hash(_smooth(np.random.default_rng(0))) is not None
    root = _smooth_card(tmp_path)
    df = pd.read_csv(root / "metadata.csv")
    a, b = _first_row(root, "train"), _first_row(root, "test")
    for row, colour in ((a, (200, 60, 60)), (b, (60, 80, 200))):
        Image.new("RGB", (96, 96), colour).save(root / df["image"][row], "JPEG")
    assert np.array_equal(perceptual_hash(Image.open(root / df["image"][a])),
                          perceptual_hash(Image.open(root / df["image"][b])))
    assert _check(root).ok


def test_large_images_are_shrunk_before_hashing():
    """A 6000x4000 photo is box-reduced before the pHash (3x faster): its hash stays within a few
    bits of the plain pHash and of its resized copy's."""
    small = np.random.default_rng(1).integers(40, 216, size=(24, 36, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((3000, 2000), Image.Resampling.BICUBIC)
    h = image_hash(big)
    assert hash_distance(h, perceptual_hash(big)) <= 8
    assert hash_distance(h, image_hash(COPIES["resized"](big))) <= 8


# ------------------------------------------------------------------------------ data split
def _old_split(root: Path, seed: int = 0) -> pd.Series:
    """The split as ``write_split`` made it before near-duplicates were grouped."""
    card = load_card(root)
    groups = effective_groups(card.table, card.group_column, card.duplicate_column, card.id_column)
    return make_splits(card.table, "diagnosis", groups, seed=seed)


def test_split_without_near_duplicates_is_unchanged(tmp_path):
    root = _smooth_card(tmp_path)
    for seed in (0, 3):
        expected = _old_split(root, seed)
        write_split(root, seed=seed, force=True)
        assert load_card(root).table["split"].tolist() == expected.tolist()
        write_split(root, seed=seed, force=True, near_duplicates=False)
        assert load_card(root).table["split"].tolist() == expected.tolist()


def test_split_keeps_a_copy_with_its_original(tmp_path):
    root = _smooth_card(tmp_path)
    rows = []
    for k, how in enumerate(COPIES):
        of = _first_row(root, "test") + k
        line, _, _ = _add_copy(root, of, how)
        rows.append((of, line - 2))
    card = load_card(root)
    pairs = {(i, j) for i, j, _ in row_links(card.table, root)}
    assert pairs == set(rows)
    splits = []
    for seed in range(6):
        write_split(root, seed=seed, force=True)
        split = load_card(root).table["split"]
        assert all(split[i] == split[j] for i, j in rows), seed
        assert "near_duplicate_leak" not in _kinds(_check(root))
        splits.append(split.tolist())
    write_split(root, seed=5, force=True)
    assert load_card(root).table["split"].tolist() == splits[5]  # same seed, same split


def test_effective_groups_join_links():
    table = pd.DataFrame({"lesion": ["a", "a", "b", "c", None]})
    keys = effective_groups(table, "lesion", links=[(2, 4)])
    assert keys.tolist() == ["group:0", "group:0", "group:2", "group:3", "group:2"]
    assert effective_groups(table, "lesion").tolist() == ["group:0", "group:0", "group:2", "group:3", "group:4"]


# ------------------------------------------------------------------------------ importers
def _csv_release(tmp_path: Path, with_split: bool) -> tuple[Path, int, int]:
    """A CSV release of the smooth card plus a resized copy of a test image in train."""
    root = _smooth_card(tmp_path)
    of = _first_row(root, "test")
    line, _, _ = _add_copy(root, of, "resized")
    df = pd.read_csv(root / "metadata.csv")[["image", "diagnosis", "lesion_id", "split"]]
    if not with_split:
        df = df.drop(columns=["split"])
    df.to_csv(root / "release.csv", index=False)
    return root / "release.csv", of, line - 2


def test_grouped_import_keeps_near_duplicates_together(tmp_path):
    csv, of, copy = _csv_release(tmp_path, with_split=False)
    result = import_csv(csv, tmp_path / "card", image_column="image", label_column="diagnosis",
                        group_column="lesion_id", progress=False)
    split = pd.read_csv(tmp_path / "card" / "metadata.csv")["split"]
    assert split[of] == split[copy]
    assert "near-duplicate images kept together" in result.split_source
    assert result.check.ok and "near_duplicates" in _kinds(result.check)


def test_official_split_near_duplicate_leak_is_reported_not_fatal(tmp_path):
    csv, of, copy = _csv_release(tmp_path, with_split=True)
    result = import_csv(csv, tmp_path / "card", image_column="image", label_column="diagnosis",
                        group_column="lesion_id", split_column="split", progress=False)
    assert result.split_source == "official"
    assert {p.kind for p in result.check.errors} == {"near_duplicate_leak"}
    assert any("near-duplicate images" in n and "--split grouped" in n for n in result.notes)


# ------------------------------------------------------------------------------ real HAM10000
def _ham_slice(root: Path) -> Path:
    """210 real HAM10000 images, one per lesion, 20/5/5 per class in train/val/test (their split in
    the shared card), with their lesion ids; copied to ``root``."""
    shared = SHARED_DATA / "ham10000"
    card = load_card(shared)
    table = pd.read_csv(shared / "metadata.csv").drop_duplicates("lesion_id")
    per_split = {"train": 20, "val": 5, "test": 5}
    rows = pd.concat([part.head(per_split[split]) for (_, split), part in table.groupby(["diagnosis", "split"])])
    rows = rows.sort_index()[["image", "diagnosis", "lesion_id", "split"]]
    (root / "images").mkdir(parents=True)
    for rel in rows["image"]:
        shutil.copyfile(shared / rel, root / rel)
    rows.to_csv(root / "metadata.csv", index=False)
    spec = {"name": "ham_slice", "classes": list(card.classes), "group_column": "lesion_id"}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.mark.realdata
@requires_shared_data
def test_real_ham10000_slice(tmp_path, capsys):
    root = _ham_slice(tmp_path / "ham")
    clean = _check(root)
    assert clean.ok, clean.format()  # 210 different lesions: no false positive
    assert not _kinds(clean) & {"near_duplicate_leak", "near_duplicates"}, clean.format()
    before = _old_split(root)
    write_split(root, force=True)
    assert load_card(root).table["split"].tolist() == before.tolist()

    tests = pd.read_csv(root / "metadata.csv")
    tests = tests.index[tests["split"] == "test"][:len(COPIES)]
    added = [(of, *_add_copy(root, int(of), how)) for of, how in zip(tests, COPIES)]
    result = _check(root)
    leaks = sorted(result.errors, key=lambda p: p.csv_line)
    assert [p.kind for p in leaks] == ["near_duplicate_leak"] * len(COPIES), result.format()
    for problem, (of, line, original, copy) in zip(leaks, added):
        _assert_names_pair(problem, of + 2, original, line, copy)
    code, output = _cli(root, capsys)
    assert code == 2
    squashed = _squash(output)
    assert all(_squash(copy) in squashed and _squash(original) in squashed for _, _, original, copy in added)

    write_split(root, force=True)
    split = load_card(root).table["split"]
    assert all(split[of] == split[line - 2] for of, line, _, _ in added)
    assert "near_duplicate_leak" not in _kinds(_check(root))
