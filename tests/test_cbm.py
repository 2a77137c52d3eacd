"""Concept bottleneck (method: cbm): sklearn-equal probabilities, sparse concepts, explanations,
interventions that change exactly the named columns, gallery and validity files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import dermkit
from dermkit.cli import main
from dermkit.methods.cbm import CBMPredictor, resolve_latents


@pytest.fixture(scope="module")
def cbm(tmp_path_factory, clip_folder):
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("cbm")
    data = make_dataset(root)
    # The tiny card declares concept columns of its own (validity reads them like Derm7pt's).
    with open(data / "dataset.yaml", "a") as f:
        f.write("concept_annotations:\n  red: {column: diagnosis, positive: [mel]}\n"
                "  white: {column: sex, positive: [female]}\n")
    common = {"data": str(data), "num_workers": 0, "cache_dir": str(root / "cache"), "n_bootstrap": 20}
    dermkit.run({"method": "sae", "model": str(clip_folder), "expansion": 4, "epochs": 30, "batch_size": 64,
                 "l1": 1e-3, "lr": 2e-3, "Cs": [1.0], **common}, out=root / "sae", progress=False)
    summary = dermkit.run({"method": "cbm", "sae": str(root / "sae" / "model"), "Cs": [0.1, 0.3, 1.0], **common},
                          out=root / "cbm", progress=False)
    return {"data": data, "dir": root / "cbm", "summary": summary,
            "predictor": dermkit.load_predictor(root / "cbm" / "model")}


def _features(p: CBMPredictor, data):
    from dermkit.engine.features import extract_split_features

    feats, labels, _ = extract_split_features(p.enc, dermkit.load_dataset(data), "test", cache_dir=p.cache_dir,
                                              num_workers=0, progress=False)
    return feats, labels


def test_probabilities_equal_sklearn_on_the_same_activations(cbm):
    from sklearn.linear_model import LogisticRegression

    p = cbm["predictor"]
    feats, _ = _features(p, cbm["data"])
    a = p.sae.activations(feats).astype(np.float64)
    z = (a - p.probe.mean) / p.probe.scale
    sk = LogisticRegression()
    sk.classes_ = np.arange(len(p.classes))
    sk.coef_, sk.intercept_ = p.probe.coef, p.probe.intercept
    np.testing.assert_allclose(p.head(feats), sk.predict_proba(z), atol=1e-10)
    # L1: only some latents carry weight, and the summary says how many.
    nonzero = int((np.abs(p.probe.coef) > 0).any(axis=0).sum())
    assert 0 < nonzero < p.sae.n_latents and cbm["summary"]["nonzero_concepts"] == nonzero
    assert {c["latent"] for c in p.concepts} == set(np.flatnonzero((np.abs(p.probe.coef) > 0).any(axis=0)).tolist())
    # Named one-to-one from the vocabulary (the tiny CLIP has a text tower), each with how sure it is:
    # names kept only at a margin >= min_name_margin, the others shown as "latent N".
    names = [c["name"] for c in p.concepts if c["name"]]
    assert len(set(names)) == len(names)
    naming = p.model_card["naming"]
    assert naming["min_name_margin"] == 0.01 and naming["named"] == len(names)
    assert naming["named"] + naming["unnamed"] == len(p.concepts)
    # naming: both (default): the card's annotations on val first (the tiny card's "red" = melanoma is
    # what its images show), the text tower for the rest; no name twice.
    assert naming["naming"] == "both" and naming["name_data"] and naming["annotations"] == 2
    assert naming["by_annotation"] >= 1 and "red" in names
    for c in p.concepts:
        assert {"similarity", "best_similarity", "margin", "candidate"} <= set(c)
        if c["name"] and c["name_source"].startswith("annotation"):  # named on val's annotations, CI above 0.5
            assert c["name"] in ("red", "white") and c["name_low"] > 0.5 and c["name_auroc"] >= 0.6
        elif c["name"]:
            assert c["name_source"] == "text similarity"
            assert c["margin"] >= 0.01 and c["best_similarity"] >= c["similarity"] - 1e-12
            assert p.concept_name(c["latent"]) == c["name"]
        else:
            assert c["unnamed"] and p.concept_name(c["latent"]) == f"latent {c['latent']}"
    # model.json round trip keeps the margins.
    card = json.loads((cbm["dir"] / "model" / "model.json").read_text())
    assert [c["margin"] for c in card["concepts"]] == [c["margin"] for c in p.concepts]


def test_intervention_changes_exactly_the_named_columns(cbm):
    p = cbm["predictor"]
    feats, _ = _features(p, cbm["data"])
    latents = [c["latent"] for c in p.concepts[:2]]
    q = p.with_zeroed(latents)
    before, after = p.activations(feats), q.activations(feats)
    changed = np.flatnonzero((before != after).any(axis=0))
    assert set(changed) <= set(latents) and np.all(after[:, latents] == 0)
    assert p.zeroed == [] and q.zeroed == sorted(latents)
    # Saved with its intervention, loaded with it.
    q.save(cbm["dir"] / "intervened")
    again = dermkit.load_predictor(cbm["dir"] / "intervened")
    assert again.zeroed == sorted(latents)
    np.testing.assert_allclose(again.head(feats), q.head(feats), atol=1e-12)
    # Mean ablation: the same columns set to their training mean, so their contribution is zero for
    # every image; the logits differ from zero ablation by one constant per class (the same ranking).
    m = p.with_zeroed(latents, ablation="mean")
    a_mean = m.activations(feats)
    assert set(np.flatnonzero((before != a_mean).any(axis=0))) <= set(latents)
    np.testing.assert_allclose(a_mean[:, latents], np.broadcast_to(p.probe.mean[latents], a_mean[:, latents].shape))
    z = (a_mean - p.probe.mean) / p.probe.scale
    assert np.all(z[:, latents] == 0)
    shift = m.probe.logits(a_mean) - q.probe.logits(after)
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-9)
    m.save(cbm["dir"] / "intervened_mean")
    assert dermkit.load_predictor(cbm["dir"] / "intervened_mean").ablation == "mean"
    assert again.ablation == "zero" and q.with_zeroed([], ablation=None).ablation == "zero"
    with pytest.raises(dermkit.errors.ConfigError, match="ablation must be one of zero, mean"):
        p.with_zeroed(latents, ablation="half")
    named = [c for c in p.concepts if c["name"]]
    if named:
        by_name = resolve_latents(p, [str(latents[0]), named[0]["name"]])
        assert [r["latent"] for r in by_name] == [latents[0], named[0]["latent"]]


def test_explanations_are_the_predicted_class_contributions(cbm):
    p = cbm["predictor"]
    feats, _ = _features(p, cbm["data"])
    explained = p.explain_features(feats[:3], top=100)
    z = (p.activations(feats[:3]) - p.probe.mean) / p.probe.scale
    for i, expl in enumerate(explained):
        c = int(p.head(feats[i:i + 1]).argmax())
        total = sum(e["contribution"] for e in expl) + p.probe.intercept[c]
        assert total == pytest.approx(float(z[i] @ p.probe.coef[c] + p.probe.intercept[c]), abs=1e-9)
        assert [e["contribution"] for e in expl] == sorted((e["contribution"] for e in expl), reverse=True)


def test_cli_show_intervene_and_predict(cbm, tmp_path, capsys):
    model, data = cbm["dir"] / "model", cbm["data"]
    assert main(["concepts", "show", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "show"),
                 "--top", "3", "--n-bootstrap", "10"]) == 0
    shown = capsys.readouterr().out
    assert "<img src='data:image/jpeg;base64," in (tmp_path / "show" / "concepts.html").read_text()
    assert "margin" in shown and "best latent per annotation" in shown and "optimistic" in shown
    validity = pd.read_csv(tmp_path / "show" / "validity.csv")
    assert set(validity["latent"]) == {c["latent"] for c in cbm["predictor"].concepts}
    best = pd.read_csv(tmp_path / "show" / "best_latents.csv")
    assert list(best["annotation"]) == ["red", "white"] and best["latent"].notna().all()
    matrix = pd.read_csv(tmp_path / "show" / "validity_matrix.csv")
    assert len(matrix) == len(cbm["predictor"].concepts) and {"red", "white"} <= set(matrix.columns)
    named = [c for c in cbm["predictor"].concepts if c["name"]]
    name = named[0]["name"] if named else str(cbm["predictor"].concepts[0]["latent"])
    # The tiny random CLIP matches "a ruler" to its nearest concept at a cosine near 0: below the floor, refused.
    capsys.readouterr()
    assert main(["concepts", "intervene", "--model", str(model), "--data", str(data), "--zero", f"{name},a ruler",
                 "--out", str(tmp_path / "iv"), "--n-bootstrap", "10"]) == 2
    refused = " ".join(capsys.readouterr().err.split())
    assert "'a ruler': no concept matches" in refused and "below the similarity floor 0.15" in refused
    assert "Traceback" not in refused and not (tmp_path / "iv").exists()
    assert main(["concepts", "intervene", "--model", str(model), "--data", str(data), "--zero", f"{name},a ruler",
                 "--out", str(tmp_path / "iv"), "--n-bootstrap", "10", "--min-similarity", "-1"]) == 0
    result = json.loads((tmp_path / "iv" / "intervention.json").read_text())
    assert [z["how"].split(" (")[0] for z in result["zeroed"]] == ["concept name" if named else "latent id",
                                                                   "text query"]
    assert "margin" in capsys.readouterr().out
    assert set(result["before"]) == set(result["after"]) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc"}
    assert ((tmp_path / "iv" / "before" / "metrics.json").is_file()
            and (tmp_path / "iv" / "after" / "report.html").is_file())
    assert result["ablation"] == "zero"
    # --ablation mean: the same ranking (AUROC), recorded; a mistyped value exits 2 naming the choices.
    assert main(["concepts", "intervene", "--model", str(model), "--data", str(data), "--zero", f"{name},a ruler",
                 "--out", str(tmp_path / "ivm"), "--n-bootstrap", "10", "--min-similarity", "-1",
                 "--ablation", "mean"]) == 0
    mean = json.loads((tmp_path / "ivm" / "intervention.json").read_text())
    assert mean["ablation"] == "mean" and mean["before"] == result["before"]
    assert mean["after"]["macro_auc"] == pytest.approx(result["after"]["macro_auc"], abs=1e-12)
    capsys.readouterr()
    assert main(["concepts", "intervene", "--model", str(model), "--data", str(data), "--zero", name,
                 "--out", str(tmp_path / "ivx"), "--ablation", "half"]) == 2
    assert "--ablation must be one of zero, mean" in capsys.readouterr().err and not (tmp_path / "ivx").exists()
    capsys.readouterr()
    image = sorted((data / "images").glob("*test*.jpg"))[0]
    assert main(["predict", str(image), "--model", str(model)]) == 0
    assert "concepts:" in capsys.readouterr().out
    # A model that is not a concept bottleneck is refused clearly.
    assert main(["concepts", "show", "--model", str(model.parent.parent / "sae" / "model"), "--data", str(data),
                 "--out", str(tmp_path / "x")]) == 2
    assert "method: cbm" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("n_classes, class_weight", [(3, "balanced"), (3, None), (2, "balanced")])
def test_fista_l1_head_has_sklearns_probabilities(n_classes, class_weight):
    """The torch L1 solver minimises scikit-learn's objective: the same probabilities and the same
    zero pattern as LogisticRegression(penalty l1) fitted to convergence on the same data."""
    from sklearn.linear_model import LogisticRegression

    from dermkit.models.linear import fit_l1_logistic

    rng = np.random.default_rng(n_classes)
    x = rng.normal(size=(240, 30))
    truth = rng.normal(size=(30, n_classes)) * (rng.random((30, n_classes)) < 0.25)
    y = (x @ truth + rng.gumbel(size=(240, n_classes))).argmax(axis=1)
    x = (x - x.mean(0)) / x.std(0)
    for C in (0.05, 0.5):
        sk = LogisticRegression(solver="saga", l1_ratio=1.0, C=C, class_weight=class_weight, max_iter=100_000,
                                tol=1e-10).fit(x, y)
        coef, intercept, n_iter, converged = fit_l1_logistic(x, y, n_classes, C, class_weight, max_iter=100_000,
                                                             tol=1e-10)
        assert converged and n_iter < 100_000
        logits = x @ coef.T + intercept
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose(p / p.sum(axis=1, keepdims=True), sk.predict_proba(x), atol=1e-6)
        zeros_sk = (np.abs(sk.coef_) < 1e-8).all(axis=0)
        assert ((np.abs(coef) < 1e-8).all(axis=0) == zeros_sk).all()


def test_fista_and_saga_probes_choose_alike():
    """fit_probe(penalty l1): both solvers pick the same C on val and give the same probabilities;
    a class absent from train gets probability 0 from both."""
    from dermkit.models.linear import fit_probe

    rng = np.random.default_rng(0)
    x = rng.gamma(0.3, size=(300, 60)) * (rng.random((300, 60)) < 0.2)  # sparse, non-negative, like SAE codes
    y = (x[:, :3] * [3, 2, 1] + rng.normal(0, 0.3, (300, 3))).argmax(axis=1)
    classes = ["a", "b", "c", "d"]  # d never occurs
    kw = dict(Cs=[0.03, 0.3], class_weight="balanced", penalty="l1")
    saga = fit_probe(x[:200], y[:200], x[200:], y[200:], classes, max_iter=100_000, solver="saga", **kw)
    fista = fit_probe(x[:200], y[:200], x[200:], y[200:], classes, max_iter=100_000, solver="fista", **kw)
    assert fista.C == saga.C and fista.info["solver"] == "fista" and fista.info["converged"]
    # saga stops at scikit-learn's default tolerance (1e-4), so the two agree to a few 1e-3
    np.testing.assert_allclose(fista.predict_proba(x[200:]), saga.predict_proba(x[200:]), atol=1e-2)
    assert (fista.predict_proba(x[200:]).argmax(1) == saga.predict_proba(x[200:]).argmax(1)).mean() > 0.98
    assert np.all(fista.predict_proba(x)[:, 3] == 0)


@pytest.mark.parametrize("key, value, says", [("naming", "names", "naming must be one of text, annotations, both"),
                                              ("min_name_auroc", 0.4, "min_name_auroc must be an AUROC in [0.5, 1]"),
                                              ("min_name_auroc", "high", "min_name_auroc must be a number")])
def test_naming_settings_are_checked(key, value, says):
    from dermkit.errors import ConfigError
    from dermkit.methods.cbm import CBMConfig

    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        CBMConfig.from_dict({"data": "ham10000", key: value}).validate()


def test_relaxed_lasso_refits_the_l1_support_with_sklearns_l2_weights():
    """refit_Cs: the L1 fit at each C only chooses the support; the weights are scikit-learn's L2
    logistic regression on those columns alone (same probabilities), zero elsewhere; the (C, refit C)
    pair is the val-best one, and a class absent from train keeps probability 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    from dermkit.models.linear import fit_probe

    rng = np.random.default_rng(1)
    x = rng.gamma(0.3, size=(300, 60)) * (rng.random((300, 60)) < 0.2)
    y = (x[:, :3] * [3, 2, 1] + rng.normal(0, 0.3, (300, 3))).argmax(axis=1)
    classes = ["a", "b", "c", "d"]  # d never occurs
    kw = dict(Cs=[0.03, 0.3], class_weight="balanced", penalty="l1", solver="fista", max_iter=100_000)
    plain = {C: fit_probe(x[:200], y[:200], x[200:], y[200:], classes, **{**kw, "Cs": [C]}) for C in kw["Cs"]}
    relaxed = fit_probe(x[:200], y[:200], x[200:], y[200:], classes, refit_Cs=[0.01, 1.0], **kw)
    support = np.flatnonzero((np.abs(plain[relaxed.C].coef) > 0).any(axis=0))
    assert 0 < len(support) < 60
    assert set(np.flatnonzero((np.abs(relaxed.coef) > 0).any(axis=0))) == set(support)
    z = (x - relaxed.mean) / relaxed.scale
    sk = LogisticRegression(C=relaxed.info["refit_C"], class_weight="balanced", max_iter=1000).fit(z[:200, support],
                                                                                                  y[:200])
    np.testing.assert_allclose(relaxed.predict_proba(x)[:, :3], sk.predict_proba(z[:, support]), atol=1e-8)
    assert np.all(relaxed.predict_proba(x)[:, 3] == 0)
    # The chosen pair is the best on val; val_scores[C] is the best over that C's refits.
    scores = relaxed.info["refit_scores"]
    assert set(scores) == {"0.03/0.01", "0.03/1", "0.3/0.01", "0.3/1"}
    assert scores[f"{relaxed.C:g}/{relaxed.info['refit_C']:g}"] == max(scores.values())
    assert balanced_accuracy_score(y[200:], relaxed.predict_proba(x[200:]).argmax(1)) == pytest.approx(
        max(scores.values()))
    for C in kw["Cs"]:
        assert relaxed.val_scores[C] == max(v for k, v in scores.items() if k.startswith(f"{C:g}/"))
    assert relaxed.info["nonzero_inputs"] == len(support) and "relaxed lasso" in relaxed.info["refit"]
    assert "refit_C" not in plain[0.03].info  # no refit_Cs: PanDerm-2's plain L1 weights


def test_cbm_records_its_refit_and_refuses_bad_refit_settings(cbm):
    from dermkit.errors import ConfigError
    from dermkit.methods.cbm import CBMConfig
    from dermkit.models.linear import fit_probe

    card = json.loads((cbm["dir"] / "model" / "model.json").read_text())
    assert card["probe"]["refit_C"] in CBMConfig(data="ham10000").refit_Cs  # the default grid
    assert cbm["summary"]["refit_C"] == card["probe"]["refit_C"]
    for bad in ("0.1", [], [0.1, 0], [True]):
        with pytest.raises(ConfigError, match="refit_Cs must be"):
            CBMConfig.from_dict({"data": "ham10000", "refit_Cs": bad}).validate()
    CBMConfig.from_dict({"data": "ham10000", "refit_Cs": None}).validate()  # null: plain L1 weights
    x, y = np.eye(4), np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError, match="needs penalty l1"):
        fit_probe(x, y, x, y, ["a", "b"], Cs=[1.0], penalty="l2", refit_Cs=[1.0])
    with pytest.raises(ConfigError, match="refit_Cs must be a non-empty list"):
        fit_probe(x, y, x, y, ["a", "b"], Cs=[1.0], penalty="l1", solver="fista", refit_Cs=[])


def test_concepts_learned_from_examples_join_the_bottleneck(cbm, tmp_path, capsys):
    """`dermkit concepts learn` writes a concept activation vector; a CBM with `example_concepts:` holds it as a
    named concept after the SAE's latents, the SAE reading the embedding without its direction; switching it off
    changes exactly its column, and the model round-trips with it."""
    from dermkit.models.concepts import concept_direction, load_example_concepts

    p, data = cbm["predictor"], cbm["data"]
    sae = cbm["dir"].parent / "sae" / "model"
    learned = tmp_path / "red"
    cache = cbm["dir"].parent / "cache"
    common = ["--sae", str(sae), "--data", str(data), "--num-workers", "0", "--cache-dir", str(cache)]
    assert main(["concepts", "learn", *common, "--column", "diagnosis", "--positive", "MEL", "--name", "reddish",
                 "--out", str(learned)]) == 0
    assert "separation AUROC" in capsys.readouterr().out
    ex = load_example_concepts(learned)
    # The vector is the unit mean difference of the train embeddings with diagnosis mel and without.
    from dermkit.engine.features import extract_features

    card = dermkit.load_dataset(data)
    rows = card.rows("train")
    feats = extract_features(p.enc, [card.image_path(i) for i in rows["image"]], cache_dir=cache,
                             num_workers=0, progress=False)
    mel = (rows["diagnosis"] == "mel").to_numpy()
    np.testing.assert_allclose(ex.vectors[0], concept_direction(feats[mel], feats[~mel])[0], atol=1e-6)
    assert ex.names == ["reddish"] and ex.base_fingerprint == p.model_card["base_fingerprint"]

    common_cfg = {"data": str(data), "num_workers": 0, "cache_dir": str(cache), "n_bootstrap": 20}
    summary = dermkit.run({"method": "cbm", "sae": str(sae), "Cs": [0.1, 0.3, 1.0], "example_concepts": str(learned),
                           **common_cfg}, out=tmp_path / "cbm", progress=False)
    q = dermkit.load_predictor(tmp_path / "cbm" / "model")
    n = q.sae.n_latents
    assert q.n_concepts == n + 1 and q.examples.names == ["reddish"]
    test_feats, _ = _features(q, data)
    bank = q.activations(test_feats)
    np.testing.assert_allclose(bank[:, n], test_feats @ ex.vectors[0], atol=1e-5)
    np.testing.assert_allclose(bank[:, :n], q.sae.activations(ex.residual(test_feats).astype(np.float32)), atol=1e-6)
    # The melanoma direction separates the tiny classes: the L1 head keeps it, under its own name.
    kept = {c["latent"]: c for c in q.concepts}
    assert n in kept and kept[n]["name"] == "reddish" and kept[n]["name_source"] == "learned from examples"
    assert q.concept_name(n) == "reddish" and summary["nonzero_concepts"] == len(q.concepts)
    assert q.model_card["learned_concepts"] == 1
    # Switched off by name: exactly its column changes; saved and loaded with it.
    assert [r["latent"] for r in resolve_latents(q, ["reddish"])] == [n]
    off = q.with_zeroed([n], ablation="mean")
    after = off.activations(test_feats)
    assert set(np.flatnonzero((after != bank).any(axis=0))) == {n}
    off.save(tmp_path / "off")
    again = dermkit.load_predictor(tmp_path / "off")
    np.testing.assert_allclose(again.head(test_feats), off.head(test_feats), atol=1e-9)
    assert again.zeroed == [n]
    with pytest.raises(dermkit.errors.ConfigError, match=f"out of range 0..{n}"):
        q.with_zeroed([n + 1])
    # A concept learned for another encoder, or a column that cannot define one, is refused by name.
    import json as _json

    card_json = learned / "concepts.json"
    other = _json.loads(card_json.read_text())
    other["base_fingerprint"] = "not-this-encoder"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "concepts.json").write_text(_json.dumps(other))
    (tmp_path / "other" / "concepts.safetensors").write_bytes((learned / "concepts.safetensors").read_bytes())
    capsys.readouterr()
    config = tmp_path / "other.yaml"
    config.write_text(f"method: cbm\nsae: {sae}\ndata: {data}\nnum_workers: 0\n"
                      f"example_concepts: {tmp_path / 'other'}\n")
    assert main(["run", str(config), "--out", str(tmp_path / "refused")]) == 2
    assert "learned with another encoder" in capsys.readouterr().err
    assert main(["concepts", "learn", *common, "--column", "diagnosis", "--positive", "nothing", "--name", "x",
                 "--out", str(tmp_path / "none")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "0 images have diagnosis in ['nothing']" in err and "--positive" in err
    assert not (tmp_path / "none").exists()
    assert main(["concepts", "learn", *common, "--column", "nope", "--name", "x", "--out", str(tmp_path / "n2")]) == 2
    assert "has no column 'nope'" in capsys.readouterr().err
