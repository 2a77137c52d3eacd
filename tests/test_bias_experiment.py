"""The concept-bias experiment from one config (issue 28 item 4): the table, the gap each intervention
recovers, the ink-latent scores (inked copies vs their clean originals) and the diagnosis, on the
tiny dataset and the tiny CLIP; bad configs exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dermkit.bias_experiment import (
    _auroc_columns,
    _diagnosis,
    _recovered,
    _test_metrics,
    load_bias_config,
    run_bias_experiment,
    shortcut_concepts,
)
from dermkit.cli import main
from dermkit.errors import ConfigError


def _config(data, clip, cache):
    return {"model": str(clip), "data": str(data), "task": "melanoma_vs_rest", "artefact": "ink", "fraction": 0.8,
            "seed": 0, "per_query": [1, 3], "n_bootstrap": 20, "query": "purple ink", "ink_auroc_sensitivity": [0.51],
            "query_min_similarity": -1,  # the tiny random CLIP's text similarities mean nothing: no floor
            "sae": {"activation": "topk", "k": 4, "expansion": 4, "epochs": 30, "batch_size": 64, "lr": 2e-3,
                    "Cs": [1.0], "num_workers": 0, "cache_dir": str(cache)},
            "cbm": {"Cs": [0.3, 1.0], "num_workers": 0, "cache_dir": str(cache)}}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, clip_folder):
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("bias")
    data = make_dataset(root)
    config = root / "bias.yaml"
    config.write_text(yaml.safe_dump(_config(data, clip_folder, root / "cache")))
    assert main(["concepts", "bias-experiment", str(config), "--out", str(root / "out")]) == 0
    return {"root": root, "out": root / "out", "data": data,
            "result": json.loads((root / "out" / "bias_experiment.json").read_text())}


def test_one_config_gives_the_table_runs_and_diagnosis(experiment):
    out, result = experiment["out"], experiment["result"]
    for run in ("sae", "cbm_biased", "cbm_clean"):
        assert (out / run / "model" / "model.json").is_file()
    assert (out / "data" / "biased" / "metadata.csv").is_file() and (out / "data" / "biased_test").is_dir()
    models = [r["model"] for r in result["rows"]]
    assert models[:2] == ["CBM trained on clean data", "CBM trained on the biased data"]
    assert any("nearest 'purple ink'" in m for m in models)
    clean, biased = result["rows"][0]["auroc"], result["rows"][1]["auroc"]
    assert result["gap"] == pytest.approx(clean - biased)
    for r in result["rows"][2:]:
        assert r["zeroed"]  # an intervention zeroes something
        assert r["recovered"] == pytest.approx(_recovered(r["auroc"], biased, clean)) if result["gap"] > 0 \
            else r["recovered"] is None
    # text queries zero the K nearest concepts of the model (K = per_query, at most its concept count)
    n_concepts = result["diagnostics"]["cbm_concepts"]
    assert [len(r["zeroed"]) for r in result["rows"][2:4]] == [1, min(3, n_concepts)]
    md = (out / "bias_experiment.md").read_text()
    assert "| model | AUROC | BACC | gap recovered |" in md and "**Diagnosis**" in md
    assert result["diagnosis"] and result["sae"]["activation"] == "topk"
    # Sensitivity rows zero the CBM's concepts above the lower threshold, and are marked as such.
    scores = pd.read_csv(out / "ink_latents.csv").set_index("latent")
    above = sorted(scores.index[(scores["ink_auroc"] >= 0.51) & (scores["cbm_weight"] > 0)])
    primary = [r["zeroed"] for r in result["rows"] if "ink concept(s)" in r["model"]]
    if above and [above] != [sorted(z) for z in primary]:
        assert [sorted(r["zeroed"]) for r in result["rows"] if r.get("sensitivity")] == [above]
    for r in result["rows"]:
        if r.get("sensitivity"):
            assert r["model"].startswith("(sensitivity)") and "0.51" in r["model"]
            assert all(scores.at[z, "ink_auroc"] >= 0.51 and scores.at[z, "cbm_weight"] > 0 for z in r["zeroed"])


def test_ink_scores_compare_inked_copies_with_their_originals(experiment):
    import pandas as pd

    import dermkit
    from dermkit.engine.features import extract_features

    out = experiment["out"]
    scores = pd.read_csv(out / "ink_latents.csv")
    p = dermkit.load_predictor(out / "cbm_biased" / "model")
    assert len(scores) == p.sae.n_latents and scores["ink_auroc"].is_monotonic_decreasing
    biased = dermkit.load_dataset(out / "data" / "biased")
    source = dermkit.load_dataset(experiment["data"])
    t = biased.table
    edited = t.index[(t["artefact"].fillna("") == "ink") & t["split"].isin(["train", "val"])]
    inked = extract_features(p.enc, [biased.image_path(t.loc[i, "image"]) for i in edited], cache_dir=p.cache_dir,
                             num_workers=0, progress=False)
    clean = extract_features(p.enc, [source.image_path(source.table.loc[i, "image"]) for i in edited],
                             cache_dir=p.cache_dir, num_workers=0, progress=False)
    from sklearn.metrics import roc_auc_score

    a = p.sae.activations(np.concatenate([inked, clean]))
    y = np.r_[np.ones(len(edited)), np.zeros(len(edited))]
    best = int(scores.iloc[0]["latent"])
    want = roc_auc_score(y, a[:, best]) if a[:, best].std() > 0 else 0.5
    assert scores.iloc[0]["ink_auroc"] == pytest.approx(want)
    # The per-concept logit shifts add up to the CBM's own mean paired shift of its margin (inked class
    # "melanoma" minus the other class), and only concepts with weight shift it.
    logits = p.probe.logits(a)
    margin = logits[:, 1] - logits[:, 0]
    n = len(edited)
    assert scores["logit_shift"].sum() == pytest.approx((margin[:n] - margin[n:]).mean())
    assert (scores.loc[scores["cbm_weight"] == 0, "logit_shift"] == 0).all()
    # The experiment's shortcut row zeroes exactly the concepts carrying 80% of that shift.
    chosen = shortcut_concepts(scores, 0.8)
    rows = [r for r in experiment["result"]["rows"] if "logit shift" in r["model"]]
    if chosen and rows:
        assert rows[0]["zeroed"] == chosen and "80%" in rows[0]["model"]
    assert experiment["result"]["diagnostics"]["shortcut_concepts"] == chosen
    # Every intervention row says which rule chose its concepts; "the naming found the ink" means a
    # text-query row zeroed an ink latent (not the shortcut row).
    result = experiment["result"]
    assert {r.get("rule") for r in result["rows"][2:]} <= {"query", "ink_auroc", "shortcut", "sensitivity"}
    ink = set(scores.loc[scores["ink_auroc"] >= 0.8, "latent"])
    queried = {z for r in result["rows"] if r.get("rule") == "query" for z in r["zeroed"]}
    assert result["diagnostics"]["query_hits"] == bool(queried & ink)


def test_learned_artefact_concept_joins_both_cbms_and_is_switched_off(tmp_path, clip_folder, experiment):
    """learn_artefact: the ink learned from the inked/clean train/val pairs (paired mean difference) is a
    named concept of both CBMs, the SAE reading the embedding without it; its row switches off exactly it;
    its scores and its share of the shortcut are in the report."""
    import dermkit
    from dermkit.engine.features import extract_features
    from dermkit.models.concepts import concept_direction, load_example_concepts

    data, root = experiment["data"], tmp_path
    config = {**_config(data, clip_folder, experiment["root"] / "cache"), "learn_artefact": True,
              "ablation": "mean", "per_query": [1]}
    result = run_bias_experiment(config, root / "out", progress=False)
    out = root / "out"
    learned = load_example_concepts(out / "learned")
    assert learned.names == ["ink"] and learned.info[0]["paired"]
    biased = dermkit.load_dataset(out / "data" / "biased")
    source = dermkit.load_dataset(data)
    t = biased.table
    edited = t.index[(t["artefact"].fillna("") == "ink") & t["split"].isin(["train", "val"])]
    p = dermkit.load_predictor(out / "cbm_biased" / "model")
    kw = dict(cache_dir=experiment["root"] / "cache", num_workers=0, progress=False)
    inked = extract_features(p.enc, [biased.image_path(t.loc[i, "image"]) for i in edited], **kw)
    clean = extract_features(p.enc, [source.image_path(source.table.loc[i, "image"]) for i in edited], **kw)
    np.testing.assert_allclose(learned.vectors[0], concept_direction(inked, clean, paired=True)[0], atol=1e-6)
    n = p.sae.n_latents
    for run in ("cbm_biased", "cbm_clean"):
        q = dermkit.load_predictor(out / run / "model")
        assert q.n_concepts == n + 1 and q.examples.names == ["ink"]
    row = next(r for r in result["rows"] if r.get("rule") == "learned")
    assert row["zeroed"] == [n] and "'ink'" in row["model"]
    assert row["auroc"] == pytest.approx(_test_metrics(p.with_zeroed([n], "mean"), p.task_card(
        out / "data" / "biased_test"), 20, 0, False)["auroc"])
    scores = pd.read_csv(out / "ink_latents.csv").set_index("latent")
    assert len(scores) == n + 1 and scores.at[n, "concept"] == "ink"
    y = np.r_[np.ones(len(edited)), np.zeros(len(edited))]
    from sklearn.metrics import roc_auc_score

    assert scores.at[n, "ink_auroc"] == pytest.approx(roc_auc_score(y, np.r_[inked, clean] @ learned.vectors[0]))
    d = result["diagnostics"]["learned"]
    assert d["latents"] == [n] and d["pair_auroc"] == pytest.approx(scores.at[n, "ink_auroc"])
    assert d["used_by_cbm"] == (n in {c["latent"] for c in p.concepts})
    # The SAE's own isolation is still judged on its latents alone.
    assert result["diagnostics"]["best_ink_latent"] < n
    md = (out / "bias_experiment.md").read_text()
    assert "Concept learned from the inked/clean train/val pairs ('ink'" in md and "**Diagnosis**" in md


def test_shortcut_concepts_are_the_fewest_carrying_the_share():
    scores = pd.DataFrame({"latent": [7, 3, 9, 1, 4, 5], "logit_shift": [0.15, 0.5, 0.3, 0.05, -0.2, 0.0]})
    assert shortcut_concepts(scores, 0.8) == [3, 9]  # 0.5 + 0.3 of the positive 1.0
    assert shortcut_concepts(scores, 0.81) == [3, 9, 7]
    assert shortcut_concepts(scores, 1.0) == [3, 9, 7, 1]  # never a concept that shifts the other way
    assert shortcut_concepts(scores.assign(logit_shift=-scores["logit_shift"].abs()), 0.8) == []


def test_auroc_columns_equal_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.4
    x = np.c_[rng.normal(size=40), np.where(y, 1.0, 0.0), np.zeros(40), rng.integers(0, 3, 40)]
    got = _auroc_columns(x, y)
    for j in range(x.shape[1]):
        want = roc_auc_score(y, x[:, j]) if x[:, j].std() > 0 else 0.5
        assert got[j] == pytest.approx(want)


def test_diagnosis_names_the_step_that_failed():
    config = {"ink_auroc": 0.8, "query": "purple ink"}
    base = {"gap": 0.1, "rows": [{"recovered": None}, {"recovered": None}, {"recovered": 0.1, "rule": "ink_auroc"}]}
    d = {"best_ink_auroc": 0.6, "best_ink_latent": 3, "ink_latents": 0, "cbm_ink_concepts": 0, "query_hits": False,
         "best_ink_rank_for_query": 40, "cbm_ink_weight_share": 0.0}
    assert "never isolated" in _diagnosis({**base, "diagnostics": d}, config)
    d.update(best_ink_auroc=0.95, ink_latents=4)
    assert "gives none of them weight" in _diagnosis({**base, "diagnostics": d}, config)
    d.update(cbm_ink_concepts=2, cbm_ink_weight_share=0.1)
    both = _diagnosis({**base, "diagnostics": d}, config)  # the text query missed, and zeroing by ink fell short
    assert "naming missed it" in both and "spread the shortcut" in both and "recovers 10% of the gap" in both
    d.update(query_hits=True)
    assert "spread the shortcut" in _diagnosis({**base, "diagnostics": d}, config)
    # Each rule's own recovery is named (not the best of all rows under the ink concepts' name).
    shifted = {**base, "rows": [*base["rows"], {"recovered": 0.3, "rule": "shortcut"}],
               "diagnostics": {**d, "shortcut_concepts": [1, 2, 3], "shortcut_share": 0.8,
                               "shortcut_weight_share": 0.4}}
    says = _diagnosis(shifted, config)
    assert "ink concepts (which hold 10% of its weight) recovers 10% of the gap" in says
    assert "the 3 concepts that carry 80% of the ink's logit shift hold 40% of its weight" in says
    assert "zeroing them recovers 30%" in says
    assert "naming missed" not in _diagnosis({**base, "diagnostics": d}, config)
    good = {**base, "rows": [*base["rows"], {"recovered": 0.7}], "diagnostics": d}
    assert "recovers 70% of the gap" in _diagnosis(good, config)
    # A sensitivity row (a lower, not pre-set threshold) never makes the verdict.
    explored = {**base, "rows": [*base["rows"], {"recovered": 0.9, "sensitivity": True}], "diagnostics": d}
    assert "90%" not in _diagnosis(explored, config) and "recovers 10% of the gap" in _diagnosis(explored, config)
    assert "no shortcut" in _diagnosis({**base, "gap": -0.01, "diagnostics": d}, config)
    d.update(best_ink_rank_for_query=None)  # an image-only encoder: no text query to find concepts by
    assert "no text tower" in _diagnosis({**base, "diagnostics": d}, config)
    # A concept learned from the pairs that falls short: its recovery and share first, then the SAE's step.
    learned = {"name": "ink", "latents": [9], "pair_auroc": 0.88, "used_by_cbm": True, "weight_share": 0.2,
               "shift_share": 0.6}
    rows = [*base["rows"], {"recovered": 0.3, "rule": "learned"}]
    says = _diagnosis({**base, "rows": rows, "diagnostics": {**d, "best_ink_auroc": 0.6, "learned": learned}}, config)
    assert says.startswith("switching off the concept learned from the inked/clean pairs ('ink', paired AUROC 0.880) "
                           "recovers 30% of the gap; it carries 60% of the ink's logit shift")
    assert "among the discovered concepts, the SAE never isolated" in says
    unused = _diagnosis({**base, "rows": rows, "diagnostics": {**d, "learned": {**learned, "used_by_cbm": False}}},
                        config)
    assert "gives it no weight" in unused
    rows[-1]["recovered"] = 0.8
    assert "recovers 80% of the gap" in _diagnosis({**base, "rows": rows, "diagnostics": {**d, "learned": learned}},
                                                   config)


@pytest.mark.parametrize("change, message", [
    ({"fraction": 1.5}, "fraction must be in"),
    ({"artefact": "paint"}, "artefact must be one of"),
    ({"per_query": [0]}, "per_query must be"),
    ({"colour": "red"}, "unknown key"),
    ({"sae": {"data": "x"}}, "sae.data is set by the experiment"),
    ({"model": None}, "`model:` is required"),
    ({"severity": 6}, "severity must be one of 1, 2, 3, 4, 5"),
    ({"ink_auroc_sensitivity": [0.9]}, "ink_auroc_sensitivity must be a list"),
    ({"ink_auroc": "high"}, "ink_auroc must be in"),
    ({"severity": "strong"}, "severity must be one of"),
    ({"shortcut_share": 1.5}, "shortcut_share must be a fraction"),
    ({"ablation": "half"}, "ablation must be one of zero, mean"),
    ({"learn_artefact": "yes"}, "learn_artefact must be true or false"),
    ({"cbm": {"example_concepts": "x"}}, "cbm.example_concepts is set by the experiment"),
])
def test_bad_configs_are_refused(tmp_path, capsys, change, message):
    raw = {"model": "m", "data": "d", **change}
    with pytest.raises(ConfigError, match=message):
        load_bias_config(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["concepts", "bias-experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message.split()[0] in err and "Traceback" not in err


def test_a_non_empty_out_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        run_bias_experiment({"model": "m", "data": "d"}, tmp_path / "out")
    assert (tmp_path / "out" / "x").read_text() == "keep me"


def test_severity_reaches_the_drawn_copies(tmp_path):
    """More severity, more ink: the biased copies' edited images differ from their originals in
    more pixels at severity 5 than at 1 (the same rows are chosen: same seed)."""
    import pandas as pd
    from PIL import Image

    from conftest import make_dataset
    from dermkit.data.artefacts import biased_copies

    data = make_dataset(tmp_path / "data")
    source = pd.read_csv(data / "metadata.csv")
    changed = {}
    for severity in (1, 5):
        biased, _ = biased_copies(data, tmp_path / f"s{severity}", fraction=1.0, seed=0, severity=severity)
        rows = pd.read_csv(biased / "metadata.csv")
        inked = rows.index[rows["artefact"] == "ink"]
        assert len(inked) and f"severity {severity}" in (biased / "dataset.yaml").read_text()
        diffs = []
        for i in inked:
            edited = np.asarray(Image.open(biased / rows.at[i, "image"]).convert("RGB"), dtype=float)
            original = np.asarray(Image.open(data / source.at[i, "image"]).convert("RGB"), dtype=float)
            diffs.append(float((np.abs(edited - original).max(axis=2) > 40).mean()))
        changed[severity] = float(np.mean(diffs))
    assert changed[5] > 1.5 * changed[1] > 0
    with pytest.raises(ConfigError, match="severity"):
        biased_copies(data, tmp_path / "bad", severity=0)
