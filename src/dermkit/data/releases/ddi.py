"""DDI, Diverse Dermatology Images (Daneshjou et al., Science Advances 8(32), eabq6147, 2022), from
Stanford AIMI (https://stanfordaimi.azurewebsites.net/datasets/35866158-8196-48d8-87bf-50dca81df965,
access after accepting a data use agreement).

Official layout: ``ddi_metadata.csv`` next to the images ``000001.png`` ... ``000656.png`` (the AIMI
download is flat; the authors' loader, github.com/DDI-Dataset/DDI-Code ``ddi_dataset.py``, expects the
PNGs moved into ``images/``: both are read). ``ddi_metadata.csv`` has an unnamed index column, then
``DDI_ID,DDI_file,skin_tone,malignant,disease``: ``DDI_file`` the PNG's name, ``skin_tone`` the
Fitzpatrick group (``12`` = I-II, ``34`` = III-IV, ``56`` = V-VI; the release gives groups only),
``malignant`` ``TRUE``/``FALSE`` (early copies: ``malignancy(malig=1)``, 1/0, which DDI-Code also reads)
and ``disease`` the biopsy-proven diagnosis (``melanoma-in-situ``, ``verruca-vulgaris``, ...; 77
distinct values in the copy checked).

Classes: ``benign`` / ``malignant`` (the paper's task); ``disease`` is kept as the fine label (not a
feature: it determines the class). ``fitzpatrick`` holds the group ``I-II``/``III-IV``/``V-VI`` (the
shared convention for releases that only give groups); the raw ``skin_tone`` is kept. No official
split, and no patient id in the metadata (the paper reports 656 images of 570 patients): the split is
grouped by image (``DDI_ID``), so images of one patient can land in different splits.

Official counts (``OFFICIAL``): 656 images (paper), ``DDI_ID`` 1-656; per skin-tone group 208 / 241 /
207 (paper). Checked on a public copy of ``ddi_metadata.csv`` lacking ``DDI_ID`` 8, 54 and 55 (653
rows: 208 ``12``, 241 ``34``, 204 ``56``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, map_codes, read_table, require_columns
from dermkit.errors import DataError

ARCHIVES = ("ddidiversedermatologyimages*.zip", "ddi*.zip")
METADATA = "ddi_metadata.csv"
COLUMNS = ("DDI_ID", "DDI_file", "skin_tone", "disease")
MALIGNANT_COLUMNS = ("malignant", "malignancy(malig=1)")
OFFICIAL = {"images": 656, "skin_tone": {"12": 208, "34": 241, "56": 207}}
SKIN_TONE = {"12": "I-II", "34": "III-IV", "56": "V-VI"}
MALIGNANT = {"TRUE": "malignant", "True": "malignant", "true": "malignant", "1": "malignant", "1.0": "malignant",
             "FALSE": "benign", "False": "benign", "false": "benign", "0": "benign", "0.0": "benign"}


def _is_ddi(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
    return "DDI_file" in header


def parse_metadata(path: Path) -> pd.DataFrame:
    """``ddi_metadata.csv`` as one row per image (no image files needed): ``DDI_ID``, ``DDI_file``,
    ``diagnosis`` (benign/malignant), ``disease``, ``skin_tone`` (raw) and ``fitzpatrick`` (group).
    DataError naming the file, column or line of anything that is not the official layout."""
    meta = read_table(path, f"DDI {METADATA}")
    column = next((c for c in MALIGNANT_COLUMNS if c in meta.columns), None)
    require_columns(meta, path, (*COLUMNS, column or "malignant"), f"DDI's {METADATA}")
    for col in ("DDI_ID", "DDI_file", "disease"):
        empty = meta[col].isna()
        if empty.any():
            raise DataError(f"{path} {line_list(meta.index[empty] + 2)}: '{col}' is empty; the file is corrupt")
    meta["DDI_file"] = meta["DDI_file"].str.strip()
    for col in ("DDI_ID", "DDI_file"):
        dupes = meta[col][meta[col].duplicated()]
        if len(dupes):
            raise DataError(f"{path} {line_list(dupes.index + 2)}: {col} {dupes.iloc[0]} is listed twice")
    diagnosis = map_codes(meta[column], MALIGNANT, path, column)
    tone = meta["skin_tone"].str.strip().str.replace(r"\.0$", "", regex=True)
    fitzpatrick = map_codes(tone, SKIN_TONE, path, "skin_tone")
    return pd.DataFrame({
        "DDI_ID": meta["DDI_ID"].str.strip().to_numpy(),
        "DDI_file": meta["DDI_file"].to_numpy(),
        "diagnosis": diagnosis.to_numpy(),
        "disease": meta["disease"].str.strip().to_numpy(),
        "skin_tone": tone.to_numpy(),
        "fitzpatrick": fitzpatrick.to_numpy(),
    })


def completeness(table: pd.DataFrame) -> str:
    """Whether ``table`` (from :func:`parse_metadata`) is the official full release or a partial copy."""
    n, total = len(table), OFFICIAL["images"]
    ids = pd.to_numeric(table["DDI_ID"], errors="coerce")
    tones = table["skin_tone"].value_counts()
    full_ids = set(ids.dropna().astype(int)) == set(range(1, total + 1))
    if n == total and full_ids and all(tones.get(t, 0) == c for t, c in OFFICIAL["skin_tone"].items()):
        return f"read all {total:,} images of the official release (DDI_ID 1-{total}; skin_tone 12/34/56 = " \
               f"{'/'.join(str(c) for c in OFFICIAL['skin_tone'].values())}, as published)"
    missing = sorted(set(range(1, total + 1)) - set(ids.dropna().astype(int)))
    shown = f"; DDI_ID {', '.join(map(str, missing[:8]))}{' ...' if len(missing) > 8 else ''} absent" if missing else ""
    return f"read {n:,} of the {total:,} images of the official release: a partial copy{shown}"


def read(src: Source) -> Release:
    path = src.find([METADATA], "DDI's metadata (DDI_ID, DDI_file, skin_tone, malignant, disease)", accept=_is_ddi)
    table = parse_metadata(path)
    by_name = src.by_name()
    missing = [n for n in table["DDI_file"] if n.lower() not in by_name]
    if missing:
        lines = table.index[table["DDI_file"].isin(missing)] + 2
        raise DataError(
            f"{path} {line_list(lines)}: {len(missing)} image(s) named in DDI_file are not in the release "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); pass the folder or zip holding "
            f"{METADATA} and the PNGs (flat, or in images/)"
        )
    files, rel = {}, []
    for name in table["DDI_file"]:
        image = by_name[name.lower()]
        dest = f"images/{image.name}"
        files[dest] = image
        rel.append(dest)
    table.insert(0, "image", rel)
    table["label_source"] = "histopathology"  # every DDI diagnosis is biopsy-proven (the paper)
    card = {
        "name": "ddi",
        "base_card": "ddi",
        "description": "DDI, Diverse Dermatology Images (Daneshjou et al., Sci. Adv. 2022), imported from the "
                       "Stanford AIMI release by `dermkit data import ddi`: biopsy-proven clinical photos, benign "
                       "vs malignant (`disease`: the fine biopsy diagnosis), Fitzpatrick groups I-II / III-IV / V-VI "
                       "(`fitzpatrick`; raw `skin_tone` 12/34/56); split grouped by image (no patient id in the "
                       "release) and stratified by class.",
    }
    counts = table["diagnosis"].value_counts()
    groups = table["fitzpatrick"].value_counts()
    notes = [
        f"read {path.name}: {len(table)} images ({counts.get('benign', 0)} benign, {counts.get('malignant', 0)} "
        f"malignant; Fitzpatrick I-II {groups.get('I-II', 0)}, III-IV {groups.get('III-IV', 0)}, "
        f"V-VI {groups.get('V-VI', 0)}; {table['disease'].nunique()} diseases)",
        completeness(table),
        "no patient id in the release (656 images of 570 patients in the paper): the split is grouped by image, "
        "so two images of one patient can land in different splits",
    ]
    return Release(table=table, files=files, card=card, malignant=("malignant",), notes=notes)
