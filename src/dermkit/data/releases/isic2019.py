"""ISIC 2019 Challenge (Tschandl et al. 2018, Codella et al. 2018, Combalia et al. 2019) from
challenge.isic-archive.com/data/#2019 (files on isic-challenge-data.s3.amazonaws.com/2019/).

Official layout:

* ``ISIC_2019_Training_Input.zip`` -> ``ISIC_2019_Training_Input/<image>.jpg`` (25,331 JPEGs; 2,074
  ids end in ``_downsampled``, and the file is named by the id as written).
* ``ISIC_2019_Training_GroundTruth.csv``: ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`` one-hot
  (``0.0``/``1.0``; UNK is 0 for every training image).
* ``ISIC_2019_Training_Metadata.csv``: ``image,age_approx,anatom_site_general,lesion_id,sex``
  (empty cells where unknown; 23,247 images carry one of 11,847 lesion ids, the others none).
* ``ISIC_2019_Test_Input.zip`` (8,238 JPEGs), ``ISIC_2019_Test_Metadata.csv``
  (``image,age_approx,anatom_site_general,sex``) and, published after the challenge,
  ``ISIC_2019_Test_GroundTruth.csv`` (the same one-hot columns; UNK marks the out-of-distribution
  images that belong to none of the 8 training classes; other columns are ignored).

Layout and counts checked on copies of the official CSVs in public repositories (see
``OFFICIAL``). The release records no skin type (Fitzpatrick or Monk): no ``fitzpatrick`` column.

The card's classes are the 8 training classes under their official codes. The challenge defines
no validation set:

* without ``ISIC_2019_Test_GroundTruth.csv`` the card is the training set, split 70/15/15 by
  ``make_splits`` (stratified, grouped by ``lesion_id``: an image without one is its own group;
  identical and near-duplicate images kept together);
* with it, the official test images (those of the 8 classes) are the ``test`` split and the
  training images are split into ``train``/``val`` (85/15, stratified, grouped by ``lesion_id``
  with near-duplicate images joined, seed 0): ``official_split`` holds this assignment and
  ``challenge_split`` the release's own (train/test). The UNK test images are left out (no
  training image has that class; they are an out-of-distribution set, not a class a classifier of
  this card can be scored on) and counted in the notes. ``--split grouped`` makes one grouped
  split of all images instead.

AK is counted malignant, as ``akiec`` is in dermkit's HAM10000 / ISIC 2018 cards (HAM10000's
AKIEC images, intraepithelial carcinoma included, are ISIC 2019's AK).
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import pandas as pd

from dermkit.data.hashes import hash_pairs
from dermkit.data.metadata_csv import line_list
from dermkit.data.near_duplicates import file_hash
from dermkit.data.releases.common import Release, Source, read_table, require_columns
from dermkit.data.releases.isic import _binary
from dermkit.data.split import effective_groups, make_splits
from dermkit.errors import DataError

ARCHIVES = ("ISIC_2019_Training_Input*.zip", "ISIC_2019_Test_Input*.zip")
TRAIN_GT = "ISIC_2019_Training_GroundTruth.csv"
TRAIN_META = "ISIC_2019_Training_Metadata.csv"
TEST_GT = "ISIC_2019_Test_GroundTruth.csv"
TEST_META = "ISIC_2019_Test_Metadata.csv"
CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ONE_HOT = (*CLASSES, "UNK")
METADATA = ("age_approx", "anatom_site_general", "sex")
MALIGNANT = ("AK", "BCC", "MEL", "SCC")
VAL_FRACTIONS = (0.85, 0.15, 0.0)  # train/val carved from the challenge training set when its test is read
VAL_SEED = 0
# The full official release, counted on ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv and
# ISIC_2019_Test_Metadata.csv (github.com/skin-lesion/ISIC @ 6cc60e703d37a9330c3978c52991aa367750613e).
OFFICIAL = {
    "images": 25331,
    "classes": {"MEL": 4522, "NV": 12875, "BCC": 3323, "AK": 867, "BKL": 2624, "DF": 239, "VASC": 253, "SCC": 628},
    "images_with_lesion_id": 23247,
    "lesion_ids": 11847,
    "downsampled_ids": 2074,
    "test_images": 8238,
}


def parse_ground_truth(gt: pd.DataFrame, path: Path, part: str) -> pd.DataFrame:
    """``image_id`` + ``diagnosis`` (MEL ... SCC, or UNK) from an official one-hot ground truth.

    DataError naming the line for a value that is not 0/1, a row without exactly one 1, an id
    listed twice, and (``part="train"``) an UNK row."""
    require_columns(gt, path, ("image", *ONE_HOT), f"the ISIC 2019 {part} ground truth")
    ids = gt["image"].astype("string").str.strip()
    empty = ids.isna() | (ids == "")
    if empty.any():
        raise DataError(f"{path} {line_list(gt.index[empty] + 2)}: 'image' is empty; the file is corrupt")
    twice = ids.duplicated()
    if twice.any():
        raise DataError(f"{path} {line_list(gt.index[twice] + 2)}: image {ids[twice].iloc[0]} is listed twice; "
                        "the file is not the official ground truth")
    hot = pd.DataFrame({c: _binary(gt, c, path) for c in ONE_HOT})
    bad = hot.sum(axis=1) != 1
    if bad.any():
        raise DataError(f"{path} {line_list(gt.index[bad] + 2)}: expected exactly one 1.0 among "
                        f"{', '.join(ONE_HOT)}; the file is corrupt or not the official ground truth")
    diagnosis = hot.idxmax(axis=1)
    if part == "train" and (diagnosis == "UNK").any():
        unk = diagnosis == "UNK"
        raise DataError(f"{path} {line_list(gt.index[unk] + 2)}: UNK is 1; no training image of the official "
                        "release has the UNK class. Is this the test ground truth?")
    return pd.DataFrame({"image_id": ids.to_numpy(dtype=object), "diagnosis": diagnosis.to_numpy(),
                         "gt_line": gt.index.to_numpy() + 2})


def _join_metadata(frame: pd.DataFrame, meta: pd.DataFrame, path: Path, columns) -> pd.DataFrame:
    ids = meta["image"].astype("string").str.strip()
    missing = sorted(set(frame["image_id"]) - set(ids.dropna()))
    if missing:
        raise DataError(f"{path}: no row for {len(missing)} image(s) of the ground truth ({', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}); the metadata and the ground truth must come from "
                        "the same official release")
    by_id = meta.assign(image=ids).drop_duplicates("image").set_index("image")
    out = frame.copy()
    for col in columns:
        out[col] = frame["image_id"].map(by_id[col]).astype(object).to_numpy() if col in by_id.columns else None
    return out


def parse(train_gt: Path, train_meta: Path, test_gt: Path | None = None,
          test_meta: Path | None = None) -> tuple[pd.DataFrame, int]:
    """The release's tables, without images: one row per image with ``image_id``, ``diagnosis``
    (official code), ``lesion_id``, ``age_approx``, ``anatom_site_general``, ``sex``,
    ``isic_id`` (the id without ``_downsampled``), ``challenge_split`` (train/test) and
    ``gt_line`` (its line in its ground-truth file), and the number of UNK test images left out."""
    gt = read_table(train_gt, "ISIC 2019 training ground truth")
    train = parse_ground_truth(gt, train_gt, "train")
    meta = read_table(train_meta, "ISIC 2019 training metadata", ids=("image",))
    require_columns(meta, train_meta, ("image", "lesion_id", *METADATA), "ISIC_2019_Training_Metadata.csv")
    train = _join_metadata(train, meta, train_meta, ("lesion_id", *METADATA))
    train["challenge_split"] = "train"
    frames, unknown = [train], 0
    if test_gt is not None:
        test = parse_ground_truth(read_table(test_gt, "ISIC 2019 test ground truth"), test_gt, "test")
        overlap = sorted(set(test["image_id"]) & set(train["image_id"]))
        if overlap:
            raise DataError(f"{test_gt}: {overlap[0]} is also in {train_gt.name}; the test and training ground "
                            "truths of the official release share no image")
        unknown = int((test["diagnosis"] == "UNK").sum())
        test = test[test["diagnosis"] != "UNK"].reset_index(drop=True)
        if test_meta is not None:
            tmeta = read_table(test_meta, "ISIC 2019 test metadata", ids=("image",))
            require_columns(tmeta, test_meta, ("image", *METADATA), "ISIC_2019_Test_Metadata.csv")
            test = _join_metadata(test, tmeta, test_meta, METADATA)
        test["lesion_id"] = None  # the test metadata has no lesion ids
        test["challenge_split"] = "test"
        frames.append(test)
    table = pd.concat(frames, ignore_index=True)
    for col in METADATA:
        if col not in table.columns:
            table[col] = None
    table["isic_id"] = table["image_id"].str.removesuffix("_downsampled")
    order = ["image_id", "diagnosis", "isic_id", "lesion_id", *METADATA, "challenge_split", "gt_line"]
    return table[order], unknown


def _near_duplicate_links(paths: list[Path], threads: int = 4) -> list[tuple[int, int]]:
    """Pairs of positions in ``paths`` whose images are identical or near-duplicates (perceptual hashes)."""
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        hashes = list(pool.map(file_hash, paths))
    kept = [i for i, h in enumerate(hashes) if h is not None]
    if len(kept) < 2:
        return []
    return [(kept[a], kept[b]) for a, b, _bits in hash_pairs([hashes[i] for i in kept])]


def carve_val(table: pd.DataFrame, paths: list[Path]) -> pd.Series:
    """train/val for the challenge's training rows (85/15, stratified by diagnosis, grouped by
    ``lesion_id`` with identical and near-duplicate images joined, seed 0), test for its test rows."""
    split = pd.Series("test", index=table.index, dtype=object)
    train = table.index[table["challenge_split"] == "train"]
    rows = table.loc[train].reset_index(drop=True)
    links = _near_duplicate_links([paths[i] for i in train])
    groups = effective_groups(rows, "lesion_id", links=links)
    split.loc[train] = make_splits(rows, "diagnosis", groups, fractions=VAL_FRACTIONS, seed=VAL_SEED).to_numpy()
    return split


def count_notes(table: pd.DataFrame) -> list[str]:
    """Whether the training rows read are the official full training set or a partial copy."""
    train = table[table["challenge_split"] == "train"]
    counts = train["diagnosis"].value_counts()
    per_class = ", ".join(f"{int(counts.get(c, 0))} {c}" for c in CLASSES)
    full = len(train) == OFFICIAL["images"] and all(int(counts.get(c, 0)) == n
                                                    for c, n in OFFICIAL["classes"].items())
    if full:
        return [f"read all {OFFICIAL['images']:,} training images of the official release ({per_class}): the "
                "official full training set"]
    return [f"read {len(train):,} of the {OFFICIAL['images']:,} training images of the official release "
            f"({per_class}): a partial copy"]


def read(src: Source) -> Release:
    train_gt = src.find([TRAIN_GT], "ISIC 2019 training ground truth: image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK")
    train_meta = src.find([TRAIN_META], "ISIC 2019 training metadata: image,age_approx,anatom_site_general,"
                                        "lesion_id,sex")
    test_gt = src.find([TEST_GT], "", required=False)
    test_meta = src.find([TEST_META], "", required=False) if test_gt is not None else None
    table, unknown = parse(train_gt, train_meta, test_gt, test_meta)
    sources = [p.name for p in (train_gt, train_meta, test_gt, test_meta) if p is not None]
    images = src.images((".jpg", ".jpeg", ".png"))
    for part, gt_path, folder in (("train", train_gt, "ISIC_2019_Training_Input"), ("test", test_gt,
                                                                                    "ISIC_2019_Test_Input")):
        rows = table[(table["challenge_split"] == part) & ~table["image_id"].isin(images)]
        if len(rows):
            shown = ", ".join(rows["image_id"].iloc[:5])
            raise DataError(f"{gt_path} {line_list(rows['gt_line'])}: {len(rows)} image(s) listed but not in the "
                            f"release ({shown}{' ...' if len(rows) > 5 else ''}); add {folder}.zip (or its "
                            "extracted folder) to --from")
    table = table.drop(columns="gt_line")
    files, rel, paths = {}, [], []
    for image_id in table["image_id"]:
        image = images[image_id]
        dest = f"images/{image_id}{image.suffix.lower()}"
        files[dest] = image
        rel.append(dest)
        paths.append(image)
    table.insert(0, "image", rel)
    notes = [f"read {', '.join(sources)}: {len(table):,} images", *count_notes(table)]
    has_lesion = table["lesion_id"].notna()
    notes.append(f"lesion ids for {int(has_lesion.sum()):,} images ({table.loc[has_lesion, 'lesion_id'].nunique():,} "
                 "lesions); an image without one is its own group")
    official = None
    if test_gt is None:
        notes.append(f"no {TEST_GT}: the card is the training set, split by dermkit (the challenge defines no "
                     "validation set)")
    else:
        n_test = int((table["challenge_split"] == "test").sum())
        test_note = f"official test set: {n_test:,} images of the 8 classes are the test split"
        if n_test + unknown == OFFICIAL["test_images"]:
            test_note += f" (all {OFFICIAL['test_images']:,} official test images read)"
        else:
            test_note += (f" ({n_test + unknown:,} of the {OFFICIAL['test_images']:,} official test images: a "
                          "partial copy)")
        notes.append(f"{test_note}; {unknown:,} UNK (out-of-distribution) test images are left out: no training "
                     "image has that class")
        if test_meta is None:
            notes.append(f"no {TEST_META}: the test images have no age, site or sex")
        official = carve_val(table, paths)
        notes.append("the challenge has no validation set: its training images are split 85/15 into train/val "
                     f"(stratified, grouped by lesion_id, identical and near-duplicate images kept together, seed "
                     f"{VAL_SEED}); official_split holds train/val/test, challenge_split the release's train/test")
    card = {
        "name": "isic2019",
        "base_card": "isic2019",
        "description": "ISIC 2019 Challenge (Tschandl et al. 2018, Codella et al. 2018, Combalia et al. 2019) "
                       "imported from the official challenge files by `dermkit data import isic2019`: "
                       "original-resolution dermoscopic JPEGs of 8 classes with age, site and sex. With the "
                       "official test ground truth, `split` is the challenge's test set plus a train/val split of "
                       "its training set (grouped by lesion_id); without it, a grouped split of the training set. "
                       "`challenge_split` holds the release's own assignment.",
    }
    return Release(table=table, files=files, card=card, official_split=official, malignant=MALIGNANT, notes=notes)
