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

__all__ = ["ARTEFACTS", "draw_artefact", "biased_copies"]

ARTEFACTS = ("ink", "ruler")


def draw_artefact(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A copy of ``image`` with a purple ink mark (a thick curved stroke near a border) or a ruler
    (a light bar with tick marks along one edge)."""
    if kind not in ARTEFACTS:
        raise ConfigError(f"artefact must be one of {', '.join(ARTEFACTS)}, got {kind!r}")
    img = image.convert("RGB").copy()
    w, h = img.size
    draw = ImageDraw.Draw(img)
    if kind == "ink":
        colour = tuple(int(c) for c in rng.integers([110, 20, 130], [160, 60, 190]))
        cx, cy = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.9) * h
        if rng.random() < 0.5:
            cx = w - cx
        t = np.linspace(0, rng.uniform(1.0, 2.0) * np.pi, 24)
        r = rng.uniform(0.06, 0.12) * min(w, h)
        points = [(float(cx + r * np.cos(a)), float(cy + 0.6 * r * np.sin(a))) for a in t]
        draw.line(points, fill=colour, width=max(3, int(0.025 * min(w, h))))
    else:
        bar = max(6, int(rng.uniform(0.06, 0.09) * h))
        y0 = 0 if rng.random() < 0.5 else h - bar
        draw.rectangle([0, y0, w, y0 + bar], fill=(235, 232, 220))
        step = max(4, w // 40)
        for i, x in enumerate(range(0, w, step)):
            tick = bar if i % 5 == 0 else bar // 2
            ys = (y0, y0 + tick) if y0 == 0 else (y0 + bar - tick, y0 + bar)
            draw.line([(x, ys[0]), (x, ys[1])], fill=(30, 30, 30), width=1)
    return img


def biased_copies(card, out: str | os.PathLike, kind: str = "ink", fraction: float = 0.8, seed: int = 0,
                  positive: str | None = None) -> tuple[Path, Path]:
    """Write ``OUT/biased`` and ``OUT/biased_test`` (see the module docstring); returns both folders."""
    if kind not in ARTEFACTS:
        raise ConfigError(f"artefact must be one of {', '.join(ARTEFACTS)}, got {kind!r}")
    card = load_card(card)
    positive = positive or card.positive_class
    if positive not in card.classes:
        raise ConfigError(f"{card.name} has no positive class {positive!r}; pass positive=CLASS")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
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
            draw_artefact(open_image(card.image_path(rel)), kind, rng).save(target, "JPEG", quality=92)
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
        spec = {**(spec or {}), "name": f"{card.name}_{name}", "follow_symlinks": True,
                "description": f"{card.name} with a synthetic {kind} artefact on {fraction:.0%} of the {positive} "
                               f"train/val images" + (" and of the non-melanoma test images" if name == "biased_test"
                                                      else "; test clean")}
        write_text(folder / "dataset.yaml", yaml.safe_dump(spec, sort_keys=False))
        folders.append(folder)
    return folders[0], folders[1]
