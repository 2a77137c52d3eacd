"""Breslow thickness metrics against scikit-learn, bootstrap CIs, plots and the saved report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
)

from dermkit.errors import DataError
from dermkit.evaluate.thickness import (
    bootstrap_thickness,
    ordinal_metrics,
    quadratic_weighted_kappa,
    regression_metrics,
    thickness_report,
)

BINS = ["in situ", "<0.76 mm", "0.76-1.5 mm", ">1.5 mm"]


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.1, 4.0, 50)
    p = np.clip(y + rng.normal(0, 0.5, 50), 0, None)
    m = regression_metrics(y, p)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)))
    assert m["mape"] == pytest.approx(100 * mean_absolute_percentage_error(y, p))
    assert m["n"] == 50
    # A 0 mm lesion has no percentage error: MAPE skips it, MAE/RMSE do not.
    m0 = regression_metrics([0.0, 1.0], [0.5, 1.5])
    assert m0["mape"] == pytest.approx(50.0) and m0["mae"] == pytest.approx(0.5)


def test_ordinal_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 4, 40)
        p = np.clip(y + rng.integers(-2, 3, 40), 0, 3)
        m = ordinal_metrics(y, p, 4)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert m["mae_bins"] == pytest.approx(mean_absolute_error(y, p))
        assert m["qwk"] == pytest.approx(cohen_kappa_score(y, p, weights="quadratic", labels=list(range(4))))
    assert quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == pytest.approx(1.0)
    assert np.isnan(quadratic_weighted_kappa([1, 1], [1, 1], 4))  # no spread: undefined, not 1
    with pytest.raises(DataError, match="whole bins"):
        ordinal_metrics([0, 5], [0, 1], 4)
    with pytest.raises(DataError, match="NaN"):
        regression_metrics([np.nan], [1.0])


def test_bootstrap_intervals_contain_the_estimate():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 60)
    p = np.clip(y + rng.integers(-1, 2, 60), 0, 3)
    ci = bootstrap_thickness("ordinal", y, p, 4, n=200, seed=0)
    point = ordinal_metrics(y, p, 4)
    for k in ("accuracy", "mae_bins", "qwk"):
        assert ci[k]["low"] <= point[k] <= ci[k]["high"]
    assert ci == bootstrap_thickness("ordinal", y, p, 4, n=200, seed=0)  # deterministic
    groups = np.repeat(np.arange(30), 2)
    grouped = bootstrap_thickness("ordinal", y, p, 4, groups=groups, n=200, seed=0)
    assert grouped["qwk"]["low"] <= point["qwk"] <= grouped["qwk"]["high"]


@pytest.mark.parametrize("kind", ["ordinal", "regression"])
def test_report_saves_metrics_and_plots(tmp_path, kind):
    rng = np.random.default_rng(3)
    n = 30
    if kind == "ordinal":
        y = np.where(rng.random(n) < 0.6, rng.integers(0, 4, n), np.nan)  # NaN = no target (not a melanoma)
        p = rng.integers(0, 4, n).astype(float)
        bins = BINS
    else:
        y = np.where(rng.random(n) < 0.6, rng.uniform(0.2, 3, n), np.nan)
        p = rng.uniform(0.2, 3, n)
        bins = None
    report = thickness_report(kind, [f"img{i}" for i in range(n)], y, p, bins, n_bootstrap=50)
    assert report.metrics["n"] == int(np.isfinite(y).sum())
    folder = report.save(tmp_path / kind)
    saved = json.loads((folder / "thickness.json").read_text())
    assert saved["kind"] == kind and "ci" in saved
    for name in ("thickness.md", "thickness_predictions.csv", "thickness_agreement.png", "thickness_distribution.png"):
        assert (folder / name).is_file(), name
    text = report.summary_text()
    assert ("QWK" in text) if kind == "ordinal" else ("MAE" in text and "mm" in text)
