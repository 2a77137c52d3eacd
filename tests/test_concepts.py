"""Concept naming (vocabulary + Hungarian matching) and concept validity (AUROC vs annotations)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dermkit.errors import DataError
from dermkit.evaluate.concepts import concept_annotations, concept_validity
from dermkit.models.concepts import load_vocabulary, name_latents, nearest_latents


def test_packaged_vocabulary_has_the_checklist_and_the_artefacts():
    vocab = load_vocabulary()
    for name in ("blue-whitish veil", "atypical pigment network", "hair", "ruler", "ink marks", "dark corners",
                 "gel bubbles", "vignetting"):
        assert name in vocab.names
    i = vocab.names.index("ink marks")
    assert vocab.groups[i] == "artefacts" and "a dermoscopic image showing purple ink." in vocab.texts[i]
    # Every annotated concept of the packaged datasets is a vocabulary name.
    for dataset in ("derm7pt", "ph2"):
        assert set(concept_annotations(dataset)) <= set(vocab.names), dataset


def test_vocabulary_file_extends_or_replaces(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text("concepts:\n  mine:\n    shiny white lines: [shiny white lines, chrysalis structures]\n")
    assert "shiny white lines" in load_vocabulary(path).names and "hair" in load_vocabulary(path).names
    assert load_vocabulary(path, extend=False).names == ["shiny white lines"]
    path.write_text("concepts: [a, b]\n")
    with pytest.raises(DataError, match="expected concepts"):
        load_vocabulary(path)
    with pytest.raises(DataError, match="not found"):
        load_vocabulary(tmp_path / "none.yaml")


def test_hungarian_naming_recovers_a_permutation_one_to_one():
    rng = np.random.default_rng(0)
    vocab = load_vocabulary()
    text = rng.normal(size=(len(vocab), 64))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    perm = rng.permutation(len(vocab))[:12]
    directions = np.zeros((40, 64))
    latents = rng.choice(40, size=12, replace=False)
    directions[latents] = text[perm] + 0.3 * rng.normal(size=(12, 64)) / 8
    named = name_latents(directions, latents, text, vocab)
    assert [n["name"] for n in named] == [vocab.names[p] for p in perm]
    assert len({n["name"] for n in named}) == 12 and all(n["similarity"] > 0.8 for n in named)
    # More latents than names: the rest stay unnamed, never a duplicate name.
    many = name_latents(rng.normal(size=(len(vocab) + 5, 64)), range(len(vocab) + 5), text, vocab)
    assert sum(n["name"] is None for n in many) == 5
    assert nearest_latents(text[perm[0]], directions, latents)[0][0] == latents[0]


def test_concept_validity_is_the_auroc_of_the_activation():
    rng = np.random.default_rng(1)
    n = 120
    present = rng.random(n) < 0.3
    activations = np.zeros((n, 4))
    activations[:, 2] = present * 1.0 + rng.normal(0, 0.7, n)
    rows = pd.DataFrame({"image": [f"i{k}" for k in range(n)],
                         "blue_whitish_veil": np.where(present, "present", "absent")})
    named = [{"latent": 2, "name": "blue-whitish veil", "similarity": 0.3},
             {"latent": 1, "name": "hair", "similarity": 0.2}]
    table = concept_validity(activations, named, rows, concept_annotations("derm7pt"), n_bootstrap=200)
    veil = table.set_index("name").loc["blue-whitish veil"]
    assert veil["auroc"] == pytest.approx(roc_auc_score(present, activations[:, 2]))
    assert veil["low"] < veil["auroc"] < veil["high"] and veil["n_present"] == present.sum()
    assert table.set_index("name").loc["hair", "note"] == "not annotated in this dataset"
