"""Images that are certainly not skin: synthetic outliers, encoder probe images, bundled photos.

An out-of-distribution detector (:mod:`dermkit.evaluate.ood`) needs examples of what it must
refuse, and a way to tell which image encoder it was fitted on. This module makes both without
any download:

* :func:`synthetic_outliers` - seeded, deterministic non-skin images of the kinds in
  :data:`OUTLIER_KINDS`: Gaussian and uniform pixel noise, flat colours (black and white first), a
  "scanned page" of text lines, colour gradients, checkerboards, stripes and a colour-chart grid.
  The detector's default score is chosen on validation images against these.
* :func:`probe_images` - four fixed images (hash noise, a colour gradient, a checkerboard, a
  colour chart) whose features fingerprint an encoder. They are made with integer arithmetic
  only (no random generator, no font, no resampling), so their bytes are the same on every
  machine and with every numpy / Pillow version.
* :func:`bundled_photos` - paths of real non-skin photos that ship inside installed packages
  (matplotlib's sample data, scikit-learn's sample images), when they are present. They are never
  copied.

The synthetic images come from ``numpy.random.default_rng`` (seeded per image) and Pillow's
default font: the same bytes on every call with the same numpy and Pillow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["OUTLIER_KINDS", "bundled_photos", "probe_images", "synthetic_outliers"]

#: The kinds of synthetic outliers, in the order :func:`synthetic_outliers` cycles through them.
OUTLIER_KINDS = (
    "gaussian_noise",
    "uniform_noise",
    "flat_colour",
    "text_page",
    "gradient",
    "checkerboard",
    "stripes",
    "colour_chart",
)

#: Flat colours, used in turn: black and white first, then grey and saturated primaries (no skin tones).
FLAT_COLOURS = (
    (0, 0, 0),
    (255, 255, 255),
    (128, 128, 128),
    (220, 30, 30),
    (30, 160, 60),
    (40, 70, 200),
    (240, 200, 40),
    (20, 180, 200),
)

#: The 24 patches of the X-Rite ColorChecker Classic (sRGB, row by row).
COLOUR_CHECKER = (
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
    (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
    (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
    (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
)

_WORDS = (
    "the patient was seen in clinic on for review of a lesion history examination plan report "
    "page section results table figure method data analysis summary conclusion reference with and "
    "to from this that which were been has not no yes left right upper lower follow up date signed"
).split()


def synthetic_outliers(n: int = 32, size: int = 224, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """``n`` RGB images of ``size`` x ``size`` pixels, as ``(kind, image)``, cycling :data:`OUTLIER_KINDS`.

    Image ``i`` is of kind ``OUTLIER_KINDS[i % 8]`` and is drawn from its own generator seeded
    with ``(seed, i)``, so the first images do not change when ``n`` grows. The same arguments
    give the same bytes on every call.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    out = []
    for i in range(n):
        kind = OUTLIER_KINDS[i % len(OUTLIER_KINDS)]
        rng = np.random.default_rng([seed, i])
        turn = i // len(OUTLIER_KINDS)  # how many images of this kind came before
        out.append((kind, _MAKERS[kind](rng, size, turn)))
    return out


def probe_images() -> list[Image.Image]:
    """Four fixed 224 x 224 RGB images whose features fingerprint an image encoder.

    Hash noise, a red/green/blue gradient, a red/blue checkerboard and a colour chart; made with
    integer arithmetic only, so the bytes are identical on every call and every machine.
    """
    size = 224
    y, x = np.mgrid[0:size, 0:size].astype(np.uint64)
    channels = [_hash_bytes(y * size + x, key) for key in (1, 2, 3)]
    noise = np.stack(channels, axis=-1)

    ramp = (np.arange(size, dtype=np.int64) * 255) // (size - 1)
    gradient = np.stack(
        [np.broadcast_to(ramp[None, :], (size, size)), np.broadcast_to(ramp[:, None], (size, size)),
         255 - (ramp[None, :] + ramp[:, None]) // 2],
        axis=-1,
    )

    cells = ((y // 28 + x // 28) % 2).astype(bool)
    checker = np.where(cells[..., None], np.array([230, 40, 40]), np.array([30, 60, 200]))

    chart = _chart_array(size, COLOUR_CHECKER)
    return [_image(a) for a in (noise, gradient, checker, chart)]


def bundled_photos() -> list[tuple[str, Path]]:
    """Real non-skin photos shipped inside installed packages, as ``(name, path)``; paths only.

    matplotlib's ``mpl-data/sample_data`` (grace_hopper.jpg, Minduka_Present_Blue_Pack.png,
    logo2.png) and scikit-learn's ``sklearn/datasets/images`` (china.jpg, flower.jpg), where the
    installed version has them. Packages are located without importing them.
    """
    wanted = (
        ("matplotlib", ("mpl-data", "sample_data"), ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")),
        ("sklearn", ("datasets", "images"), ("china.jpg", "flower.jpg")),
    )
    found = []
    for package, subfolder, names in wanted:
        root = _package_dir(package)
        if root is None:
            continue
        for name in names:
            path = root.joinpath(*subfolder, name)
            if path.is_file():
                found.append((Path(name).stem, path))
    return found


# ----------------------------------------------------------------------------------------------- makers
def _gaussian_noise(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    mean = rng.uniform(60, 196, size=3)
    std = rng.uniform(30, 80)
    return _image(rng.normal(mean, std, size=(size, size, 3)))


def _uniform_noise(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    return _image(rng.integers(0, 256, size=(size, size, 3)))


def _flat_colour(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    return Image.new("RGB", (size, size), FLAT_COLOURS[turn % len(FLAT_COLOURS)])


def _text_page(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    """Black text lines on white paper, like a scanned page of a report."""
    page = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    margin = max(2, size // 14)
    line_height = max(8, size // 18)
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    top = margin
    while top + line_height <= size - margin:
        n_words = int(rng.integers(3, 10))
        line = " ".join(_WORDS[int(k)] for k in rng.integers(0, len(_WORDS), size=n_words))
        draw.text((margin, top), line, fill=ink, font=font)
        top += line_height + int(rng.integers(0, 3))
    return page


def _gradient(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    start, end = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    direction = int(rng.integers(0, 4))
    t = (x, y, (x + y) / 2, np.hypot(x - 0.5, y - 0.5) / np.sqrt(0.5))[direction]
    return _image(start + t[..., None] * (end - start))


def _checkerboard(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    cell = int(rng.integers(4, max(5, size // 4)))
    a, b = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    y, x = np.mgrid[0:size, 0:size]
    cells = ((y // cell + x // cell) % 2).astype(bool)
    return _image(np.where(cells[..., None], a, b))


def _stripes(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    width = int(rng.integers(2, max(3, size // 8)))
    a, b = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    y, x = np.mgrid[0:size, 0:size]
    axis = (x, y, x + y, x - y + size)[int(rng.integers(0, 4))]
    return _image(np.where(((axis // width) % 2).astype(bool)[..., None], a, b))


def _colour_chart(rng: np.random.Generator, size: int, turn: int) -> Image.Image:
    patches = [COLOUR_CHECKER[int(k)] for k in rng.permutation(len(COLOUR_CHECKER))]
    return _image(_chart_array(size, patches))


_MAKERS = {
    "gaussian_noise": _gaussian_noise,
    "uniform_noise": _uniform_noise,
    "flat_colour": _flat_colour,
    "text_page": _text_page,
    "gradient": _gradient,
    "checkerboard": _checkerboard,
    "stripes": _stripes,
    "colour_chart": _colour_chart,
}


# ---------------------------------------------------------------------------------------------- helpers
def _image(array) -> Image.Image:
    """RGB image from an ``(H, W, 3)`` array of any numeric type (rounded, clipped to 0..255)."""
    return Image.fromarray(np.clip(np.rint(np.asarray(array, dtype=np.float64)), 0, 255).astype(np.uint8), "RGB")


def _chart_array(size: int, patches) -> np.ndarray:
    """A 4 x 6 grid of colour patches on a near-black card, with dark gaps between patches."""
    chart = np.full((size, size, 3), 20, dtype=np.int64)
    rows, cols = 4, 6
    gap = max(1, size // 48)
    cell_w, cell_h = (size - gap) // cols, (size - gap) // rows
    for k, colour in enumerate(patches[: rows * cols]):
        r, c = divmod(k, cols)
        top, left = gap + r * cell_h, gap + c * cell_w
        chart[top : top + cell_h - gap, left : left + cell_w - gap] = colour
    return chart


def _hash_bytes(index: np.ndarray, key: int) -> np.ndarray:
    """One pseudo-random byte per index: a 32-bit integer hash (lowbias32), no random generator."""
    mask = np.uint64(0xFFFFFFFF)
    h = (index * np.uint64(0x9E3779B1) + np.uint64(key * 0x85EBCA77)) & mask
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & mask
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & mask
    h ^= h >> np.uint64(16)
    return (h & np.uint64(0xFF)).astype(np.int64)


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
