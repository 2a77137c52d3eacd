"""An ImageFolder layout: one subfolder per class (``ROOT/<class>/<image>``), optionally inside
``train/``, ``val/`` (or ``valid``/``validation``) and ``test/`` folders, which then give the split.
Without split folders the split is stratified by class with a seed (each image its own group).
DICOM files (``.dcm``/``.dicom``, or any file with the DICM marker) are converted to PNG in the
card (see :func:`dermkit.data.releases.common.build_card`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermkit.data.dicom import DICOM_SUFFIXES, is_dicom_file, png_name
from dermkit.data.releases.common import IMAGE_EXTENSIONS, Release, Source, dicom_card_files, dicom_notes
from dermkit.errors import DataError
from dermkit.values import spelling_key

SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


def _is_image(path: Path) -> bool:
    """An image file: a known image extension, or a DICOM (``.dcm``, or the DICM marker)."""
    return path.is_file() and (path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom_file(path))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and _is_image(p))


def reader(name: str | None = None):
    """A reader for ``build_card``: ``name`` is the card's name (default: the folder's name)."""

    def read(src: Source) -> Release:
        root = src.roots[0]
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                         and d.name != "__MACOSX")
        if len(subdirs) == 1 and subdirs[0].name.lower() not in SPLIT_FOLDERS and not _images_here(root) \
                and any(d.is_dir() for d in subdirs[0].iterdir()) \
                and all(d.is_dir() for d in subdirs[0].iterdir() if not d.name.startswith(".")):
            root = subdirs[0]  # a zip holding one top folder
            subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        split_dirs = {d: SPLIT_FOLDERS[d.name.lower()] for d in subdirs if d.name.lower() in SPLIT_FOLDERS}
        if split_dirs and len(split_dirs) != len(subdirs):
            others = [d.name for d in subdirs if d not in split_dirs]
            raise DataError(f"{root}: has split folders ({', '.join(d.name for d in split_dirs)}) and other folders "
                            f"({', '.join(others)}); use either class folders, or train/val/test folders each "
                            "holding class folders")
        rows = []
        layers = [(d, s) for d, s in split_dirs.items()] if split_dirs else [(root, None)]
        for folder, split in layers:
            classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
            if not classes:
                raise DataError(f"{folder}: no class subfolders; an ImageFolder layout has one folder per class "
                                "(e.g. melanoma/, nevus/) holding its images")
            for cls in classes:
                images = _images(cls)
                if not images:
                    raise DataError(f"{cls}: the class folder holds no images ({', '.join(IMAGE_EXTENSIONS)}, "
                                    f"{', '.join(DICOM_SUFFIXES)})")
                for image in images:
                    rel = image.relative_to(folder).as_posix()
                    rows.append({"source": image, "diagnosis": cls.name, "split": split, "rel": rel,
                                 "dest": png_name(rel) if is_dicom_file(image) else rel})
        loose = [p.name for p in root.iterdir() if _is_image(p)]
        if loose:
            raise DataError(f"{root}: images directly in the top folder ({', '.join(loose[:3])}); put every image in "
                            "its class folder")
        names = sorted({r["diagnosis"] for r in rows})
        by_key: dict[str, list[str]] = {}
        for n in names:
            by_key.setdefault(spelling_key(n), []).append(n)
        clash = [v for v in by_key.values() if len(v) > 1]
        if clash:
            raise DataError(f"{root}: class folders {' and '.join(map(repr, clash[0]))} differ only by case or "
                            "spacing; merge them into one folder per class")
        if split_dirs:
            missing = sorted(set(SPLIT_FOLDERS.values()) - set(split_dirs.values()))
            if missing:
                raise DataError(f"{root}: split folder(s) for {', '.join(missing)} missing; give train/, val/ and "
                                "test/ folders, or only class folders (dermkit then makes the split)")
        table = pd.DataFrame({
            "image": [f"images/{r['split'] + '/' if r['split'] else ''}{r['dest']}" for r in rows],
            "diagnosis": [r["diagnosis"] for r in rows],
            "source_file": [r["rel"] for r in rows],
        })
        files = dicom_card_files(table["image"], [r["source"] for r in rows], root)
        official = pd.Series([r["split"] for r in rows]) if split_dirs else None
        card = {"name": name or src.path.stem, "classes": names,
                "description": f"Imported by `dermkit data import folder` from the class folders of {src.path.name}."}
        notes = [f"{len(table)} images in {len(names)} class folders"
                 + (" (split from the train/val/test folders)" if split_dirs else ""), *dicom_notes(files)]
        return Release(table=table, files=files, card=card, official_split=official, notes=notes)

    return read


def _images_here(folder: Path) -> bool:
    return any(_is_image(p) for p in folder.iterdir())
