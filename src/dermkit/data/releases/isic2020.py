"""SIIM-ISIC 2020 Challenge training set (Rotemberg et al., Sci. Data 8, 34, 2021) from
challenge.isic-archive.com/data/#2020 (files on isic-challenge-data.s3.amazonaws.com/2020/).

Official layout:

* ``ISIC_2020_Training_JPEG.zip`` -> ``train/<image_name>.jpg`` (33,126 JPEGs).
* ``ISIC_2020_Training_GroundTruth.csv``: ``image_name,patient_id,sex,age_approx,
  anatom_site_general_challenge,diagnosis,benign_malignant,target`` (``target`` 1 = malignant;
  ``diagnosis`` the finer label, ``unknown`` for most benign images); ``..._GroundTruth_v2.csv``
  has the same rows plus ``lesion_id`` and is read instead when present.
* ``ISIC_2020_Training_Duplicates.csv``: ``image_name_1,image_name_2``, the 425 pairs of duplicate
  images the organisers found.

Layout and counts checked on copies of the official CSVs in public repositories (see
``OFFICIAL``). The release records no skin type (Fitzpatrick or Monk): no ``fitzpatrick`` column.

Classes: ``benign`` / ``malignant`` from ``target`` (which must agree with ``benign_malignant``);
the release's ``diagnosis`` is kept as ``diagnosis_fine`` (``diagnosis`` is the card's class).
No official split: the split is grouped by ``patient_id`` (a patient's images never span two
splits) with the official duplicate pairs joined, and stratified by class. The official
duplicates are written to ``official_duplicate_of`` (the card's duplicate column, so ``data
check`` and ``data split`` keep each pair in one split); ``duplicate_of`` lists byte-identical
files as in every imported card. The public test set (``ISIC_2020_Test_JPEG.zip``, 10,982
images) has no labels and is not read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, map_codes, read_table, require_columns
from dermkit.data.releases.ham10000 import find_images
from dermkit.errors import DataError

ARCHIVES = ("ISIC_2020_Training_JPEG*.zip",)
GT_NAMES = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv")
DUPLICATES = "ISIC_2020_Training_Duplicates.csv"
COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
           "benign_malignant", "target")
TARGET = {"0": "benign", "1": "malignant"}
# The full official release, counted on ISIC_2020_Training_GroundTruth.csv, ..._GroundTruth_v2.csv and
# ISIC_2020_Training_Duplicates.csv (github.com/caitlinruble/Skin-Cancer-Image-Detection @
# ccc03ad38a738f065d38216abcf3d7f7cd1aab83); 33,126 / 2,056 / 584 as in Rotemberg et al. 2021.
OFFICIAL = {
    "images": 33126,
    "patients": 2056,
    "classes": {"benign": 32542, "malignant": 584},
    "diagnosis": {"unknown": 27124, "nevus": 5193, "melanoma": 584, "seborrheic keratosis": 135,
                  "lentigo NOS": 44, "lichenoid keratosis": 37, "solar lentigo": 7, "cafe-au-lait macule": 1,
                  "atypical melanocytic proliferation": 1},
    "lesion_ids": 32701,  # v2 only
    "duplicate_pairs": 425,
    "test_images": 10982,  # unlabelled, not read; Rotemberg et al. 2021 (no copy of the test metadata found)
}


def parse_ground_truth(path: Path) -> pd.DataFrame:
    """The ground truth without images: ``image_name``, ``diagnosis`` (benign/malignant),
    ``diagnosis_fine`` and the official columns (``lesion_id`` from v2, else empty)."""
    gt = read_table(path, "ISIC 2020 training ground truth")
    require_columns(gt, path, COLUMNS, path.name)
    names = gt["image_name"].astype("string").str.strip()
    for col, values in (("image_name", names), ("patient_id", gt["patient_id"])):
        empty = values.isna() | (values.astype("string").str.strip() == "")
        if empty.any():
            raise DataError(f"{path} {line_list(gt.index[empty] + 2)}: '{col}' is empty; the file is corrupt")
    twice = names.duplicated()
    if twice.any():
        raise DataError(f"{path} {line_list(gt.index[twice] + 2)}: image_name {names[twice].iloc[0]} is listed "
                        "twice; the file is not the official ground truth")
    diagnosis = map_codes(gt["target"], TARGET, path, "target")
    stated = gt["benign_malignant"].astype("string").str.strip().str.lower()
    disagree = stated != diagnosis
    if disagree.any():
        first = gt.index[disagree][0]
        raise DataError(f"{path} {line_list(gt.index[disagree] + 2)}: benign_malignant "
                        f"{gt['benign_malignant'][first]!r} disagrees with target {gt['target'][first]!r}; the "
                        "file is corrupt or not the official ground truth")
    table = pd.DataFrame({
        "image_name": names.to_numpy(dtype=object),
        "diagnosis": diagnosis.to_numpy(),
        "diagnosis_fine": gt["diagnosis"].to_numpy(),
        "patient_id": gt["patient_id"].str.strip().to_numpy(),
        "lesion_id": gt["lesion_id"].to_numpy() if "lesion_id" in gt.columns else None,
        "sex": gt["sex"].to_numpy(),
        "age_approx": gt["age_approx"].to_numpy(),
        "anatom_site_general_challenge": gt["anatom_site_general_challenge"].to_numpy(),
        "benign_malignant": gt["benign_malignant"].to_numpy(),
        "target": gt["target"].to_numpy(),
    })
    return table


def parse_duplicates(path: Path, names: pd.Series) -> pd.Series:
    """``official_duplicate_of`` per row of ``names``: the image names the official duplicates file
    pairs it with (";"-joined), None for the others. DataError naming the line of a pair whose image
    is not in the ground truth."""
    dup = read_table(path, "ISIC 2020 duplicates")
    require_columns(dup, path, ("image_name_1", "image_name_2"), DUPLICATES)
    known = set(names)
    a = dup["image_name_1"].astype("string").str.strip()
    b = dup["image_name_2"].astype("string").str.strip()
    bad = ~a.isin(known) | ~b.isin(known)
    if bad.any():
        first = dup.index[bad][0]
        name = a[first] if a[first] not in known else b[first]
        raise DataError(f"{path} {line_list(dup.index[bad] + 2)}: image {name!r} is not in the ground truth; the "
                        "duplicates file and the ground truth must come from the same official release")
    pairs: dict[str, list[str]] = {}
    for x, y in zip(a, b):
        pairs.setdefault(x, []).append(y)
        pairs.setdefault(y, []).append(x)
    return names.map(lambda n: ";".join(sorted(set(pairs[n]))) if n in pairs else None).astype(object)


def _group_keys(table: pd.DataFrame) -> pd.Series:
    """``patient_id`` with the official duplicate pairs joined (one key per connected set)."""
    parent = {p: p for p in table["patient_id"]}

    def find(p):
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    patient = dict(zip(table["image_name"], table["patient_id"]))
    for name, others in zip(table["image_name"], table["official_duplicate_of"]):
        for other in (str(others).split(";") if pd.notna(others) else []):
            if other:
                ra, rb = find(patient[name]), find(patient[other])
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return table["patient_id"].map(find)


def count_notes(table: pd.DataFrame) -> list[str]:
    counts = table["diagnosis"].value_counts()
    what = (f"{len(table):,} images ({int(counts.get('benign', 0)):,} benign, {int(counts.get('malignant', 0)):,} "
            f"malignant), {table['patient_id'].nunique():,} patients")
    full = len(table) == OFFICIAL["images"] and table["patient_id"].nunique() == OFFICIAL["patients"] and all(
        int(counts.get(c, 0)) == n for c, n in OFFICIAL["classes"].items())
    if full:
        return [f"read all {what}: the official full training set"]
    return [f"read {what} of the {OFFICIAL['images']:,} images ({OFFICIAL['patients']:,} patients) of the official "
            "training set: a partial copy"]


def read(src: Source) -> Release:
    path = src.find(GT_NAMES, "ISIC 2020 training ground truth: image_name,patient_id,sex,age_approx,"
                              "anatom_site_general_challenge,diagnosis,benign_malignant,target")
    table = parse_ground_truth(path)
    notes = [f"read {path.name}", *count_notes(table)]
    if path.name.lower() != GT_NAMES[0].lower():
        notes.append(f"{path.name} has no lesion ids ({GT_NAMES[0]} adds them): lesion_id is empty")
    dup_path = src.find([DUPLICATES], "", required=False)
    if dup_path is not None:
        table["official_duplicate_of"] = parse_duplicates(dup_path, table["image_name"]).to_numpy()
        n_pairs = int(table["official_duplicate_of"].notna().sum())
        notes.append(f"{DUPLICATES}: {n_pairs:,} images in official duplicate pairs (official_duplicate_of), kept "
                     "in one split")
    else:
        table["official_duplicate_of"] = None
        notes.append(f"no {DUPLICATES}: the official duplicate pairs are not recorded (identical and "
                     "near-duplicate images are still found and kept in one split)")
    images = find_images(src, table["image_name"], path.name)
    files, rel = {}, []
    for name in table["image_name"]:
        image = images[name]
        dest = f"images/{name}{image.suffix.lower()}"
        files[dest] = image
        rel.append(dest)
    table.insert(0, "image", rel)
    notes.append("the split is grouped by patient_id (patients joined by an official duplicate pair count as one)")
    notes.append("the public test set has no labels and is not part of the card")
    card = {
        "name": "isic2020",
        "base_card": "isic2020",
        "description": "SIIM-ISIC 2020 Challenge training set (Rotemberg et al., Sci. Data 2021) imported from the "
                       "official challenge files by `dermkit data import isic2020`: original-resolution dermoscopic "
                       "JPEGs, benign vs. malignant (`diagnosis_fine`: the release's finer diagnosis), split grouped "
                       "by patient_id with the official duplicate pairs kept together (the release has no official "
                       "split; its test set has no labels).",
    }
    return Release(table=table, files=files, card=card, malignant=("malignant",), notes=notes,
                   group_keys=_group_keys(table))
