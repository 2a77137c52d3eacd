"""DICOM images in: one single-frame DICOM file decoded to an 8-bit RGB image (pydicom).

Every image dermkit reads goes through :func:`dermkit.data.images.decode_image_bytes`, which
sends a file to :func:`decode_dicom` when its bytes carry the ``DICM`` marker at byte 128 (or
when Pillow cannot read a ``.dcm`` / ``.dicom`` file, a DICOM without the 128-byte preamble).
So ``dermkit predict``, ``POST /api/predict``, ``data import folder|csv``, ``data check``,
training and evaluation all read DICOM the same way.

What is read:

* photometric interpretations RGB, YBR_FULL, YBR_FULL_422 (and the JPEG 2000 YBR_ICT / YBR_RCT)
  converted to RGB by pydicom (``as_rgb``: :func:`pydicom.pixels.convert_color_space`);
  MONOCHROME2 as grey and MONOCHROME1 as inverted grey, both repeated to RGB;
* uncompressed, deflated, RLE, JPEG (baseline, extended, lossless), JPEG-LS and JPEG 2000 pixel
  data through pydicom's decoders and the pylibjpeg plugins. JPEG baseline / extended go through
  pydicom's Pillow plugin when it is available: the libjpeg-turbo decoder and colour conversion
  that read every .jpg, so a JPEG wrapped in a DICOM gives exactly the JPEG's pixels;
* samples deeper than 8 bits scaled by ``BitsStored`` (``v * 255 / (2**BitsStored - 1)``,
  :func:`dermkit.data.bitdepth.scale_to_uint8`), never by the image's own maximum; no modality
  or VOI LUT (window) is applied.

Refused with a :class:`DicomProblem` that says why and what to do: a file pydicom cannot parse,
no pixel data (float pixel data included), more than one frame (``NumberOfFrames`` > 1: export
the frame you want), more pixels than the decompression-bomb limit (checked from Rows x Columns
before anything is decoded), other photometric interpretations (PALETTE COLOR, YBR_PARTIAL_*),
and transfer syntaxes without an installed decoder (MPEG/H.264 video, ...).

Privacy: only the file meta group and the Image Pixel module elements in :data:`PIXEL_KEYWORDS`
are parsed (pydicom's ``specific_tags``); patient, study and equipment elements (PatientName,
PatientID, PatientBirthDate, InstitutionName, ...) are skipped unread, so no message, warning,
log line or output can hold them. Only the pixel array leaves this module.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermkit.data.bitdepth import scale_to_uint8

__all__ = [
    "DICOM_SUFFIXES",
    "PIXEL_KEYWORDS",
    "DicomProblem",
    "DicomInfo",
    "has_dicom_marker",
    "is_dicom_file",
    "dicom_info",
    "decode_dicom",
    "png_name",
]

DICOM_SUFFIXES = (".dcm", ".dicom")
MARKER_OFFSET = 128
MARKER = b"DICM"

# The only elements parsed (besides the file meta group, which pydicom always reads).
PIXEL_KEYWORDS = [
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData", "FloatPixelData",
    "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
]
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
GREY = ("MONOCHROME1", "MONOCHROME2")
# Transfer syntaxes Pillow decodes with the same libjpeg-turbo as a .jpg file.
_PILLOW_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_CONVERT = "export it as a single-frame DICOM (uncompressed, JPEG or JPEG 2000) or as PNG"


class DicomProblem(ValueError):
    """Why a DICOM file cannot be used: ``kind`` (an :class:`~dermkit.data.images.ImageProblem`
    kind: unreadable_image, truncated_image, decompression_bomb) and ``detail`` (what is wrong
    and what to do; never an element value other than the pixel module's)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class DicomInfo:
    """What the pixel module says about the image (nothing else is read)."""

    width: int
    height: int
    frames: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    transfer_syntax: str
    transfer_syntax_name: str


def has_dicom_marker(data: bytes) -> bool:
    """True when ``data`` holds the DICOM file marker ``DICM`` after the 128-byte preamble."""
    return data[MARKER_OFFSET:MARKER_OFFSET + 4] == MARKER


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a file named ``*.dcm`` / ``*.dicom`` or one that starts like a DICOM file."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return has_dicom_marker(fh.read(MARKER_OFFSET + 4))
    except OSError:
        return False


def png_name(name: str) -> str:
    """The name a DICOM file gets when it is converted to PNG (``a/b.dcm`` -> ``a/b.png``;
    ``a/IM0001`` -> ``a/IM0001.png``)."""
    stem, dot, suffix = name.rpartition(".")
    if dot and "/" not in suffix and f".{suffix.lower()}" in DICOM_SUFFIXES:
        return f"{stem}.png"
    return f"{name}.png"


def _read(data: bytes, force: bool):
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force, specific_tags=PIXEL_KEYWORDS)
    except EOFError:
        raise DicomProblem("truncated_image", "the DICOM file ends early (interrupted copy?); copy it again") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: whatever pydicom trips over, the file is unreadable
        raise DicomProblem("unreadable_image", f"not a readable DICOM file ({type(exc).__name__}: "
                                               f"{_first_line(exc)}); {_CONVERT}") from None
    return ds


def _int(ds, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        state = "missing" if value is None else "not a number"
        raise DicomProblem("unreadable_image", f"the DICOM element {keyword} is {state}; {_CONVERT}") from None


def _info(ds) -> DicomInfo:
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "PixelData" not in ds:
        what = " (float pixel data, which dermkit does not read)" if (
            "FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else ""
        raise DicomProblem("unreadable_image", f"the DICOM file holds no pixel data{what}: not an image (a report "
                                               "or a presentation state?) or cut short before its pixels; "
                                               f"{_CONVERT}")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise DicomProblem("unreadable_image", f"a multi-frame DICOM ({frames} frames); dermkit reads one image per "
                                               "file: export the frame you want as a single-frame DICOM or PNG")
    width, height = _int(ds, "Columns"), _int(ds, "Rows")
    if width < 1 or height < 1:
        raise DicomProblem("unreadable_image", f"the DICOM image is {width}x{height} pixels (Columns x Rows); "
                                               f"{_CONVERT}")
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    allocated = _int(ds, "BitsAllocated")
    stored = _int(ds, "BitsStored", allocated)
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:  # a DICOM without file meta (no preamble): the encoding it was read with
        from pydicom.dataset import FileMetaDataset

        implicit, little = ds.original_encoding
        uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        if meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid
    uid = UID(str(uid))
    name = uid.name if uid.is_transfer_syntax else "an unknown transfer syntax"
    return DicomInfo(width, height, frames, samples, photometric, allocated, stored,
                     _int(ds, "PixelRepresentation", 0) == 1, str(uid), name)


def dicom_info(data: bytes, force: bool = False) -> DicomInfo:
    """The pixel module of the DICOM file ``data`` (nothing decoded); :class:`DicomProblem` when it
    is unreadable, has no pixel data or has more than one frame. ``force`` reads a file without
    the 128-byte preamble and ``DICM`` marker."""
    return _info(_read(data, force))


def decode_dicom(data: bytes, max_pixels: int | None = None, force: bool = False) -> Image.Image:
    """The single-frame DICOM file ``data`` as an 8-bit RGB :class:`PIL.Image.Image` (its
    ``format`` is ``"DICOM"``); :class:`DicomProblem` says why not (see the module doc).

    ``max_pixels`` (e.g. ``PIL.Image.MAX_IMAGE_PIXELS``) is checked against Rows x Columns
    before the pixel data is decoded.
    """
    from pydicom.pixels import get_decoder, pixel_array

    ds = _read(data, force)
    info = _info(ds)
    if max_pixels and info.width * info.height > max_pixels:
        raise DicomProblem("decompression_bomb", f"the DICOM image is {info.width}x{info.height} = "
                                                 f"{info.width * info.height} pixels, more than the limit of "
                                                 f"{max_pixels}; downscale it (e.g. longer side <= 4096 px)")
    try:
        decoder = get_decoder(info.transfer_syntax)
    except NotImplementedError:
        raise DicomProblem("unreadable_image", f"DICOM transfer syntax {info.transfer_syntax_name} "
                                               f"({info.transfer_syntax}) is not supported (pydicom has no decoder for "
                                               f"it); {_CONVERT}") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "none"
        raise DicomProblem("unreadable_image", f"DICOM transfer syntax {info.transfer_syntax_name} needs a decoder "
                                               f"plugin that is not installed (missing: {missing}); install dermkit's "
                                               f"dependencies again (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg) "
                                               f"or {_CONVERT}")
    if not ((info.samples == 3 and info.photometric in COLOUR) or (info.samples == 1 and info.photometric in GREY)):
        raise DicomProblem("unreadable_image", f"DICOM photometric interpretation {info.photometric or '(none)'!r} "
                                               f"with {info.samples} sample(s) per pixel is not read by dermkit (it "
                                               f"reads {', '.join(COLOUR)} with 3 samples, {', '.join(GREY)} with 1); "
                                               "export the image as RGB")
    plugin = "pillow" if info.transfer_syntax in _PILLOW_JPEG and "pillow" in decoder.available_plugins else ""
    try:
        array = pixel_array(ds, decoding_plugin=plugin, as_rgb=True)
    except MemoryError:
        raise DicomProblem("decompression_bomb", "the DICOM pixel data does not fit in memory; downscale it") from None
    except Exception as exc:  # noqa: BLE001 - corrupt or short pixel data: any decoder error
        text = _first_line(exc)
        if "less than expected" in text.lower() or isinstance(exc, EOFError):
            raise DicomProblem("truncated_image", f"the DICOM pixel data is shorter than its header says "
                                                  f"({type(exc).__name__}: {text})") from None
        raise DicomProblem("unreadable_image", f"the DICOM pixel data ({info.transfer_syntax_name}) cannot be "
                                               f"decoded ({type(exc).__name__}: {text}); {_CONVERT}") from None
    if array.shape[:2] != (info.height, info.width):
        raise DicomProblem("unreadable_image", f"the DICOM pixel data decodes to {array.shape} values, not the "
                                               f"{info.height}x{info.width} image its header claims; {_CONVERT}")
    bits = info.bits_stored if 1 <= info.bits_stored <= info.bits_allocated else info.bits_allocated
    pixels = scale_to_uint8(array, bits if array.dtype.kind in "iu" else 8, info.signed)
    if info.photometric == "MONOCHROME1":  # 0 is white
        pixels = 255 - pixels
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image.format = "DICOM"
    return image


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:200] + "..."
