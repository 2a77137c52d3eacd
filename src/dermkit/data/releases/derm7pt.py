"""Derm7pt (Kawahara et al., IEEE JBHI 2019) release_v0 from derm.cs.sfu.ca (registration).

Official layout: ``meta/meta.csv`` (one row per case: ``case_num,diagnosis,seven_point_score``,
the 7 criteria, ``level_of_diagnostic_difficulty,elevation,location,sex,management,clinic,derm,
case_id,notes``), ``meta/{train,valid,test}_indexes.csv`` (0-based row positions in meta.csv,
the authors' split) and ``images/<folder>/<file>`` named by the ``clinic`` and ``derm`` columns.
The 20 fine diagnoses map to the paper's 5 diagnostic groups; melanoma thickness becomes
``breslow_category``/``breslow_ordinal``; a case whose clinical image was replaced by the
dermoscopic one (see ``notes``) gets ``clinic_is_derm_copy = 1``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, map_codes, read_table, require_columns
from dermkit.errors import DataError, excerpt

ARCHIVES = ("release_v0*.zip", "derm7pt*.zip")
CRITERIA = ("pigment_network", "streaks", "pigmentation", "regression_structures", "dots_and_globules",
            "blue_whitish_veil", "vascular_structures")
COLUMNS = ("case_num", "diagnosis", "seven_point_score", *CRITERIA, "level_of_diagnostic_difficulty", "elevation",
           "location", "sex", "management", "clinic", "derm")
# Fine diagnosis -> the 5 diagnostic groups of Kawahara et al. 2019 (DIAG: BCC, NEV, MEL, MISC, SK).
GROUPS = {
    "basal cell carcinoma": "basal cell carcinoma",
    "blue nevus": "nevus", "clark nevus": "nevus", "combined nevus": "nevus", "congenital nevus": "nevus",
    "dermal nevus": "nevus", "recurrent nevus": "nevus", "reed or spitz nevus": "nevus",
    "melanoma": "melanoma", "melanoma (in situ)": "melanoma", "melanoma (less than 0.76 mm)": "melanoma",
    "melanoma (0.76 to 1.5 mm)": "melanoma", "melanoma (more than 1.5 mm)": "melanoma",
    "melanoma metastasis": "melanoma",
    "dermatofibroma": "miscellaneous", "lentigo": "miscellaneous", "melanosis": "miscellaneous",
    "miscellaneous": "miscellaneous", "vascular lesion": "miscellaneous",
    "seborrheic keratosis": "seborrheic keratosis",
}
BRESLOW = {
    "melanoma (in situ)": ("in situ", 0), "melanoma (less than 0.76 mm)": ("<0.76 mm", 1),
    "melanoma (0.76 to 1.5 mm)": ("0.76-1.5 mm", 2), "melanoma (more than 1.5 mm)": (">1.5 mm", 3),
    "melanoma": ("unspecified", None), "melanoma metastasis": ("metastasis", None),
}
SPLIT_FILES = (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"), ("test", "test_indexes.csv"))


def _meta_ok(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
    return "case_num" in header and "derm" in header


def _official(src: Source, meta_path: Path, n: int) -> tuple[pd.Series | None, list[str]]:
    split = pd.Series([None] * n, dtype=object)
    found = []
    for name, file in SPLIT_FILES:
        path = meta_path.parent / file
        if not path.is_file():
            path = src.find([file], "", required=False)
        if path is None:
            continue
        frame = read_table(path, f"Derm7pt {file}")
        require_columns(frame, path, ("indexes",), file)
        idx = pd.to_numeric(frame["indexes"], errors="coerce")
        bad = idx.isna() | (idx < 0) | (idx >= n) | (idx != idx.round())
        if bad.any():
            raise DataError(f"{path} {line_list(frame.index[bad] + 2)}: index "
                            f"{excerpt(frame['indexes'][bad].iloc[0])} is not a row of meta.csv (0 to {n - 1})")
        idx = idx.astype(int)
        twice = idx[split.iloc[idx.to_numpy()].notna().to_numpy()]
        if len(twice):
            raise DataError(f"{path}: row {twice.iloc[0]} of meta.csv is already in another split file")
        split.iloc[idx.to_numpy()] = name
        found.append(file)
    if not found:
        return None, ["no {train,valid,test}_indexes.csv: the split is made by dermkit"]
    notes = [f"official split from {', '.join(found)}"]
    if split.isna().any():
        notes.append(f"{int(split.isna().sum())} cases are in no index file")
    return split, notes


def read(src: Source) -> Release:
    path = src.find(["meta.csv"], "Derm7pt's case table, release_v0/meta/meta.csv", accept=_meta_ok)
    meta = read_table(path, "Derm7pt meta.csv")
    require_columns(meta, path, COLUMNS, "Derm7pt's meta.csv")
    for col in ("diagnosis", "clinic", "derm"):
        empty = meta[col].isna()
        if empty.any():
            raise DataError(f"{path} {line_list(meta.index[empty] + 2)}: '{col}' is empty; the file is corrupt")
    group = map_codes(meta["diagnosis"].str.strip(), GROUPS, path, "diagnosis")
    image_dir = path.parent.parent / "images"
    if not image_dir.is_dir():
        raise DataError(f"{path}: no images/ folder next to meta/ ({image_dir}); pass the whole release_v0 folder")
    lower = {f.relative_to(image_dir).as_posix().lower(): f for f in src.files() if f.is_relative_to(image_dir)}
    files: dict[str, Path] = {}
    rel = {"derm": [], "clinic": []}
    missing = []
    for idx, row in meta.iterrows():
        for col in ("derm", "clinic"):
            name = str(row[col]).strip().replace("\\", "/")
            found = lower.get(name.lower())
            if found is None:
                missing.append((idx + 2, col, name))
                rel[col].append(None)
                continue
            dest = f"images/{found.relative_to(image_dir).as_posix()}"
            files[dest] = found
            rel[col].append(dest)
    if missing:
        shown = "; ".join(f"line {line} {col} {name}" for line, col, name in missing[:5])
        raise DataError(f"{path}: {len(missing)} image file(s) named in meta.csv are not in {image_dir} ({shown}"
                        f"{' ...' if len(missing) > 5 else ''}); pass the complete release_v0 folder")
    fine = meta["diagnosis"].str.strip()
    table = pd.DataFrame({
        "image": rel["derm"],
        "diagnosis": group.to_numpy(),
        "diagnosis_fine": fine.to_numpy(),
        "case_num": meta["case_num"].to_numpy(),
        "clinic_image": rel["clinic"],
        "clinic_is_derm_copy": (meta["clinic"].str.strip() == meta["derm"].str.strip()).astype(int).to_numpy(),
        "seven_point_score": meta["seven_point_score"].to_numpy(),
    })
    for col in CRITERIA:
        table[col] = meta[col].to_numpy()
    table["breslow_category"] = fine.map(lambda d: BRESLOW.get(d, (None, None))[0]).to_numpy()
    ordinal = fine.map(lambda d: BRESLOW.get(d, (None, None))[1])
    table["breslow_ordinal"] = [None if pd.isna(v) else str(int(v)) for v in ordinal]
    for col in ("level_of_diagnostic_difficulty", "elevation", "location", "sex", "management"):
        table[col] = meta[col].to_numpy()
    table["derm_source_file"] = meta["derm"].to_numpy()
    table["clinic_source_file"] = meta["clinic"].to_numpy()
    table["notes"] = meta["notes"].to_numpy() if "notes" in meta.columns else None
    official, notes = _official(src, path, len(meta))
    card = {
        "name": "derm7pt",
        "base_card": "derm7pt",
        "description": "Derm7pt (Kawahara et al., IEEE JBHI 2019) imported from release_v0 by `dermkit data import "
                       "derm7pt`: dermoscopic (`image`) and clinical (`clinic_image`) picture per case, the 7-point "
                       "criteria, the 5 diagnostic groups of the paper (`diagnosis_fine`: the 20 original "
                       "diagnoses); `split` is the authors' split (train/valid/test indexes) unless --split grouped "
                       "was asked for; `official_split` always holds it.",
    }
    counts = table["diagnosis"].value_counts()
    per_class = ", ".join(f"{counts[c]} {c}" for c in sorted(counts.index))
    notes.insert(0, f"read {path.name}: {len(table)} cases ({per_class})")
    return Release(table=table, files=files, card=card, official_split=official,
                   malignant=("basal cell carcinoma", "melanoma"), notes=notes)
