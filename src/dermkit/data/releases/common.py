"""What every release importer shares: open the release (a folder or a zip, extracted safely),
find its official files, place the images in the card folder, assign the split, write
``metadata.csv`` + ``dataset.yaml`` and run the full ``data check``.

An import builds the card in a hidden work folder next to ``--out`` and renames it onto ``--out``
only when the check passed, so a failed or interrupted import leaves nothing a later step would
read. Images from a release *folder* are hard-linked into the card (copied when the card is on
another file system); images extracted from a zip are moved there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import stat
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import pandas as pd
import yaml

from dermkit.data.card import load_card
from dermkit.data.card_schema import SPLITS, packaged_spec
from dermkit.data.dicom import is_dicom_file
from dermkit.data.images import open_image
from dermkit.data.metadata_csv import line_list, read_metadata
from dermkit.data.near_duplicates import row_links
from dermkit.data.split import effective_groups, make_splits
from dermkit.data.validate import CheckResult, check_dataset
from dermkit.errors import DataError, excerpt
from dermkit.io import write_csv, write_text

__all__ = [
    "IMAGE_EXTENSIONS",
    "Release",
    "ImportResult",
    "Source",
    "safe_extract",
    "path_problem",
    "read_table",
    "require_columns",
    "map_codes",
    "row_origins",
    "build_card",
    "dicom_card_files",
    "dicom_notes",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_MODES = ("official", "grouped")
_SKIP_DIRS = ("__MACOSX",)


# --------------------------------------------------------------------------------- archives
def path_problem(name: str, folder: str = "the target folder") -> str | None:
    """Why a relative path (a zip member, a path listed in a release's CSV) would land outside
    ``folder``, or None when it is safe."""
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return "is an absolute path"
    if ".." in PurePosixPath(text).parts:
        return f"climbs out of {folder} with '..'"
    return None


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a zip into ``target``; refuse it before writing anything when a member would land
    outside ``target`` (zip-slip: absolute paths, ``..``) or is a symlink; DataError for a corrupt
    or truncated archive (naming the member). Returns ``target``."""
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise DataError(f"{archive} not found") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"{archive} is not a readable zip archive ({exc}); the file is corrupt or an incomplete "
            "download: download it again (`dermkit data fetch` verifies its checksum)"
        ) from None
    with zf:
        members = zf.infolist()
        for info in members:
            problem = path_problem(info.filename)
            if problem is None and stat.S_ISLNK(info.external_attr >> 16):
                problem = "is a symbolic link"
            if problem is not None:
                raise DataError(
                    f"{archive}: member {info.filename!r} {problem}; refusing to extract this archive "
                    "(a safe archive keeps every file inside its folder). Extract it yourself after "
                    "checking its contents, or download the official release again"
                )
        target.mkdir(parents=True, exist_ok=True)
        for info in members:
            dest = target.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise DataError(
                    f"{archive}: member {info.filename!r} cannot be extracted ({exc}); the archive is "
                    "corrupt or truncated: download it again"
                ) from None
    return target


def _is_rar(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"Rar!"
    except OSError:
        return False


class Source:
    """A release as the user has it: a folder, or a zip that is extracted into ``work``.

    Zips inside it whose names match ``archives`` (HAM10000_images_part_1.zip, PAD-UFES-20's
    imgs_part_*.zip, the ISIC challenge zips) are extracted into ``work`` too, so the folder
    `dermkit data fetch` downloads into imports as is. Hidden files and folders (a fetch's
    ``.partial`` downloads) and ``__MACOSX`` are never read.
    """

    def __init__(self, path: str | os.PathLike, work: Path, archives: Sequence[str] = ()):
        self.path = Path(path).expanduser()
        self.work = work
        self.extracted: set[Path] = set()  # folders whose files may be moved instead of linked
        # extracted folder -> what it is for the user ("/data/release.zip", "/data/release.zip: parts/a.zip"):
        # messages name these, never the temporary folder (deleted when the import ends)
        self.origins: dict[Path, str] = {}
        if not self.path.exists():
            raise DataError(f"--from {self.path}: no such file or folder; pass the folder or zip of the release")
        roots: list[Path] = []
        if self.path.is_file():
            if _is_rar(self.path):
                raise DataError(
                    f"{self.path} is a RAR archive, which dermkit cannot open (Python has no RAR reader): "
                    f"extract it first (`unrar x {self.path.name}` or 7-Zip) and pass the folder: "
                    f"--from {self.path.with_suffix('')}"
                )
            if not zipfile.is_zipfile(self.path):
                raise DataError(
                    f"--from {self.path}: not a folder and not a zip archive (corrupt or incomplete "
                    "download?); pass the release folder or its official zip"
                )
            dest = work / "zip"
            safe_extract(self.path, dest)
            self.extracted.add(dest)
            self.origins[dest] = str(self.path)
            roots.append(dest)
        else:
            roots.append(self.path)
        self.roots = roots
        self._files: list[Path] | None = None
        patterns = [p.lower() for p in archives]
        if patterns:
            for zpath in [f for f in self.files() if f.suffix.lower() == ".zip"]:
                if any(fnmatch.fnmatch(zpath.name.lower(), p) for p in patterns):
                    dest = work / "nested" / f"{len(self.extracted)}-{zpath.stem}"
                    try:
                        safe_extract(zpath, dest)
                    except DataError as exc:
                        raise DataError(self.explain(str(exc))) from None
                    self.extracted.add(dest)
                    self.origins[dest] = self.describe(zpath)
                    self.roots.append(dest)
            self._files = None

    def files(self) -> list[Path]:
        """Every regular file of the release (sorted), hidden ones and ``__MACOSX`` left out."""
        if self._files is None:
            out = []
            for root in self.roots:
                for dirpath, dirnames, filenames in os.walk(root):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
                    out.extend(Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
            self._files = out
        return self._files

    def find(self, names: Sequence[str], what: str, required: bool = True,
             accept: Callable[[Path], bool] | None = None) -> Path | None:
        """The release file called one of ``names`` (case-insensitive; shallowest first), or None.

        ``accept`` filters candidates (e.g. a metadata.csv with the right header). A required file
        that is missing raises a DataError naming it and what it is."""
        wanted = [n.lower() for n in names]
        hits = [f for f in self.files() if f.name.lower() in wanted]
        hits.sort(key=lambda p: (wanted.index(p.name.lower()), len(p.parts), str(p)))
        for hit in hits:
            if accept is None or accept(hit):
                return hit
        if required:
            listed = " or ".join(repr(n) for n in names)
            raise DataError(
                f"{self.path}: no {listed} found ({what}); pass the folder or zip of the official "
                "release that holds it (see README, 'Get the data')"
            )
        return None

    def images(self, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
        """Image files by file stem (``ISIC_0024306`` -> path); the first one wins on repeats."""
        out: dict[str, Path] = {}
        exts = tuple(e.lower() for e in extensions)
        for f in self.files():
            if f.suffix.lower() in exts:
                out.setdefault(f.stem, f)
        return out

    def by_name(self) -> dict[str, Path]:
        """Files by lower-cased file name (``pat_46_881_939.png`` -> path)."""
        out: dict[str, Path] = {}
        for f in self.files():
            out.setdefault(f.name.lower(), f)
        return out

    def movable(self, path: Path) -> bool:
        return any(path.is_relative_to(root) for root in self.extracted)

    def describe(self, path: str | os.PathLike) -> str:
        """A file of the release as the user knows it: its own path, or for a file extracted from
        a zip, ``ZIP: MEMBER`` (``ZIP: INNER.zip: MEMBER`` for a zip inside a zip)."""
        path = Path(path)
        for root in sorted(self.origins, key=lambda r: len(r.parts), reverse=True):
            if path == root:
                return self.origins[root]
            if path.is_relative_to(root):
                return f"{self.origins[root]}: {path.relative_to(root).as_posix()}"
        return str(path)

    def explain(self, text: str) -> str:
        """``text`` with every path inside an extracted zip written as :meth:`describe` does."""
        for root in sorted(self.origins, key=lambda r: len(str(r)), reverse=True):
            pattern = re.escape(str(root)) + r"(?:[/\\]([^\s'\",;()]+)|(?![\w-]|\.\w))"
            text = re.sub(pattern, lambda m, r=root: self.origins[r] + (f": {m.group(1)}" if m.group(1) else ""),
                          text)
        return text


# ---------------------------------------------------------------------------------- tables
def read_table(path: Path, what: str, ids: Sequence[str] = (), columns: Sequence[str] = ()) -> pd.DataFrame:
    """An official CSV/TSV as strings (delimiter detected, empty cells NaN); DataError naming it.

    ``columns``: the columns it must have (:func:`require_columns`). ``ids``: columns that identify
    a row (an image or case id): they must be there, and every row needs a value that no other row
    has; an empty or repeated id is a DataError naming the file, its lines and the column (the
    values are stripped of surrounding spaces)."""
    try:
        frame = read_metadata(path)
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    if frame.empty:
        raise DataError(f"{path}: no rows below the header ({what}); the file is truncated, download it again")
    if ids or columns:
        require_columns(frame, path, [*columns, *(c for c in ids if c not in columns)], what)
    for column in ids:
        frame[column] = frame[column].str.strip()
        empty = frame[column].isna() | (frame[column] == "")
        if empty.any():
            raise DataError(f"{path} {line_list(frame.index[empty] + 2)}, column '{column}': the id is empty; every "
                            f"row of {what} needs one. Is the file damaged? Download it again")
        twice = frame[column].duplicated(keep=False)
        if twice.any():
            first = frame.loc[twice, column].iloc[0]
            lines = frame.index[(frame[column] == first).to_numpy()] + 2
            raise DataError(f"{path} {line_list(lines)}, column '{column}': the id {excerpt(first)} is listed "
                            f"{len(lines)} times ({int(twice.sum())} rows share an id with another); each id names "
                            f"one row of {what}. Is the file damaged? Download it again")
    return frame


def require_columns(frame: pd.DataFrame, path: Path, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} line 1 (header): no column {', '.join(map(repr, missing))}; {what} has the columns "
            f"{', '.join(columns)} (found: {', '.join(map(str, frame.columns))}). Is this the official file?"
        )


def map_codes(values: pd.Series, mapping: dict[str, str], path: Path, column: str) -> pd.Series:
    """``values`` through ``mapping``; DataError naming the lines of unknown or empty codes."""
    mapped = values.map(lambda v: mapping.get(str(v).strip()) if pd.notna(v) else None)
    bad = mapped.isna()
    if bad.any():
        lines = [int(i) + 2 for i in values.index[bad]]
        shown = sorted({excerpt(v) for v in values[bad]})[:6]
        what = "the cell is empty" if shown == ["empty"] else f"unknown code(s) {', '.join(shown)}"
        raise DataError(
            f"{path} {line_list(lines)}, column '{column}': {what}; "
            f"the official codes are {', '.join(mapping)}. Is the file corrupt or from another release?"
        )
    return mapped


# ------------------------------------------------------------------------------- a release
@dataclass
class Release:
    """What a release reader returns.

    ``table``: one row per image; ``image`` (and any column in ``file_columns``) holds the file's
    path relative to the card folder; ``diagnosis`` the card's class name. ``files``: destination
    (relative to the card folder) -> file in the release. ``card``: the dataset.yaml keys.
    ``official_split``: train/val/test per row where the release defines one (None otherwise).
    ``malignant``: classes flagged 1 in the ``malignant`` column (None: no such column).
    ``notes``: printed after the import (what was read, what was missing).
    ``origin``: per row, the release file and line it came from ("FILE line N", see
    :func:`row_origins`), so a problem the final check finds is reported against the release, not
    against the card's metadata.csv (never written when the check fails); without it a row is
    named by its image file in the release.
    """

    table: pd.DataFrame
    files: dict[str, Path]
    card: dict
    official_split: pd.Series | None = None
    malignant: Sequence[str] | None = None
    notes: list[str] = field(default_factory=list)
    group_keys: pd.Series | None = None
    origin: Sequence[str] | None = None


def row_origins(src: Source, path: Path, frame: pd.DataFrame) -> list[str]:
    """"FILE line N" for each row of ``frame`` as :func:`read_table` read it from ``path``."""
    where = src.describe(path)
    return [f"{where} line {int(i) + 2}" for i in frame.index]


@dataclass
class ImportResult:
    """An imported card: where it is, how it was split, the check result, notes."""

    root: Path
    name: str
    split_source: str
    check: CheckResult
    notes: list[str]

    def counts(self) -> pd.DataFrame:
        """Images per class and split (+ total), as ``data check`` prints them."""
        return self.check.summary


def _missing_files(release: Release, source: Source) -> None:
    for dest, src in release.files.items():
        if not src.is_file():
            raise DataError(f"{source.path}: {src} (for {dest}) is missing")


def dicom_card_files(dests: Sequence[str], sources: Sequence[Path], root: Path) -> dict[str, Path]:
    """``{destination: source}`` for a reader whose images may include DICOM files (renamed to
    ``.png`` by :func:`~dermkit.data.dicom.png_name`); DataError when two sources land on one
    destination (``a.dcm`` next to ``a.png``)."""
    files: dict[str, Path] = {}
    for dest, src in zip(dests, sources):
        if dest in files and files[dest] != src:
            first, second = (Path(p).relative_to(root).as_posix() for p in (files[dest], src))
            raise DataError(f"{root}: {first} and {second} would both become {dest} in the card (DICOM files are "
                            "converted to PNG); rename one of them")
        files[dest] = src
    return files


def dicom_notes(files: dict[str, Path]) -> list[str]:
    """The import note saying how many DICOM files become PNG (none: no note)."""
    n = sum(1 for src in files.values() if is_dicom_file(src))
    return [f"{n} DICOM file(s) converted to PNG in the card (pixels only: no DICOM element, patient data "
            "included, is copied)"] if n else []


def _place(files: dict[str, Path], card_dir: Path, source: Source, link: bool) -> None:
    """Put every file at its destination: move (extracted), hard-link or copy (a user's folder).

    A DICOM file is decoded (:mod:`dermkit.data.dicom`) and written as a PNG: the card then holds
    its pixels and none of its elements (PatientName, PatientID, ...), and every tool reads it as
    an ordinary image. The card folder is renamed into place only after its check, so a file
    written here is never seen half-done."""
    for dest, src in files.items():
        target = card_dir.joinpath(*PurePosixPath(dest).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if is_dicom_file(src):
            open_image(src).save(target, format="PNG")
            continue
        if source.movable(src):
            os.replace(src, target)
            continue
        if link:
            try:
                os.link(src, target)
                continue
            except OSError:
                pass  # another file system, or links not allowed: copy
        shutil.copyfile(src, target)


def _finish_table(release: Release, classes: list[str], base: dict) -> pd.DataFrame:
    table = release.table.reset_index(drop=True)
    unknown = sorted(set(table["diagnosis"].dropna()) - set(classes))
    if unknown:  # a mapping table bug, never the user's input
        raise DataError(f"internal mapping produced unknown classes {unknown}; known: {classes}")
    front = {"image": table["image"], "label": table["diagnosis"].map(classes.index).astype(int),
             "diagnosis": table["diagnosis"]}
    names = dict(base.get("class_names") or {})
    if names:
        front["diagnosis_name"] = table["diagnosis"].map(lambda c: names.get(c, c))
    if release.malignant is not None:
        front["malignant"] = table["diagnosis"].isin(set(release.malignant)).astype(int)
    rest = table.drop(columns=[c for c in ("image", "label", "diagnosis") if c in table.columns])
    return pd.concat([pd.DataFrame(front), rest], axis=1)


def _duplicates(table: pd.DataFrame, card_dir: Path, id_column: str | None) -> pd.Series:
    """``duplicate_of`` per row: the ids of rows whose image file is byte-identical (";"-joined),
    as the prepared cards record them (SHA-256 of the placed files)."""
    ids = table[id_column] if id_column and id_column in table.columns else table["image"]
    by_digest: dict[str, list[int]] = {}
    for pos, rel in enumerate(table["image"]):
        h = hashlib.sha256()
        with open(card_dir.joinpath(*PurePosixPath(rel).parts), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        by_digest.setdefault(h.hexdigest(), []).append(pos)
    out = [None] * len(table)
    for rows in by_digest.values():
        if len(rows) > 1:
            for pos in rows:
                out[pos] = ";".join(str(ids.iloc[o]) for o in rows if o != pos)
    return pd.Series(out, index=table.index, name="duplicate_of", dtype=object)


def _splits(table: pd.DataFrame, release: Release, mode: str, seed: int, group_column: str | None,
            id_column: str | None, card_dir: Path, image_columns: Sequence[str] = ("image",)):
    official = release.official_split
    if official is not None:
        official = official.reset_index(drop=True)
        table["official_split"] = official
    if mode == "official" and official is not None and official.notna().all() \
            and set(official) == set(SPLITS):
        return official.rename("split"), "official"
    if release.group_keys is not None:
        table["_group"] = release.group_keys.reset_index(drop=True).to_numpy()
        group_column = "_group"
    elif not (group_column and group_column in table.columns):
        group_column = None
    # Rows that show byte-identical images are one group too (effective_groups reads duplicate_of),
    # and so are rows whose images are near-duplicates (perceptual hashes of the placed files).
    links = row_links(table, card_dir, image_columns)
    groups = effective_groups(table, group_column, "duplicate_of", id_column, links)
    if "_group" in table.columns:  # dropped in place, as it was added above
        del table["_group"]
    split = make_splits(table, "diagnosis", groups, seed=seed)
    by = f", grouped by {group_column}" if group_column and group_column != "_group" else ""
    why = f"grouped stratified split (70/15/15, seed {seed}{by}; identical and near-duplicate images kept together)"
    if mode == "official" and official is not None:
        why += "; the official split does not cover train, val and test for every image, kept as official_split"
    elif mode == "official":
        why += "; the release defines no official split"
    elif official is not None:
        why += "; the official split is kept as official_split"
    return split, why


_OFFICIAL_LEAKS = ("duplicate_image_leak", "near_duplicate_leak")


def _official_leaks(result: CheckResult, split_source: str) -> tuple[list, list]:
    """(errors that block the import, notes): with the official split, identical and near-duplicate
    images that the release itself put in different splits are the benchmark as published: reported,
    not fatal."""
    if split_source != "official":
        return result.errors, []
    notes = []
    identical = sum(p.kind == "duplicate_image_leak" for p in result.errors)
    near = sum(p.kind == "near_duplicate_leak" for p in result.errors)
    if identical:
        notes.append("the official split puts byte-identical images in different splits (`dermkit data check` "
                     f"reports them: {identical} error(s), see duplicate_of): the benchmark as published; import "
                     "with --split grouped for a split without this leak")
    if near:
        notes.append("the official split puts near-duplicate images (the same picture resized, re-encoded or "
                     f"mirrored) in different splits (`dermkit data check` reports them: {near} "
                     "near_duplicate_leak error(s)): the benchmark as published; import with --split grouped for a "
                     "split that keeps them together")
    return [p for p in result.errors if p.kind not in _OFFICIAL_LEAKS], notes


def _release_problems(problems, table: pd.DataFrame, release: Release, src: Source, out: Path,
                      card_dir: Path, limit: int = 10) -> str:
    """The check's errors on the card being built, told against the release: each "metadata.csv
    line N" (a file that is never written when the check fails) becomes the release file and line
    the row came from (:attr:`Release.origin`), or the row's image file in the release."""
    origin = list(release.origin) if release.origin is not None else None

    def row(line: int, image_too: bool = False) -> str:
        i = line - 2
        if not 0 <= i < len(table):
            return f"the release's table (row {line - 1})"
        image = release.files.get(str(table["image"].iloc[i]))
        shown = src.describe(image) if image is not None else str(table["image"].iloc[i])
        if origin is not None and i < len(origin):
            return origin[i] + (f" (image {shown})" if image_too else "")
        return f"the row of {shown}"

    def named(match: re.Match) -> str:
        if match.group(1) is None:  # the file itself
            return "the release's table"
        numbers = [int(n) for n in re.findall(r"\d+", match.group(2))]
        more = f" and {match.group(3)} more" if match.group(3) else ""
        return "; ".join(row(n, len(numbers) == 1) for n in numbers) + more

    card_lines = re.compile(r"(?<![\w./-])metadata\.csv(?: (lines?) (\d+(?:, \d+)*)(?: and (\d+) more)?)?")
    text = [f"the release fails `dermkit data check` as imported; nothing was written to {out} (the files and "
            "lines below are the release's):"]
    by_kind: dict[str, list] = {}
    for p in problems:
        by_kind.setdefault(p.kind, []).append(p)
    for kind, items in by_kind.items():
        text.append(f"ERROR {kind} ({len(items)}):")
        for p in items[:limit]:
            message = card_lines.sub(named, p.message)
            text.append(f"  - {message.replace(str(card_dir), 'the card')}")
        if len(items) > limit:
            text.append(f"  ... and {len(items) - limit} more")
        text.append(f"  fix: {items[0].fix}")
    return "\n".join(text)


def _prepare_out(out: Path, source: Path, force: bool, out_inside_ok: bool = False) -> None:
    out_r, src_r = out.resolve(), source.resolve()
    if out_r == src_r or out_r.is_relative_to(src_r) and source.is_dir() and not out_inside_ok:
        raise DataError(
            f"--out {out} is inside the release folder {source}; write the card to a folder outside it "
            "(images are hard-linked, so this costs no extra space on the same disk)"
        )
    if src_r.is_relative_to(out_r):
        raise DataError(f"--from {source} is inside --out {out}; the import would replace its own source")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder for the dataset card")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(
            f"--out {out} already exists and is not empty; pass --force to replace it, or choose a new folder"
        )


def build_card(
    reader: Callable[[Source], Release],
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    release_name: str,
    archives: Sequence[str] = (),
    seed: int = 0,
    split: str = "official",
    force: bool = False,
    link: bool = True,
    check_images: bool = True,
    progress: bool = True,
    out_inside_ok: bool = False,
) -> ImportResult:
    """Read a release with ``reader`` and write a checked dataset card to ``out`` (see the module doc)."""
    if split not in SPLIT_MODES:
        raise DataError(f"--split {split!r}: use one of {', '.join(SPLIT_MODES)}")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.exists():
        raise DataError(f"--from {source}: no such file or folder; pass the folder or zip of the release")
    _prepare_out(out, source, force, out_inside_ok)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.import-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    src = None
    try:
        src = Source(source, work / "source", archives)
        release = reader(src)
        if release.table.empty:
            raise DataError(f"{source}: the release lists no images")
        _missing_files(release, src)
        spec = dict(release.card)
        base_name = spec.get("base_card")
        base = packaged_spec(base_name) if base_name else {}
        classes = list(spec.get("classes") or base.get("classes") or sorted(release.table["diagnosis"].unique()))
        table = _finish_table(release, classes, base)
        group_column = spec.get("group_column", base.get("group_column"))
        id_column = spec.get("id_column", base.get("id_column"))
        card_dir = work / "card"
        card_dir.mkdir()
        _place(release.files, card_dir, src, link)
        table["duplicate_of"] = _duplicates(table, card_dir, id_column)
        view = spec.get("second_view_column", base.get("second_view_column"))
        image_columns = ["image"] + ([view] if view and view in table.columns else [])
        table["split"], split_source = _splits(table, release, split, seed, group_column, id_column, card_dir,
                                               image_columns)
        spec["import"] = {"release": release_name, "from": str(source.resolve()), "split": split_source}
        write_csv(card_dir / "metadata.csv", table)
        write_text(card_dir / "dataset.yaml",
                   f"# Written by `dermkit data import {release_name}`; the packaged card "
                   f"({base_name or 'none'}) supplies the other keys.\n"
                   + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100))
        result = check_dataset(load_card(card_dir), check_images=check_images, progress=progress)
        blocking, leak_notes = _official_leaks(result, split_source)
        if blocking:
            raise DataError(_release_problems(blocking, table, release, src, out, card_dir))
        if out.exists():
            trash = work / "replaced"
            os.replace(out, trash)
        os.replace(card_dir, out)
    except DataError as exc:
        # messages name the release's own files, never the temporary folder (deleted below)
        raise DataError(src.explain(str(exc)) if src is not None else str(exc)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    card = load_card(out)
    result.root = out
    return ImportResult(root=out, name=card.name, split_source=split_source, check=result,
                        notes=[*release.notes, *leak_notes])
