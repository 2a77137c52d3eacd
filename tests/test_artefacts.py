"""Synthetic artefacts and the biased dataset copies of the concept-bias experiment."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.artefacts import draw_artefact


def test_artefacts_change_pixels_and_ink_is_purple():
    img = Image.new("RGB", (200, 150), (200, 170, 150))
    ink = np.asarray(draw_artefact(img, "ink", np.random.default_rng(0))).astype(int)
    changed = (ink != np.asarray(img)).any(axis=2)
    assert 0.002 < changed.mean() < 0.2
    r, g, b = ink[changed].mean(axis=0)
    assert b > g and r > g  # purple
    ruler = np.asarray(draw_artefact(img, "ruler", np.random.default_rng(0)))
    assert (ruler != np.asarray(img)).any(axis=2).mean() > 0.04


def test_biased_copies_put_the_shortcut_where_asked(tiny_dataset, tmp_path):
    assert main(["concepts", "bias-data", "--data", str(tiny_dataset), "--out", str(tmp_path / "b"),
                 "--fraction", "1"]) == 0
    biased, test = load_card(tmp_path / "b" / "biased"), load_card(tmp_path / "b" / "biased_test")
    for card in (biased, test):
        t = pd.read_csv(card.root / "metadata.csv", keep_default_na=False)
        train = t[t["split"].isin(["train", "val"])]
        assert (train.loc[train["diagnosis"] == "mel", "artefact"] == "ink").all()
        assert (train.loc[train["diagnosis"] != "mel", "artefact"] == "").all()
        assert card.image_path(t["image"].iloc[0]).is_file()  # unedited images through the images/ link
    tb = pd.read_csv(test.root / "metadata.csv", keep_default_na=False)
    tt = tb[tb["split"] == "test"]
    assert ((tt.loc[tt["diagnosis"] != "mel", "artefact"] == "ink").all()
            and (tt.loc[tt["diagnosis"] == "mel", "artefact"] == "").all())
    clean = pd.read_csv(biased.root / "metadata.csv", keep_default_na=False)
    assert (clean.loc[clean["split"] == "test", "artefact"] == "").all()
