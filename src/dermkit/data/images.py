"""Safe image paths and image decoding.

Every image dermkit reads goes through :func:`resolve_image_path` (a CSV row can never make us
read a file outside the dataset folder) and :func:`open_image` (a broken, truncated or
decompression-bomb file becomes a :class:`~dermkit.errors.DataError` that names the file and
says what to do, instead of a PIL traceback deep inside a data loader).

The fix an image error suggests depends on where the path came from. A plain path gets the
neutral wording ("X: ...; fix the path or convert the image"). An :class:`ImagePath`
(what :meth:`DatasetCard.image_path <dermkit.data.card.DatasetCard.image_path>` returns) names
its metadata.csv line and column and suggests fixing the path in metadata.csv or removing the
row; :func:`command_line_path` marks a path typed on the command line ("the file X given on the
command line").

DICOM files are decoded by :mod:`dermkit.data.dicom` (dispatched from :func:`decode_image_bytes`)
and 16-bit images scaled by their bit depth (:mod:`dermkit.data.bitdepth`).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from dermkit.data.bitdepth import SIXTEEN_BIT_MAX, WIDE_GREY_MODES, wide_grey_to_l
from dermkit.data.dicom import DICOM_SUFFIXES, DicomProblem, decode_dicom, has_dicom_marker
from dermkit.errors import DataError

__all__ = [
    "resolve_image_path",
    "PathResolver",
    "open_image",
    "read_image_bytes",
    "decode_image_bytes",
    "ImageProblem",
    "IMAGE_FIXES",
    "SymlinkEscape",
    "ImagePath",
    "command_line_path",
    "as_path",
    "FILE_FIXES",
]

FOLLOW_SYMLINKS_HINT = (
    "if the link is deliberate (e.g. images/ pointing at a large image store), set "
    "'follow_symlinks: true' in the folder's dataset.yaml (or pass --follow-symlinks to "
    "`dermkit data check`) to allow it; otherwise copy the files into the dataset folder"
)


class SymlinkEscape(DataError):
    """An image path that stays inside the dataset folder as written but resolves outside it
    through a symlink. ``link`` is the symlink (a path inside the folder), ``target`` where it
    resolves to; allowed with ``follow_symlinks``."""

    def __init__(self, message: str, link: Path | None, target: str):
        super().__init__(message)
        self.link, self.target = link, target


def resolve_image_path(root: str | os.PathLike, rel, follow_symlinks: bool = False) -> Path:
    """Return ``root / rel`` after checking that ``rel`` cannot escape ``root``.

    ``rel`` must be a relative path (``/`` or ``\\`` separators) that stays inside ``root`` as
    written: no absolute path and no ``..`` that climbs out (both always refused). Unless
    ``follow_symlinks`` is true, a symlink inside ``root`` whose target lies outside it is refused
    too (:class:`SymlinkEscape`); with it, symlinked files and folders are followed deliberately
    (a dataset whose ``images/`` links to an image store). The file does not have to exist (use
    :func:`open_image` to read it).
    """
    return PathResolver(root, follow_symlinks=follow_symlinks)(rel)


class PathResolver:
    """:func:`resolve_image_path` for many paths under one root (caches resolved folders).

    Resolving every path component with ``realpath`` costs ~0.5 ms per image; images share a
    few folders, so only the folder is resolved once and the file itself is checked with one
    ``lstat`` (is it a symlink?). With ``follow_symlinks`` only the written path is checked
    (relative, no ``..`` out of the folder) and symlinks are not resolved at all.
    """

    def __init__(self, root: str | os.PathLike, follow_symlinks: bool = False):
        self.root = Path(root)
        self.follow_symlinks = bool(follow_symlinks)
        self.real_root = os.path.realpath(self.root)
        self._dirs: dict[str, str] = {}
        self._links: dict[str, Path | None] = {}

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def __call__(self, rel) -> Path:
        root = self.root
        if not isinstance(rel, str) or not rel.strip():
            raise DataError(
                f"empty image path {rel!r}; give a path relative to the dataset folder {root}"
            )
        # CSVs written on Windows use backslashes; treat them as separators on every OS.
        text = rel.replace("\\", "/")
        if text.startswith("/") or (len(text) >= 2 and text[1] == ":") or os.path.isabs(rel):
            raise DataError(
                f"image path {rel!r} is absolute; use a path relative to the dataset folder "
                f"{root} (e.g. images/ISIC_0000001.jpg)"
            )
        parts: list[str] = []
        for part in text.split("/"):
            if part == "..":
                if not parts:
                    raise DataError(
                        f"image path {rel!r} leaves the dataset folder {root} through '..'; "
                        "keep images inside the dataset folder and use a path relative to it"
                    )
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        if not parts:
            raise DataError(f"image path {rel!r} names the dataset folder itself, not a file")
        path = root.joinpath(*parts)
        if self.follow_symlinks:
            return path
        # Symlinks are checked last: a link inside the folder may point anywhere on disk.
        folder = os.path.join(*parts[:-1]) if len(parts) > 1 else ""
        real_dir = self._dirs.get(folder)
        if real_dir is None:
            real_dir = self._dirs[folder] = os.path.realpath(os.path.join(self.real_root, folder))
        real = os.path.join(real_dir, parts[-1])
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not self._inside(real):
            # The written path stays inside the folder, so a symlink on the way leads out.
            link = self._escaping_link(folder, parts)
            via = f" via the symlink {link.relative_to(root).as_posix()} -> " if link else " via a symlink -> "
            target = os.readlink(link) if link else real
            raise SymlinkEscape(
                f"image path {rel!r} resolves outside the dataset folder {self.real_root}{via}"
                f"{target} (resolved: {real}); {FOLLOW_SYMLINKS_HINT}",
                link,
                real,
            )
        return path

    def _escaping_link(self, folder: str, parts: list[str]) -> Path | None:
        """First symlink along ``root/parts`` whose target lies outside the folder (the answer
        for the folder part is cached: every image under a linked images/ shares it)."""
        if folder not in self._links:
            self._links[folder] = self._first_link_out(parts[:-1])
        return self._links[folder] or self._first_link_out(parts)

    def _first_link_out(self, parts: list[str]) -> Path | None:
        for i in range(1, len(parts) + 1):
            candidate = self.root.joinpath(*parts[:i])
            if os.path.islink(candidate) and not self._inside(os.path.realpath(candidate)):
                return candidate
        return None


# Where a path came from decides how an image error is worded (see ImagePath).
SOURCE_CSV = "csv"
SOURCE_COMMAND_LINE = "command line"


class ImagePath(type(Path())):
    """A :class:`~pathlib.Path` that remembers where it was named, for error messages.

    ``source`` is ``"csv"`` (a metadata.csv cell; ``where`` then reads like
    ``".../metadata.csv line 7, column 'image' ('images/a.jpg')"``) or ``"command line"``; a
    plain ``Path`` (or a path derived from this one, e.g. ``.parent``) has neither and gets the
    neutral wording. It compares, hashes and sorts like the plain path. Code that re-wraps paths
    with ``Path(p)`` drops the origin; use :func:`as_path` to keep it.
    """

    source: str | None = None
    where: str | None = None

    def __reduce__(self):  # keep the origin across pickling (DataLoader workers, deepcopy)
        return (_image_path, (os.fspath(self), self.source, self.where))


def _image_path(path, source: str | None, where: str | None) -> ImagePath:
    out = ImagePath(path)
    out.source, out.where = source, where
    return out


def csv_image_path(path, where: str) -> ImagePath:
    """``path`` as an :class:`ImagePath` listed in metadata.csv at ``where`` (file, line, column)."""
    return _image_path(path, SOURCE_CSV, where)


def command_line_path(path) -> ImagePath:
    """``path`` as an :class:`ImagePath` given on the command line (errors say so)."""
    return _image_path(path, SOURCE_COMMAND_LINE, None)


def as_path(path) -> Path:
    """``Path(path)``, except that a Path (an :class:`ImagePath` included) is returned as is."""
    return path if isinstance(path, Path) else Path(path)


class ImageProblem(DataError):
    """An image that cannot be used; ``kind`` is missing_image / unreadable_image /
    truncated_image / decompression_bomb, ``detail`` what is wrong, ``fix`` what to do (worded
    for where the path came from: ``source`` "csv", "command line" or None, see
    :class:`ImagePath`), ``where`` the metadata.csv line and column when known."""

    def __init__(self, kind: str, path: Path, detail: str, fix: str, source: str | None = None,
                 where: str | None = None):
        self.kind, self.path, self.detail, self.fix = kind, Path(path), detail, fix
        self.source, self.where = source, where
        if source == SOURCE_CSV:
            head = f"{where}: {detail} ({path})" if where else f"{path} (listed in metadata.csv): {detail}"
        elif source == SOURCE_COMMAND_LINE:
            head = f"the file {path} given on the command line: {detail}"
        else:
            head = f"{path}: {detail}"
        super().__init__(f"{head}; {fix}")


# Fixes for a path from metadata.csv (check_dataset, card-driven training and evaluation).
IMAGE_FIXES = {
    "missing_image": "check that the path in metadata.csv is relative to the dataset folder "
    "and that the file was copied; fix the path in metadata.csv or remove the row",
    "unreadable_image": "re-export the file as JPEG or PNG, fix the path in metadata.csv, or "
    "remove the row",
    "truncated_image": "the file is cut short (interrupted copy/download?); copy it again "
    "from the source, or remove the row",
    "decompression_bomb": "downscale the image (e.g. longer side <= 4096 px) or remove the row; "
    "raise PIL.Image.MAX_IMAGE_PIXELS only if you trust the file",
}
# Fixes for any other path (given on the command line or passed to open_image in Python).
FILE_FIXES = {
    "missing_image": "fix the path (a relative path starts at the current folder) or copy the "
    "file there",
    "unreadable_image": "fix the path or convert the image to JPEG or PNG",
    "truncated_image": "the file is cut short (interrupted copy/download?); copy it again from "
    "the source or convert the image again",
    "decompression_bomb": "downscale the image (e.g. longer side <= 4096 px); raise "
    "PIL.Image.MAX_IMAGE_PIXELS only if you trust the file",
}


def _problem(kind: str, path: Path, detail: str, source: str | None = None,
             where: str | None = None) -> ImageProblem:
    source = source or getattr(path, "source", None)
    where = where or getattr(path, "where", None)
    fixes = IMAGE_FIXES if source == SOURCE_CSV else FILE_FIXES
    return ImageProblem(kind, path, detail, fixes[kind], source, where)


def read_image_bytes(path: Path) -> bytes:
    """Read a file's bytes; a missing or unreadable file becomes an :class:`ImageProblem`."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise _problem("missing_image", path, "image file not found") from None
    except IsADirectoryError:
        raise _problem("unreadable_image", path, "is a folder, not an image file") from None
    except OSError as exc:
        raise _problem("unreadable_image", path, f"cannot read the file ({exc.strerror or exc})") from None


def decode_image_bytes(data: bytes, path: Path, convert: bool = True) -> Image.Image:
    """Decode ``data`` (the bytes of ``path``) completely; raise :class:`ImageProblem` if bad.

    Truncated files are detected because ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False and the
    whole image is decoded (no ``draft`` mode). With ``convert`` the image is returned as RGB with
    its EXIF orientation applied; 16-bit grey is scaled by its bit depth (65535 is white,
    :mod:`dermkit.data.bitdepth`), so an 8-bit image and its 16-bit twin give the same pixels.

    DICOM files (the ``DICM`` marker, or a ``.dcm`` / ``.dicom`` file Pillow cannot read) are
    decoded by :func:`dermkit.data.dicom.decode_dicom`, always as RGB (``format`` "DICOM"): the
    one place every reader of images passes through, so all of dermkit reads DICOM alike.
    """
    if has_dicom_marker(data):
        return _decode_dicom(data, path, force=False)
    try:
        # Pillow raises above 2x MAX_IMAGE_PIXELS but only warns above 1x. Callers turn that
        # warning into an error (open_image, check_dataset); the explicit size check below also
        # refuses such images where the warnings filter is not active. No catch_warnings here:
        # it is not thread-safe and this function runs in a thread pool.
        im = Image.open(io.BytesIO(data))
        limit = Image.MAX_IMAGE_PIXELS
        if limit and im.size[0] * im.size[1] > limit:
            raise Image.DecompressionBombWarning(
                f"{im.size[0]}x{im.size[1]} = {im.size[0] * im.size[1]} pixels"
            )
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _problem(
            "decompression_bomb",
            path,
            f"image is too large to decode safely ({_first_line(exc)}; limit "
            f"{Image.MAX_IMAGE_PIXELS} pixels)",
        ) from None
    except UnidentifiedImageError:
        if Path(path).suffix.lower() in DICOM_SUFFIXES:  # a DICOM without the 128-byte preamble?
            return _decode_dicom(data, path, force=True)
        raise _problem(
            "unreadable_image", path, "not an image file Pillow can read (wrong format or corrupt)"
        ) from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise _problem("truncated_image", path, f"image file is truncated ({text})") from None
        raise _problem("unreadable_image", path, f"corrupt image data ({text})") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        # Pillow plugins raise these for malformed headers.
        raise _problem(
            "unreadable_image", path, f"corrupt image data ({type(exc).__name__}: {exc})"
        ) from None
    if not convert:
        return im
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not make a decodable image unusable
        pass
    if im.mode != "RGB":
        # Palette images with transparency must go through RGBA, else Pillow warns.
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode in WIDE_GREY_MODES:
            # 16-bit grey: scaled by its bit depth (not its own maximum: the same picture in 8 and 16
            # bits must give the same pixels), instead of clipping everything above 255 to white.
            low, high = im.getextrema()
            if low < 0 or high > SIXTEEN_BIT_MAX:
                raise _problem("unreadable_image", path, f"{im.mode}-mode pixels from {low} to {high}, beyond 16 "
                               "bits (dermkit reads 8- and 16-bit images); export it as a 16-bit PNG")
            im = wide_grey_to_l(im)
        im = im.convert("RGB")
    return im


def _decode_dicom(data: bytes, path: Path, force: bool) -> Image.Image:
    """:func:`dermkit.data.dicom.decode_dicom` with its problems as :class:`ImageProblem` (the
    file named as usual; the DICOM's own elements never appear in the message)."""
    try:
        return decode_dicom(data, max_pixels=Image.MAX_IMAGE_PIXELS, force=force)
    except DicomProblem as exc:
        raise _problem(exc.kind, path, exc.detail) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_image(path: str | os.PathLike, source: str | None = None, where: str | None = None) -> Image.Image:
    """Open ``path`` as a fully decoded RGB image, or raise a ``DataError`` that says why not.

    Errors (all :class:`ImageProblem`, a ``DataError``): missing file, not an image / corrupt,
    truncated file, decompression bomb (more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels).
    RGBA, L, P, CMYK... are converted to RGB; EXIF orientation is applied.

    The message's wording follows where the path came from: ``source="command line"`` ("the
    file X given on the command line ...; fix the path or convert the image"), ``source="csv"``
    with ``where`` (".../metadata.csv line 7, column 'image'"; fix the path in metadata.csv or
    remove the row). Both default to the path's own (an :class:`ImagePath`, as returned by
    ``DatasetCard.image_path``); a plain path gets the neutral wording ("X: ...; fix the path or convert the image").
    """
    if source is not None or where is not None:
        path = _image_path(path, source or getattr(path, "source", None), where or getattr(path, "where", None))
    else:
        path = as_path(path)
    data = read_image_bytes(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return decode_image_bytes(data, path)

