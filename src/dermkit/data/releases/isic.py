"""ISIC challenge releases that share the ISIC CSV conventions: 2017 Part 3 and 2018 Task 3.

ISIC 2017 (challenge.isic-archive.com/data/#2017): ``ISIC-2017_{Training,Validation,Test_v2}_Data``
(JPEGs ``ISIC_nnnnnnn.jpg`` + ``*_superpixels.png``, and ``..._Data_metadata.csv`` with
``image_id,age_approximate,sex``) and ``ISIC-2017_{...}_Part3_GroundTruth.csv`` with
``image_id,melanoma,seborrheic_keratosis`` (1.0/0.0; neither = nevus). Official split: train 2000 /
val 150 / test 600.

ISIC 2018 Task 3 (challenge.isic-archive.com/data/#2018): ``ISIC2018_Task3_{Training,Validation,
Test}_Input`` and ``..._GroundTruth.csv`` with one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``;
lesion ids from ``ISIC2018_Task3_Training_LesionGroupings.csv`` (``image,lesion_id``) or
``HAM10000_metadata`` (which also gives age/sex/localization). Official split: train 10,015 /
val 193 / test 1,512. Validation and test images have no lesion id.
"""

from __future__ import annotations

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, read_table, require_columns
from dermkit.data.releases.ham10000 import METADATA_NAMES, find_images
from dermkit.errors import DataError, excerpt

ARCHIVES_2017 = ("ISIC-2017_*.zip",)
ARCHIVES_2018 = ("ISIC2018_Task3_*.zip", "HAM10000_images_part*.zip")
PARTS_2017 = (("train", "Training"), ("val", "Validation"), ("test", "Test_v2"))
PARTS_2018 = (("train", "Training"), ("val", "Validation"), ("test", "Test"))
ONE_HOT_2018 = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}


def _binary(frame: pd.DataFrame, column: str, path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | ~values.isin([0.0, 1.0])
    if bad.any():
        raise DataError(
            f"{path} {line_list(frame.index[bad] + 2)}, column '{column}': expected 0 or 1 (0.0/1.0), got "
            f"{excerpt(frame[column][bad].iloc[0])}; the file is corrupt or not the official ground truth"
        )
    return values.astype(int)


def _clean_unknown(values: pd.Series) -> pd.Series:
    return values.where(~values.astype(str).str.strip().str.lower().isin({"unknown", ""}))


def _finish(src: Source, frames: list[pd.DataFrame], sources: list[str], id_column: str) -> tuple:
    table = pd.concat(frames, ignore_index=True)
    dupes = table[id_column][table[id_column].duplicated()]
    if len(dupes):
        raise DataError(f"{dupes.iloc[0]} is listed in more than one ground-truth file ({', '.join(sources)}); "
                        "pass one copy of each official part")
    images = find_images(src, table[id_column], " + ".join(sources))
    files, rel = {}, []
    for image_id in table[id_column]:
        image = images[image_id]
        dest = f"images/{image_id}{image.suffix.lower()}"
        files[dest] = image
        rel.append(dest)
    table.insert(0, "image", rel)
    return table, files


def _official(parts_found: list[str], table: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    notes = []
    if len(parts_found) < 3:
        notes.append(f"only the {', '.join(parts_found)} part(s) of the official release were found: the split is "
                     "made from these images (the official assignment is kept in official_split)")
    return table.pop("_official"), notes


def read_2017(src: Source) -> Release:
    frames, sources, found = [], [], []
    for split, part in PARTS_2017:
        path = src.find([f"ISIC-2017_{part}_Part3_GroundTruth.csv"], "", required=False)
        if path is None:
            continue
        gt = read_table(path, f"ISIC 2017 {part} ground truth", ids=("image_id",))
        require_columns(gt, path, ("image_id", "melanoma", "seborrheic_keratosis"), "the Part 3 ground truth")
        mel, sk = _binary(gt, "melanoma", path), _binary(gt, "seborrheic_keratosis", path)
        both = (mel == 1) & (sk == 1)
        if both.any():
            raise DataError(f"{path} {line_list(gt.index[both] + 2)}: melanoma and seborrheic_keratosis are both 1; "
                            "each image has one diagnosis in the official ground truth")
        frame = pd.DataFrame({"image_id": gt["image_id"].str.strip(),
                              "diagnosis": ["melanoma" if m else "seborrheic keratosis" if s else "nevus"
                                            for m, s in zip(mel, sk)],
                              "_official": split})
        meta_path = src.find([f"ISIC-2017_{part}_Data_metadata.csv"], "", required=False)
        if meta_path is not None:
            meta = read_table(meta_path, f"ISIC 2017 {part} metadata", ids=("image_id",))
            require_columns(meta, meta_path, ("image_id", "age_approximate", "sex"), "the image metadata")
            meta = meta.set_index("image_id", drop=False)
            for col in ("age_approximate", "sex"):
                frame[col] = _clean_unknown(frame["image_id"].map(meta[col])).to_numpy()
        frames.append(frame)
        sources.append(path.name)
        found.append(split)
    if not frames:
        raise DataError(
            f"{src.path}: no ISIC-2017_*_Part3_GroundTruth.csv found (ISIC 2017 Part 3 ground truth: "
            "ISIC-2017_Training_Part3_GroundTruth.csv, ..._Validation_..., ..._Test_v2_...); pass the folder "
            "or zip that holds them and the ISIC-2017_*_Data images"
        )
    table, files = _finish(src, frames, sources, "image_id")
    for col in ("age_approximate", "sex"):
        if col not in table.columns:
            table[col] = None
    official, notes = _official(found, table)
    notes.insert(0, f"read {', '.join(sources)}: {len(table)} images")
    card = {
        "name": "isic2017",
        "base_card": "isic2017",
        "description": "ISIC 2017 Part 3 (Codella et al., ISBI 2018) imported from the official challenge files by "
                       "`dermkit data import isic2017`: original-resolution images; `split` is the official "
                       "challenge split (train 2000 / val 150 / test 600) unless --split grouped was asked for; "
                       "`official_split` always holds it.",
    }
    return Release(table=table, files=files, card=card, official_split=official,
                   malignant=("melanoma",), notes=notes)


def _lesions(src: Source) -> tuple[pd.DataFrame | None, str | None]:
    path = src.find(["ISIC2018_Task3_Training_LesionGroupings.csv"], "", required=False)
    if path is not None:
        frame = read_table(path, "ISIC 2018 lesion groupings", ids=("image",))
        require_columns(frame, path, ("image", "lesion_id"), "the lesion groupings")
        return frame.rename(columns={"image": "image_id"}), path.name
    path = src.find(METADATA_NAMES, "", required=False)
    if path is not None:
        frame = read_table(path, "HAM10000 metadata", ids=("image_id",))
        require_columns(frame, path, ("lesion_id", "image_id"), "HAM10000_metadata")
        return frame, path.name
    return None, None


def read_2018(src: Source) -> Release:
    frames, sources, found = [], [], []
    for split, part in PARTS_2018:
        path = src.find([f"ISIC2018_Task3_{part}_GroundTruth.csv"], "", required=False)
        if path is None:
            continue
        gt = read_table(path, f"ISIC 2018 Task 3 {part} ground truth", ids=("image",))
        require_columns(gt, path, ("image", *ONE_HOT_2018), "the Task 3 ground truth")
        hot = pd.DataFrame({c: _binary(gt, c, path) for c in ONE_HOT_2018})
        bad = hot.sum(axis=1) != 1
        if bad.any():
            raise DataError(f"{path} {line_list(gt.index[bad] + 2)}: expected exactly one 1.0 among "
                            f"{', '.join(ONE_HOT_2018)}; the file is corrupt or not the official ground truth")
        frames.append(pd.DataFrame({"image_id": gt["image"].str.strip(),
                                    "diagnosis": hot.idxmax(axis=1).map(ONE_HOT_2018).to_numpy(),
                                    "_official": split}))
        sources.append(path.name)
        found.append(split)
    if not frames:
        raise DataError(
            f"{src.path}: no ISIC2018_Task3_*_GroundTruth.csv found (ISIC 2018 Task 3 ground truth: "
            "ISIC2018_Task3_Training_GroundTruth.csv, ..._Validation_..., ..._Test_...); pass the folder or zip "
            "that holds them (the GroundTruth zips are fine) and the ISIC2018_Task3_*_Input images"
        )
    table, files = _finish(src, frames, sources, "image_id")
    notes = []
    lesions, lesion_source = _lesions(src)
    if lesions is not None:
        lesions = lesions.set_index("image_id", drop=False)
        for col in ("lesion_id", "dx_type", "age", "sex", "localization"):
            if col in lesions.columns:
                table[col] = table["image_id"].map(lesions[col]).to_numpy()
        notes.append(f"lesion ids from {lesion_source} for {int(table['lesion_id'].notna().sum())} images "
                     "(validation and test images have none: each is its own group)")
    else:
        table["lesion_id"] = None
        notes.append("no ISIC2018_Task3_Training_LesionGroupings.csv or HAM10000_metadata: no lesion ids, "
                     "a grouped split can separate images of one lesion")
    official, more = _official(found, table)
    notes = [f"read {', '.join(sources)}: {len(table)} images", *notes, *more]
    card = {
        "name": "isic2018",
        "base_card": "ham10000",
        "description": "ISIC 2018 Task 3 (Codella et al. 2019; training set = HAM10000) imported from the official "
                       "challenge files by `dermkit data import isic2018`; `split` is the official challenge split "
                       "(train 10,015 / val 193 / test 1,512) unless --split grouped was asked for; "
                       "`official_split` always holds it.",
    }
    return Release(table=table, files=files, card=card, official_split=official,
                   malignant=("akiec", "bcc", "mel"), notes=notes)
