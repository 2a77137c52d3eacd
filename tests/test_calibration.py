"""Temperature scaling: a known temperature is recovered; before/after ECE/Brier/NLL equal the
evaluation layer's and scikit-learn's values; paired CIs; errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from dermkit.errors import DataError
from dermkit.evaluate.calibration import (
    apply_temperature,
    calibration_markdown,
    calibration_metrics,
    calibration_report,
    fit_temperature,
)
from dermkit.evaluate.metrics import brier_score, expected_calibration_error


def _synthetic(temperature: float, n: int = 20000, classes: int = 5, seed: int = 0):
    """Logits z and labels drawn from softmax(z / T): the calibrated temperature is T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3.0, size=(n, classes))
    p = softmax(z / temperature, axis=1)
    y = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    z, y = _synthetic(true_t)
    from_logits = fit_temperature(z, y)
    assert from_logits == pytest.approx(true_t, rel=0.05)
    # probabilities give the same answer: softmax(log p / T) == softmax(z / T)
    assert fit_temperature(softmax(z, axis=1), y) == pytest.approx(from_logits, rel=1e-3)


def test_apply_temperature_equals_softmax_of_scaled_logits():
    z, _ = _synthetic(1.0, n=50)
    np.testing.assert_allclose(apply_temperature(softmax(z, axis=1), 2.5), softmax(z / 2.5, axis=1), atol=1e-12)
    np.testing.assert_allclose(apply_temperature(softmax(z, axis=1), 1.0), softmax(z, axis=1), atol=1e-12)
    # the argmax never changes, a zero probability stays zero
    p = np.array([[0.0, 0.3, 0.7]])
    np.testing.assert_allclose(apply_temperature(p, 3.0)[0, 0], 0.0)
    assert apply_temperature(p, 3.0).argmax() == 2


def test_calibration_report_values_and_paired_ci():
    z, y = _synthetic(2.0, n=400, seed=1)
    before = softmax(z, axis=1)  # over-confident: the right temperature is 2
    t = fit_temperature(z, y)
    after = apply_temperature(before, t)
    groups = np.arange(len(y)) // 2
    result, fig = calibration_report(y, before, after, groups=groups, n_bootstrap=200, temperature=t)
    assert result["before"]["ece"] == pytest.approx(expected_calibration_error(y, before))
    assert result["before"]["brier"] == pytest.approx(brier_score(y, before))
    assert result["before"]["nll"] == pytest.approx(log_loss(y, before, labels=range(5)))
    assert result["after"]["nll"] == pytest.approx(log_loss(y, after, labels=range(5)))
    assert result["after"]["nll"] < result["before"]["nll"]
    assert result["difference"]["ece"] == pytest.approx(result["after"]["ece"] - result["before"]["ece"])
    assert set(result["ci"]) == {"before", "after", "difference"}
    assert result["ci"]["difference"]["nll"]["high"] < 0  # clearly better after scaling
    assert result["bootstrap"]["grouped"] and result["temperature"] == t
    assert len(fig.axes) == 4
    assert "T = " in calibration_markdown(result)


def test_identical_before_and_after_have_zero_difference():
    z, y = _synthetic(1.0, n=100)
    p = softmax(z, axis=1)
    result, fig = calibration_report(y, p, p, n_bootstrap=50, figure=False)
    assert fig is None
    for key in ("ece", "brier", "nll"):
        assert result["difference"][key] == 0
        assert (result["ci"]["difference"][key]["low"], result["ci"]["difference"][key]["high"]) == (0, 0)
    assert calibration_metrics(y, p)["ece"] == pytest.approx(expected_calibration_error(y, p))


def test_bad_inputs_are_refused():
    z, y = _synthetic(1.0, n=20)
    with pytest.raises(DataError, match="positive number"):
        apply_temperature(softmax(z, axis=1), 0.0)
    with pytest.raises(DataError, match="C >= 2"):
        fit_temperature(np.ones(5), y[:5])
    with pytest.raises(DataError, match="NaN or infinite"):
        fit_temperature(np.full((3, 2), np.nan), [0, 1, 0])
    with pytest.raises(DataError, match="labels must lie in 0..4"):
        fit_temperature(z, y + 5)
    with pytest.raises(DataError, match="proba_before"):
        calibration_report(y, softmax(z, axis=1), softmax(z, axis=1)[:5])
