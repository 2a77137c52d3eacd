"""Prompts as data, zero-shot classification and the linear probe (tiny data, tiny random models)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dermkit.cli import main
from dermkit.data.prompts import default_class_names, load_prompts, prompt_spec
from dermkit.errors import ConfigError, DataError, ModelError
from dermkit.experiment import SUMMARY_KEYS, run_experiment
from dermkit.methods.linear_probe import LinearProbe, fit_probe, stratified_subsample

torch.set_num_threads(1)

# clip_folder (a tiny random open_clip CLIP in hub layout) comes from conftest.py.


@pytest.fixture(scope="module")
def clip(clip_folder):
    from dermkit.models.encoders import load_encoder

    return load_encoder(clip_folder)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ prompts
def test_default_prompts_from_card(tiny_card):
    spec = prompt_spec(tiny_card)
    assert spec.modality == "dermoscopy" and "a dermoscopic image of {}." in spec.templates
    assert spec.names == {"bcc": ["bcc lesion", "BCC"], "mel": ["mel lesion", "MEL"], "nv": ["nv lesion", "NV"]}
    texts = load_prompts(tiny_card)
    assert list(texts) == ["bcc", "mel", "nv"]
    assert len(texts["mel"]) == 2 * len(spec.templates)
    assert "a dermoscopic image of mel lesion." in texts["mel"]


def test_prompt_files_layer(tiny_card, tmp_path):
    (tiny_card.root / "prompts.yaml").write_text(yaml.safe_dump(
        {"modality": "clinical", "templates": ["a photo of {}."], "classes": {"mel": ["melanoma"]}}))
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"templates": ["{} on skin", "an image of {}"]}))
    texts = load_prompts(tiny_card, user)
    assert texts["mel"] == ["melanoma on skin", "an image of melanoma"]  # folder names, user templates
    assert texts["nv"] == ["nv lesion on skin", "an image of nv lesion", "NV on skin", "an image of NV"]
    assert prompt_spec(tiny_card, user).modality == "clinical"


@pytest.mark.parametrize("content, message", [
    ({"classes": {"melanomma": ["x"]}}, "melanomma"),
    ({"templates": ["no placeholder"]}, "placeholder"),
    ({"template": ["{}"]}, "unknown key"),
    ({"modality": "xray"}, "modality"),
])
def test_bad_prompt_files(tiny_card, tmp_path, content, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(DataError, match=message):
        load_prompts(tiny_card, path)
    with pytest.raises(DataError, match="not found"):
        load_prompts(tiny_card, tmp_path / "missing.yaml")


def test_packaged_prompt_files_match_the_cards():
    prompts = resources.files("dermkit.data").joinpath("prompts")
    cards = resources.files("dermkit.data").joinpath("cards")
    for entry in prompts.iterdir():
        if not entry.name.endswith(".yaml"):
            continue
        spec = yaml.safe_load(entry.read_text(encoding="utf-8"))
        assert spec["templates"] and all("{}" in t for t in spec["templates"]), entry.name
        assert spec["modality"] in ("dermoscopy", "clinical")
        card_file = cards.joinpath(entry.name)
        if card_file.is_file():
            classes = yaml.safe_load(card_file.read_text(encoding="utf-8"))["classes"]
            assert list(spec["classes"]) == classes, entry.name


def test_default_names_drop_duplicates(tiny_card):
    assert default_class_names(tiny_card)["bcc"] == ["bcc lesion", "BCC"]


# ------------------------------------------------------------------ zero-shot
def test_prompt_ensemble_equals_manual_average(clip):
    from dermkit.models.text import class_embeddings

    prompts = {"a": ["a photo of a cat.", "a cat"], "b": ["a dog", "dog picture", "a photo of a dog."]}
    emb = class_embeddings(clip, prompts)
    assert emb.shape == (2, clip.embed_dim)
    with torch.inference_mode():
        for row, cls in zip(emb, prompts):
            single = torch.cat([clip.encode_text(clip.tokenize([t]), normalize=True) for t in prompts[cls]])
            manual = single.mean(0)
            manual = manual / manual.norm()
            assert torch.allclose(row, manual, atol=1e-5)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_zeroshot_predictions_format(clip, tiny_card, tmp_path):
    from dermkit.evaluate import read_predictions
    from dermkit.methods.zeroshot import zeroshot_classifier

    predictor = zeroshot_classifier(clip, tiny_card, cache_dir=tmp_path, num_workers=0)
    preds = predictor.predict_split(tiny_card, "test", progress=False)
    assert len(preds) == 18
    assert list(preds.columns) == ["image", "target", "prediction", "prob:bcc", "prob:mel", "prob:nv", "group"]
    proba = preds[["prob:bcc", "prob:mel", "prob:nv"]].to_numpy()
    assert np.allclose(proba.sum(axis=1), 1) and (proba >= 0).all()
    assert (preds["prediction"] == np.array(["bcc", "mel", "nv"])[proba.argmax(1)]).all()
    read_predictions(preds)  # valid for the evaluation layer
    with pytest.raises(DataError, match="no prompt texts"):
        zeroshot_classifier(clip, tiny_card, prompts={"bcc": ["x"], "mel": ["y"]}, cache_dir=tmp_path)


def test_zeroshot_command(clip_folder, tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "zs"
    code, stdout, err = run(["zeroshot", "--model", clip_folder, "--data", f"{tiny_dataset}", "--out", out,
                             "--n-bootstrap", "20"], capsys)
    assert code == 0, err
    for name in ("metrics.json", "predictions.csv", "report.md", "report.html", "prompts.json",
                 "positive_vs_rest.json", "model/model.json"):
        assert (out / "tiny" / name).is_file(), name
    table = pd.read_csv(out / "zeroshot_table.csv")
    assert table.loc[0, "dataset"] == "tiny" and table.loc[0, "n"] == 18 and table.loc[0, "classes"] == 3
    assert table.loc[0, "positive_class"] == "mel" and 0 <= table.loc[0, "positive_auroc"] <= 1
    md = (out / "zeroshot_table.md").read_text()
    assert "Macro AUC (95% CI)" in md and "[mel]" in md
    pos = json.loads((out / "tiny" / "positive_vs_rest.json").read_text())
    metrics = json.loads((out / "tiny" / "metrics.json").read_text())
    # The one-vs-rest AUROC of "mel" equals the per-class AUC of the multi-class report.
    assert pos["auroc"] == pytest.approx(metrics["per_class"]["mel"]["auc"])
    # Each dataset folder has a summary.json with the schema of a `dermkit run` folder's (+ the split),
    # here with the numbers of `method: zeroshot` on the same data (the same classifier).
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    ran = run_experiment({"method": "zeroshot", "model": str(clip_folder), "data": str(tiny_dataset),
                          "num_workers": 0, "n_bootstrap": 20}, tmp_path / "run", progress=False)
    assert set(SUMMARY_KEYS) <= set(ran) and set(summary) == set(ran) | {"split"}
    assert summary["method"] == "zeroshot" and summary["dataset"] == "tiny" and summary["task"] == "all"
    assert summary["split"] == "test" and summary["report"] == str(out / "tiny") and summary["transfer"] == []
    assert summary["model"] == ran["model"] and summary["test"] == ran["test"] and summary["test_ci"] == ran["test_ci"]
    assert summary["test"]["macro_auc"] == pytest.approx(metrics["macro_auc"])


def test_zeroshot_refuses_image_only_encoder(tiny_dataset, tmp_path, capsys, monkeypatch):
    from dermkit.data import load_card
    from dermkit.methods.zeroshot import zeroshot_classifier
    from dermkit.models.encoders import load_encoder

    with pytest.raises(ModelError, match="text encoder"):
        zeroshot_classifier(load_encoder("timm:resnet18@random"), load_card(tiny_dataset))
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    code, _, err = run(["zeroshot", "--model", "timm:resnet18@random", "--data", tiny_dataset, "--out", tmp_path / "o"],
                       capsys)
    assert code == 2 and "text encoder" in err and "probe" in err
    code, _, err = run(["zeroshot", "--model", "timm:resnet18@random", "--data", ",", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--data" in err


# ------------------------------------------------------------------ linear probe
def test_stratified_subsample_keeps_every_class():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    idx = stratified_subsample(labels, 0.01, seed=0)
    assert np.bincount(labels[idx]).tolist() == [1, 1, 1]
    idx = stratified_subsample(labels, 0.1, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 1]
    assert np.array_equal(idx, stratified_subsample(labels, 0.1, seed=0))
    assert not np.array_equal(idx, stratified_subsample(labels, 0.1, seed=1))
    assert len(stratified_subsample(labels, 1.0, seed=4)) == len(labels)
    with pytest.raises(ConfigError):
        stratified_subsample(labels, 0.0, seed=0)


def test_probe_matches_sklearn_and_round_trips(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5))
    y = np.repeat([0, 1, 2], 30)
    x[:, 0] += y * 1.5
    probe = fit_probe(x[::2], y[::2], x[1::2], y[1::2], ["a", "b", "c"], Cs=[0.1, 1.0])
    assert probe.C in (0.1, 1.0) and set(probe.val_scores) == {0.1, 1.0}
    z = (x[::2] - x[::2].mean(0)) / x[::2].std(0)
    ref = LogisticRegression(C=probe.C, class_weight="balanced", max_iter=1000).fit(z, y[::2])
    assert np.allclose(probe.predict_proba(x[1::2]), ref.predict_proba((x[1::2] - probe.mean) / probe.scale),
                       atol=2e-3)  # warm-started lbfgs stops within its tolerance, not at the same point
    t = {k: v.numpy() for k, v in probe.tensors().items()}  # what a probe model folder stores
    loaded = LinearProbe(probe.classes, t["coef"], t["intercept"], t["mean"], t["scale"], probe.C)
    assert np.allclose(loaded.predict_proba(x), probe.predict_proba(x)) and loaded.classes == ["a", "b", "c"]
    # Binary training data inside a 3-class problem: the absent class gets probability 0.
    two = fit_probe(x[:60], y[:60], x[:60], y[:60], ["a", "b", "c"], Cs=[1.0])
    p = two.predict_proba(x)
    assert np.allclose(p.sum(1), 1) and np.all(p[:, 2] == 0)


def test_probe_command_beats_chance(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "probe"
    code, _, err = run(["probe", "--model", "timm:resnet18@random", "--data", tiny_dataset, "--out", out,
                        "--fractions", "0.1,1", "--seeds", "2", "--n-bootstrap", "20"], capsys)
    assert code == 0, err
    table = pd.read_csv(out / "probe_table.csv")
    assert table["fraction"].tolist() == [0.1, 1.0]
    assert table["n_train"].tolist() == [6, 48]  # round(0.1 * 16) = 2 per class
    assert table["n_seeds"].tolist() == [2, 1]  # the full training set is fit once
    full = table.set_index("fraction").loc[1.0]
    assert full["balanced_accuracy_mean"] > 0.6  # colour classes, chance = 1/3
    runs = pd.read_csv(out / "tiny" / "runs.csv")
    assert len(runs) == 3 and runs["C"].isin(np.logspace(-3, 3, 7)).all()
    for name in ("metrics.json", "predictions.csv", "report.html", "model/model.safetensors", "model/model.json"):
        assert (out / "tiny" / name).is_file(), name
    assert "±" in (out / "probe_table.md").read_text()
    # summary.json: the schema of a `dermkit run` folder's (+ the saved probe's fraction and seed), with
    # the numbers of `method: linear_probe` fitting that same probe.
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    ran = run_experiment({"method": "linear_probe", "model": "timm:resnet18@random", "data": str(tiny_dataset),
                          "fraction": 1.0, "seed": 0, "num_workers": 0, "n_bootstrap": 20}, tmp_path / "run",
                         progress=False)
    assert set(SUMMARY_KEYS) <= set(ran) and set(summary) == set(ran) | {"fraction", "seed"}
    assert summary["method"] == "linear_probe" and summary["dataset"] == "tiny"
    assert summary["report"] == str(out / "tiny")
    assert (summary["fraction"], summary["seed"], summary["n_train"]) == (1.0, 0, 48)
    for key in ("model", "C", "selected_on", "n_train"):
        assert summary[key] == ran[key], key
    assert summary["best_val_score"] == pytest.approx(ran["best_val_score"])
    assert summary["test"] == pytest.approx(ran["test"])
    # The full-data probe is a classifier folder like any other: it reproduces the report's predictions.
    import dermkit

    preds = dermkit.load_predictor(out / "tiny" / "model").predict_split(tiny_dataset, "test", progress=False)
    saved = pd.read_csv(out / "tiny" / "predictions.csv")
    np.testing.assert_allclose(preds.filter(like="prob:").to_numpy(), saved.filter(like="prob:").to_numpy(), atol=1e-6)
    code, _, err = run(["probe", "--model", "timm:resnet18@random", "--data", tiny_dataset, "--out", out,
                        "--fractions", "0,1"], capsys)
    assert code == 2 and "fraction" in err
