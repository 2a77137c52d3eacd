"""Metrics and bootstrap: known answers from scikit-learn and hand computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from dermkit.errors import DermkitError
from dermkit.evaluate import (
    HEADLINE_METRICS,
    bootstrap_ci,
    bootstrap_metrics,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    rank_auc,
    resample_indices,
    sensitivity_at_specificity,
)
from dermkit.evaluate.bootstrap import WeightedHeadline, resample_weights


def make_problem(n: int, n_classes: int, seed: int, noise: float = 0.1):
    """Seeded synthetic predictions: informative softmax scores, labels sometimes != argmax."""
    rng = np.random.default_rng(seed)
    priors = rng.dirichlet(np.full(n_classes, 3.0))
    y_true = rng.choice(n_classes, size=n, p=priors)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y_true] += 1.2
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True)
    y_pred = proba.argmax(axis=1)
    # A thresholded decision rule differs from argmax on some rows; metrics must use y_pred.
    flip = rng.random(n) < noise
    y_pred[flip] = rng.integers(0, n_classes, flip.sum())
    return y_true, proba, y_pred


@pytest.fixture(params=[(300, 4, 1), (250, 2, 2)], ids=["multiclass4", "binary"])
def problem(request):
    n, n_classes, seed = request.param
    y_true, proba, y_pred = make_problem(n, n_classes, seed)
    classes = [f"class_{c}" for c in range(n_classes)]
    return y_true, proba, y_pred, classes


def test_metrics_equal_sklearn(problem):
    y_true, proba, y_pred, classes = problem
    m = classification_metrics(y_true, proba, classes, y_pred)
    labels = list(range(len(classes)))

    assert m["n"] == len(y_true)
    assert m["classes"] == classes
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred), abs=1e-12
    )
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="weighted"), abs=1e-12
    )
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y_true, proba, labels=labels), abs=1e-12)
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()

    if len(classes) == 2:
        expected_auc = roc_auc_score(y_true, proba[:, 1])
    else:
        expected_auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro")
    assert m["macro_auc"] == pytest.approx(expected_auc, abs=1e-12)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels
    )
    cm = np.array(m["confusion_matrix"])
    for c, name in enumerate(classes):
        stats = m["per_class"][name]
        assert stats["sensitivity"] == pytest.approx(recall[c], abs=1e-12)
        assert stats["ppv"] == pytest.approx(precision[c], abs=1e-12)
        assert stats["f1"] == pytest.approx(f1[c], abs=1e-12)
        assert stats["support"] == support[c]
        assert stats["auc"] == pytest.approx(roc_auc_score(y_true == c, proba[:, c]), abs=1e-12)
        # Specificity/NPV from the one-vs-rest 2x2 table.
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = cm.sum() - tp - fp - fn
        assert stats["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert stats["npv"] == pytest.approx(tn / (tn + fn), abs=1e-12)

    assert ("sensitivity_at_specificity" in m) == (len(classes) == 2)


def test_label_metrics_use_prediction_not_argmax():
    y_true, proba, y_pred = make_problem(200, 3, seed=5, noise=0.3)
    assert (y_pred != proba.argmax(axis=1)).any()
    with_pred = classification_metrics(y_true, proba, ["a", "b", "c"], y_pred)
    default = classification_metrics(y_true, proba, ["a", "b", "c"])
    assert with_pred["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert default["accuracy"] == pytest.approx(accuracy_score(y_true, proba.argmax(axis=1)))
    # Probability metrics do not depend on the decision.
    for key in ("macro_auc", "ece", "brier", "log_loss"):
        assert with_pred[key] == default[key]


def test_ece_and_brier_hand_example():
    # Confidences 0.90/0.92 share bin (0.867, 0.933]; 0.70 and 0.62 are alone in theirs.
    proba = np.array([[0.90, 0.10], [0.08, 0.92], [0.30, 0.70], [0.62, 0.38]])
    y_true = np.array([0, 0, 1, 1])  # argmax correct, wrong, correct, wrong
    ece = (2 / 4) * abs(0.5 - 0.91) + (1 / 4) * abs(1 - 0.70) + (1 / 4) * abs(0 - 0.62)
    assert ece == pytest.approx(0.435)
    assert expected_calibration_error(y_true, proba) == pytest.approx(ece, abs=1e-12)
    # (p - onehot)^2 summed over classes: 0.02, 1.6928, 0.18, 0.7688.
    assert brier_score(y_true, proba) == pytest.approx((0.02 + 1.6928 + 0.18 + 0.7688) / 4)

    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    # Row 1 (target 1): .25 + .49 + .04 = .78; row 2 (target 2): .01 + .01 + .04 = .06.
    assert brier_score(np.array([1, 2]), three) == pytest.approx((0.78 + 0.06) / 2)
    # Both in their own bin: |0 - 0.5| and |1 - 0.8|.
    assert expected_calibration_error(np.array([1, 2]), three) == pytest.approx((0.5 + 0.2) / 2)


def test_ece_bin_edges_are_right_closed():
    # Confidence exactly 0.6 = 9/15 belongs to bin (8/15, 9/15], together with 0.58.
    proba = np.array([[0.6, 0.4], [0.58, 0.42]])
    y_true = np.array([0, 1])  # hits: 1, 0 -> bin accuracy 0.5, mean confidence 0.59
    assert expected_calibration_error(y_true, proba) == pytest.approx(0.09, abs=1e-12)


def test_rank_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(5, 400))
        positive = rng.random(n) < rng.uniform(0.05, 0.9)
        if positive.all() or not positive.any():
            continue
        # Coarse rounding creates many ties, including ties across positives and negatives.
        scores = np.round(rng.random(n) + 0.3 * positive, int(rng.integers(0, 3)))
        assert rank_auc(positive, scores) == pytest.approx(
            roc_auc_score(positive, scores), abs=1e-12
        )
        # Integer weights (a bootstrap resample) equal sklearn on the materialised resample.
        idx = rng.integers(0, n, n)
        weights = np.bincount(idx, minlength=n)
        if positive[idx].all() or not positive[idx].any():
            continue
        assert rank_auc(positive, scores, weights) == pytest.approx(
            roc_auc_score(positive[idx], scores[idx]), abs=1e-12
        )
    assert np.isnan(rank_auc(np.ones(4, bool), np.arange(4.0)))


def test_sensitivity_at_specificity_hand_example():
    negatives = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.98]
    positives = [0.35, 0.65, 0.85, 0.97, 0.99]
    scores = np.array(negatives + positives)
    positive = np.r_[np.zeros(10, bool), np.ones(5, bool)]
    # spec 0.95: no false positive allowed -> only 0.99 caught (1/5).
    # spec 0.90: one FP (0.98) allowed -> 0.97, 0.99 (2/5); exactly FPR 0.1 must count.
    # spec 0.80: two FPs (0.9, 0.98) -> 0.85, 0.97, 0.99 (3/5).
    expected = {"0.80": 0.6, "0.90": 0.4, "0.95": 0.2}
    assert sensitivity_at_specificity(positive, scores) == pytest.approx(expected)

    proba = np.c_[1 - scores, scores]
    y_true = positive.astype(int)
    m = classification_metrics(y_true, proba, ["benign", "malignant"])
    assert m["sensitivity_at_specificity"] == pytest.approx(expected)
    fast = WeightedHeadline(y_true, proba, proba.argmax(axis=1))(np.ones((1, len(scores))))
    for key, value in expected.items():
        assert fast[f"sensitivity_at_specificity_{key}"][0] == pytest.approx(value)


def test_undefined_metrics_are_nan_without_warnings():
    y_true = np.array([0, 0, 1, 1, 2, 2])  # class 3 never occurs
    proba = np.full((6, 4), 0.1)
    proba[np.arange(6), y_true] = 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y_true, proba, ["a", "b", "c", "d"])
        single = classification_metrics(np.zeros(3, int), np.tile([0.8, 0.2], (3, 1)), ["x", "y"])
    assert np.isnan(m["per_class"]["d"]["auc"])
    assert np.isnan(m["per_class"]["d"]["sensitivity"])
    assert m["per_class"]["d"]["support"] == 0
    assert m["macro_auc"] == pytest.approx(1.0)  # mean over the three defined classes
    assert np.isnan(single["macro_auc"]) and np.isnan(single["cohen_kappa"])
    assert all(np.isnan(v) for v in single["sensitivity_at_specificity"].values())


def test_invalid_inputs_raise_dermkit_error():
    with pytest.raises(DermkitError, match="shape"):
        classification_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, ["a", "b"])
    with pytest.raises(DermkitError, match="outside"):
        classification_metrics(np.array([0, 5]), np.full((2, 2), 0.5), ["a", "b"])


# ----------------------------------------------------------------------------- bootstrap


def test_fast_bootstrap_metrics_equal_point_estimates(problem):
    y_true, proba, y_pred, classes = problem
    m = classification_metrics(y_true, proba, classes, y_pred)
    fast = WeightedHeadline(y_true, proba, y_pred)(np.ones((1, len(y_true))))
    for key in HEADLINE_METRICS:
        assert fast[key][0] == pytest.approx(m[key], abs=1e-12), key


def test_fast_bootstrap_metrics_equal_sklearn_on_resamples():
    y_true, proba, y_pred = make_problem(150, 4, seed=7)
    classes = list("abcd")
    indices = list(resample_indices(y_true, n=5, seed=1))
    fast = WeightedHeadline(y_true, proba, y_pred)(resample_weights(indices, len(y_true)))
    for b, idx in enumerate(indices):
        m = classification_metrics(y_true[idx], proba[idx], classes, y_pred[idx])
        for key in HEADLINE_METRICS:
            assert fast[key][b] == pytest.approx(m[key], abs=1e-12), key


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    y_true, proba, y_pred = make_problem(400, 4, seed=11)
    m = classification_metrics(y_true, proba, list("abcd"), y_pred)
    ci = bootstrap_metrics(y_true, proba, y_pred, n=200, seed=0)
    assert set(ci) == set(HEADLINE_METRICS)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc",
                "cohen_kappa", "brier"):
        assert ci[key]["low"] <= m[key] <= ci[key]["high"], key
        assert ci[key]["high"] - ci[key]["low"] < 0.2
        assert ci[key]["level"] == 0.95
    assert ci == bootstrap_metrics(y_true, proba, y_pred, n=200, seed=0)
    assert ci != bootstrap_metrics(y_true, proba, y_pred, n=200, seed=1)


def test_generic_bootstrap_ci_uses_the_same_resamples():
    y_true, proba, y_pred = make_problem(200, 3, seed=4)
    fast = bootstrap_metrics(y_true, proba, y_pred, n=100, seed=3)
    slow = bootstrap_ci(lambda t, p, d: accuracy_score(t, d), y_true, proba, y_pred, n=100, seed=3)
    assert slow == pytest.approx(fast["accuracy"])
    both = bootstrap_ci(
        lambda t, p, d: {"acc": accuracy_score(t, d), "brier": brier_score(t, p)},
        y_true, proba, y_pred, n=100, seed=3,
    )
    assert both["brier"] == pytest.approx(fast["brier"])


def test_stratified_resampling_preserves_class_counts():
    y_true = np.array([0] * 50 + [1] * 7 + [2] * 3)
    for idx in resample_indices(y_true, n=50, seed=0):
        assert np.array_equal(np.bincount(y_true[idx], minlength=3), [50, 7, 3])


def test_grouped_resampling_keeps_groups_whole():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 5, size=40)
    groups = np.repeat([f"lesion{g}" for g in range(40)], sizes)
    group_label = rng.integers(0, 3, size=40)
    y_true = np.repeat(group_label, sizes)
    order = rng.permutation(len(y_true))  # groups interleaved in the table
    groups, y_true = groups[order], y_true[order]

    for idx in resample_indices(y_true, groups, n=30, seed=5):
        counts = np.bincount(idx, minlength=len(y_true))
        for g in np.unique(groups):
            rows = groups == g
            # Every row of a group is drawn equally often: the group came in whole (or not at all).
            assert len(set(counts[rows])) == 1
        drawn = {g: counts[groups == g][0] for g in np.unique(groups)}
        # Stratified by the group's class: as many groups per class as in the data.
        for label in range(3):
            members = [g for g in drawn if y_true[groups == g][0] == label]
            assert sum(drawn[g] for g in members) == len(members)


def test_degenerate_resamples_do_not_crash():
    # Each lesion's majority class is 0; class 1 only appears in a few lesions, so many grouped
    # resamples contain no class 1 at all: its metrics are undefined there (NaN, skipped).
    y_true = np.array([0, 0, 1] * 3 + [0, 0] * 20)
    groups = np.r_[np.repeat(np.arange(3), 3), np.repeat(np.arange(3, 23), 2)]
    proba = np.where(y_true[:, None] == np.arange(2), 0.7, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci, samples = bootstrap_metrics(y_true, proba, groups=groups, n=200, seed=0,
                                        return_samples=True)
        assert np.isnan(samples["macro_auc"]).any()
        assert np.isfinite(ci["macro_auc"]["low"])
        # A single class overall: AUC never defined, CI is NaN instead of an exception.
        one = bootstrap_metrics(np.zeros(10, int), np.tile([0.9, 0.1], (10, 1)), n=50)
    assert np.isnan(one["macro_auc"]["low"]) and np.isnan(one["macro_auc"]["high"])
    assert one["accuracy"]["low"] == one["accuracy"]["high"] == 1.0


def test_binary_bootstrap_includes_sensitivity_at_specificity():
    y_true, proba, y_pred = make_problem(300, 2, seed=9, noise=0.0)
    m = classification_metrics(y_true, proba, ["benign", "malignant"], y_pred)
    ci = bootstrap_metrics(y_true, proba, y_pred, n=200, seed=0)
    for key, value in m["sensitivity_at_specificity"].items():
        interval = ci[f"sensitivity_at_specificity_{key}"]
        assert interval["low"] <= value <= interval["high"]


def test_class_coverage_warning_names_absent_classes_and_affected_metrics():
    from dermkit.evaluate.metrics import class_coverage_warning, is_undefined

    y_true = np.array([0, 0, 1, 1, 2, 2])  # class "d" never occurs
    proba = np.full((6, 4), 0.1)
    proba[np.arange(6), y_true] = 0.7
    classes = ["a", "b", "c", "d"]
    m = classification_metrics(y_true, proba, classes)
    text = class_coverage_warning(y_true, proba.argmax(1), classes, m)
    assert "1 of the 4 classes never occur in the targets: 'd'" in text
    assert "macro_auc is the mean one-vs-rest AUC over the 3 present classes only" in text
    assert "balanced_accuracy" in text and "macro_f1 averages over the 3 classes" in text
    assert class_coverage_warning(np.arange(4), np.arange(4), classes,
                                  classification_metrics(np.arange(4), np.eye(4), classes)) is None

    single = classification_metrics(np.zeros(3, int), np.tile([0.8, 0.2], (3, 1)), ["x", "y"])
    text = class_coverage_warning(np.zeros(3, int), np.zeros(3, int), ["x", "y"], single)
    assert "Only 'x' occurs" in text and "'y'" in text
    assert "Undefined (null in metrics.json, n/a in the reports): macro_auc, cohen_kappa" in text
    assert "sensitivity_at_specificity" in text
    assert is_undefined(single["macro_auc"]) and is_undefined(None) and not is_undefined(0.0)


def test_label_and_probability_metric_lists_are_disjoint():
    from dermkit.evaluate.metrics import LABEL_METRICS, PROBABILITY_METRICS

    assert "accuracy" in LABEL_METRICS and "log loss" in PROBABILITY_METRICS
    assert not set(LABEL_METRICS) & set(PROBABILITY_METRICS)


def test_messages_show_plain_numbers_and_names():
    with pytest.raises(DermkitError) as err:
        classification_metrics(np.array([0]), np.ones((1, 1)), np.array(["only"]))
    assert "np." not in str(err.value) and "['only']" in str(err.value)
