"""Uploads: the request body read with a size limit, multipart parsed in memory, images sniffed and checked.

Nothing a request sends is trusted: the body is counted while it streams in (413 past the
limit, before it is all read), multipart parts stay in memory (never spooled to disk), the
image format is told from the bytes (not the filename or the part's content type; DICOM by its
``DICM`` marker, read by :mod:`dermkit.data.dicom`, which parses no patient element), and the
pixel count, size and aspect ratio are checked from the header *before* the image is decoded,
so a decompression bomb is refused without allocating it. No filename or path in a request is
ever opened.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dermkit.data.dicom import DicomProblem, dicom_info, has_dicom_marker
from dermkit.data.images import decode_image_bytes
from dermkit.errors import DataError

__all__ = ["ServeLimits", "UploadError", "sniff_format", "decode_upload", "read_form", "Upload"]


@dataclass
class ServeLimits:
    """Hard limits of the server (``dermkit serve --help`` lists the options that set them)."""

    max_upload_bytes: int = 10 * 1024 * 1024  # whole request body
    max_pixels: int = 25_000_000  # width x height, checked from the header before decoding
    min_side: int = 32  # pixels
    max_aspect: float = 8.0  # longer side / shorter side
    max_batch: int = 16  # requests batched into one forward pass (1: batching off)
    batch_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # requests waiting; more are refused with 503
    timeout_s: float = 60.0  # per request, from arrival to answer (504 / 408)
    max_texts: int = 64  # /api/rank candidates
    max_text_chars: int = 500
    max_fields: int = 64  # multipart fields per request
    max_field_chars: int = 32_768  # one non-file form field (a 'texts' field holds up to max_texts lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class UploadError(Exception):
    """A request the server refuses: an HTTP ``status`` and a message that says what to change."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# nginx's "client closed request": the client went away before its request was read, so the
# answer is never delivered; the server logs it as a disconnect (info), not as an error.
CLIENT_CLOSED = 499


# Magic numbers of the formats the models read (Pillow decodes them; nothing else is accepted).
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
ACCEPTED = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "DICOM")


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with (JPEG, PNG, WEBP, BMP, TIFF, GIF; DICOM: ``DICM``
    after its 128-byte preamble), else None."""
    if has_dicom_marker(data):  # first: a DICOM preamble may itself hold a TIFF header
        return "DICOM"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def _looks_like(data: bytes) -> str:
    head = data[:64].lstrip()
    if not data:
        return "an empty file"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head[:1] in (b"{", b"[") or head.lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<svg")):
        return "text (JSON/HTML/XML/SVG)"
    if data[:4] == b"PK\x03\x04":
        return "a ZIP archive"
    try:
        data[:256].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "binary data of an unknown format"


@dataclass
class Upload:
    """A decoded, checked upload: the RGB image and what the request said about it."""

    field: str
    filename: str
    image: Image.Image
    format: str
    size: tuple[int, int]
    n_bytes: int


def decode_upload(data: bytes, field: str, filename: str, limits: ServeLimits) -> Upload:
    """Sniff, check and decode one uploaded image; :class:`UploadError` (415/422) says why not."""
    shown = f"{field!r}" + (f" ({filename})" if filename else "")
    fmt = sniff_format(data)
    if fmt is None:
        raise UploadError(415, f"upload {shown} is not an image: its bytes look like {_looks_like(data)}; send a "
                               f"JPEG or PNG ({', '.join(ACCEPTED)} are accepted; the content decides, not the name)")
    try:
        if fmt == "DICOM":  # its pixel module only: no patient element is parsed
            width, height = _dicom_size(data, shown)
            header_format = fmt
        else:
            header = Image.open(io.BytesIO(data))  # reads the header only
            width, height = header.size
            header_format = header.format
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(422, f"upload {shown} is a decompression bomb (its header claims more than "
                               f"{2 * Image.MAX_IMAGE_PIXELS} pixels); downscale the image") from None
    except Exception as exc:  # noqa: BLE001 - any header Pillow cannot parse is a bad upload
        raise UploadError(422, f"upload {shown} looks like {fmt} but cannot be read ({type(exc).__name__}: "
                               f"{exc}); re-export it as JPEG or PNG") from None
    if header_format and header_format.upper().replace("MPO", "JPEG") != fmt:
        raise UploadError(415, f"upload {shown} starts like {fmt} but decodes as {header_format}; send a plain JPEG "
                               "or PNG")
    if width * height > limits.max_pixels:
        raise UploadError(422, f"upload {shown} is {width}x{height} = {width * height} pixels, more than the limit "
                               f"of {limits.max_pixels} (a decompression bomb, or simply too large); downscale it "
                               "(e.g. longer side <= 4096 px)")
    if min(width, height) < limits.min_side:
        raise UploadError(422, f"upload {shown} is {width}x{height} pixels; its shorter side is below "
                               f"{limits.min_side} px, too small to classify. Send the original image")
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > limits.max_aspect:
        raise UploadError(422, f"upload {shown} is {width}x{height} pixels, an aspect ratio of {aspect:.1f}:1 "
                               f"(limit {limits.max_aspect:g}:1); crop it around the lesion")
    try:
        image = decode_image_bytes(data, Path(f"upload {field}"))  # full decode: truncation, EXIF, RGB
    except DataError as exc:
        raise UploadError(422, str(exc)) from None
    return Upload(field, filename, image, fmt, (width, height), len(data))


def _dicom_size(data: bytes, shown: str) -> tuple[int, int]:
    """(width, height) from a DICOM upload's header; 422 when unreadable, without pixels or multi-frame."""
    try:
        info = dicom_info(data)
    except DicomProblem as exc:
        raise UploadError(422, f"upload {shown}: {exc.detail}") from None
    return info.width, info.height


async def read_form(request, limits: ServeLimits, repeatable: tuple[str, ...] = ()):
    """``(fields, files)`` of a multipart request: ``fields`` {name: [values]}, ``files`` {name: (filename, bytes)}.

    The body is counted as it arrives and refused with 413 beyond ``limits.max_upload_bytes``;
    every part is kept in memory (nothing is written to disk). A form field longer than
    ``limits.max_field_chars``, or given twice (unless it is in ``repeatable``), is refused with
    422 naming it (never last-wins); a client that disconnects mid-upload ends the request with
    :data:`CLIENT_CLOSED`.
    """
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise UploadError(400, f"invalid Content-Length header {length!r}") from None
        if declared > limits.max_upload_bytes:
            raise UploadError(413, _too_large(declared, limits))
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise UploadError(415, f"send the image as multipart/form-data (a form with a file field 'image'), not "
                               f"{ctype or 'a body without Content-Type'}; e.g. curl -F image=@lesion.jpg URL")

    class InMemoryParser(MultiPartParser):
        spool_max_size = limits.max_upload_bytes + 1  # the body is capped below this: never spooled to disk

    async def limited():
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limits.max_upload_bytes:
                raise UploadError(413, _too_large(total, limits, at_least=True))
            yield chunk

    # UTF-8 takes at most 4 bytes a character: a field past this many bytes is over the limit
    parser = InMemoryParser(request.headers, limited(), max_files=4, max_fields=limits.max_fields,
                            max_part_size=4 * limits.max_field_chars)
    try:
        form = await parser.parse()
    except ClientDisconnect:
        raise UploadError(CLIENT_CLOSED, "the client disconnected before its request arrived") from None
    except MultiPartException as exc:
        if "exceeded maximum size" in str(exc):
            name = getattr(getattr(parser, "_current_part", None), "field_name", "") or "?"
            raise UploadError(422, f"form field {name!r} is longer than {limits.max_field_chars:,} characters "
                                   "(the limit of one field); send less") from None
        raise UploadError(400, f"malformed multipart form: {exc}") from None
    fields: dict[str, list[str]] = {}
    files: dict[str, tuple[str, bytes]] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields.setdefault(name, []).append(value)
            else:
                if name in files:
                    raise UploadError(422, f"file field {name!r} given twice; send one file per field")
                files[name] = (value.filename or "", await value.read())
    finally:
        await form.close()
    for name, values in fields.items():
        if len(values) > 1 and name not in repeatable:
            raise UploadError(422, f"form field {name!r} given {len(values)} times; give it once (the server never "
                                   "picks one of them)")
        long = [v for v in values if len(v) > limits.max_field_chars]
        if long:
            raise UploadError(422, f"form field {name!r} is {len(long[0]):,} characters; the limit of one field is "
                                   f"{limits.max_field_chars:,}")
    return fields, files


def _too_large(n: int, limits: ServeLimits, at_least: bool = False) -> str:
    mib = limits.max_upload_bytes / 2**20
    size = f"{'more than ' if at_least else ''}{n / 2**20:.1f} MiB"
    return (f"request body is {size}; the limit is {mib:g} MiB. Send a smaller image (JPEG, longer side <= 4096 px); "
            "the server's --max-upload-mb raises the limit")


def finite_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
