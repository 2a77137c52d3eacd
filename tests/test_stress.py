"""Robustness stress test: the seeded image transforms (data/stress.py) and the stress table (evaluate/stress.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from dermkit.data import stress as data_stress
from dermkit.data.artefacts import draw_artefact
from dermkit.data.stress import (
    FAMILIES,
    QUICK_TRANSFORMS,
    SEVERITIES,
    STRESS_PLANS,
    TRANSFORMS,
    apply_transform,
    describe_transforms,
    parse_stress,
    transform_families,
)
from dermkit.errors import ConfigError, DermkitError
from dermkit.evaluate.stress import (
    STRESS_COLUMNS,
    save_stress,
    stress_figure,
    stress_json,
    stress_markdown,
    stress_summary,
    stress_table,
)

RANDOM = ("hue_shift", "gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog", "hair", "ink",
          "ruler", "vignette", "bubbles")


def skin(w: int = 80, h: int = 64, seed: int = 0) -> Image.Image:
    """A skin-coloured picture with a dark blob (the lesion) and mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((xx - w / 2) / (0.2 * w)) ** 2 + ((yy - h / 2) / (0.2 * h)) ** 2))
    base = np.array([205.0, 150.0, 135.0]) * (1 - 0.55 * blob[..., None])
    return Image.fromarray(np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))


def luma(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=float)


def laplacian_var(image: Image.Image) -> float:
    return float(ndimage.laplace(luma(image)).var())


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_is_deterministic_keeps_size_and_severity_0_is_identity(name):
    img = skin()
    assert apply_transform(img, name, 0, seed=0, key="a.jpg").tobytes() == img.tobytes()
    for severity in (1, 5):
        first = apply_transform(img, name, severity, seed=3, key="a.jpg")
        again = apply_transform(img.copy(), name, severity, seed=3, key="a.jpg")
        assert first.tobytes() == again.tobytes()
        assert first.size == img.size and first.mode == "RGB"
        assert first.tobytes() != img.tobytes(), f"{name} at severity {severity} left the image unchanged"


@pytest.mark.parametrize("name", RANDOM)
def test_random_transforms_depend_on_image_key_and_seed(name):
    """Two images never share a noise pattern or hair layout; a ruler's edge or a hue's direction is a
    coin toss, so several keys are compared."""
    img = skin()
    by_key = {digest(apply_transform(img, name, 3, seed=0, key=f"{k}.jpg")) for k in range(6)}
    by_seed = {digest(apply_transform(img, name, 3, seed=seed, key="a.jpg")) for seed in range(6)}
    assert len(by_key) > 1 and len(by_seed) > 1
    if name not in ("hue_shift", "ruler"):
        assert len(by_key) == 6 and len(by_seed) == 6


def test_same_transformed_bytes_in_another_process():
    """The generator is seeded by hashlib, not Python's per-process hash(): a fresh interpreter with
    another PYTHONHASHSEED gets the same bytes (what 'the same image for every model' rests on)."""
    code = ("import hashlib, numpy as np; from PIL import Image; from dermkit.data.stress import apply_transform;"
            "a = np.arange(64 * 80 * 3, dtype=np.uint32).reshape(64, 80, 3) % 251;"
            "img = Image.fromarray(a.astype(np.uint8));"
            "print(hashlib.sha256(apply_transform(img, 'gaussian_noise', 2, 7, 'x/y.jpg').tobytes()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    a = np.arange(64 * 80 * 3, dtype=np.uint32).reshape(64, 80, 3) % 251
    here = digest(apply_transform(Image.fromarray(a.astype(np.uint8)), "gaussian_noise", 2, 7, "x/y.jpg"))
    assert out.stdout.strip() == here


def test_severity_is_monotonic_where_it_should_be():
    img = skin(96, 72)

    def series(name, measure):
        return [measure(apply_transform(img, name, s, seed=0, key="k")) for s in (0, *SEVERITIES)]

    def strictly(values, sign):
        return all(sign * (b - a) > 0 for a, b in zip(values, values[1:]))

    assert strictly(series("brightness_down", lambda i: luma(i).mean()), -1)
    assert strictly(series("brightness_up", lambda i: luma(i).mean()), +1)
    assert strictly(series("contrast_down", lambda i: luma(i).std()), -1)
    assert strictly(series("saturation_down", lambda i: np.asarray(i.convert("HSV"))[..., 1].mean()), -1)
    # Blur, on texture alike in every direction. A motion streak's direction is drawn per image and
    # its taps land on fewer distinct pixels on a diagonal (as in ImageNet-C), so a severity is only
    # blurrier on average over images: 8 here.
    texture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (72, 96, 3), dtype=np.uint8))
    for blur in ("defocus_blur", "motion_blur"):
        values = [np.mean([laplacian_var(apply_transform(texture, blur, s, seed=0, key=f"{k}.jpg")) for k in range(8)])
                  for s in (0, *SEVERITIES)]
        assert strictly(values, -1), blur
    base = np.asarray(img, dtype=float)
    for noise in ("gaussian_noise", "shot_noise", "impulse_noise"):
        assert strictly(series(noise, lambda i: (np.asarray(i, dtype=float) - base).std()), +1), noise
    for name in ("jpeg_quality", "jpeg_compression", "downscale", "pixelate", "hue_shift"):
        assert strictly(series(name, lambda i: np.abs(np.asarray(i, dtype=float) - base).mean()), +1), name
    flat = Image.new("RGB", (120, 90), (215, 175, 160))
    dark = [(luma(apply_transform(flat, "hair", s, 0, "k")) < 100).mean() for s in (0, *SEVERITIES)]
    assert strictly(dark, +1)
    corners = [(luma(apply_transform(flat, "vignette", s, 0, "k")) < 50).mean() for s in (0, *SEVERITIES)]
    assert strictly(corners, +1)


# ------------------------------------------------------------------ known answers per family


def test_acquisition_known_answers():
    marked = np.full((40, 40, 3), 120, np.uint8)
    marked[:8, :8] = (255, 0, 0)  # red top-left corner
    img = Image.fromarray(marked)
    turned = np.asarray(apply_transform(img, "rotation", 4, 0, "k"))  # 90 degrees counter-clockwise
    assert data_stress.TRANSFORMS["rotation"].levels[3] == 90
    assert (turned[-8:, :8] == (255, 0, 0)).all()  # now bottom-left
    assert (turned[:8, :8] == 120).all()
    assert (np.asarray(apply_transform(img, "rotation", 5, 0, "k")) == marked[::-1, ::-1]).all()  # 180: exact
    # Rotation fills the uncovered corners by mirroring: no black wedges.
    assert np.asarray(apply_transform(skin(), "rotation", 3, 0, "k")).min(axis=2).min() > 20

    base = skin()
    darker = np.asarray(apply_transform(base, "brightness_down", 5, 0, "k"))  # x 0.5
    assert np.array_equal(darker, np.rint(np.asarray(base, dtype=np.float32) / 255 * 0.5 * 255).astype(np.uint8))
    # Zooming in enlarges the centre: the corner marker leaves the frame; zooming out moves it inwards.
    zoomed = np.asarray(apply_transform(img, "zoom_in", 5, 0, "k"))
    assert not (zoomed[..., 1] < 60).any()
    shrunk = np.asarray(apply_transform(img, "zoom_out", 5, 0, "k"))  # the picture at half size in the middle
    assert shrunk[12, 12, 0] > 200 and shrunk[12, 12, 1] < 60 and shrunk[25, 25, 0] == 120
    # A lower JPEG quality changes the pixels more (and writes fewer bytes).
    errors = [np.abs(np.asarray(apply_transform(base, "jpeg_quality", s, 0, "k"), dtype=float)
                     - np.asarray(base, dtype=float)).mean() for s in (1, 5)]
    assert 0 < errors[0] < errors[1]
    sizes = []
    for quality in (data_stress.TRANSFORMS["jpeg_quality"].levels[0], data_stress.TRANSFORMS["jpeg_quality"].levels[4]):
        buffer = io.BytesIO()
        base.save(buffer, "JPEG", quality=quality)
        sizes.append(buffer.tell())
    assert sizes[1] < sizes[0]
    # A hue shift turns the chroma but keeps the luma (up to rounding).
    shifted = apply_transform(base, "hue_shift", 5, 0, "k")
    assert np.abs(luma(shifted) - luma(base)).mean() < 2.5


def test_corruption_known_answers():
    dot = np.zeros((61, 61, 3), np.uint8)
    dot[29:32, 29:32] = 255
    dot = Image.fromarray(dot)

    def reach(name, severity):
        out = np.asarray(apply_transform(dot, name, severity, 0, "k")).max(axis=2)
        ys, xs = np.nonzero(out)
        return np.hypot(ys - 30, xs - 30).max(), xs, ys

    # Defocus: the dot becomes a disc of ImageNet-C's radius (3 px at severity 1, 10 px at 5) + the dot's size.
    assert 3.5 <= reach("defocus_blur", 1)[0] <= 5.5
    assert 10 <= reach("defocus_blur", 5)[0] <= 12.5
    # Motion: a one-sided streak within 45 degrees of the horizontal, longer with severity.
    d1, xs, ys = reach("motion_blur", 1)
    assert xs.max() - xs.min() >= ys.max() - ys.min() and d1 >= 8
    assert reach("motion_blur", 5)[0] > d1
    # Gaussian noise on mid-grey: the pixel standard deviation is ImageNet-C's sigma (0.08 at severity 1).
    grey = Image.new("RGB", (200, 150), (128, 128, 128))
    noisy = np.asarray(apply_transform(grey, "gaussian_noise", 1, 0, "k"), dtype=float)
    assert noisy.std() / 255 == pytest.approx(0.08, rel=0.05)
    # Large images get the noise grain and blur the model would see at 224 px: cells of s x s pixels.
    big = np.asarray(apply_transform(Image.new("RGB", (896, 672), (128, 128, 128)), "gaussian_noise", 1, 0, "k"))
    assert (big[0::3, 0::3] == big[1::3, 1::3]).all()  # s = 672 / 224 = 3
    # Pixelate: constant blocks; JPEG compression at quality 7 changes the pixels.
    blocks = np.asarray(apply_transform(skin(100, 80), "pixelate", 5, 0, "k"))
    assert (blocks[:4, :4] == blocks[0, 0]).all()
    assert (np.asarray(apply_transform(skin(), "jpeg_compression", 5, 0, "k")) != np.asarray(skin())).any()
    # Fog: a smooth haze over detail scaled by max / (max + c) (c = 2.5 at severity 3: ~0.3).
    fogged = apply_transform(skin(), "fog", 3, 0, "k")
    assert laplacian_var(fogged) < 0.25 * laplacian_var(skin())


def test_artefact_known_answers():
    flat = Image.new("RGB", (160, 120), (215, 175, 160))
    hair = apply_transform(flat, "hair", 5, 0, "k")
    changed = (np.asarray(hair) != np.asarray(flat)).any(axis=2)
    assert 0.01 < changed.mean() < 0.25
    assert luma(hair)[changed].max() < 100  # dark
    assert ndimage.binary_opening(changed, np.ones((5, 5))).sum() < 0.1 * changed.sum()  # thin strands
    vignette = luma(apply_transform(flat, "vignette", 5, 0, "k"))
    assert vignette[:3, :3].max() < 20 and vignette[-3:, -3:].max() < 20  # dark corners
    assert vignette[55:65, 75:85].min() == luma(flat)[60, 80]  # the centre untouched
    bubbles = luma(apply_transform(flat, "bubbles", 5, 0, "k"))
    assert bubbles.max() > 240 and (bubbles >= luma(flat) - 1).all()  # bright rims, nothing darkened
    ink = np.asarray(apply_transform(flat, "ink", 5, 0, "k")).astype(int)
    inked = (ink != np.asarray(flat)).any(axis=2)
    r, g, b = ink[inked].mean(axis=0)
    assert b > g and r > g  # purple
    ruler = apply_transform(flat, "ruler", 5, 0, "k")
    light = (luma(ruler) > 225).mean(axis=0)
    assert light.max() > 0.9  # a vertical ruler spans a column (the second ruler, severities 4-5)


def test_draw_artefact_default_is_severity_3_and_refuses_bad_severity():
    img = skin()
    for kind in ("ink", "ruler", "hair", "vignette", "bubbles"):
        default = draw_artefact(img, kind, np.random.default_rng(5))
        assert default.tobytes() == draw_artefact(img, kind, np.random.default_rng(5), severity=3).tobytes()
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ConfigError, match="1, 2, 3, 4, 5"):
            draw_artefact(img, "hair", np.random.default_rng(0), severity=bad)


# ------------------------------------------------------------------- plans and parsing


def test_plans_and_registry():
    quick, full = STRESS_PLANS["quick"], STRESS_PLANS["full"]
    assert {s for _, s in quick} == {2, 4} and len(quick) == 2 * len(QUICK_TRANSFORMS) <= 24
    assert {t.family for t in TRANSFORMS.values()} == set(FAMILIES)
    assert {TRANSFORMS[n].family for n in QUICK_TRANSFORMS} == set(FAMILIES)
    assert set(full) == {(n, s) for n in TRANSFORMS for s in SEVERITIES} and len(full) == 5 * len(TRANSFORMS)
    assert all(len(t.levels) == 5 for t in TRANSFORMS.values())
    assert transform_families()["hair"] == "artefact" and len(describe_transforms()) == len(TRANSFORMS)
    json.dumps(describe_transforms())
    for name in TRANSFORMS:  # the module docstring documents every transform
        assert f"``{name}``" in data_stress.__doc__, name


def test_parse_stress():
    assert parse_stress("quick") == list(STRESS_PLANS["quick"])
    assert parse_stress(" Full ") == list(STRESS_PLANS["full"])
    assert parse_stress("hair:3,motion_blur") == [("hair", 3)] + [("motion_blur", s) for s in SEVERITIES]
    assert parse_stress(["ink:2", ("ink", 2), ("fog", 5)]) == [("ink", 2), ("fog", 5)]  # repeats dropped
    assert parse_stress("artefact") == [(n, s) for n in TRANSFORMS if TRANSFORMS[n].family == "artefact"
                                        for s in SEVERITIES]


@pytest.mark.parametrize("spec, match", [
    ("motion_blurr", r"unknown stress transform 'motion_blurr' \(did you mean 'motion_blur'\?\)"),
    ("hair:6", r"severity 6 of stress transform 'hair' is not one of 1, 2, 3, 4, 5"),
    ("hair:0", r"0, the clean image, is always evaluated"),
    ("hair:two", r"severity 'two'"),
    ("quick:2", r"'quick' takes no severity"),
    ("", r"no stress transform given"),
    ([("hair", 9)], r"severity 9"),
])
def test_parse_stress_refuses_naming_the_valid_ones(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_stress(spec)
    message = str(info.value)
    assert "quick, full" in message and "defocus_blur" in message and "vignette" in message
    assert "1, 2, 3, 4, 5" in message


def test_apply_transform_refuses_unknown_name_and_severity():
    with pytest.raises(ConfigError, match="did you mean 'gaussian_noise'"):
        apply_transform(skin(), "gausian_noise", 1)
    with pytest.raises(ConfigError, match="not one of 0, 1, 2, 3, 4, 5"):
        apply_transform(skin(), "fog", 7)


# ------------------------------------------------------------------------- stress table


def _proba(y, n_classes, rng, signal=0.6):
    p = rng.dirichlet(np.ones(n_classes), len(y))
    p[np.arange(len(y)), y] += signal
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    clean = _proba(y, 3, rng)
    worse = _proba(y, 3, rng, signal=0.05)
    return y, clean, worse


def test_stress_table_clean_row_flip_rate_and_identity(toy):
    y, clean, worse = toy
    flipped = clean.copy()
    flipped[:12] = np.roll(flipped[:12], 1, axis=1)  # the argmax of 12 images moves to another class
    conditions = {("brightness_down", 2): clean.copy(), ("hair", 4): flipped, ("motion_blur", 5): worse}
    table = stress_table(y, clean, conditions, transform_families(), ["a", "b", "c"], n_bootstrap=200, seed=1)
    assert list(table.columns) == STRESS_COLUMNS and len(table) == 4
    first = table.iloc[0]
    assert (first["transform"], first["family"], first["severity"], first["n"]) == ("clean", "clean", 0, 120)
    assert first["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, clean.argmax(1)))
    assert first["accuracy"] == pytest.approx(accuracy_score(y, clean.argmax(1)))
    assert first["macro_auc"] == pytest.approx(roc_auc_score(y, clean, multi_class="ovr", average="macro"))
    same = table.set_index("transform").loc["brightness_down"]
    assert same["family"] == "acquisition" and same["flip_rate"] == 0.0
    for m in ("balanced_accuracy", "macro_auc", "accuracy"):
        assert same[f"{m}_diff"] == 0.0 and same[f"{m}_p"] == 1.0
        assert same[f"{m}_ci_low"] == 0.0 and same[f"{m}_ci_high"] == 0.0
    hair = table.set_index("transform").loc["hair"]
    assert hair["flip_rate"] == pytest.approx(12 / 120)
    blur = table.set_index("transform").loc["motion_blur"]
    assert blur["balanced_accuracy_diff"] < 0 and blur["balanced_accuracy_ci_high"] < 0 and blur["macro_auc_p"] < 0.05
    assert blur["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, worse.argmax(1)))


def test_stress_summary_figure_markdown_json(toy, tmp_path):
    y, clean, worse = toy
    rng = np.random.default_rng(3)
    conditions = {("gaussian_noise", 2): _proba(y, 3, rng, 0.4), ("gaussian_noise", 4): worse,
                  ("hair", 2): _proba(y, 3, rng, 0.5), ("hair", 4): _proba(y, 3, rng, 0.45),
                  ("rotation", 2): clean}
    table = stress_table(y, clean, conditions, transform_families(), n_bootstrap=50)
    summary = stress_summary(table)
    assert summary["n_conditions"] == 5 and summary["worst"]["transform"] == "gaussian_noise"
    assert summary["worst"]["worst_severity"] == 4 and summary["worst_condition"]["severity"] == 4
    assert summary["worst3"][0] == "gaussian_noise" and summary["worst3"][-1] == "rotation"
    bacc = table["balanced_accuracy"]
    drops = (bacc.iloc[0] - bacc.iloc[1:]) / bacc.iloc[0]
    assert summary["mean_relative_drop"]["balanced_accuracy"] == pytest.approx(drops.mean())
    assert set(summary["by_family"]) == {"corruption", "artefact", "acquisition"}
    assert "gaussian_noise" in summary["line"]
    text = stress_markdown(table, summary)
    assert "Worst transform: gaussian_noise" in text and "| clean | clean | 0 |" in text
    fig = stress_figure(table)
    assert len(fig.axes) == 2 * 3 and fig.axes[0].get_title() == "corruption"
    json.dumps(stress_json(table, summary), allow_nan=False)
    paths = save_stress(table, tmp_path / "stress", summary)
    assert list(pd.read_csv(paths["csv"]).columns) == STRESS_COLUMNS and paths["figure"].stat().st_size > 0
    empty = stress_summary(stress_table(y, clean, {}, n_bootstrap=0))
    assert empty["n_conditions"] == 0 and empty["worst"] is None


def test_stress_table_refuses_mismatched_conditions(toy):
    y, clean, _ = toy
    with pytest.raises(DermkitError, match="condition fog:3 has probabilities of shape"):
        stress_table(y, clean, {("fog", 3): clean[:10]}, n_bootstrap=0)
    with pytest.raises(DermkitError, match=r"keyed by \(transform, severity\)"):
        stress_table(y, clean, {"fog": clean}, n_bootstrap=0)
