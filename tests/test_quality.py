"""The image-quality gate (dermkit.data.quality): each measure against a known answer, a synthetic
lesion that passes and its blurred, darkened, brightened, flattened and tiny copies that are each
flagged for exactly their reason, every PIL mode and file paths, and on real images (``realdata``;
skipped when the shared datasets are absent) almost no flag, while damaged copies are flagged.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from conftest import SHARED_DATA, requires_shared_data
from dermkit.data.images import ImageProblem
from dermkit.data.quality import (
    CHECKS,
    QUALITY_LIMITS,
    WORK_SIDE,
    QualityLimits,
    QualityReport,
    check_quality,
    check_quality_many,
    judge_quality,
    measure_quality,
)
from dermkit.errors import DataError


# ------------------------------------------------------------------------------------ pictures
def _lesion(width: int = 600, height: int = 450, seed: int = 0) -> Image.Image:
    """A synthetic dermoscopic-like picture: skin colour with smooth shading and fine texture, a
    darker irregular blob with a ~3 px rim and darker dots in it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = rng.normal(0, 1, (6, 8)).astype(np.float32)
    shade = np.asarray(Image.fromarray(shade).resize((width, height), Image.Resampling.BICUBIC))
    skin = np.array([214, 168, 146], np.float32) * (1 + 0.04 * shade[..., None])
    r = np.hypot((xx - width / 2) / (width * 0.17), (yy - height / 2) / (height * 0.2))
    angle = np.arctan2(yy - height / 2, xx - width / 2)
    r = r * (1 + 0.12 * np.sin(3 * angle) + 0.06 * np.cos(5 * angle))
    inside = np.clip((1 - r) * 30 + 0.5, 0, 1)[..., None]
    img = skin * (1 - inside) + np.array([112, 66, 48], np.float32) * inside + rng.normal(0, 6, (height, width, 1))
    img[(rng.random((height, width)) < 0.004) & (r < 0.9)] *= 0.5
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    """Exposure changed: every value times ``factor``, clipped to 0-255."""
    a = np.asarray(image, dtype=np.float32) * factor
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def _grey(values) -> Image.Image:
    return Image.fromarray(np.asarray(values, dtype=np.uint8))


LESION = _lesion()
BAD_COPIES = {
    # Gaussian blur of radius 8 px at 600 px (PIL's radius is the standard deviation).
    "blurry": lambda im: im.filter(ImageFilter.GaussianBlur(8)),
    # 4.4 stops under: sRGB values x 0.25.
    "underexposed": lambda im: _scaled(im, 0.25),
    # values x 2.5: skin burns out to white.
    "overexposed": lambda im: _scaled(im, 2.5),
    # one flat colour, the picture's mean.
    "blank": lambda im: Image.new("RGB", im.size, tuple(int(v) for v in np.asarray(im).reshape(-1, 3).mean(0))),
    "too_small": lambda im: im.resize((20, 20), Image.Resampling.LANCZOS),
}


# ------------------------------------------------------------------------------------ the gate
def test_synthetic_lesion_passes():
    report = check_quality(LESION)
    assert report.ok, report.summary
    assert report.summary == "ok" and report.flags == [] and report.checks == []
    m = report.measures
    assert (m["width"], m["height"]) == (600, 450)
    assert m["highlight"] > 2 * QUALITY_LIMITS.min_highlight and m["clipped_white"] == 0
    assert m["contrast"] > 10 * QUALITY_LIMITS.min_contrast
    assert m["sharpness"] > 10 * QUALITY_LIMITS.min_sharpness


# The measure each check judges, and how its message writes the value and the limit.
_MEASURE_OF = {"blurry": "sharpness", "underexposed": "highlight", "overexposed": "clipped_white",
               "blank": "contrast"}
_WRITTEN = {"overexposed": ("{:.1%}", "{:.0%}"), "blurry": ("{:g}", "{:.1f}"), "blank": ("{:g}", "{:.1f}")}


@pytest.mark.parametrize("check", list(BAD_COPIES))
def test_each_damaged_copy_is_flagged_for_its_reason(check):
    report = check_quality(BAD_COPIES[check](LESION))
    assert report.checks == [check], report.summary
    (flag,) = report.flags
    m = report.measures
    assert flag.value == (min(m["width"], m["height"]) if check == "too_small" else m[_MEASURE_OF[check]])
    assert flag.value > flag.limit if check == "overexposed" else flag.value < flag.limit
    assert not report.ok and report.summary == flag.message
    # The message names the measured value and the limit it broke.
    value, limit = _WRITTEN.get(check, ("{:g}", "{:g}"))
    assert f" {value.format(flag.value)} " in flag.message, flag.message
    assert f"limit {limit.format(flag.limit)}" in flag.message, flag.message


def test_messages_read_well():
    blurry = check_quality(BAD_COPIES["blurry"](LESION)).flags[0]
    assert blurry.message.startswith("very blurry: sharpness ")
    assert blurry.message.endswith(f"is below the limit {QUALITY_LIMITS.min_sharpness:.1f}")
    tiny = check_quality(BAD_COPIES["too_small"](LESION)).flags[0]
    assert tiny.message == "too small: the shorter side is 20 px, below the limit 100 px"
    assert (tiny.value, tiny.limit) == (20, 100)
    dark = check_quality(BAD_COPIES["underexposed"](LESION)).flags[0]
    assert dark.message.startswith("under-exposed: the brightest 5% of the picture reach luminance ")
    bright = check_quality(BAD_COPIES["overexposed"](LESION)).flags[0]
    assert "clipped white" in bright.message and "above the limit 60%" in bright.message


def test_black_and_white_frames_are_exposure_problems_not_blank():
    black = check_quality(Image.new("RGB", (640, 480)))
    white = check_quality(Image.new("RGB", (640, 480), "white"))
    grey = check_quality(Image.new("RGB", (640, 480), (128, 128, 128)))
    assert black.checks == ["underexposed"] and black.flags[0].value == 0
    assert white.checks == ["overexposed"] and white.flags[0].value == 1
    assert grey.checks == ["blank"] and grey.flags[0].value == 0


def test_flat_picture_with_pixel_noise_is_still_blank():
    rng = np.random.default_rng(1)
    noisy = Image.fromarray(np.clip(rng.normal(128, 10, (480, 640, 3)), 0, 255).astype(np.uint8))
    report = check_quality(noisy)
    assert report.checks == ["blank"], report.summary
    assert report.measures["contrast"] < 1  # 8x8 box averages leave std 10 / 8 or less


def test_sharpness_is_not_judged_where_another_problem_explains_it():
    # A blurred *and* darkened copy is reported as under-exposed only (fix the exposure first).
    dark_blurred = _scaled(BAD_COPIES["blurry"](LESION), 0.25)
    assert check_quality(dark_blurred).checks == ["underexposed"]
    # A tiny copy is not judged for sharpness even when its Laplacian is low.
    tiny_blurred = BAD_COPIES["too_small"](BAD_COPIES["blurry"](LESION))
    assert check_quality(tiny_blurred).checks == ["too_small"]
    # A tiny flat picture is both: neither explains the other.
    assert check_quality(Image.new("L", (20, 20), 128)).checks == ["too_small", "blank"]


def test_a_dim_picture_is_not_taken_for_a_blurred_one():
    # Halving every value halves the Laplacian; the stretch to a white highlight undoes it.
    sharp, dim = measure_quality(LESION), measure_quality(_scaled(LESION, 0.5))
    assert check_quality(_scaled(LESION, 0.5)).ok
    assert dim["sharpness"] == pytest.approx(sharp["sharpness"], rel=0.2)  # not a quarter of it (rounding aside)


def test_letterboxed_well_exposed_picture_is_not_underexposed():
    # 75% black frame around a normal picture (Derm7pt has clinical photos like this).
    canvas = Image.new("RGB", (1200, 900))
    canvas.paste(LESION, (300, 225))
    report = check_quality(canvas)
    assert report.measures["mean_luminance"] < 50
    assert "underexposed" not in report.checks, report.summary


def test_custom_limits():
    strict = QualityLimits(min_side=1000, min_sharpness=1e6)
    assert check_quality(LESION, strict).checks == ["too_small"]
    assert check_quality(_lesion(1200, 1000), strict).checks == ["blurry"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        QUALITY_LIMITS.min_side = 1  # type: ignore[misc]


def test_judge_quality_uses_the_measures_given():
    measures = dict(measure_quality(LESION), sharpness=1.0)
    assert judge_quality(measures).checks == ["blurry"]
    assert judge_quality(dict(measures, highlight=10.0)).checks == ["underexposed"]
    assert judge_quality(dict(measures, sharpness=float("nan"))).ok  # NaN is not judged


def test_report_to_dict_is_json():
    report = check_quality(BAD_COPIES["blurry"](LESION))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ok"] is False and data["summary"] == report.summary
    assert data["flags"] == [{"check": "blurry", "value": report.measures["sharpness"],
                              "limit": QUALITY_LIMITS.min_sharpness, "message": report.flags[0].message}]
    assert set(data["measures"]) == {"width", "height", "mean_luminance", "highlight", "clipped_white", "contrast",
                                     "sharpness"}
    two = QualityReport(measure_quality(Image.new("L", (2, 2), 100)))
    assert json.loads(json.dumps(two.to_dict(), allow_nan=False))["measures"]["sharpness"] is None
    assert CHECKS == ("too_small", "underexposed", "overexposed", "blank", "blurry")


# -------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("value", [0, 37, 128, 249, 250, 255])
def test_constant_image(value):
    m = measure_quality(Image.new("L", (300, 200), value))
    assert m["mean_luminance"] == value and m["highlight"] == value
    assert m["contrast"] == 0 and m["sharpness"] == 0
    assert m["clipped_white"] == (1.0 if value >= 250 else 0.0)


def test_luminance_is_itu_601_luma():
    # Pure red, green, blue: 0.299, 0.587, 0.114 of 255.
    for colour, luma in [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29)]:
        assert measure_quality(Image.new("RGB", (120, 120), colour))["mean_luminance"] == luma


def test_highlight_is_the_95th_percentile():
    a = np.full((100, 200), 50, dtype=np.uint8)
    a[:10] = 200  # 10% of the pixels: they reach past the brightest 5%
    assert measure_quality(_grey(a))["highlight"] == 200
    a[3:10] = 50  # 3%: the brightest 5% now include pixels at 50
    assert measure_quality(_grey(a))["highlight"] == 50
    assert measure_quality(_grey(a))["mean_luminance"] == pytest.approx(50 + 0.03 * 150, abs=0.05)


def test_clipped_white_share_and_contrast_of_two_halves():
    a = np.zeros((64, 64), dtype=np.uint8)
    a[:, 32:] = 200
    m = measure_quality(_grey(a))
    assert m["contrast"] == 100.0  # halves of 0 and 200 on the 32 px thumbnail: std 100
    assert m["clipped_white"] == 0
    a[:, 32:] = 252
    assert measure_quality(_grey(a))["clipped_white"] == 0.5
    a[:16, 32:] = 249
    assert measure_quality(_grey(a))["clipped_white"] == 0.375


def test_sharpness_of_a_checkerboard_and_a_ramp():
    # One-pixel checkerboard 0/A: the Laplacian is +-4A everywhere, its variance 16 A^2; the stretch
    # to a white highlight (255 / A) makes it 16 * 255^2 whatever A.
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.uint8)
    for amplitude in (255, 100):
        assert measure_quality(_grey(board * amplitude))["sharpness"] == 16 * 255**2
    # A linear ramp has no second derivative.
    ramp = np.tile(np.arange(200, dtype=np.uint8), (150, 1))
    assert measure_quality(_grey(ramp))["sharpness"] == 0


def test_working_image_is_shrunk_never_enlarged():
    # Blur relative to the picture's size: the same picture at 1200 px and at 600 px measures alike.
    big = _lesion(1200, 900, seed=3)
    small = big.resize((600, 450), Image.Resampling.BILINEAR)
    a, b = measure_quality(big), measure_quality(small)
    assert a["sharpness"] == pytest.approx(b["sharpness"], rel=0.25)
    assert (a["width"], b["width"]) == (1200, 600)
    # A picture smaller than WORK_SIDE is measured at its own size.
    half = measure_quality(_grey(np.tile(np.arange(WORK_SIDE // 2, dtype=np.uint8), (50, 1))))
    assert half["width"] == WORK_SIDE // 2 and half["sharpness"] == 0


def test_orientation_does_not_matter():
    small = _lesion(240, 180, seed=4)
    turned = measure_quality(small.transpose(Image.Transpose.ROTATE_90))
    assert (turned["width"], turned["height"]) == (180, 240)
    for key, value in measure_quality(small).items():
        if key not in ("width", "height"):
            assert turned[key] == pytest.approx(value, rel=0.01, abs=0.02), key


# -------------------------------------------------------------------------------- modes and files
def _modes(image: Image.Image) -> dict[str, Image.Image]:
    rgba = image.convert("RGBA")
    rgba.putalpha(0)  # alpha is dropped (as the model's input drops it)
    grey = np.asarray(image.convert("L"), dtype=np.uint16)
    grey[0, 0] = 255  # float (F) is scaled by its maximum: make it white (16-bit modes by their bit depth)
    wide = grey * 257  # 0-255 -> 0-65535
    return {
        "L": image.convert("L"),
        "RGB": image,
        "RGBA": rgba,
        "LA": image.convert("LA"),
        "P": image.quantize(256),
        "I;16": Image.fromarray(wide),
        "I": Image.fromarray(wide.astype(np.int32)),
        "F": Image.fromarray(wide.astype(np.float32) / 65535),
        "CMYK": image.convert("CMYK"),
    }


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "I", "F", "CMYK"])
def test_every_mode_measures_like_rgb(mode):
    image = _modes(LESION)[mode]
    assert image.mode == mode
    report, reference = check_quality(image), check_quality(LESION)
    assert report.ok, report.summary
    for key in ("mean_luminance", "highlight", "contrast"):
        assert report.measures[key] == pytest.approx(reference.measures[key], rel=0.03, abs=2), key
    assert report.measures["sharpness"] == pytest.approx(reference.measures["sharpness"], rel=0.5)
    assert check_quality(BAD_COPIES["blurry"](LESION).convert("L")).checks == ["blurry"]


def test_bilevel_and_sixteen_bit_flat_pictures():
    assert check_quality(Image.new("1", (200, 200), 1)).checks == ["overexposed"]
    # 16-bit grey is scaled by its bit depth (65535 is white), as open_image does, not by its maximum:
    # a flat dark picture stays dark and a flat bright one is bright.
    assert check_quality(Image.fromarray(np.full((200, 200), 3000, dtype=np.uint16))).checks == ["underexposed"]
    assert check_quality(Image.fromarray(np.full((200, 200), 65000, dtype=np.uint16))).checks == ["overexposed"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_paths_measure_like_the_decoded_image(tmp_path, fmt):
    path = tmp_path / f"lesion.{fmt.lower()}"
    LESION.save(path, fmt, quality=92)
    from_path, from_image = measure_quality(path), measure_quality(Image.open(path))
    assert set(from_path) == set(from_image)
    for key, value in from_image.items():  # a JPEG's luma is decoded directly: a little rounding apart
        assert from_path[key] == pytest.approx(value, rel=0.1, abs=1), key
    assert check_quality(str(path)).ok
    blurred = tmp_path / f"blurred.{fmt.lower()}"
    BAD_COPIES["blurry"](LESION).save(blurred, fmt)
    assert check_quality(blurred).checks == ["blurry"]


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_answer(tmp_path):
    big = _lesion(2400, 1800, seed=5)
    path = tmp_path / "big.jpg"
    big.save(path, quality=90)
    from_path, from_image = measure_quality(path), measure_quality(Image.open(path))
    assert (from_path["width"], from_path["height"]) == (2400, 1800)
    for key in ("mean_luminance", "highlight", "contrast", "clipped_white"):
        assert from_path[key] == pytest.approx(from_image[key], rel=0.03, abs=1), key
    assert from_path["sharpness"] == pytest.approx(from_image["sharpness"], rel=0.25)
    soft = tmp_path / "soft.jpg"
    big.filter(ImageFilter.GaussianBlur(32)).save(soft, quality=90)  # radius 8 at 600 px
    assert check_quality(soft).checks == ["blurry"]


def test_missing_and_broken_files_raise_image_problems(tmp_path):
    with pytest.raises(ImageProblem, match="not found"):
        check_quality(tmp_path / "nope.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="not an image file"):
        check_quality(broken)
    truncated = tmp_path / "cut.jpg"
    LESION.save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    with pytest.raises(ImageProblem, match="truncated"):
        check_quality(truncated)


def test_check_quality_many_keeps_the_order(tmp_path):
    path = tmp_path / "ok.png"
    LESION.save(path)
    images = [path, BAD_COPIES["blank"](LESION), LESION, str(path), BAD_COPIES["too_small"](LESION)]
    reports = check_quality_many(images, threads=3)
    assert [r.checks for r in reports] == [[], ["blank"], [], [], ["too_small"]]
    strict = QualityLimits(min_side=1000)
    assert all("too_small" in r.checks for r in check_quality_many([LESION, path], strict))
    assert check_quality_many([]) == []


# ------------------------------------------------------------------------------------ real data
_DATASETS = ("ham10000", "isic2017", "derm7pt", "derm7pt_clinic", "pad_ufes20", "ph2")


def _real_paths(per_dataset: int, seed: int = 0) -> dict[str, list]:
    """``per_dataset`` images of each shared dataset (all when fewer), the clinical Derm7pt
    pictures as a sixth set."""
    out = {}
    for name in _DATASETS:
        folder = SHARED_DATA / name.replace("_clinic", "")
        table = pd.read_csv(folder / "metadata.csv")
        column = "clinic_image" if name.endswith("_clinic") else "image"
        rel = table[column].dropna().drop_duplicates()
        rel = rel.sample(min(per_dataset, len(rel)), random_state=seed)
        out[name] = [folder / r for r in rel]
    return out


@pytest.mark.realdata
@requires_shared_data
def test_real_images_are_almost_never_flagged():
    for name, paths in _real_paths(200).items():
        reports = check_quality_many(paths)
        flagged = [(p.name, r.summary) for p, r in zip(paths, reports) if not r.ok]
        assert len(flagged) < 0.02 * len(paths), (name, flagged)


@pytest.mark.realdata
@requires_shared_data
def test_damaged_copies_of_real_images_are_flagged_for_their_reason():
    counts = {check: 0 for check in BAD_COPIES}
    total = 0
    for paths in _real_paths(8, seed=1).values():
        for path in paths:
            image = Image.open(path).convert("RGB")
            scale = 600 / max(image.size)  # the blur radius is 8 px at 600 px
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
            total += 1
            for check, damage in BAD_COPIES.items():
                report = check_quality(damage(image))
                expected = check
                if check == "blank" and report.measures["highlight"] < QUALITY_LIMITS.min_highlight:
                    expected = "underexposed"  # the flat copy of a dark picture is a dark frame
                assert set(report.checks) <= {expected}, (path.name, check, report.summary)  # never a wrong reason
                counts[check] += bool(report.checks)
    assert counts["underexposed"] == counts["blank"] == counts["too_small"] == total, counts
    assert counts["blurry"] >= 0.85 * total, counts
    assert counts["overexposed"] >= 0.6 * total, counts
