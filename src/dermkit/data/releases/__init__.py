"""Import the official dataset releases (and any class-folder tree or CSV) as dataset cards.

    >>> from dermkit.data.releases import import_release
    >>> result = import_release("ham10000", "downloads/ham10000", "data/ham10000")
    >>> result.counts()          # images per class and split, as `dermkit data check` prints them

One module per release kind reads the official files in their official layout and maps the
official columns and codes to the packaged card's (``data/cards/<name>.yaml``); ``common.py``
places the images, assigns the split (the official one where the release defines one, else a
grouped stratified split with a seed), writes ``metadata.csv`` + ``dataset.yaml`` and runs the
full ``data check`` before the card appears at ``out``. ``manifest.yaml`` lists where each
release is downloaded from (see :mod:`dermkit.data.fetch`).
"""

from __future__ import annotations

import os
from pathlib import Path

from dermkit.data.releases import (
    bcn20000,
    csv_table,
    ddi,
    derm7pt,
    fitzpatrick17k,
    folder,
    ham10000,
    isic,
    isic2019,
    isic2020,
    milk10k,
    pad_ufes20,
    ph2,
    scin,
)
from dermkit.data.releases.common import ImportResult, build_card, safe_extract
from dermkit.errors import DataError

__all__ = ["RELEASES", "KINDS", "import_release", "import_folder", "import_csv", "ImportResult", "safe_extract"]

# name -> (reader, archive name patterns extracted from inside the release)
RELEASES = {
    "ham10000": (ham10000.read, ham10000.ARCHIVES),
    "isic2017": (isic.read_2017, isic.ARCHIVES_2017),
    "isic2018": (isic.read_2018, isic.ARCHIVES_2018),
    "ph2": (ph2.read, ph2.ARCHIVES),
    "derm7pt": (derm7pt.read, derm7pt.ARCHIVES),
    "pad_ufes20": (pad_ufes20.read, pad_ufes20.ARCHIVES),
    "bcn20000": (bcn20000.read, bcn20000.ARCHIVES),
    "milk10k": (milk10k.read, milk10k.ARCHIVES),
    "ddi": (ddi.read, ddi.ARCHIVES),
    "scin": (scin.read, scin.ARCHIVES),
    "fitzpatrick17k": (fitzpatrick17k.read, fitzpatrick17k.ARCHIVES),
    "isic2019": (isic2019.read, isic2019.ARCHIVES),
    "isic2020": (isic2020.read, isic2020.ARCHIVES),
}
KINDS = (*RELEASES, "folder", "csv")


def import_release(name: str, source: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0,
                   split: str = "official", force: bool = False, link: bool = True, check_images: bool = True,
                   progress: bool = True) -> ImportResult:
    """Import an official release (folder or zip) as a checked dataset card in ``out``.

    ``split="official"`` keeps the release's own split where it has one (ISIC 2017, ISIC 2018,
    Derm7pt) and otherwise makes a grouped stratified split with ``seed``; ``"grouped"`` always
    makes one (the official assignment stays in ``official_split``). ``force`` replaces a
    non-empty ``out``; ``link`` hard-links images from a release folder (else copies).
    """
    if name not in RELEASES:
        raise DataError(f"unknown release {name!r}; dermkit imports {', '.join(RELEASES)} (or 'folder', 'csv')")
    reader, archives = RELEASES[name]
    return build_card(reader, source, out, release_name=name, archives=archives, seed=seed, split=split,
                      force=force, link=link, check_images=check_images, progress=progress)


def import_folder(source: str | os.PathLike, out: str | os.PathLike, *, name: str | None = None, seed: int = 0,
                  force: bool = False, link: bool = True, check_images: bool = True,
                  progress: bool = True) -> ImportResult:
    """Import an ImageFolder tree (one subfolder per class, optionally under train/val/test)."""
    return build_card(folder.reader(name), source, out, release_name="folder", seed=seed, force=force, link=link,
                      check_images=check_images, progress=progress)


def import_csv(csv_file: str | os.PathLike, out: str | os.PathLike, *, image_column: str, label_column: str,
               image_root: str | os.PathLike | None = None, group_column: str | None = None,
               split_column: str | None = None, name: str | None = None, seed: int = 0, force: bool = False,
               link: bool = True, check_images: bool = True, progress: bool = True) -> ImportResult:
    """Import any CSV (image path + label per row; other columns become metadata)."""
    csv_file = Path(csv_file).expanduser()
    if not csv_file.is_file():
        raise DataError(f"--from {csv_file}: no such CSV file")
    root = Path(image_root).expanduser() if image_root is not None else csv_file.parent
    if not root.is_dir():
        raise DataError(f"--image-root {root}: no such folder (the folder the image paths are relative to)")
    read = csv_table.reader(csv_file, image_column, label_column, image_root=root, group_column=group_column,
                            split_column=split_column, name=name)
    # The CSV names its images, nothing is searched: the card may live inside the image folder.
    return build_card(read, root, out, release_name="csv", seed=seed, force=force, link=link,
                      check_images=check_images, progress=progress, out_inside_ok=True)
