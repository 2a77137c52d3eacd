"""PAD-UFES-20 (Pacheco et al., Data in Brief 2020) from Mendeley Data (doi:10.17632/zr7vgbcyr2.1).

Official layout: ``metadata.csv`` (``patient_id,lesion_id,smoke,...,diagnostic,...,img_id,biopsed``)
and the PNGs in ``images/imgs_part_{1,2,3}`` (inside the Mendeley zip as ``imgs_part_*.zip``).
``diagnostic`` is the class code (ACK, BCC, MEL, NEV, SCC, SEK); ``UNK`` marks an unknown answer.
No official split: the split is grouped by patient (a patient's lesions never span two splits)
and stratified by class. ``lesion_id`` is unique only within a patient.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, map_codes, read_table, row_origins
from dermkit.data.skin_type import fitzpatrick_type
from dermkit.errors import DataError

ARCHIVES = ("imgs_part_*.zip", "zr7vgbcyr2*.zip", "PAD-UFES-20*.zip")
CODES = {c: c for c in ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")}
COLUMNS = ("patient_id", "lesion_id", "diagnostic", "img_id")
METADATA = ("smoke", "drink", "background_father", "background_mother", "age", "pesticide", "gender",
            "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick", "region",
            "diameter_1", "diameter_2", "itch", "grew", "hurt", "changed", "bleed", "elevation", "biopsed")


def _is_pad(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
    return "diagnostic" in header and "img_id" in header


def read(src: Source) -> Release:
    path = src.find(["metadata.csv"], "PAD-UFES-20's metadata.csv (columns patient_id, ..., diagnostic, img_id)",
                    accept=_is_pad)
    meta = read_table(path, "PAD-UFES-20's metadata.csv", ids=("img_id",), columns=COLUMNS)
    empty = meta["patient_id"].isna()
    if empty.any():
        raise DataError(f"{path} {line_list(meta.index[empty] + 2)}: patient_id is empty; the file is corrupt")
    diagnosis = map_codes(meta["diagnostic"], CODES, path, "diagnostic")
    by_name = src.by_name()
    missing = [n for n in meta["img_id"] if n.lower() not in by_name]
    if missing:
        lines = meta.index[meta["img_id"].isin(missing)] + 2
        raise DataError(
            f"{path} {line_list(lines)}: {len(missing)} image(s) not in the release ({', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}); pass the folder or zip holding images/imgs_part_1..3 "
            "(or the imgs_part_*.zip files)"
        )
    files, rel = {}, []
    for name in meta["img_id"]:
        image = by_name[name.lower()]
        dest = f"images/{image.name}"
        files[dest] = image
        rel.append(dest)
    table = pd.DataFrame({"image": rel, "diagnosis": diagnosis.to_numpy(), "img_id": meta["img_id"].to_numpy(),
                          "patient_id": meta["patient_id"].to_numpy(), "lesion_id": meta["lesion_id"].to_numpy()})
    for col in METADATA:
        table[col] = meta[col].to_numpy() if col in meta.columns else None
    # the release's `fitspatrick` (1.0-6.0) as the one skin-type column every card shares (I-VI)
    table["fitzpatrick"] = table["fitspatrick"].map(fitzpatrick_type).astype(object)
    card = {
        "name": "pad_ufes20",
        "base_card": "pad_ufes20",
        "description": "PAD-UFES-20 (Pacheco et al., Data in Brief 2020) imported from the official Mendeley Data "
                       "release by `dermkit data import pad_ufes20`: all smartphone clinical images (PNG) with "
                       "their patient and lesion metadata; split grouped by patient_id and stratified by "
                       "diagnosis (the release has no official split); `fitzpatrick` is the release's "
                       "`fitspatrick` as I-VI.",
        "metadata_columns": {"fitzpatrick": "categorical"},
    }
    pairs = meta.groupby(["patient_id", "lesion_id"]).ngroups
    notes = [f"read {path.name}: {len(table)} images, {meta['patient_id'].nunique()} patients, "
             f"{meta['lesion_id'].nunique()} lesion ids ({pairs} patient-lesion pairs)"]
    return Release(table=table, files=files, card=card, malignant=("BCC", "MEL", "SCC"), notes=notes,
                   origin=row_origins(src, path, meta))
