"""Image-quality gate: flag blank, badly exposed, very blurry or tiny images before a model answers.

``check_quality(image)`` measures the luminance of the picture (ITU-R 601 luma,
0-255, what Pillow's ``convert("L")`` gives) and flags every measure that breaks its limit in
:data:`QUALITY_LIMITS`, with the measured value, the limit and a sentence saying what is wrong::

    >>> report = check_quality("photo.jpg")
    >>> report.ok, report.summary
    (False, 'very blurry: sharpness 2.14 is below the limit 6.0')

The measures are taken on a *working image*: the luminance shrunk (bilinear, antialiased) to
``WORK_SIDE`` = 256 px on its longer side, never enlarged. 256 px is about what a classifier sees
(224-384 px inputs), so "blurry" means blurry at the size the model looks at, not at the camera's
full resolution, and measuring is cheap: ~2 ms for a 512 px picture, ~12 ms for a decoded
12 MP photo (shrunk by box averages first); a JPEG named by its path is decoded at a reduced
scale (~25 ms for 12 MP, where a full decode takes ~115 ms). The measures, and why each limit:

- ``width`` / ``height`` (pixels) -> **too_small** when the shorter side is below ``min_side``
  = 100 px. A classifier enlarges a 100 px image 2.2x to its 224 px input; below that a lesion's
  structures (network, dots, globules) are a pixel or two wide. The smallest real images here,
  HAM10000's, are 200x150.
- ``highlight`` -> **underexposed** when below ``min_highlight`` = 70: the luminance (0-255)
  that the brightest 5% of the working image reach. Under-exposure darkens the whole picture,
  its brightest part included, whereas a *mean* luminance is also low for a well-exposed photo in
  a black frame (Derm7pt clinical pictures letterboxed to 75% black have a mean of 24) or of a
  large dark lesion, and would be low for dark skin. Real images: highlight >= 96, 0.1% below 115.
  A copy cut by 4.4 stops (values x 0.25) is always below 70, one cut by 3.3 stops (x 0.35) half
  the time; a gamma-darkened copy keeps its brightest pixels (255 stays 255) and is flagged only
  when they too become dark (gamma 3: 11%, gamma 4: 28% of real images).
- ``clipped_white`` -> **overexposed** when above ``max_clipped_white`` = 0.6: the share of
  working-image pixels at luminance >= ``CLIP_LEVEL`` = 250, burnt out, their detail lost. Real
  images: 99.9% at most 0.33; a dermoscopic picture on a white canvas reaches 0.54, hence 0.6.
  A copy brightened x 2.5 is flagged in 86% of real images (those with much dark skin or lesion
  keep less than 60% clipped).
- ``contrast`` -> **blank** when below ``min_contrast`` = 2.0: the standard deviation of the
  luminance on a ``THUMB_SIDE`` = 32 px thumbnail (box average). A flat picture (lens cap, empty
  scan, a solid colour) has none, and averaging ~8x8 pixels first keeps noise on a flat picture
  (std 10 per pixel) below 1. Real images: contrast >= 4.49, 0.1% below 5.7.
- ``sharpness`` -> **blurry** when below ``min_sharpness`` = 6.0: the variance of the
  4-neighbour Laplacian of the working image (Pech-Pacheco et al., 2000), the energy of its
  finest detail, after stretching the luminance so that the highlight is white (x 255 /
  highlight, squared for a variance): a dim picture is not taken for a blurred one. Real images:
  sharpness >= 7.4, 0.1% below 11.6, the lowest being faint lesions on smooth skin in
  PAD-UFES-20's phone pictures. A Gaussian blur of radius 8 px at 600 px (1.3% of the image side)
  falls below 6 on 95% of real images, radius 6 px on 67%. The Laplacian's variance depends on
  content as well as focus (a faint lesion on smooth skin scores low), which is why the limit sits
  below every real image; noise raises it, so a blurred picture with strong pixel noise can pass.

``mean_luminance`` is reported but not judged (it says how dark or bright a picture is overall).

Only the first problem to fix is reported where one problem makes another measure meaningless:
an under- or over-exposed picture is not also judged blank (an all-black frame is under-exposed,
an all-white one over-exposed), and sharpness is judged only on a picture that is not too small,
blank or badly exposed. Every measure is still in ``report.measures``.

The limits were measured on all 13,372 images of the shared datasets (HAM10000 8,512, ISIC 2017
2,337, Derm7pt 859 dermoscopic + 859 clinical, PAD-UFES-20 635, PH2 170): one is flagged, a
clinical Derm7pt picture 87% burnt out around a small lesion. Dark skin is scarce there
(PAD-UFES-20: three Fitzpatrick V pictures, highlight >= 144; no type VI), one more reason the
exposure limits keep a wide margin.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
from PIL import Image

from dermkit.data.bitdepth import WIDE_GREY_MODES, wide_grey_to_l
from dermkit.data.images import as_path, decode_image_bytes, read_image_bytes
from dermkit.io import json_ready

__all__ = [
    "QualityLimits",
    "QUALITY_LIMITS",
    "QualityFlag",
    "QualityReport",
    "CHECKS",
    "WORK_SIDE",
    "measure_quality",
    "judge_quality",
    "check_quality",
    "check_quality_many",
]

#: Longer side (px) of the working image the measures are taken on (never enlarged).
WORK_SIDE = 256
#: Longer side (px) of the thumbnail whose luminance spread is the ``contrast``.
THUMB_SIDE = 32
#: Luminance from which a pixel counts as clipped white.
CLIP_LEVEL = 250
#: Percentile of the luminance reported as ``highlight``.
HIGHLIGHT_PERCENTILE = 95
#: The checks, in the order their flags are listed.
CHECKS = ("too_small", "underexposed", "overexposed", "blank", "blurry")

_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class QualityLimits:
    """The limits of :func:`judge_quality`; the module docstring says how each was set."""

    #: Shorter side in pixels below which an image is too small.
    min_side: int = 100
    #: ``highlight`` (95th-percentile luminance, 0-255) below which an image is under-exposed.
    min_highlight: float = 70.0
    #: ``clipped_white`` (share of pixels >= 250) above which an image is over-exposed.
    max_clipped_white: float = 0.6
    #: ``contrast`` (luminance std on a 32 px thumbnail) below which an image is blank.
    min_contrast: float = 2.0
    #: ``sharpness`` (Laplacian variance at 256 px, highlight stretched to white) below which an image is very blurry.
    min_sharpness: float = 6.0


#: The limits every caller uses unless it passes its own.
QUALITY_LIMITS = QualityLimits()


@dataclass(frozen=True)
class QualityFlag:
    """One broken limit: ``check`` (one of :data:`CHECKS`), the measured ``value``, the ``limit``
    it broke and a readable ``message`` naming both."""

    check: str
    value: float
    limit: float
    message: str

    def to_dict(self) -> dict:
        return json_ready(asdict(self))


@dataclass
class QualityReport:
    """Every measure of one image (rounded) and the flags its limits raised."""

    measures: dict[str, float]
    flags: list[QualityFlag] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.flags

    @property
    def checks(self) -> list[str]:
        """The names of the flagged checks, in :data:`CHECKS` order."""
        return [f.check for f in self.flags]

    @property
    def summary(self) -> str:
        """"ok", or the flags' messages joined by "; "."""
        return "ok" if self.ok else "; ".join(f.message for f in self.flags)

    def to_dict(self) -> dict:
        """JSON-ready: ``ok``, ``summary``, ``measures`` (NaN as null) and ``flags``."""
        return {"ok": self.ok, "summary": self.summary, "measures": json_ready(self.measures),
                "flags": [f.to_dict() for f in self.flags]}


# ------------------------------------------------------------------------------------ measuring
def _luminance(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit luminance ("L"), converted as :func:`~dermkit.data.images.open_image`
    converts the model's input: alpha dropped, 16-bit grey scaled by its bit depth (65535 is
    white), float grey by its maximum."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in WIDE_GREY_MODES:
        return wide_grey_to_l(image)
    if mode in _WIDE_MODES:
        wide = image if mode in ("I", "F") else image.convert("I")
        hi = wide.getextrema()[1] or 1
        return wide.point(lambda v: v * (255.0 / hi)).convert("L")
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
    try:
        return image.convert("L")
    except ValueError:  # modes without a direct conversion (LAB, HSV)
        return image.convert("RGB").convert("L")


def _pre_reduce(image: Image.Image) -> Image.Image:
    """A large picture box-averaged by an integer factor to at least twice ``WORK_SIDE`` before
    it is made grey: converting 12 MP to grey first would double the cost. Only modes whose
    channels are averaged as they are (Pillow premultiplies alpha, and wide grey is scaled to 8
    bits afterwards)."""
    factor = max(image.size) // (2 * WORK_SIDE)
    if factor >= 2 and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
        return image.reduce(factor)
    return image


def _shrink(image: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    w, h = image.size
    if max(w, h) <= side:
        return image
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, resample, reducing_gap=2.0)


def _measures_of(grey: Image.Image, width: int, height: int) -> dict[str, float]:
    out: dict[str, float] = {"width": width, "height": height}
    nan = float("nan")
    if min(grey.size) < 1:
        out.update(mean_luminance=nan, highlight=nan, clipped_white=nan, contrast=nan, sharpness=nan)
        return out
    work = _shrink(grey, WORK_SIDE, Image.Resampling.BILINEAR)
    pixels = np.asarray(work, dtype=np.uint8)
    hist = np.bincount(pixels.ravel(), minlength=256)
    n = pixels.size
    thumb = np.asarray(_shrink(work, THUMB_SIDE, Image.Resampling.BOX), dtype=np.float64)
    out["mean_luminance"] = round(float(hist @ np.arange(256)) / n, 1)
    out["highlight"] = float(np.searchsorted(np.cumsum(hist), HIGHLIGHT_PERCENTILE / 100 * n))
    out["clipped_white"] = round(float(hist[CLIP_LEVEL:].sum()) / n, 4)
    out["contrast"] = round(float(thumb.std()), 2)
    if min(pixels.shape) < 3:
        out["sharpness"] = nan
    else:
        f = pixels.astype(np.float32)
        lap = f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:] - 4 * f[1:-1, 1:-1]
        stretch = 255.0 / max(out["highlight"], 1.0)  # as if the highlight were white
        out["sharpness"] = round(float(lap.var(dtype=np.float64)) * stretch * stretch, 2)
    return out


def _open_grey(path: str | os.PathLike) -> tuple[Image.Image, int, int]:
    """The luminance of the image file ``path`` and its stored width and height.

    A JPEG is decoded at a reduced scale (libjpeg's DCT scaling, at least twice ``WORK_SIDE``)
    straight to its luma channel: a 12 MP photo in ~25 ms instead of ~115 ms. Any file Pillow
    does not decode that way (missing, corrupt, truncated, too large) goes through
    :func:`~dermkit.data.images.decode_image_bytes`, which raises the usual ``ImageProblem``.
    """
    path = as_path(path)
    data = read_image_bytes(path)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:
            raise ValueError("too large")
        if image.format == "JPEG" and image.mode in ("L", "RGB", "YCbCr"):
            image.draft("L", (2 * WORK_SIDE, 2 * WORK_SIDE))
        image.load()
    except Exception:  # let open_image's decoder name the problem (or decode what draft could not)
        image = decode_image_bytes(data, path, convert=False)
        width, height = image.size
    return _luminance(_pre_reduce(image)), width, height


def measure_quality(image: Image.Image | str | os.PathLike) -> dict[str, float]:
    """The measures of ``image`` (a PIL image in any mode, or an image file's path): ``width``,
    ``height``, ``mean_luminance``, ``highlight``, ``clipped_white``, ``contrast`` and
    ``sharpness`` (NaN when the image has no pixels or is under 3 px wide), rounded.

    A path that is missing or not a readable image raises :class:`~dermkit.data.ImageProblem`.
    EXIF orientation is not applied: no measure depends on it.
    """
    if isinstance(image, Image.Image):
        return _measures_of(_luminance(_pre_reduce(image)), *image.size)
    return _measures_of(*_open_grey(image))


# ------------------------------------------------------------------------------------- judging
def judge_quality(measures: dict[str, float], limits: QualityLimits = QUALITY_LIMITS) -> QualityReport:
    """The :class:`QualityReport` of ``measures`` (from :func:`measure_quality`) under ``limits``.

    Blank is judged only on a picture that is not under- or over-exposed, sharpness only on one
    that is not too small, blank or badly exposed (see the module docstring). NaN measures are
    not judged.
    """
    flags: list[QualityFlag] = []
    m = measures
    side = min(m["width"], m["height"])
    if side < limits.min_side:
        flags.append(QualityFlag("too_small", side, limits.min_side,
                                 f"too small: the shorter side is {side:g} px, below the limit {limits.min_side:g} px"))
    exposure_ok = True
    if m["highlight"] < limits.min_highlight:
        exposure_ok = False
        flags.append(QualityFlag("underexposed", m["highlight"], limits.min_highlight,
                                 f"under-exposed: the brightest 5% of the picture reach luminance {m['highlight']:g} "
                                 f"of 255, below the limit {limits.min_highlight:g}"))
    if m["clipped_white"] > limits.max_clipped_white:
        exposure_ok = False
        flags.append(QualityFlag("overexposed", m["clipped_white"], limits.max_clipped_white,
                                 f"over-exposed: {m['clipped_white']:.1%} of the picture is clipped white (luminance "
                                 f">= {CLIP_LEVEL}), above the limit {limits.max_clipped_white:.0%}"))
    blank = exposure_ok and m["contrast"] < limits.min_contrast
    if blank:
        flags.append(QualityFlag("blank", m["contrast"], limits.min_contrast,
                                 f"blank: contrast {m['contrast']:g} is below the limit {limits.min_contrast:.1f} "
                                 "(a flat picture, no lesion or skin to see)"))
    if exposure_ok and not blank and side >= limits.min_side and m["sharpness"] < limits.min_sharpness:
        flags.append(QualityFlag("blurry", m["sharpness"], limits.min_sharpness,
                                 f"very blurry: sharpness {m['sharpness']:g} is below the limit "
                                 f"{limits.min_sharpness:.1f}"))
    return QualityReport(dict(measures), flags)


def check_quality(image: Image.Image | str | os.PathLike, limits: QualityLimits = QUALITY_LIMITS) -> QualityReport:
    """Measure ``image`` (a PIL image in any mode, or a path) and judge it under ``limits``.

    ``report.ok`` is true when no limit is broken; ``report.summary`` says what is wrong. A path
    that is missing or unreadable raises :class:`~dermkit.data.ImageProblem` (a ``DataError``).
    """
    return judge_quality(measure_quality(image), limits)


def check_quality_many(images: Iterable[Image.Image | str | os.PathLike], limits: QualityLimits = QUALITY_LIMITS,
                       threads: int = 4, progress: bool = False) -> list[QualityReport]:
    """:func:`check_quality` of every image, in order, in ``threads`` threads (Pillow and numpy
    release the GIL). The first missing or unreadable file raises its ``ImageProblem``."""
    from tqdm.auto import tqdm

    images = list(images)
    with cf.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        it = pool.map(lambda im: check_quality(im, limits), images)
        return list(tqdm(it, total=len(images), desc="checking image quality", disable=not progress, leave=False))
