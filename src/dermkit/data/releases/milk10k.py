"""MILK10k (ISIC 2025 MILK10k challenge; challenge.isic-archive.com/landing/milk10k): 5,240 lesions,
each with one clinical close-up and one dermoscopic image, 11 diagnostic classes.

Official layout (the challenge's training files): ``MILK10k_Training_Input.zip`` (a folder per
``lesion_id``, e.g. ``IL_0000652/``, holding its two ``ISIC_nnnnnnn.jpg``),
``MILK10k_Training_Metadata.csv`` (one row per image: ``lesion_id,image_type,isic_id,attribution,
copyright_license,image_manipulation,age_approx,sex,skin_tone_class,site`` and seven MONET concept
scores ``MONET_*``; ``image_type`` is ``clinical: close-up`` or ``dermoscopic``),
``MILK10k_Training_GroundTruth.csv`` (``lesion_id`` + one-hot ``AKIEC,BCC,BEN_OTH,BKL,DF,INF,MAL_OTH,
MEL,NV,SCCKA,VASC``, 0.0/1.0) and, optional, ``MILK10k_Training_Supplement.csv`` (``isic_id,
diagnosis_full,diagnosis_confirm_type,invasion_thickness_interval``). Checked on copies of these
CSVs in a public repository (github.com/haumu150300/MILK10K_Model, commit 0c942a7a): 10,480 metadata
rows, every lesion with exactly one image of each type, age/sex/skin tone/site equal within a lesion.

One card row per lesion: ``image`` = the dermoscopic image, ``clinic_image`` = the clinical close-up
(``second_view_column: clinic_image``, as Derm7pt, so the fusion method can use the pair). Per-lesion
metadata come from the dermoscopic row; the MONET scores are per image: the dermoscopic image's under
the official names, the close-up's as ``clinic_MONET_*``. A lesion without exactly one image of each
type is refused, naming the lesion. ``MILK10k_Test_Metadata.csv`` (479 lesions) has no public ground
truth: left out. No official validation/test split with labels: the split is grouped by lesion_id
(one row per lesion; identical/near-duplicate images are still kept together) and stratified.

Skin tone: ``skin_tone_class`` (0-5) is kept raw and is NOT mapped to ``fitzpatrick`` or
``monk_skin_tone``. The challenge page defines it as a skin-tone category from 0 (very dark) to 5
(very light), "designed to avoid confusion with" the Fitzpatrick scale: it is not a Fitzpatrick
phototype (the scale runs the other way and has six points starting at 0), nor the 10-point Monk
scale, and the release does not say who or what assigned it (clinician or image-based estimate), so
no conversion is made (issue 27: never a colour estimate as a skin type).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, read_table, require_columns
from dermkit.errors import DataError, excerpt

ARCHIVES = ("MILK10k_Training_Input*.zip",)
METADATA_CSV = "MILK10k_Training_Metadata.csv"
GROUND_TRUTH_CSV = "MILK10k_Training_GroundTruth.csv"
SUPPLEMENT_CSV = "MILK10k_Training_Supplement.csv"
TEST_CSV = "MILK10k_Test_Metadata.csv"
CLASSES = ("AKIEC", "BCC", "BEN_OTH", "BKL", "DF", "INF", "MAL_OTH", "MEL", "NV", "SCCKA", "VASC")
MONET = ("MONET_ulceration_crust", "MONET_hair", "MONET_vasculature_vessels", "MONET_erythema", "MONET_pigmented",
         "MONET_gel_water_drop_fluid_dermoscopy_liquid", "MONET_skin_markings_pen_ink_purple_pen")
COLUMNS = ("lesion_id", "image_type", "isic_id", "attribution", "copyright_license", "image_manipulation",
           "age_approx", "sex", "skin_tone_class", "site", *MONET)
IMAGE_TYPES = {"dermoscopic": "derm", "clinical: close-up": "clinic"}
SUPPLEMENT = ("diagnosis_full", "diagnosis_confirm_type", "invasion_thickness_interval")
MALIGNANT = ("AKIEC", "BCC", "MAL_OTH", "MEL", "SCCKA")
OFFICIAL = {
    "lesions": 5240,
    "images": 10480,
    "test_lesions": 479,
    "per_class": {"AKIEC": 303, "BCC": 2522, "BEN_OTH": 44, "BKL": 544, "DF": 52, "INF": 50, "MAL_OTH": 9,
                  "MEL": 450, "NV": 746, "SCCKA": 473, "VASC": 47},
}


def _ground_truth(path: Path) -> pd.Series:
    gt = read_table(path, "MILK10k ground truth", ids=("lesion_id",))
    require_columns(gt, path, ("lesion_id", *CLASSES), "MILK10k_Training_GroundTruth.csv")
    hot = {}
    for col in CLASSES:
        values = pd.to_numeric(gt[col], errors="coerce")
        bad = values.isna() | ~values.isin([0.0, 1.0])
        if bad.any():
            raise DataError(f"{path} {line_list(gt.index[bad] + 2)}, column '{col}': expected 0 or 1 (0.0/1.0), got "
                            f"{excerpt(gt[col][bad].iloc[0])}; the file is corrupt or not the official ground truth")
        hot[col] = values.astype(int)
    hot = pd.DataFrame(hot)
    bad = hot.sum(axis=1) != 1
    if bad.any():
        raise DataError(f"{path} {line_list(gt.index[bad] + 2)}: expected exactly one 1.0 among "
                        f"{', '.join(CLASSES)}; the file is corrupt or not the official ground truth")
    lesion = gt["lesion_id"]
    return pd.Series(hot.idxmax(axis=1).to_numpy(), index=lesion.to_numpy(), name="diagnosis")


def _pairs(meta: pd.DataFrame, path: Path) -> pd.DataFrame:
    """One row per lesion: the dermoscopic row's columns + ``clinic_*`` from the close-up row."""
    kind = meta["image_type"].map(lambda v: IMAGE_TYPES.get(str(v).strip()) if pd.notna(v) else None)
    bad = kind.isna()
    if bad.any():
        raise DataError(f"{path} {line_list(meta.index[bad] + 2)}, column 'image_type': unknown value "
                        f"{excerpt(meta['image_type'][bad].iloc[0])}; the official values are "
                        f"{', '.join(map(repr, IMAGE_TYPES))}")
    meta = meta.assign(_kind=kind.to_numpy(), _line=meta.index + 2)
    counts = meta.groupby(["lesion_id", "_kind"]).size().unstack(fill_value=0).reindex(
        columns=["derm", "clinic"], fill_value=0)
    wrong = counts[(counts["derm"] != 1) | (counts["clinic"] != 1)]
    if len(wrong):
        lesion = wrong.index[0]
        lines = meta["_line"][meta["lesion_id"] == lesion].tolist()
        raise DataError(
            f"{path} {line_list(lines)}: lesion {lesion} has {wrong.loc[lesion, 'derm']} dermoscopic and "
            f"{wrong.loc[lesion, 'clinic']} clinical close-up image(s); every MILK10k lesion has exactly one of each "
            f"({len(wrong)} lesion(s) affected). Is the file complete and the official one?")
    derm = meta[meta["_kind"] == "derm"].set_index("lesion_id")
    clinic = meta[meta["_kind"] == "clinic"].set_index("lesion_id").loc[derm.index]
    out = derm.drop(columns=["_kind", "image_type"])
    for col in ("isic_id", "image_manipulation", *MONET, "_line"):
        out[f"clinic_{col}"] = clinic[col].to_numpy()
    return out


def parse_metadata(meta_path: Path, gt_path: Path, supplement_path: Path | None = None) -> pd.DataFrame:
    """The official MILK10k training tables as one row per lesion (no image files needed):
    ``lesion_id``, ``diagnosis``, the dermoscopic image's ``isic_id`` and ``clinic_isic_id``, the
    per-lesion metadata, MONET scores of both images and (with the supplement) ``diagnosis_full``,
    ``diagnosis_confirm_type``, ``invasion_thickness_interval``. DataError naming the file, column,
    line or lesion for a wrong layout."""
    meta = read_table(meta_path, "MILK10k metadata")
    require_columns(meta, meta_path, COLUMNS, "MILK10k_Training_Metadata.csv")
    for col in ("lesion_id", "isic_id", "image_type"):
        empty = meta[col].isna()
        if empty.any():
            raise DataError(f"{meta_path} {line_list(meta.index[empty] + 2)}: '{col}' is empty; the file is corrupt")
        meta[col] = meta[col].str.strip()
    dupes = meta["isic_id"][meta["isic_id"].duplicated()]
    if len(dupes):
        raise DataError(f"{meta_path} {line_list(dupes.index + 2)}: isic_id {dupes.iloc[0]} is listed twice")
    lesions = _pairs(meta, meta_path)
    truth = _ground_truth(gt_path)
    no_truth = [lesion for lesion in lesions.index if lesion not in truth.index]
    if no_truth:
        lines = sorted([*lesions.loc[no_truth, "_line"], *lesions.loc[no_truth, "clinic__line"]])
        raise DataError(f"{meta_path} {line_list(lines)}: lesion(s) {', '.join(no_truth[:5])} have no row in "
                        f"{gt_path.name}; pass the official ground truth of the same release")
    extra = [lesion for lesion in truth.index if lesion not in lesions.index]
    if extra:
        raise DataError(f"{gt_path}: lesion(s) {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} have no "
                        f"images in {meta_path.name}; pass the official metadata of the same release")
    table = pd.DataFrame({"lesion_id": lesions.index, "diagnosis": truth.loc[lesions.index].to_numpy()})
    for col in ("isic_id", "clinic_isic_id", "age_approx", "sex", "skin_tone_class", "site", "image_manipulation",
                "clinic_image_manipulation", "attribution", "copyright_license", *MONET,
                *(f"clinic_{m}" for m in MONET)):
        table[col] = lesions[col].to_numpy()
    if supplement_path is not None:
        sup = read_table(supplement_path, "MILK10k supplement", ids=("isic_id",))
        require_columns(sup, supplement_path, ("isic_id", *SUPPLEMENT), "MILK10k_Training_Supplement.csv")
        sup = sup.set_index("isic_id")
        for col in SUPPLEMENT:
            table[col] = table["isic_id"].map(sup[col]).to_numpy()
    table["_line"] = lesions["_line"].to_numpy()
    table["_clinic_line"] = lesions["clinic__line"].to_numpy()
    return table


def count_note(table: pd.DataFrame) -> str:
    """Whether ``table`` (parsed lesions) is the whole official training set or a partial copy."""
    n, want = len(table), OFFICIAL["lesions"]
    counts = table["diagnosis"].value_counts().to_dict()
    if n == want and counts == OFFICIAL["per_class"]:
        return (f"read all {want:,} lesions ({OFFICIAL['images']:,} images) of the official MILK10k training set; "
                "the per-class counts equal the official ground truth's")
    if n < want:
        return f"read {n:,} of the {want:,} lesions of the official MILK10k training set: a partial copy"
    return f"read {n:,} lesions, the official training set has {want:,}: not the official release (counts differ)"


def read(src: Source) -> Release:
    meta_path = src.find([METADATA_CSV], "MILK10k's image metadata (lesion_id, image_type, isic_id, ...)")
    gt_path = src.find([GROUND_TRUTH_CSV], "MILK10k's one-hot ground truth per lesion_id")
    sup_path = src.find([SUPPLEMENT_CSV], "", required=False)
    table = parse_metadata(meta_path, gt_path, sup_path)
    images = src.images((".jpg", ".jpeg", ".png"))
    missing = [(line, i) for line, i in zip(table["_line"], table["isic_id"]) if i not in images]
    missing += [(line, i) for line, i in zip(table["_clinic_line"], table["clinic_isic_id"]) if i not in images]
    if missing:
        missing.sort()
        shown = ", ".join(i for _, i in missing[:5])
        raise DataError(
            f"{meta_path} {line_list([line for line, _ in missing])}: {len(missing)} image(s) listed but not in the "
            f"release ({shown}{' ...' if len(missing) > 5 else ''}); pass the folder or zip holding "
            "MILK10k_Training_Input (a folder per lesion_id with its two ISIC_*.jpg)"
        )
    files, derm, clinic = {}, [], []
    for lesion, d_id, c_id in zip(table["lesion_id"], table["isic_id"], table["clinic_isic_id"]):
        for isic, out in ((d_id, derm), (c_id, clinic)):
            image = images[isic]
            dest = f"images/{lesion}/{isic}{image.suffix.lower()}"
            files[dest] = image
            out.append(dest)
    table = table.drop(columns=["_line", "_clinic_line"])
    table.insert(0, "image", derm)
    table.insert(table.columns.get_loc("lesion_id") + 1, "clinic_image", clinic)
    notes = [f"read {meta_path.name} + {gt_path.name}: {len(table):,} lesions, {2 * len(table):,} images "
             "(dermoscopic `image` + clinical close-up `clinic_image`)", count_note(table)]
    if sup_path is None:
        notes.append(f"no {SUPPLEMENT_CSV}: no diagnosis_full / diagnosis_confirm_type columns")
    test = src.find([TEST_CSV], "", required=False)
    if test is not None:
        n = read_table(test, "MILK10k test metadata")["lesion_id"].nunique()
        notes.append(f"{test.name}: {n:,} test lesion(s) (official: {OFFICIAL['test_lesions']}) left out: their ground "
                     "truth is not public")
    notes.append("skin_tone_class (0 very dark - 5 very light) kept as is: not a Fitzpatrick type, not mapped")
    card = {
        "name": "milk10k",
        "base_card": "milk10k",
        "description": "MILK10k (ISIC 2025 challenge) imported from the official training files by `dermkit data "
                       "import milk10k`: one row per lesion with its dermoscopic (`image`) and clinical close-up "
                       "(`clinic_image`) picture, age, sex, site, skin_tone_class and the MONET concept scores of both "
                       "images; split grouped by lesion_id and stratified by diagnosis (the public release has no "
                       "labelled test set; `official_split` = train).",
    }
    official = pd.Series(["train"] * len(table), dtype=object)
    return Release(table=table, files=files, card=card, official_split=official, malignant=MALIGNANT, notes=notes)
