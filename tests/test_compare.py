"""Paired comparison of two models: DeLong (hand-derived example), McNemar (hand counts), paired
bootstrap, refusal of files that do not describe the same cases, and `dermkit compare`."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from dermkit.cli import main
from dermkit.errors import DataError
from dermkit.evaluate.compare import (
    compare_predictions,
    delong_components,
    delong_macro_test,
    delong_test,
    mcnemar_test,
    paired_bootstrap,
)
from dermkit.evaluate.metrics import classification_metrics
from dermkit.evaluate.predictions import predictions_frame

# 3 positives and 3 negatives, scored by two models; model B has a tie (0.3 vs 0.3).
POSITIVE = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
SCORES_A = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
SCORES_B = np.array([0.6, 0.9, 0.3, 0.5, 0.3, 0.4])


def test_delong_structural_components_by_hand():
    # psi(X, Y) = 1 if X > Y, 1/2 if equal, 0 if below.
    # A: positive 0.4 beats 0.3 and 0.2 but not 0.7 -> V10 = [1, 1, 2/3]; negative 0.7 is beaten by
    #    0.9 and 0.8 -> V01 = [2/3, 1, 1]; AUC = 8/9.
    # B: positive 0.3 ties negative 0.3 (1/2), loses to 0.5 and 0.4 -> V10 = [1, 1, 1/6];
    #    V01 = [2/3, (1 + 1 + 1/2)/3 = 5/6, 2/3]; AUC = 13/18.
    auc_a, v10_a, v01_a = delong_components(POSITIVE, SCORES_A)
    auc_b, v10_b, v01_b = delong_components(POSITIVE, SCORES_B)
    np.testing.assert_allclose(v10_a, [1, 1, 2 / 3])
    np.testing.assert_allclose(v01_a, [2 / 3, 1, 1])
    np.testing.assert_allclose(v10_b, [1, 1, 1 / 6])
    np.testing.assert_allclose(v01_b, [2 / 3, 5 / 6, 2 / 3])
    assert auc_a == pytest.approx(8 / 9) == roc_auc_score(POSITIVE, SCORES_A)
    assert auc_b == pytest.approx(13 / 18) == roc_auc_score(POSITIVE, SCORES_B)


def test_delong_variance_and_p_value_by_hand():
    # S10 = covariance (ddof 1) of the V10 columns over the 3 positives, S01 over the negatives:
    #   S10 = [[1/27, 5/54], [5/54, 25/108]], S01 = [[1/27, 1/108], [1/108, 1/108]].
    # S = S10 / 3 + S01 / 3 -> Var(A) = 2/81, Var(B) = 13/162, Cov = 11/324,
    # Var(B - A) = 2/81 + 13/162 - 2 * 11/324 = 1/27; z = (13/18 - 8/9) / sqrt(1/27).
    s10 = np.array([[Fraction(1, 27), Fraction(5, 54)], [Fraction(5, 54), Fraction(25, 108)]])
    s01 = np.array([[Fraction(1, 27), Fraction(1, 108)], [Fraction(1, 108), Fraction(1, 108)]])
    s = s10 / 3 + s01 / 3
    var_diff = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    assert var_diff == Fraction(1, 27)
    result = delong_test(POSITIVE, SCORES_A, SCORES_B)
    assert result["var_a"] == pytest.approx(float(s[0, 0])) == pytest.approx(2 / 81)
    assert result["var_b"] == pytest.approx(float(s[1, 1])) == pytest.approx(13 / 162)
    assert result["cov"] == pytest.approx(float(s[0, 1])) == pytest.approx(11 / 324)
    assert result["var_difference"] == pytest.approx(1 / 27)
    assert result["difference"] == pytest.approx(13 / 18 - 8 / 9)
    z = (13 / 18 - 8 / 9) / math.sqrt(1 / 27)
    assert result["z"] == pytest.approx(z)
    assert result["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))  # two-sided normal
    assert result["p"] == pytest.approx(0.38648, abs=1e-5)


def _brute_force_errors(positive, scores):
    """DeLong terms from the pairwise kernel (no ranks): an independent implementation."""
    x, y = scores[positive], scores[~positive]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01, auc = psi.mean(axis=1), psi.mean(axis=0), psi.mean()
    m, n = len(x), len(y)
    e = np.empty(len(scores))
    e[positive] = (v10 - auc) / math.sqrt(m * (m - 1))
    e[~positive] = (v01 - auc) / math.sqrt(n * (n - 1))
    return auc, e


def test_delong_macro_multiclass_matches_pairwise_kernel():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2, 3], [9, 7, 12, 5])
    proba_a = rng.dirichlet(np.ones(4), len(y))
    proba_b = np.round(rng.dirichlet(np.ones(4), len(y)), 2)  # rounded: ties
    proba_b /= proba_b.sum(axis=1, keepdims=True)
    result = delong_macro_test(y, proba_a, proba_b)
    diffs, total = [], np.zeros(len(y))
    for c in range(4):
        auc_a, e_a = _brute_force_errors(y == c, proba_a[:, c])
        auc_b, e_b = _brute_force_errors(y == c, proba_b[:, c])
        assert auc_a == pytest.approx(roc_auc_score(y == c, proba_a[:, c]))
        diffs.append(auc_b - auc_a)
        total += e_b - e_a
    var = ((total / 4) ** 2).sum()
    assert result["difference"] == pytest.approx(np.mean(diffs))
    assert result["var_difference"] == pytest.approx(var)
    assert result["p"] == pytest.approx(2 * norm.sf(abs(np.mean(diffs)) / math.sqrt(var)))
    same = delong_macro_test(y, proba_a, proba_a)
    assert same["difference"] == 0 and same["p"] == 1.0


def test_delong_macro_binary_is_the_positive_class_auc():
    proba_a = np.c_[1 - SCORES_A, SCORES_A]
    proba_b = np.c_[1 - SCORES_B, SCORES_B]
    macro = delong_macro_test(POSITIVE.astype(int), proba_a, proba_b)
    assert macro["var_difference"] == pytest.approx(1 / 27)
    assert macro["p"] == pytest.approx(delong_test(POSITIVE, SCORES_A, SCORES_B)["p"])


def test_mcnemar_exact_by_hand():
    # 7 cases only A gets right, 2 only B; 10 both right, 3 both wrong.
    a = np.array([1] * 7 + [0] * 2 + [1] * 10 + [0] * 3, bool)
    b = np.array([0] * 7 + [1] * 2 + [1] * 10 + [0] * 3, bool)
    r = mcnemar_test(a, b)
    assert (r["only_a_correct"], r["only_b_correct"], r["both_correct"], r["both_wrong"]) == (7, 2, 10, 3)
    # two-sided exact binomial: 2 * P(X <= 2 | n = 9, p = 1/2) = 2 * (1 + 9 + 36) / 512
    assert r["method"] == "exact binomial"
    assert r["p"] == pytest.approx(2 * (1 + 9 + 36) / 512)


def test_mcnemar_chi_square_by_hand_and_no_discordance():
    a = np.array([1] * 30 + [0] * 15 + [1] * 50, bool)
    b = np.array([0] * 30 + [1] * 15 + [1] * 50, bool)
    r = mcnemar_test(a, b)
    stat = (abs(30 - 15) - 1) ** 2 / 45  # continuity-corrected
    assert r["method"] == "chi-square with continuity correction"
    assert r["statistic"] == pytest.approx(stat)
    assert r["p"] == pytest.approx(math.erfc(math.sqrt(stat / 2)))  # chi-square(1) survival function
    same = mcnemar_test(a, a)
    assert same["p"] == 1.0 and same["only_a_correct"] == same["only_b_correct"] == 0


def _tables(n=60, classes=("bcc", "mel", "nv"), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    y[: len(classes)] = np.arange(len(classes))
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y] += 1.2
    pa = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    logits_b = logits + rng.normal(scale=0.8, size=logits.shape)
    pb = np.exp(logits_b) / np.exp(logits_b).sum(axis=1, keepdims=True)
    images = [f"images/{i:03d}.jpg" for i in range(n)]
    targets = [classes[i] for i in y]
    groups = [f"L{i // 2}" for i in range(n)]
    return (predictions_frame(images, pa, list(classes), targets, groups),
            predictions_frame(images, pb, list(classes), targets, groups))


def test_paired_bootstrap_identical_files_give_p_one(tmp_path):
    a, _ = _tables()
    a.to_csv(tmp_path / "a.csv", index=False)
    a.to_csv(tmp_path / "b.csv", index=False)
    result = compare_predictions(tmp_path / "a.csv", tmp_path / "b.csv", n_bootstrap=200)
    for key, r in result["metrics"].items():
        assert r["difference"] == 0, key
        assert r["p"] == 1.0, key
        assert (r["ci"]["low"], r["ci"]["high"]) == (0.0, 0.0), key
    assert result["delong"]["p"] == 1.0 and result["mcnemar"]["p"] == 1.0


def test_paired_differences_equal_the_single_model_metrics():
    a, b = _tables(seed=1)
    result = compare_predictions(a, b, n_bootstrap=100, seed=3)
    classes = ["bcc", "mel", "nv"]
    index = {c: i for i, c in enumerate(classes)}
    y = a["target"].map(index).to_numpy()
    ma = classification_metrics(y, a[[f"prob:{c}" for c in classes]].to_numpy(), classes)
    mb = classification_metrics(y, b[[f"prob:{c}" for c in classes]].to_numpy(), classes)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "brier"):
        assert result["metrics"][key]["difference"] == pytest.approx(mb[key] - ma[key]), key
    assert result["grouped"] and result["n_groups"] == 30
    # the same resamples for both models: swapping A and B mirrors every CI
    swapped = compare_predictions(b, a, n_bootstrap=100, seed=3)
    for key in result["metrics"]:
        assert swapped["metrics"][key]["ci"]["low"] == pytest.approx(-result["metrics"][key]["ci"]["high"])


def test_paired_bootstrap_binary_has_sensitivity_at_specificity():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    pa = rng.uniform(size=40)
    out = paired_bootstrap(y, np.c_[1 - pa, pa], np.c_[1 - pa, pa], n=50)
    assert "sensitivity_at_specificity_0.90" in out and out["macro_auc"]["p"] == 1.0


@pytest.mark.parametrize("change, words", [
    (lambda b: b[["image", "target", "prediction", "prob:bcc", "prob:nv", "prob:mel", "group"]],
     ["different classes", "class 2 is 'mel' in A.csv but 'nv' in B.csv"]),
    (lambda b: b.iloc[::-1].reset_index(drop=True), ["row 1 differs", "image id", "sort both files"]),
    (lambda b: b.assign(target=["nv"] + list(b["target"][1:])), ["row 1 differs", "target"]),
    (lambda b: b.iloc[:-1], ["60 rows", "59", "images/059.jpg"]),
    (lambda b: b.assign(group=["other"] + list(b["group"][1:])), ["row 1", "group", "'other'"]),
])
def test_mismatched_files_are_refused_naming_the_first_mismatch(change, words):
    a, b = _tables()
    a.loc[0, "target"] = "bcc"
    b.loc[0, "target"] = "bcc"
    with pytest.raises(DataError) as info:
        compare_predictions(a, change(b.copy()), n_bootstrap=10, names=("A.csv", "B.csv"))
    for word in words:
        assert word in str(info.value)


def test_cli_compare_writes_tables_and_refuses_mismatch(tmp_path, capsys):
    a, b = _tables()
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    run = tmp_path / "run_b" / "eval" / "test"  # a run folder is accepted for its eval/test predictions
    run.mkdir(parents=True)
    b.to_csv(run / "predictions.csv", index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "run_b"), "--out", str(tmp_path / "cmp"),
                 "--n-bootstrap", "50"]) == 0
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"comparison.json", "comparison.csv", "comparison.md"}
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert "balanced_accuracy" in set(table["metric"])
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "DeLong" in text and "McNemar" in text
    b.iloc[::-1].to_csv(tmp_path / "b_reversed.csv", index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b_reversed.csv"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "row 1 differs" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
