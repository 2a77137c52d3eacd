"""Robustness stress test: named, seeded image transforms at severities 1-5, applied on the fly.

``apply_transform(image, name, severity, seed, key)`` returns a transformed copy of a PIL RGB
image, the same size as the input (so a model's own preprocessing is unaffected). Severity 0 is the
identity (the same bytes); 1 is barely visible; 5 is strong but, for the acquisition shifts and the
artefacts, the lesion stays recognisable (the ImageNet-C corruptions keep their own scale).

**Seeding.** The random numbers of a transform (noise, a motion direction, where a hair falls) come
from ``numpy.random.default_rng`` seeded with a SHA-256 hash of ``(seed, name, severity, key)``,
``key`` naming the image (its path relative to the dataset, as in metadata.csv). The same image
therefore gets the same transformed copy in every run and for every model compared, whatever the
order the images are read in, and two images never share a noise pattern. Nothing is written.

**Scale.** ImageNet-C defines its corruptions on 224 x 224 images; a classifier sees 224-384 px
whereas dermoscopic photos are often larger (HAM10000's originals: 600 x 450). A 3 px blur on a
600 x 450 photo would be ~1 px once the model shrinks it to 224. So every length below that is in pixels (blur
radius, motion length, pixelation cell, grain of the noise, fog's fractal, the downscale target) is
multiplied by ``s = max(1, shorter side / REFERENCE_SIDE)``, ``REFERENCE_SIDE`` = 224: the model
sees the corruption ImageNet-C would put on its 224 px input. Noise is drawn on a grid of
``s``-pixel cells (nearest-neighbour upsampled), with its ImageNet-C strength per cell.

Transforms and their levels at severities 1, 2, 3, 4, 5 (:data:`TRANSFORMS` holds the same tables):

*acquisition* -- how another camera, dermoscope, exposure or export would have taken the picture;
magnitudes chosen for dermoscopy (1 = barely visible, 5 = strong, lesion intact):

- ``brightness_down``: RGB values x 0.9, 0.8, 0.7, 0.6, 0.5 (under-exposure; the image-quality gate
  of ``data/quality.py`` flags half the photos only at x 0.35).
- ``brightness_up``: RGB values x 1.1, 1.2, 1.35, 1.5, 1.7, clipped at 255 (over-exposure).
- ``contrast_down`` / ``contrast_up``: blend with the mean grey (Pillow's ``ImageEnhance.Contrast``),
  factor 0.85, 0.7, 0.55, 0.45, 0.35 / 1.15, 1.3, 1.5, 1.75, 2.0.
- ``saturation_down`` / ``saturation_up``: blend with the greyscale image (``ImageEnhance.Color``),
  factor 0.8, 0.65, 0.5, 0.35, 0.2 / 1.2, 1.4, 1.7, 2.0, 2.5.
- ``hue_shift``: hue rotated by 4, 8, 12, 18, 25 degrees (a rotation of the chroma plane in YIQ,
  luma kept), clockwise or counter-clockwise as the image's random numbers say (a colour cast).
- ``rotation``: 10, 20, 45, 90, 180 degrees counter-clockwise about the centre, bilinear; the
  corners the rotated picture leaves uncovered are filled by mirroring the image at its edges.
- ``zoom_in``: the central 1/f of the picture enlarged to the full size, f = 1.1, 1.2, 1.35, 1.5, 1.75.
- ``zoom_out``: the picture shrunk by f = 0.9, 0.8, 0.7, 0.6, 0.5 (antialiased) in the middle of a
  frame filled by mirroring its edges (more skin around the lesion).
- ``jpeg_quality``: saved as JPEG (Pillow, 4:2:0) at quality 80, 60, 40, 25, 15.
- ``downscale``: shrunk (antialiased) so that its shorter side is 85%, 65%, 50%, 35%, 25% of 224 px
  (190, 146, 112, 78, 56 px; of its own shorter side when that is under 224 px) and enlarged back
  (bicubic): a low-resolution camera, the share of the detail a 224 px model input shows that is kept.

*corruption* -- the ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) with their reference
parameter tables, read from the ``imagecorruptions`` 1.1.2 source (``corruptions.py``):

- ``gaussian_noise``: additive N(0, sigma) on [0, 1] values, sigma = 0.08, 0.12, 0.18, 0.26, 0.38.
- ``shot_noise``: Poisson photon noise, Poisson(x c) / c with c = 60, 25, 12, 5, 3 (drawn per noise
  cell from the cell's mean, the difference added to its pixels).
- ``impulse_noise``: salt-and-pepper on a fraction 0.03, 0.06, 0.09, 0.17, 0.27 of the values (half
  salt, half pepper, each channel on its own as scikit-image's ``random_noise``).
- ``defocus_blur``: convolution with an antialiased disc, (radius, alias sigma) = (3, 0.1), (4, 0.5),
  (6, 0.5), (8, 0.5), (10, 0.5) px (both times s), mirrored borders.
- ``motion_blur``: a one-sided line kernel of ``2 r + 1`` taps with Gaussian weights (sigma along
  the line) in a direction uniform in [-45, 45] degrees, (r, sigma) = (10, 3), (15, 5), (15, 8),
  (15, 12), (20, 15) px, edge pixels repeated at the border (as the reference's shifts).
- ``fog``: a diamond-square plasma fractal (wibble decay d) added with weight c, then rescaled by
  max / (max + c): (c, d) = (1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4). (Condensation on the
  dermoscope's glass looks like it.)
- ``pixelate``: box-shrunk by 0.6, 0.5, 0.4, 0.3, 0.25 and enlarged back with nearest neighbours.
- ``jpeg_compression``: JPEG quality 25, 18, 15, 10, 7.

ImageNet-C's brightness, contrast and saturate are left to the acquisition shifts above, which go
both ways and are graded for dermoscopy (ImageNet-C's contrast keeps 40% of the contrast at
severity 1, 5% at 5); its frost, snow, spatter, glass, zoom and elastic corruptions have no
dermoscopic counterpart or cost up to seconds per photo.

*artefact* -- what dermoscopic photos carry (``data/artefacts.py``, :data:`ARTEFACT_LEVELS`):

- ``hair``: 2, 5, 10, 18, 30 dark curved strands (1-3 px wide at 450 px, 25-70% of the shorter side long).
- ``ink``: purple marker strokes near a border: (strokes, width as a share of the shorter side) =
  (1, 1.2%), (1, 1.8%), (1, 2.5%), (2, 2.5%), (3, 3%).
- ``ruler``: a light ruler bar with ticks along the top or bottom edge, 0.4, 0.7, 1, 1, 1.3 times
  6-9% of the height; severities 4 and 5 add a second one along the left or right edge.
- ``vignette``: the dark surround of a circular dermoscope field, radius 0.97, 0.9, 0.83, 0.76,
  0.68 of the half diagonal (1 would touch the corners); the centre is untouched.
- ``bubbles``: 2, 4, 8, 14, 22 immersion-gel bubbles (bright rim, specular spot), radius 1.2-5% of
  the shorter side.

**Why not the** ``imagecorruptions`` **package.** Its 1.1.2 (2020) does not import here: its
``from pkg_resources import resource_filename`` fails (setuptools 84, in dermkit's venv, no longer
ships ``pkg_resources``); ``fog`` uses ``np.float_`` (gone in NumPy 2); ``gaussian_blur`` and
``glass_blur`` pass ``multichannel=`` to scikit-image, which dropped it after deprecating it in 0.19;
every corruption draws from NumPy's *global* random state, so seeding per image means
``np.random.seed`` around each call (hidden shared state, not thread-safe). It also requires
``opencv-python`` beside the installed ``opencv-python-headless`` (two OpenCV wheels writing one
``cv2`` package) and scikit-image. The maintained fork ``imagecorruptions-imaug`` 1.1.5 fixes the
imports but keeps the global random state and the ``opencv-python`` requirement, and adds numba.
The corruptions here are a few lines each on NumPy, SciPy and Pillow, with the reference
constants, a ``numpy.random.Generator`` per image and the resolution scaling above.

**Plans** (:data:`STRESS_PLANS`): ``quick`` = the 12 transforms of :data:`QUICK_TRANSFORMS` (6
acquisition shifts, 3 corruptions, 3 artefacts) at severities 2 and 4, 24 conditions; ``full`` =
all 25 transforms at severities 1-5, 125 conditions.
:func:`parse_stress` reads ``quick``, ``full``, a family name, or ``name`` / ``name:severity`` lists.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from dermkit.data.artefacts import ARTEFACT_LEVELS, draw_artefact
from dermkit.errors import ConfigError

__all__ = [
    "FAMILIES",
    "QUICK_TRANSFORMS",
    "REFERENCE_SIDE",
    "SEVERITIES",
    "STRESS_PLANS",
    "TRANSFORMS",
    "StressTransform",
    "apply_transform",
    "describe_transforms",
    "parse_stress",
    "transform_families",
    "transform_rng",
]

SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = ("acquisition", "corruption", "artefact")
#: Side of the images ImageNet-C's pixel constants are defined for (and of most models' input).
REFERENCE_SIDE = 224


@dataclass(frozen=True)
class StressTransform:
    """One named transform: ``transform(image, severity, rng)`` applies ``fn`` with ``levels[severity - 1]``."""

    name: str
    family: str
    fn: Callable[[Image.Image, object, np.random.Generator], Image.Image]
    parameter: str
    levels: tuple
    what: str

    def __call__(self, image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
        _check_severity(self.name, severity, allow_zero=True)
        image = image if image.mode == "RGB" else image.convert("RGB")
        if severity == 0:
            return image.copy()
        out = self.fn(image, self.levels[int(severity) - 1], rng)
        if out.size != image.size or out.mode != "RGB":
            raise AssertionError(f"stress transform {self.name} returned {out.mode} {out.size} for RGB {image.size}")
        return out


#: name -> :class:`StressTransform`, filled by :func:`register` in family order.
TRANSFORMS: dict[str, StressTransform] = {}


def register(name: str, family: str, parameter: str, levels: Sequence, what: str):
    """Decorator adding ``fn(image, level, rng)`` to :data:`TRANSFORMS` (five levels, severities 1-5)."""
    if family not in FAMILIES or len(levels) != len(SEVERITIES) or name in TRANSFORMS:
        raise ValueError(f"bad stress transform registration {name!r} ({family}, {len(levels)} levels)")

    def add(fn):
        TRANSFORMS[name] = StressTransform(name, family, fn, parameter, tuple(levels), what)
        return fn

    return add


# ----------------------------------------------------------------------------------- helpers


def _scale(image: Image.Image) -> float:
    return max(1.0, min(image.size) / REFERENCE_SIDE)


def _floats(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


def _image(values: np.ndarray) -> Image.Image:
    """RGB image of ``values`` in [0, 1] (rounded, clipped)."""
    return Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), "RGB")


def _grid(image: Image.Image) -> tuple[int, int]:
    """(rows, columns) of the noise cells: one cell per ``s`` x ``s`` pixels."""
    s = _scale(image)
    w, h = image.size
    return max(1, math.ceil(h / s)), max(1, math.ceil(w / s))


def _upsample(cells: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour enlargement of a (rows, columns, ...) grid to (h, w, ...)."""
    rows = (np.arange(h) * cells.shape[0]) // h
    cols = (np.arange(w) * cells.shape[1]) // w
    return cells[rows][:, cols]


def _mirror_pad(values: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    return np.pad(values, ((top, bottom), (left, right), (0, 0)), mode="symmetric")


def _convolve(values: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Correlate every channel of (h, w, 3) ``values`` with a 2-D kernel of odd size, borders padded by ``mode``."""
    from scipy.signal import fftconvolve

    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(values, ((ry, ry), (rx, rx), (0, 0)), mode=mode)
    # fftconvolve convolves: flip the kernel for a correlation (what the reference's filter2D does).
    return fftconvolve(padded, kernel[::-1, ::-1, None], mode="valid", axes=(0, 1))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


# ------------------------------------------------------------------------------- acquisition


@register("brightness_up", "acquisition", "factor on RGB values", (1.1, 1.2, 1.35, 1.5, 1.7),
          "brighter exposure: RGB values multiplied by the factor, clipped at 255")
@register("brightness_down", "acquisition", "factor on RGB values", (0.9, 0.8, 0.7, 0.6, 0.5),
          "darker exposure: RGB values multiplied by the factor")
def _brightness(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return _image(_floats(image) * factor)


@register("contrast_up", "acquisition", "contrast factor", (1.15, 1.3, 1.5, 1.75, 2.0),
          "higher contrast: extrapolated away from the mean grey (Pillow ImageEnhance.Contrast)")
@register("contrast_down", "acquisition", "contrast factor", (0.85, 0.7, 0.55, 0.45, 0.35),
          "lower contrast: blended with the mean grey (Pillow ImageEnhance.Contrast)")
def _contrast(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(factor)


@register("saturation_up", "acquisition", "saturation factor", (1.2, 1.4, 1.7, 2.0, 2.5),
          "more saturated colours: extrapolated away from the greyscale image (Pillow ImageEnhance.Color)")
@register("saturation_down", "acquisition", "saturation factor", (0.8, 0.65, 0.5, 0.35, 0.2),
          "duller colours: blended with the greyscale image (Pillow ImageEnhance.Color)")
def _saturation(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Color(image).enhance(factor)


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@register("hue_shift", "acquisition", "hue rotation (degrees)", (4, 8, 12, 18, 25),
          "colour cast: hue rotated in YIQ (luma kept), direction drawn per image")
def _hue_shift(image: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    theta = np.deg2rad(degrees) * (1.0 if rng.random() < 0.5 else -1.0)
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(theta), -np.sin(theta)], [0.0, np.sin(theta), np.cos(theta)]])
    matrix = np.linalg.inv(_RGB_TO_YIQ) @ rotate @ _RGB_TO_YIQ
    return _image(_floats(image) @ matrix.T.astype(np.float32))


@register("rotation", "acquisition", "degrees counter-clockwise", (10, 20, 45, 90, 180),
          "rotated about the centre, uncovered corners filled by mirroring the image")
def _rotation(image: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    margin = math.ceil(math.hypot(w, h) / 2 - min(w, h) / 2) + 2
    padded = Image.fromarray(_mirror_pad(np.asarray(image), margin, margin, margin, margin), "RGB")
    turned = padded.rotate(degrees, resample=Image.Resampling.BILINEAR)
    return turned.crop((margin, margin, margin + w, margin + h))


@register("zoom_in", "acquisition", "magnification", (1.1, 1.2, 1.35, 1.5, 1.75),
          "the central 1/f of the picture enlarged to the full size (bicubic)")
def _zoom_in(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    bw, bh = w / factor, h / factor
    box = ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)
    return image.resize((w, h), Image.Resampling.BICUBIC, box=box)


@register("zoom_out", "acquisition", "scale of the picture", (0.9, 0.8, 0.7, 0.6, 0.5),
          "the picture shrunk (antialiased) in a frame filled by mirroring its edges")
def _zoom_out(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    sw, sh = max(1, round(w * factor)), max(1, round(h * factor))
    small = np.asarray(image.resize((sw, sh), Image.Resampling.BICUBIC))
    left, top = (w - sw) // 2, (h - sh) // 2
    return Image.fromarray(_mirror_pad(small, top, h - sh - top, left, w - sw - left), "RGB")


@register("jpeg_quality", "acquisition", "JPEG quality", (80, 60, 40, 25, 15),
          "saved as JPEG (Pillow, 4:2:0 chroma subsampling) at the quality")
def _jpeg_quality(image: Image.Image, quality: int, rng: np.random.Generator) -> Image.Image:
    return _jpeg(image, quality)


@register("downscale", "acquisition", "shorter side kept, share of 224 px", (0.85, 0.65, 0.5, 0.35, 0.25),
          "shrunk (antialiased) and enlarged back (bicubic): a lower-resolution camera")
def _downscale(image: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    factor = share / _scale(image)  # shorter side: share x 224 px, or share x itself when under 224 px
    small = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


# -------------------------------------------------------------------------------- corruption


@register("gaussian_noise", "corruption", "sigma on [0, 1] values", (0.08, 0.12, 0.18, 0.26, 0.38),
          "ImageNet-C gaussian_noise: additive Gaussian noise per noise cell and channel")
def _gaussian_noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    noise = rng.normal(0.0, sigma, size=_grid(image) + (3,)).astype(np.float32)
    return _image(_floats(image) + _upsample(noise, h, w))


@register("shot_noise", "corruption", "photons per unit value c", (60, 25, 12, 5, 3),
          "ImageNet-C shot_noise: Poisson(x c) / c per noise cell and channel")
def _shot_noise(image: Image.Image, c: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    rows, cols = _grid(image)
    cell = _floats(image.resize((cols, rows), Image.Resampling.BOX)).astype(np.float64)
    noise = (rng.poisson(cell * c) / float(c) - cell).astype(np.float32)
    return _image(_floats(image) + _upsample(noise, h, w))


@register("impulse_noise", "corruption", "share of values hit", (0.03, 0.06, 0.09, 0.17, 0.27),
          "ImageNet-C impulse_noise: salt-and-pepper per noise cell and channel")
def _impulse_noise(image: Image.Image, amount: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    u = _upsample(rng.random(_grid(image) + (3,)), h, w)
    values = _floats(image).copy()
    values[u < amount / 2] = 1.0
    values[(u >= amount / 2) & (u < amount)] = 0.0
    return _image(values)


@register("defocus_blur", "corruption", "(disc radius px, alias sigma)",
          ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
          "ImageNet-C defocus_blur: convolution with an antialiased disc")
def _defocus_blur(image: Image.Image, level: tuple, rng: np.random.Generator) -> Image.Image:
    from scipy.ndimage import gaussian_filter

    radius, alias = level
    s = _scale(image)
    radius = radius * s
    # The reference's grid is at least 17 x 17 and its antialiasing kernel 3 x 3 (5 x 5 past radius 8).
    half = max(8, math.ceil(radius))
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    disc = (x**2 + y**2 <= radius**2).astype(np.float64)
    disc = gaussian_filter(disc / disc.sum(), sigma=alias * s, radius=max(1, round((1 if half <= 8 else 2) * s)))
    return _image(_convolve(_floats(image), disc / disc.sum(), "reflect"))


@register("motion_blur", "corruption", "(radius px, sigma px)", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
          "ImageNet-C motion_blur: one-sided Gaussian-weighted streak, direction in [-45, 45] degrees")
def _motion_blur(image: Image.Image, level: tuple, rng: np.random.Generator) -> Image.Image:
    radius, sigma = level
    s = _scale(image)
    width = 2 * round(radius * s) + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2 * (sigma * s) ** 2))
    angle = np.deg2rad(rng.uniform(-45, 45))
    # Tap i reads the pixel ceil(i sin - 1/2) rows and ceil(i cos - 1/2) columns away (the reference's shifts).
    kernel = np.zeros((2 * width + 1, 2 * width + 1))
    for i, weight in enumerate(weights / weights.sum()):
        dy, dx = math.ceil(i * np.sin(angle) - 0.5), math.ceil(i * np.cos(angle) - 0.5)
        kernel[width + dy, width + dx] += weight
    rows, cols = np.flatnonzero(kernel.any(axis=1)), np.flatnonzero(kernel.any(axis=0))
    # Crop to the taps, keeping the kernel centred (odd size, centre = no shift).
    ry = max(abs(rows[0] - width), abs(rows[-1] - width))
    rx = max(abs(cols[0] - width), abs(cols[-1] - width))
    kernel = kernel[width - ry:width + ry + 1, width - rx:width + rx + 1]
    return _image(_convolve(_floats(image), kernel, "edge"))


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1] of side ``size`` (a power of two), the ImageNet-C version."""
    heights = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = heights[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        heights[half:size:step, half:size:step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centres = heights[half:size:step, half:size:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        heights[0:size:step, half:size:step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        heights[half:size:step, 0:size:step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step //= 2
        wibble /= decay
    heights -= heights.min()
    return heights / heights.max()


@register("fog", "corruption", "(weight c, wibble decay)", ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
          "ImageNet-C fog: a plasma fractal added, then rescaled to the image's maximum")
def _fog(image: Image.Image, level: tuple, rng: np.random.Generator) -> Image.Image:
    c, decay = level
    w, h = image.size
    rows, cols = _grid(image)
    size = 1 << (max(rows, cols) - 1).bit_length()
    cells = _plasma_fractal(size, decay, rng)[:rows, :cols].astype(np.float32)
    fractal = np.asarray(Image.fromarray(cells, "F").resize((w, h), Image.Resampling.BILINEAR))
    values = _floats(image)
    top = float(values.max())
    values = values + c * fractal[..., None]
    return _image(values * top / (top + c))


@register("pixelate", "corruption", "shrink factor", (0.6, 0.5, 0.4, 0.3, 0.25),
          "ImageNet-C pixelate: box-shrunk and enlarged back with nearest neighbours")
def _pixelate(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    shrink = factor / _scale(image)
    small = image.resize((max(1, int(w * shrink)), max(1, int(h * shrink))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


@register("jpeg_compression", "corruption", "JPEG quality", (25, 18, 15, 10, 7),
          "ImageNet-C jpeg_compression: saved as JPEG at the quality")
def _jpeg_compression(image: Image.Image, quality: int, rng: np.random.Generator) -> Image.Image:
    return _jpeg(image, quality)


# ---------------------------------------------------------------------------------- artefact


def _artefact(kind: str) -> Callable:
    severity_of = {level: s for s, level in zip(SEVERITIES, ARTEFACT_LEVELS[kind])}
    if len(severity_of) != len(SEVERITIES):
        raise ValueError(f"the levels of artefact {kind!r} must differ from one severity to the next")

    def draw(image: Image.Image, level, rng: np.random.Generator) -> Image.Image:
        return draw_artefact(image, kind, rng, severity=severity_of[level])

    return draw


register("hair", "artefact", "strands", ARTEFACT_LEVELS["hair"],
         "dark thin curved hairs across the picture")(_artefact("hair"))
register("ink", "artefact", "(strokes, width / shorter side)", ARTEFACT_LEVELS["ink"],
         "purple skin-marker strokes near a border")(_artefact("ink"))
register("ruler", "artefact", "(rulers, bar height x 6-9% of the height)", ARTEFACT_LEVELS["ruler"],
         "a light ruler with ticks along an edge (two rulers from severity 4)")(_artefact("ruler"))
register("vignette", "artefact", "field radius / half diagonal", ARTEFACT_LEVELS["vignette"],
         "dark corners outside the dermoscope's circular field")(_artefact("vignette"))
register("bubbles", "artefact", "bubbles", ARTEFACT_LEVELS["bubbles"],
         "immersion-gel bubbles: bright rims and specular spots")(_artefact("bubbles"))


# ------------------------------------------------------------------------------ plans, seeds

#: The transforms of the ``quick`` plan (run at severities 2 and 4): 6 acquisition shifts, 3
#: corruptions, 3 artefacts, 24 conditions.
QUICK_TRANSFORMS = ("brightness_down", "contrast_down", "hue_shift", "rotation", "zoom_out", "jpeg_quality",
                    "gaussian_noise", "defocus_blur", "motion_blur", "hair", "ink", "vignette")
QUICK_SEVERITIES = (2, 4)
STRESS_PLANS: dict[str, tuple[tuple[str, int], ...]] = {
    "quick": tuple((name, s) for name in QUICK_TRANSFORMS for s in QUICK_SEVERITIES),
    "full": tuple((name, s) for name in TRANSFORMS for s in SEVERITIES),
}


def transform_families() -> dict[str, str]:
    """Transform name -> family (what :func:`dermkit.evaluate.stress.stress_table` takes)."""
    return {name: t.family for name, t in TRANSFORMS.items()}


def describe_transforms() -> list[dict]:
    """One JSON-able dict per transform: name, family, what, parameter and its levels at severities 1-5."""
    return [{"name": t.name, "family": t.family, "what": t.what, "parameter": t.parameter,
             "levels": [list(v) if isinstance(v, tuple) else v for v in t.levels]} for t in TRANSFORMS.values()]


def _valid_names() -> str:
    by_family = "; ".join(f"{family}: {', '.join(n for n, t in TRANSFORMS.items() if t.family == family)}"
                          for family in FAMILIES)
    return (f"valid: the plans {', '.join(STRESS_PLANS)}, the families {', '.join(FAMILIES)}, or transforms "
            f"NAME (severities 1-5) or NAME:SEVERITY with SEVERITY one of {', '.join(map(str, SEVERITIES))} "
            f"({by_family})")


def _unknown(name: str) -> ConfigError:
    choices = list(STRESS_PLANS) + list(FAMILIES) + list(TRANSFORMS)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown stress transform {name!r}{hint}; {_valid_names()}")


def _check_severity(name: str, severity, allow_zero: bool = False) -> int:
    lowest = 0 if allow_zero else 1
    valid = isinstance(severity, (int, np.integer)) and not isinstance(severity, bool)
    if not valid or not lowest <= severity <= SEVERITIES[-1]:
        zero = "" if allow_zero else " (0, the clean image, is always evaluated)"
        raise ConfigError(f"severity {severity!r} of stress transform {name!r} is not one of "
                          f"{', '.join(map(str, range(lowest, SEVERITIES[-1] + 1)))}{zero}; {_valid_names()}")
    return int(severity)


def _parse_item(item) -> list[tuple[str, int]]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        name, severity = item
        if name not in TRANSFORMS:
            raise _unknown(name)
        return [(name, _check_severity(name, severity))]
    if not isinstance(item, str):
        raise ConfigError(f"stress condition {item!r} is neither text nor a (name, severity) pair; {_valid_names()}")
    text = item.strip().lower()
    name, _, severity = text.partition(":")
    name = name.strip()
    if name in STRESS_PLANS or name in FAMILIES:
        if severity:
            raise ConfigError(f"{name!r} takes no severity (got {text!r}); {_valid_names()}")
        if name in STRESS_PLANS:
            return list(STRESS_PLANS[name])
        return [(n, s) for n, t in TRANSFORMS.items() if t.family == name for s in SEVERITIES]
    if name not in TRANSFORMS:
        raise _unknown(name)
    if not severity:
        return [(name, s) for s in SEVERITIES]
    severity = severity.strip()
    if not severity.isdigit():
        raise ConfigError(f"severity {severity!r} of stress transform {name!r} is not one of "
                          f"{', '.join(map(str, SEVERITIES))}; {_valid_names()}")
    return [(name, _check_severity(name, int(severity)))]


def parse_stress(spec: str | Iterable) -> list[tuple[str, int]]:
    """The conditions ``[(transform, severity)]`` of a stress spec, in order, without repeats.

    ``spec`` is ``"quick"``, ``"full"``, a family (``"artefact"``: its transforms at severities
    1-5), or a comma-separated list of ``name`` (severities 1-5) and ``name:severity`` items, e.g.
    ``"hair:3,motion_blur,quick"``; or a sequence of such strings and ``(name, severity)`` pairs.
    An unknown name or severity raises :class:`ConfigError` naming the valid ones.
    """
    if isinstance(spec, str):
        items = [part for part in spec.split(",") if part.strip()]
    elif spec is None:
        items = []
    else:
        items = list(spec)
    if not items:
        raise ConfigError(f"no stress transform given (got {spec!r}); {_valid_names()}")
    conditions: list[tuple[str, int]] = []
    for item in items:
        conditions.extend(_parse_item(item))
    return list(dict.fromkeys(conditions))


def transform_rng(seed: int, name: str, severity: int, key: str) -> np.random.Generator:
    """The generator of transform ``name`` at ``severity`` for the image ``key`` under ``seed``.

    Seeded by SHA-256 of the four values (not Python's ``hash``, which changes between processes),
    so it depends on nothing else: not on the model, the order of the images or the run.
    """
    digest = hashlib.sha256("\x1f".join(map(str, (int(seed), name, int(severity), key))).encode("utf-8")).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32).tolist())


def apply_transform(image: Image.Image, name: str, severity: int, seed: int = 0, key: str = "") -> Image.Image:
    """``image`` (converted to RGB) under transform ``name`` at ``severity`` (0 = unchanged, 1-5).

    ``key`` identifies the image (its path relative to the dataset root): with the same ``seed`` the
    same image always gets the same transformed copy (see :func:`transform_rng`). The result has
    the input's size.
    """
    if name not in TRANSFORMS:
        raise _unknown(name)
    severity = _check_severity(name, severity, allow_zero=True)
    rng = transform_rng(seed, name, severity, str(key))
    return TRANSFORMS[name](image, severity, rng)
