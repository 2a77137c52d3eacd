"""Selective prediction: risk-coverage curve, AURC and metrics at fixed coverage by hand counts;
ties do not depend on row order; every report has them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dermkit.evaluate import evaluate
from dermkit.evaluate.metrics import melanoma_index
from dermkit.evaluate.predictions import predictions_frame
from dermkit.evaluate.selective import risk_coverage, selective_metrics, selective_with_ci

CLASSES = ["bcc", "mel", "nv"]


def test_risk_coverage_by_hand():
    # confidences 0.9, 0.8, 0.7, 0.6, 0.5 (max prob of each row); correct, wrong, correct, correct, wrong
    proba = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.25, 0.25, 0.5]])
    y_pred = proba.argmax(axis=1)
    y_true = np.array([0, 0, 0, 2, 1])
    curve = risk_coverage(y_true, proba)
    # errors among the top k: 0, 1, 1, 1, 2 -> risk 0, 1/2, 1/3, 1/4, 2/5
    np.testing.assert_allclose(curve["risk"], [0, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    np.testing.assert_allclose(curve["coverage"], [0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5)
    out = selective_metrics(y_true, proba, y_pred, melanoma=1, coverages=(0.8, 1.0))
    # 80%: the 4 most confident, 3 right; the one melanoma (last row, conf 0.5) is deferred
    assert out["at_coverage"]["0.80"]["n_decided"] == 4
    assert out["at_coverage"]["0.80"]["accuracy"] == pytest.approx(3 / 4)
    assert out["at_coverage"]["0.80"]["melanomas_deferred"] == 1.0
    assert np.isnan(out["at_coverage"]["0.80"]["melanoma_sensitivity"])
    assert out["at_coverage"]["1.00"]["accuracy"] == pytest.approx(3 / 5)
    assert out["at_coverage"]["1.00"]["melanoma_sensitivity"] == 0.0
    assert out["error_rate"] == pytest.approx(2 / 5)


def test_melanoma_sensitivity_at_coverage_by_hand():
    # 4 melanomas (y=1): confidences 0.95 (hit), 0.9 (miss), 0.6 (hit), 0.4 (hit); 6 others, all right.
    conf = np.array([0.95, 0.9, 0.6, 0.4, 0.99, 0.98, 0.97, 0.85, 0.8, 0.7])
    y_true = np.array([1, 1, 1, 1, 0, 0, 0, 2, 2, 2])
    y_pred = np.array([1, 2, 1, 1, 0, 0, 0, 2, 2, 2])
    proba = np.full((10, 3), 0.0)
    for i, (c, d) in enumerate(zip(conf, y_pred)):
        proba[i] = (1 - c) / 2
        proba[i, d] = c
    out = selective_metrics(y_true, proba, y_pred, melanoma=1, coverages=(0.8,))["at_coverage"]["0.80"]
    # top 8 by confidence: all but 0.6 and 0.4 -> melanomas decided: 0.95 (hit), 0.9 (miss)
    assert out["n_decided"] == 8
    assert out["melanoma_sensitivity"] == pytest.approx(1 / 2)
    assert out["melanomas_deferred"] == pytest.approx(2 / 4)
    assert out["accuracy"] == pytest.approx(7 / 8)
    assert out["threshold"] == pytest.approx(0.7)


def test_ties_do_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    proba = np.round(rng.dirichlet(np.ones(3), 40), 1)
    proba /= proba.sum(axis=1, keepdims=True)
    y = rng.integers(0, 3, 40)
    order = rng.permutation(40)
    a = selective_metrics(y, proba, melanoma=1)
    b = selective_metrics(y[order], proba[order], melanoma=1)
    assert a["aurc"] == pytest.approx(b["aurc"])
    for key in a["at_coverage"]:
        for metric, value in a["at_coverage"][key].items():
            assert b["at_coverage"][key][metric] == pytest.approx(value, nan_ok=True), (key, metric)


def test_melanoma_class_by_name():
    assert melanoma_index(["akiec", "bcc", "mel", "nv"]) == 2
    assert melanoma_index(["ACK", "MEL", "NEV"]) == 1
    assert melanoma_index(["common nevus", "atypical nevus", "Melanoma"]) == 2
    assert melanoma_index(["other", "bcc"]) is None
    assert melanoma_index(["other", "bcc"], positive_class="bcc") == 1


def test_selective_ci_and_no_melanoma():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    proba = rng.dirichlet(np.ones(2), 60)
    out = selective_with_ci(y, proba, proba.argmax(axis=1), ["other", "bcc"], n_bootstrap=50)
    assert out["melanoma_class"] is None
    assert "melanoma_sensitivity" not in out["at_coverage"]["0.90"]
    assert out["ci"]["aurc"]["low"] <= out["aurc"] <= out["ci"]["aurc"]["high"]


def test_every_report_has_selective_prediction(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    proba = rng.dirichlet(np.ones(3), 90)
    proba[np.arange(90), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    frame = predictions_frame([f"i{i}.jpg" for i in range(90)], proba, CLASSES, [CLASSES[i] for i in y])
    report = evaluate(frame, n_bootstrap=30)
    report.save(tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    expected = selective_metrics(y, proba, proba.argmax(axis=1), melanoma=1)
    assert saved["selective"]["aurc"] == pytest.approx(expected["aurc"])
    assert saved["selective"]["at_coverage"]["0.90"]["accuracy"] == pytest.approx(
        expected["at_coverage"]["0.90"]["accuracy"])
    assert saved["selective"]["melanoma_class"] == "mel"
    assert "Selective prediction" in (tmp_path / "report.md").read_text()
    assert "Selective prediction" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "risk_coverage.png").stat().st_size > 0
