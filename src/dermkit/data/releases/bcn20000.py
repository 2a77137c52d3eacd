"""BCN20000 (Hernandez-Perez et al., Sci. Data 11, 641, 2024) from figshare (article 24140028).

Official layout (figshare "BCN20000: Dermoscopic Lesions in the Wild"): ``bcn_20k_train.csv`` with
``bcn_filename,age_approx,anatom_site_general,diagnosis,lesion_id,capture_date,sex,split`` (one row
per image; ``diagnosis`` one of AK, BCC, BKL, DF, MEL, NV, SCC, VASC; ``split`` = ``train``;
``lesion_id`` like ``BCN_0003884``) and the JPEGs ``BCN_nnnnnnnnnn.jpg`` in ``BCN_20k_train/``
(or its zip). ``bcn_20k_test.csv`` (same columns, ``diagnosis`` empty, lesion ids like ``BCN4657``)
and ``BCN_20k_test/`` are the benchmark's test part: its labels are withheld (the paper's ninth,
out-of-distribution class lives there), so it is left out and a note says how many images that is.
Sources checked: the column names, codes and the empty test labels on copies of ``bcn_20k_test.csv``
and of the train table in public repositories, the class codes in the authors' code
(github.com/imatge-upc/BCN20000, ``preparation/dataset_functions.py``).

Official counts (``OFFICIAL``): 18,946 images in all, 12,413 labelled training images of 3,576
lesions (per class below) and 6,533 unlabelled test images. The training set is the BCN part of the
ISIC 2019 training set; the counts were checked on ``ISIC_2019_Training_Metadata.csv`` +
``ISIC_2019_Training_GroundTruth.csv`` (rows whose lesion_id starts with ``BCN_``).

The release's only labelled split is ``train``: it is kept in ``official_split`` and the split is
grouped by ``lesion_id`` and stratified by diagnosis. BCN20000 records no skin type.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, map_codes, read_table, require_columns
from dermkit.errors import DataError, excerpt

ARCHIVES = ("bcn_20k_train*.zip", "bcn20000*.zip")
TRAIN_CSV = "bcn_20k_train.csv"
TEST_CSV = "bcn_20k_test.csv"
COLUMNS = ("bcn_filename", "age_approx", "anatom_site_general", "diagnosis", "lesion_id", "capture_date", "sex",
           "split")
CODES = {c: c for c in ("AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC")}
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MALIGNANT = ("BCC", "MEL", "SCC")
OFFICIAL = {
    "images": 18946,
    "train_images": 12413,
    "train_lesions": 3576,
    "test_images": 6533,
    "train_per_class": {"AK": 737, "BCC": 2809, "BKL": 1138, "DF": 124, "MEL": 2857, "NV": 4206, "SCC": 431,
                        "VASC": 111},
}


def _is_train_table(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
    return "bcn_filename" in header and "diagnosis" in header


def parse_metadata(path: Path) -> pd.DataFrame:
    """``bcn_20k_train.csv`` as one row per image (no image files needed): ``bcn_filename``,
    ``diagnosis`` (the official code), ``official_split`` and the other official columns.
    DataError naming the file, column or line for a wrong layout, an unknown or empty code, a
    repeated file name or an empty lesion_id."""
    meta = read_table(path, "BCN20000 bcn_20k_train.csv")
    require_columns(meta, path, COLUMNS, "BCN20000's bcn_20k_train.csv")
    meta["bcn_filename"] = meta["bcn_filename"].str.strip()
    for col in ("bcn_filename", "lesion_id"):
        empty = meta[col].isna() | (meta[col] == "")
        if empty.any():
            raise DataError(f"{path} {line_list(meta.index[empty] + 2)}: '{col}' is empty; the file is corrupt")
    dupes = meta["bcn_filename"][meta["bcn_filename"].duplicated()]
    if len(dupes):
        raise DataError(f"{path} {line_list(dupes.index + 2)}: bcn_filename {dupes.iloc[0]} is listed twice; "
                        "the file is not the official table")
    diagnosis = map_codes(meta["diagnosis"], CODES, path, "diagnosis")
    split = meta["split"].map(lambda v: SPLITS.get(str(v).strip().lower()) if pd.notna(v) else None)
    bad = split.isna()
    if bad.any():
        raise DataError(f"{path} {line_list(meta.index[bad] + 2)}, column 'split': unknown value "
                        f"{excerpt(meta['split'][bad].iloc[0])}; the official table says train")
    table = pd.DataFrame({"bcn_filename": meta["bcn_filename"], "diagnosis": diagnosis,
                          "lesion_id": meta["lesion_id"].str.strip()})
    for col in ("age_approx", "anatom_site_general", "sex", "capture_date"):
        table[col] = meta[col]
    table["official_split"] = split
    return table


def count_note(table: pd.DataFrame) -> str:
    """Whether ``table`` (parsed training rows) is the whole official training set or a partial copy."""
    n, want = len(table), OFFICIAL["train_images"]
    counts = table["diagnosis"].value_counts().to_dict()
    if n == want and counts == OFFICIAL["train_per_class"]:
        return (f"read all {want:,} labelled training images of the official release ({table['lesion_id'].nunique():,} "
                "lesions; the per-class counts equal the published ones)")
    if n < want:
        return f"read {n:,} of the {want:,} labelled training images of the official release: a partial copy"
    return (f"read {n:,} images, the official release has {want:,} labelled training images: not the official "
            "bcn_20k_train.csv (counts differ)")


def _test_note(src: Source) -> str | None:
    path = src.find([TEST_CSV], "", required=False)
    if path is None:
        return None
    test = read_table(path, "BCN20000 bcn_20k_test.csv")
    labelled = int(test["diagnosis"].notna().sum()) if "diagnosis" in test.columns else 0
    return (f"{path.name}: {len(test):,} test images (official: {OFFICIAL['test_images']:,}) left out: the release "
            f"withholds their diagnosis ({labelled} labelled)")


def read(src: Source) -> Release:
    path = src.find([TRAIN_CSV], "BCN20000's training table, from figshare article 24140028",
                    accept=_is_train_table)
    table = parse_metadata(path)
    by_name = src.by_name()
    missing = [n for n in table["bcn_filename"] if n.lower() not in by_name]
    if missing:
        lines = table.index[table["bcn_filename"].isin(missing)] + 2
        raise DataError(
            f"{path} {line_list(lines)}: {len(missing)} image(s) listed but not in the release "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); pass the folder or zip holding "
            "BCN_20k_train/ (or BCN_20k_train.zip)"
        )
    files, rel = {}, []
    for name in table["bcn_filename"]:
        image = by_name[name.lower()]
        dest = f"images/{image.name}"
        files[dest] = image
        rel.append(dest)
    official = table.pop("official_split")
    table.insert(0, "image", rel)
    notes = [f"read {path.name}: {len(table):,} images, {table['lesion_id'].nunique():,} lesions", count_note(table)]
    test = _test_note(src)
    if test:
        notes.append(test)
    card = {
        "name": "bcn20000",
        "base_card": "bcn20000",
        "description": "BCN20000 (Hernandez-Perez et al., Sci. Data 2024) imported from the official figshare release "
                       "by `dermkit data import bcn20000`: the labelled training images (bcn_20k_train.csv) with age, "
                       "site and sex; split grouped by lesion_id and stratified by diagnosis (the release's test part "
                       "has no labels and is left out; `official_split` = train).",
    }
    return Release(table=table, files=files, card=card, official_split=official, malignant=MALIGNANT, notes=notes)
