"""PH2 (Mendonca et al., EMBC 2013) as distributed by the ADDI project (PH2Dataset.rar).

Official layout: ``PH2Dataset/PH2_dataset.txt`` (and the same table as ``PH2_dataset.xlsx``) and
``PH2 Dataset images/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp`` with the lesion mask in
``IMDnnn_lesion/IMDnnn_lesion.bmp``. The text table is ``||``-delimited: name, histological
diagnosis, clinical diagnosis (0 common nevus, 1 atypical nevus, 2 melanoma), the criteria
asymmetry (0/1/2), pigment network (T/AT), dots/globules (A/T/AT), streaks, regression areas,
blue-whitish veil (A/P), and the colours present (1 white, 2 red, 3 light brown, 4 dark brown,
5 blue-gray, 6 black). The release is a RAR archive: extract it and pass the folder. The xlsx is
read only when the txt is absent (it needs openpyxl). No official split: one image per lesion.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source
from dermkit.errors import DataError

ARCHIVES = ("PH2Dataset*.zip",)
CLASSES = {"0": "common nevus", "1": "atypical nevus", "2": "melanoma"}
CRITERIA = (
    ("asymmetry", ("0", "1", "2")),
    ("pigment_network", ("T", "AT")),
    ("dots_globules", ("A", "T", "AT")),
    ("streaks", ("A", "P")),
    ("regression_areas", ("A", "P")),
    ("blue_whitish_veil", ("A", "P")),
)
COLOURS = ("white", "red", "light_brown", "dark_brown", "blue_gray", "black")
_NAME = re.compile(r"IMD\d+")


def _bad(path: Path, line: int, message: str) -> DataError:
    return DataError(f"{path} line {line}: {message}; the file is corrupt or not the official PH2 table")


def _row(path, line, name, histological, clinical, criteria, colours) -> dict:
    if clinical not in CLASSES:
        raise _bad(path, line, f"{name}: clinical diagnosis {clinical!r} is not 0, 1 or 2")
    row = {"image_id": name, "diagnosis": CLASSES[clinical], "histological_diagnosis": histological or None}
    for (column, allowed), value in zip(CRITERIA, criteria):
        if value not in allowed:
            raise _bad(path, line, f"{name}: {column} {value!r} is not one of {', '.join(allowed)}")
        row[column] = value
    for i, colour in enumerate(COLOURS, start=1):
        row[f"color_{colour}"] = int(i in colours)
    return row


def read_txt(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if "||" not in line:
                continue
            tokens = [t.strip() for field in line.strip().split("||")[1:-1] for t in field.split("|")]
            if not tokens or not _NAME.fullmatch(tokens[0]):
                continue  # the header and the legend
            if len(tokens) != 10:
                raise _bad(path, line_no, f"{tokens[0]}: expected 10 fields (name, histological and clinical "
                                          f"diagnosis, 6 criteria, colours), found {len(tokens)}")
            name, histological, clinical, *criteria, colour_text = tokens
            try:
                colours = {int(c) for c in colour_text.split()}
            except ValueError:
                raise _bad(path, line_no, f"{name}: colours {colour_text!r} are not codes 1-6") from None
            if not colours <= set(range(1, 7)):
                raise _bad(path, line_no, f"{name}: colours {colour_text!r} are not codes 1-6")
            rows.append(_row(path, line_no, name, histological, clinical, criteria, colours) | {"_line": line_no})
    if not rows:
        raise DataError(f"{path}: no image rows (|| IMDnnn || ...) found; is this the official PH2_dataset.txt?")
    return pd.DataFrame(rows)


def read_xlsx(path: Path) -> pd.DataFrame:
    if importlib.util.find_spec("openpyxl") is None:
        raise DataError(
            f"{path}: reading PH2_dataset.xlsx needs openpyxl (pip install openpyxl); the official release also "
            "holds PH2_dataset.txt, which dermkit reads without it: keep it next to the xlsx"
        )
    try:
        sheet = pd.read_excel(path, header=None, dtype=str)
    except ImportError:
        raise DataError(
            f"{path}: reading PH2_dataset.xlsx needs openpyxl (pip install openpyxl); the official release also "
            "holds PH2_dataset.txt, which dermkit reads without it: keep it next to the xlsx"
        ) from None
    except Exception as exc:  # openpyxl raises several types for a damaged workbook
        raise DataError(f"{path}: cannot read the workbook ({exc}); download the release again") from None
    sheet = sheet.fillna("")
    heads = sheet.index[sheet[0].astype(str).str.strip() == "Image Name"]
    if not len(heads):
        raise DataError(f"{path}: no header row starting with 'Image Name'; is this the official PH2_dataset.xlsx?")
    header = [str(v).split("\n")[0].strip() for v in sheet.loc[heads[0]]]
    wanted = ["Image Name", "Histological Diagnosis", "Common Nevus", "Atypical Nevus", "Melanoma", "Asymmetry",
              "Pigment Network", "Dots/Globules", "Streaks", "Regression Areas", "Blue-Whitish Veil", "White", "Red",
              "Light-Brown", "Dark-Brown", "Blue-Gray", "Black"]
    missing = [w for w in wanted if w not in header]
    if missing:
        raise DataError(f"{path}: header row {heads[0] + 1} lacks {', '.join(missing)}; "
                        "is this the official PH2 table?")
    col = {w: header.index(w) for w in wanted}
    rows = []
    for idx in sheet.index[sheet.index > heads[0]]:
        cells = [str(v).strip() for v in sheet.loc[idx]]
        if not _NAME.fullmatch(cells[col["Image Name"]]):
            continue
        marks = [k for k, name in enumerate(("Common Nevus", "Atypical Nevus", "Melanoma")) if cells[col[name]]]
        if len(marks) != 1:
            raise _bad(path, idx + 1, f"{cells[0]}: expected one X among Common Nevus, Atypical Nevus, Melanoma")
        criteria = [cells[col[w]].removesuffix(".0") for w in wanted[5:11]]
        colours = {i for i, w in enumerate(wanted[11:], start=1) if cells[col[w]]}
        rows.append(_row(path, idx + 1, cells[0], cells[col["Histological Diagnosis"]], str(marks[0]), criteria,
                         colours) | {"_line": idx + 1})
    if not rows:
        raise DataError(f"{path}: no image rows (IMDnnn) below the header; is this the official PH2_dataset.xlsx?")
    return pd.DataFrame(rows)


def read(src: Source) -> Release:
    path = src.find(["PH2_dataset.txt"], "", required=False)
    if path is not None:
        table = read_txt(path)
    else:
        path = src.find(["PH2_dataset.xlsx"], "the PH2 table, PH2_dataset.txt or PH2_dataset.xlsx, in PH2Dataset/")
        table = read_xlsx(path)
    dupes = table["image_id"][table["image_id"].duplicated()]
    if len(dupes):
        raise DataError(f"{path} {line_list(table['_line'][dupes.index])}: {dupes.iloc[0]} is listed twice")
    by_stem: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for f in src.files():
        if f.suffix.lower() not in (".bmp", ".jpg", ".png"):
            continue
        if f.parent.name.endswith("_Dermoscopic_Image"):
            by_stem.setdefault(f.stem, f)
        elif f.stem.endswith("_lesion"):
            masks.setdefault(f.stem[: -len("_lesion")], f)
    missing = [n for n in table["image_id"] if n not in by_stem]
    if missing:
        lines = table["_line"][table["image_id"].isin(missing)]
        raise DataError(
            f"{path} {line_list(lines)}: {len(missing)} image(s) not found as 'PH2 Dataset images/IMDnnn/"
            f"IMDnnn_Dermoscopic_Image/IMDnnn.bmp' ({', '.join(missing[:5])}); pass the whole extracted "
            "PH2Dataset folder"
        )
    files, rel, mask_rel = {}, [], []
    for name in table["image_id"]:
        image = by_stem[name]
        dest = f"images/{name}{image.suffix.lower()}"
        files[dest] = image
        rel.append(dest)
        if name in masks:
            mdest = f"masks/{name}_lesion{masks[name].suffix.lower()}"
            files[mdest] = masks[name]
            mask_rel.append(mdest)
        else:
            mask_rel.append(None)
    table = table.drop(columns="_line")
    table.insert(0, "image", rel)
    table["mask"] = mask_rel
    counts = table["diagnosis"].value_counts()
    card = {
        "name": "ph2",
        "base_card": "ph2",
        "description": "PH2 (Mendonca et al., EMBC 2013) imported from the official release by `dermkit data import "
                       "ph2`: the original BMP images and lesion masks, the clinical diagnosis and dermoscopic "
                       "criteria of PH2_dataset; split stratified by diagnosis (no official split, one image per "
                       "lesion).",
    }
    notes = [f"read {path.name}: {len(table)} images ("
             + ", ".join(f"{counts.get(c, 0)} {c}" for c in ("common nevus", "atypical nevus", "melanoma")) + ")"]
    return Release(table=table, files=files, card=card, malignant=("melanoma",), notes=notes)
