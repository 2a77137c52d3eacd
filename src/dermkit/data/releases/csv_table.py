"""Any CSV: one row per image, an image-path column and a label column (the ``csv`` kind).

Image paths are relative to ``image_root`` (default: the CSV's folder) and must stay inside it
(no absolute paths, no ``..`` out of it). Every other column is kept as metadata. A split column,
when given, is used (``train``/``val``/``test``; ``training``, ``valid``, ``validation`` and
``testing`` are read as their short names); a group column keeps a lesion/patient in one split.
DICOM files are converted to PNG in the card (``a.dcm`` -> ``images/a.png``; see
:func:`dermkit.data.releases.common.build_card`).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pandas as pd

from dermkit.data.card_schema import RESERVED_COLUMNS
from dermkit.data.dicom import is_dicom_file, png_name
from dermkit.data.images import PathResolver
from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, dicom_notes, read_table, row_origins
from dermkit.errors import DataError, excerpt
from dermkit.values import spelling_key

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def reader(csv_file: str | os.PathLike, image_column: str, label_column: str, *, image_root=None,
           group_column: str | None = None, split_column: str | None = None, name: str | None = None):
    """A reader for ``build_card`` (the source is ``image_root``)."""
    csv_file = Path(csv_file)

    def read(src: Source) -> Release:
        frame = read_table(csv_file, f"--from {csv_file}")
        for option, col in (("--image-column", image_column), ("--label-column", label_column),
                            ("--group-column", group_column), ("--split-column", split_column)):
            if col is not None and col not in frame.columns:
                raise DataError(f"{csv_file} line 1 (header): no column {col!r} for {option} (columns: "
                                f"{', '.join(map(str, frame.columns))})")
        for col in (image_column, label_column):
            empty = frame[col].isna() | (frame[col].astype(str).str.strip() == "")
            if empty.any():
                raise DataError(f"{csv_file} {line_list(frame.index[empty] + 2)}, column {col!r}: empty; every row "
                                "needs an image path and a label (delete the rows or fill them in)")
        resolve = PathResolver(src.roots[0])
        files, rel, missing, lines = {}, [], [], {}
        for idx, value in frame[image_column].items():
            try:
                path = resolve(str(value).strip())
            except DataError as exc:
                raise DataError(f"{csv_file} line {idx + 2}, column {image_column!r}: {exc}") from None
            if not path.is_file():
                missing.append(idx + 2)
                rel.append(None)
                continue
            dest = "images/" + posixpath.normpath(str(value).strip().replace("\\", "/"))
            if is_dicom_file(path):  # converted to PNG in the card (build_card)
                dest = png_name(dest)
            if dest in files and files[dest] != path:
                raise DataError(f"{csv_file} lines {lines[dest]} and {idx + 2}, column {image_column!r}: "
                                f"{files[dest].relative_to(src.roots[0]).as_posix()} and "
                                f"{path.relative_to(src.roots[0]).as_posix()} would both become {dest} in the card "
                                "(DICOM files are converted to PNG); rename one of them")
            files[dest], lines[dest] = path, idx + 2
            rel.append(dest)
        if missing:
            raise DataError(f"{csv_file} {line_list(missing)}, column {image_column!r}: image file not found under "
                            f"{src.roots[0]}; fix the paths or pass --image-root (the folder they are relative to)")
        dupes = pd.Series(rel)[pd.Series(rel).duplicated()]
        if len(dupes):
            raise DataError(f"{csv_file} {line_list(dupes.index + 2)}: image {excerpt(dupes.iloc[0])} is listed "
                            "twice; keep one row per image")
        labels = frame[label_column].astype(str).str.strip()
        spellings: dict[str, set] = {}
        for value in labels.unique():
            spellings.setdefault(spelling_key(value), set()).add(value)
        clash = [sorted(v) for v in spellings.values() if len(v) > 1]
        if clash:
            lines = frame.index[labels.isin(clash[0])] + 2
            raise DataError(f"{csv_file} {line_list(lines)}, column {label_column!r}: labels "
                            f"{' and '.join(map(repr, clash[0]))} differ only by case or spacing; write one spelling")
        table = pd.DataFrame({"image": rel, "diagnosis": labels.to_numpy()})
        official = None
        if split_column is not None:
            raw = frame[split_column].astype(str).str.strip().str.lower()
            official = raw.map(SPLIT_NAMES)
            bad = official.isna()
            if bad.any():
                value = excerpt(frame[split_column][bad].iloc[0])
                said = "the split is empty" if value == "empty" else f"split {value} is not train, val or test"
                raise DataError(f"{csv_file} {line_list(frame.index[bad] + 2)}, column {split_column!r}: {said}; "
                                "write train, val or test on every row")
        skip = {image_column, label_column, split_column} | set(RESERVED_COLUMNS)
        for col in frame.columns:
            if col not in skip and col not in table.columns:
                table[col] = frame[col].to_numpy()
        if image_column not in ("image",) and image_column not in table.columns:
            table["source_image"] = frame[image_column].to_numpy()
        card = {"name": name or csv_file.stem, "classes": sorted(table["diagnosis"].unique()),
                "description": f"Imported by `dermkit data import csv` from {csv_file.name}."}
        if group_column is not None:
            card["group_column"] = group_column
        notes = [f"{len(table)} rows of {csv_file.name}, {table['diagnosis'].nunique()} classes", *dicom_notes(files)]
        return Release(table=table, files=files, card=card, official_split=official, notes=notes,
                       origin=row_origins(src, csv_file, frame))

    return read
