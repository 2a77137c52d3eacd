"""Synthetic artefacts drawn on real images, to build a shortcut on purpose (PanDerm-2's ISIC
artefact test, where no artefact labels exist).

:func:`biased_copies` writes two dataset folders next to each other that share the original images
(through a symlinked ``images/`` and ``follow_symlinks: true``) and hold only the edited files:

``biased/``
    train and val: the artefact is drawn on ``fraction`` of the positive class (e.g. melanomas),
    so it predicts the label; test: clean.
``biased_test/``
    the same train and val; test: the artefact drawn on ``fraction`` of the *negatives*, so a
    model that learned the shortcut fails there.

:func:`draw_artefact` draws ink, a ruler, hair, a dark vignette or gel bubbles, as much as a
severity 1-5 asks (:data:`ARTEFACT_LEVELS`); the robustness stress test (``data/stress.py``)
draws them on the fly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from dermkit.data.card import load_card
from dermkit.data.images import open_image
from dermkit.errors import ConfigError
from dermkit.io import write_csv, write_text

__all__ = ["ARTEFACTS", "ARTEFACT_LEVELS", "DEFAULT_SEVERITY", "draw_artefact", "biased_copies"]

ARTEFACTS = ("ink", "ruler", "hair", "vignette", "bubbles")
#: Severity drawn when ``draw_artefact`` is given none; for ink and ruler it is exactly what they
#: drew before severities existed (one stroke 2.5% of the shorter side wide; one ruler bar).
DEFAULT_SEVERITY = 3
#: What severity 1..5 draws (``draw_artefact(..., severity=s)``), per kind:
#: ink (strokes, stroke width as a fraction of the shorter side); ruler (rulers: one along the top
#: or bottom edge, the second along the left or right edge; bar height as a multiple of the
#: default 6-9% of the image height); hair (strands); vignette (radius of the circular field as a
#: fraction of the half diagonal: 1 touches the corners); bubbles (gel bubbles).
ARTEFACT_LEVELS = {
    "ink": ((1, 0.012), (1, 0.018), (1, 0.025), (2, 0.025), (3, 0.03)),
    "ruler": ((1, 0.4), (1, 0.7), (1, 1.0), (2, 1.0), (2, 1.3)),
    "hair": (2, 5, 10, 18, 30),
    "vignette": (0.97, 0.9, 0.83, 0.76, 0.68),
    "bubbles": (2, 4, 8, 14, 22),
}


def draw_artefact(image: Image.Image, kind: str, rng: np.random.Generator, severity: int | None = None) -> Image.Image:
    """A copy of ``image`` with an artefact drawn on it, as much of it as ``severity`` (1-5, see
    :data:`ARTEFACT_LEVELS`; default :data:`DEFAULT_SEVERITY`) asks:

    ``ink``
        a purple ink mark (a thick curved stroke near a border);
    ``ruler``
        a light bar with tick marks along one edge;
    ``hair``
        dark thin curved strands (quadratic Bezier curves 1-3 px wide at 450 px) across the image;
    ``vignette``
        the dark corners of a dermoscope's circular field of view: outside a circle (centre jittered
        by up to 3% of the image) the picture fades to 4% of its brightness over 5% of the half
        diagonal; inside it is untouched;
    ``bubbles``
        immersion-gel bubbles: discs with a bright rim, a faintly brighter inside and a specular spot.
    """
    if kind not in ARTEFACTS:
        raise ConfigError(f"artefact must be one of {', '.join(ARTEFACTS)}, got {kind!r}")
    if severity is None:
        severity = DEFAULT_SEVERITY
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ConfigError(f"artefact severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
    level = ARTEFACT_LEVELS[kind][int(severity) - 1]
    img = image.convert("RGB").copy()
    w, h = img.size
    if kind == "vignette":
        return _vignette(img, rng, level)
    if kind == "bubbles":
        return _bubbles(img, rng, level)
    draw = ImageDraw.Draw(img)
    if kind == "ink":
        strokes, width = level
        for _ in range(strokes):
            _ink(draw, w, h, rng, width)
    elif kind == "ruler":
        rulers, scale = level
        for vertical in (False, True)[:rulers]:
            _ruler(draw, w, h, rng, scale, vertical)
    else:
        for _ in range(level):
            _hair(draw, w, h, rng)
    return img


def _ink(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator, width: float) -> None:
    colour = tuple(int(c) for c in rng.integers([110, 20, 130], [160, 60, 190]))
    cx, cy = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.9) * h
    if rng.random() < 0.5:
        cx = w - cx
    t = np.linspace(0, rng.uniform(1.0, 2.0) * np.pi, 24)
    r = rng.uniform(0.06, 0.12) * min(w, h)
    points = [(float(cx + r * np.cos(a)), float(cy + 0.6 * r * np.sin(a))) for a in t]
    draw.line(points, fill=colour, width=max(3, int(width * min(w, h))))


def _ruler(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator, scale: float,
           vertical: bool) -> None:
    bar = max(6, int(rng.uniform(0.06, 0.09) * h * scale))
    step = max(4, w // 40)
    light, dark = (235, 232, 220), (30, 30, 30)
    if not vertical:
        y0 = 0 if rng.random() < 0.5 else h - bar
        draw.rectangle([0, y0, w, y0 + bar], fill=light)
        for i, x in enumerate(range(0, w, step)):
            tick = bar if i % 5 == 0 else bar // 2
            ys = (y0, y0 + tick) if y0 == 0 else (y0 + bar - tick, y0 + bar)
            draw.line([(x, ys[0]), (x, ys[1])], fill=dark, width=1)
        return
    x0 = 0 if rng.random() < 0.5 else w - bar
    draw.rectangle([x0, 0, x0 + bar, h], fill=light)
    for i, y in enumerate(range(0, h, step)):
        tick = bar if i % 5 == 0 else bar // 2
        xs = (x0, x0 + tick) if x0 == 0 else (x0 + bar - tick, x0 + bar)
        draw.line([(xs[0], y), (xs[1], y)], fill=dark, width=1)


def _hair(draw: ImageDraw.ImageDraw, w: int, h: int, rng: np.random.Generator) -> None:
    side = min(w, h)
    start = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.25, 0.7) * side
    direction = np.array([np.cos(angle), np.sin(angle)])
    end = start + length * direction
    # The control point sits off the chord's middle, perpendicular to it: a gently curved strand.
    control = (start + end) / 2 + rng.uniform(-0.35, 0.35) * length * np.array([-direction[1], direction[0]])
    t = np.linspace(0.0, 1.0, 32)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    width = max(1, int(round(rng.uniform(0.002, 0.006) * side)))
    shade = rng.uniform(0.0, 1.0)
    colour = (int(15 + 45 * shade), int(10 + 30 * shade), int(8 + 20 * shade))
    draw.line([tuple(map(float, p)) for p in points], fill=colour, width=width, joint="curve")


def _vignette(img: Image.Image, rng: np.random.Generator, radius: float) -> Image.Image:
    w, h = img.size
    cx = w / 2 + rng.uniform(-0.03, 0.03) * w
    cy = h / 2 + rng.uniform(-0.03, 0.03) * h
    half_diagonal = np.hypot(w, h) / 2
    yy, xx = np.ogrid[0:h, 0:w]
    rho = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) / half_diagonal
    inside = np.clip((radius - rho) / 0.05, 0.0, 1.0)
    inside = inside * inside * (3 - 2 * inside)  # smoothstep: a soft rim, as a lens gives
    floor = 0.04
    factor = (floor + (1 - floor) * inside)[..., None]
    out = np.asarray(img, dtype=np.float32) * factor
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _bubbles(img: Image.Image, rng: np.random.Generator, count: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(count):
        r = rng.uniform(0.012, 0.05) * side
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rim = max(1, int(round(0.12 * r)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 255, 255, 30), outline=(250, 250, 250, 190),
                     width=rim)
        hr, hx, hy = 0.22 * r, cx - 0.4 * r, cy - 0.4 * r
        draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=(255, 255, 255, 215))
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def biased_copies(card, out: str | os.PathLike, kind: str = "ink", fraction: float = 0.8, seed: int = 0,
                  positive: str | None = None, severity: int | None = None) -> tuple[Path, Path]:
    """Write ``OUT/biased`` and ``OUT/biased_test`` (see the module docstring), the artefact drawn
    at ``severity`` (1-5, :data:`ARTEFACT_LEVELS`; default :data:`DEFAULT_SEVERITY`); returns both folders."""
    if kind not in ARTEFACTS:
        raise ConfigError(f"artefact must be one of {', '.join(ARTEFACTS)}, got {kind!r}")
    card = load_card(card)
    positive = positive or card.positive_class
    if positive not in card.classes:
        raise ConfigError(f"{card.name} has no positive class {positive!r}; pass positive=CLASS")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    draw_artefact(Image.new("RGB", (8, 8)), kind, np.random.default_rng(0), severity)  # a bad severity fails first
    out = Path(out)
    rng = np.random.default_rng(seed)
    table = card.table.copy()
    images_dir = card.root / "images"
    if not images_dir.is_dir():
        raise ConfigError(f"{card.root} has no images/ folder to share; biased copies link to it")

    def edit(rows: "np.ndarray", folder: Path) -> dict[int, str]:
        chosen = [i for i in rows if rng.random() < fraction]
        new = {}
        for i in chosen:
            rel = str(table.at[i, "image"])
            target = folder / "artefacts" / (Path(rel).stem + f"_{kind}.jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            draw_artefact(open_image(card.image_path(rel)), kind, rng, severity).save(target, "JPEG", quality=92)
            new[i] = f"artefacts/{target.name}"
        return new

    folders = []
    is_pos = (table["diagnosis"] == positive).to_numpy()
    split = table["split"].to_numpy()
    for name in ("biased", "biased_test"):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "images"
        if not link.exists():
            link.symlink_to(images_dir.resolve(), target_is_directory=True)
        rng = np.random.default_rng(seed)  # the same train/val edits in both folders
        edits = edit(np.flatnonzero(is_pos & np.isin(split, ["train", "val"])), folder)
        if name == "biased_test":
            edits.update(edit(np.flatnonzero(~is_pos & (split == "test")), folder))
        rows = table.copy()
        for i, rel in edits.items():
            rows.at[i, "image"] = rel
        rows["artefact"] = [kind if i in edits else "" for i in range(len(rows))]
        write_csv(folder / "metadata.csv", rows)
        own = card.root / "dataset.yaml"
        spec = yaml.safe_load(own.read_text(encoding="utf-8")) if own.is_file() else {"base_card": card.name}
        level = DEFAULT_SEVERITY if severity is None else severity
        spec = {**(spec or {}), "name": f"{card.name}_{name}", "follow_symlinks": True,
                "description": f"{card.name} with a synthetic {kind} artefact (severity {level}) on {fraction:.0%} "
                               f"of the {positive} "
                               f"train/val images" + (" and of the non-melanoma test images" if name == "biased_test"
                                                      else "; test clean")}
        write_text(folder / "dataset.yaml", yaml.safe_dump(spec, sort_keys=False))
        folders.append(folder)
    return folders[0], folders[1]
