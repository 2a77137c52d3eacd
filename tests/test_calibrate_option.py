"""``calibrate: temperature``: the run fits one temperature on val (by NLL), saves it with the model,
the loaded model applies it everywhere, and the test report shows calibration before/after."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dermkit
from dermkit.errors import ConfigError
from dermkit.evaluate.calibration import apply_temperature, fit_temperature
from dermkit.evaluate.predictions import prediction_arrays, read_predictions
from dermkit.experiment import run_experiment
from dermkit.methods.base import Recalibrated


def _config(data, **kw):
    return {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
            "batch_size": 16, "num_workers": 0, "epochs": 2, "n_bootstrap": 20, "calibrate": "temperature", **kw}


def test_temperature_is_fitted_on_val_saved_and_applied(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    summary = run_experiment(_config(tiny_dataset), out, progress=False)
    card = json.loads((out / "model" / "model.json").read_text())
    t = card["temperature"]
    assert t > 0 and summary["temperature"] == pytest.approx(t, rel=1e-5)

    predictor = dermkit.load_predictor(out / "model")
    assert isinstance(predictor, Recalibrated) and predictor.temperature == t
    # By hand: the uncalibrated model's val probabilities give the same temperature.
    inner = predictor.inner
    _, y, proba, _ = prediction_arrays(read_predictions(inner.predict_split(tiny_dataset, "val", progress=False)))
    assert fit_temperature(proba, y) == pytest.approx(t, rel=1e-4)
    paths = [str(tiny_dataset / p) for p in read_predictions(out / "eval" / "test" / "predictions.csv")["image"]]
    raw = inner.predict_paths(paths)
    np.testing.assert_allclose(predictor.predict_paths(paths), apply_temperature(raw, t), atol=1e-9)
    assert (predictor.predict_paths(paths).argmax(1) == raw.argmax(1)).all()  # the argmax never moves
    # The run's test predictions are the calibrated ones; the report has before/after.
    saved = read_predictions(out / "eval" / "test" / "predictions.csv")
    np.testing.assert_allclose(prediction_arrays(saved)[2], predictor.predict_paths(paths), atol=1e-6)
    calibration = json.loads((out / "eval" / "test" / "calibration.json").read_text())
    assert calibration["temperature"] == pytest.approx(t) and set(calibration["before"]) == {"ece", "brier", "nll"}
    assert (out / "eval" / "test" / "reliability_calibration.png").is_file()
    # save -> load keeps the temperature.
    predictor.save(tmp_path / "copy")
    again = dermkit.load_predictor(tmp_path / "copy")
    np.testing.assert_allclose(again.predict_paths(paths), predictor.predict_paths(paths), atol=1e-9)


def test_bad_calibrate_value_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="calibrate"):
        run_experiment(_config(tiny_dataset, calibrate="platt"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_decision_offsets_tuned_on_val_raise_val_balanced_accuracy(tiny_dataset, tmp_path):
    from dermkit.evaluate.calibration import apply_offsets, fit_class_offsets
    from dermkit.evaluate.metrics import classification_metrics

    out = tmp_path / "run"
    summary = run_experiment(_config(tiny_dataset, decision="balanced", epochs=1), out, progress=False)
    predictor = dermkit.load_predictor(out / "model")
    assert isinstance(predictor, Recalibrated) and predictor.offsets is not None
    offsets = [summary["class_offsets"][c] for c in predictor.classes]
    np.testing.assert_allclose(predictor.offsets, offsets)
    inner = predictor.inner
    _, y, proba, _ = prediction_arrays(read_predictions(inner.predict_split(tiny_dataset, "val", progress=False)))
    t = predictor.temperature
    calibrated = apply_temperature(proba, t) if t else proba
    np.testing.assert_allclose(fit_class_offsets(calibrated, y), offsets)
    before = classification_metrics(y, calibrated, predictor.classes)["balanced_accuracy"]
    after = classification_metrics(y, apply_offsets(calibrated, offsets), predictor.classes)["balanced_accuracy"]
    assert after >= before


def test_class_offsets_known_answer():
    from dermkit.evaluate.calibration import apply_offsets, fit_class_offsets

    # Class 1 is always under-scored by a factor e^2: the tuned offset lifts it, recovering every case.
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    logits = np.where(np.eye(2)[y] == 1, 1.0, 0.0) + rng.normal(0, 0.1, (100, 2))
    logits[:, 1] -= 2.0
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert (proba.argmax(1) == y).mean() == 0.5
    offsets = fit_class_offsets(proba, y)
    assert offsets[0] == 0 and 1.0 < offsets[1] < 3.0
    assert (apply_offsets(proba, offsets).argmax(1) == y).all()
    np.testing.assert_allclose(apply_offsets(proba, np.zeros(2)), proba)
