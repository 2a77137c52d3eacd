"""Predictions reading/validation, evaluate() and the saved report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermkit.errors import DermkitError
from dermkit.evaluate import HEADLINE_METRICS, Report, evaluate, read_predictions
from dermkit.evaluate.report import FIGURES

CLASSES = ["MEL", "NV", "BCC", "Actinic keratosis & Bowen's <AKIEC>"]


def make_predictions(n: int = 240, classes=CLASSES, seed: int = 0, groups: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True)
    frame = pd.DataFrame({
        "image": [f"ISIC_{i:07d}" for i in range(n)],
        "target": [classes[i] for i in y],
        "prediction": [classes[i] for i in proba.argmax(axis=1)],
    })
    for k, name in enumerate(classes):
        frame[f"prob:{name}"] = proba[:, k]
    if groups:
        frame["group"] = [f"lesion_{i // 3}" for i in range(n)]
    return frame


def write(tmp_path, frame: pd.DataFrame, name: str = "preds.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


# -------------------------------------------------------------------------- read_predictions


def test_read_predictions_accepts_valid_csv_and_frame(tmp_path):
    frame = make_predictions(20, groups=True)
    from_csv = read_predictions(write(tmp_path, frame))
    from_frame = read_predictions(frame)
    pd.testing.assert_frame_equal(from_csv, from_frame)
    assert list(from_csv.columns[:3]) == ["image", "target", "prediction"]
    assert from_csv["prob:MEL"].dtype == float


def test_missing_column(tmp_path):
    path = write(tmp_path, make_predictions(10).drop(columns=["target"]))
    with pytest.raises(DermkitError, match="missing required column.*'target'") as err:
        read_predictions(path)
    assert str(path) in str(err.value)


def test_unknown_class_in_target(tmp_path):
    frame = make_predictions(10)
    frame.loc[3, "target"] = "melanoma"
    with pytest.raises(DermkitError) as err:
        read_predictions(write(tmp_path, frame))
    message = str(err.value)
    assert "'melanoma'" in message and "not one of the classes" in message
    assert "line 5" in message and "ISIC_0000003" in message  # header is line 1
    assert "prob:melanoma" in message  # says how to fix it
    # A DataFrame has no line numbers: the row and image id identify it.
    with pytest.raises(DermkitError, match=r"row 4 \(image 'ISIC_0000003'\)"):
        read_predictions(frame)


def test_nan_probability(tmp_path):
    frame = make_predictions(10)
    frame.loc[6, "prob:NV"] = np.nan
    with pytest.raises(DermkitError) as err:
        read_predictions(write(tmp_path, frame))
    message = str(err.value)
    assert "'prob:NV'" in message and "NaN" in message and "line 8" in message


def test_bad_probability_values(tmp_path):
    frame = make_predictions(10)
    frame["prob:BCC"] = frame["prob:BCC"].astype(object)
    frame.loc[2, "prob:BCC"] = "high"
    with pytest.raises(DermkitError, match="non-numeric value 'high'.*line 4"):
        read_predictions(write(tmp_path, frame))
    frame = make_predictions(10)
    frame.loc[1, "prob:MEL"] = 3.5
    with pytest.raises(DermkitError, match=r"outside \[0, 1\].*softmax"):
        read_predictions(frame)
    frame = make_predictions(10)
    frame.loc[0, "prob:MEL"] = frame.loc[0, "prob:MEL"] * 0.5
    with pytest.raises(DermkitError, match="sum to"):
        read_predictions(frame)


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DermkitError, match="empty"):
        read_predictions(empty)
    header_only = write(tmp_path, make_predictions(5).iloc[:0], "header.csv")
    with pytest.raises(DermkitError, match="no prediction rows"):
        read_predictions(header_only)
    with pytest.raises(DermkitError, match="not found"):
        read_predictions(tmp_path / "missing.csv")


def test_needs_two_probability_columns():
    frame = make_predictions(5)[["image", "target", "prediction", "prob:MEL"]]
    frame["target"] = frame["prediction"] = "MEL"
    with pytest.raises(DermkitError, match="at least 2 classes"):
        read_predictions(frame)


# --------------------------------------------------------------------------------- reports


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = evaluate(make_predictions(groups=True), n_bootstrap=200, seed=0, title="Test <run>")
    report.save(out)
    return report, out


def strict_json(text: str):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def test_save_writes_all_files(saved):
    report, out = saved
    expected = {"metrics.json", "predictions.csv", "report.md", "report.html", *FIGURES}
    assert expected <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes cleaned up
    for name in FIGURES:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_metrics_json_is_strict_and_complete(saved):
    report, out = saved
    metrics = strict_json((out / "metrics.json").read_text())
    for key in ("n", "classes", *HEADLINE_METRICS, "log_loss", "per_class", "confusion_matrix"):
        assert key in metrics, key
    assert metrics["classes"] == CLASSES
    for key in HEADLINE_METRICS:
        ci = metrics["ci"][key]
        assert set(ci) == {"low", "high", "level"} and ci["level"] == 0.95
        assert ci["low"] <= metrics[key] <= ci["high"] or key == "ece"
    assert metrics["bootstrap"] == {
        "n": 200, "seed": 0, "stratified": True, "grouped": True, "n_groups": 80,
    }
    assert set(metrics["per_class"][CLASSES[0]]) == {
        "sensitivity", "specificity", "ppv", "npv", "f1", "auc", "support",
    }
    assert "sensitivity_at_specificity" not in metrics  # multi-class


def test_nan_metrics_become_null(tmp_path):
    frame = make_predictions(60, seed=3)
    frame = frame[frame["target"] != "NV"]  # NV never occurs: its AUC/sensitivity are undefined
    report = evaluate(frame, n_bootstrap=20)
    report.save(tmp_path)
    metrics = strict_json((tmp_path / "metrics.json").read_text())
    assert metrics["per_class"]["NV"]["auc"] is None
    assert metrics["per_class"]["NV"]["sensitivity"] is None
    assert "n/a" in (tmp_path / "report.md").read_text()


def test_html_is_self_contained_and_shows_numbers(saved):
    report, out = saved
    text = (out / "report.html").read_text()
    assert text.count("data:image/png;base64,") == len(FIGURES)
    assert "src='" + "confusion" not in text  # no links to external files
    for key in HEADLINE_METRICS:
        assert f"{report.metrics[key]:.4f}" in text
        assert f"{report.metrics['ci'][key]['low']:.4f}" in text
    assert "Test &lt;run&gt;" in text
    assert "Actinic keratosis &amp; Bowen&#x27;s &lt;AKIEC&gt;" in text
    assert "<AKIEC>" not in text


def test_markdown_report(saved):
    report, out = saved
    text = (out / "report.md").read_text()
    assert text.startswith("# Test <run>")
    assert "| Metric | Value | 95% CI |" in text
    assert f"| Accuracy | {report.metrics['accuracy']:.4f} |" in text
    assert "| Class | Sensitivity | Specificity | PPV | NPV | F1 | AUC | Support |" in text
    for name in FIGURES:
        assert f"]({name})" in text
    assert "80 groups" in text


def test_round_trip_gives_identical_metrics(saved):
    report, out = saved
    again = evaluate(read_predictions(out / "predictions.csv"), n_bootstrap=200, seed=0)
    assert again.metrics == report.metrics


def test_binary_report_has_sensitivity_at_specificity(tmp_path):
    frame = make_predictions(200, classes=["benign", "malignant"], seed=4)
    report = evaluate(frame, n_bootstrap=200, seed=1)
    sens = report.metrics["sensitivity_at_specificity"]
    assert set(sens) == {"0.80", "0.90", "0.95"}
    assert sens["0.80"] >= sens["0.90"] >= sens["0.95"]
    for key in sens:
        assert report.metrics["ci"][f"sensitivity_at_specificity_{key}"]["high"] >= sens[key]
    assert report.metrics["bootstrap"]["grouped"] is False
    md = report.to_markdown()
    assert "Sensitivity at fixed specificity (positive class: malignant)" in md
    assert "AUC (positive class: malignant)" in md


def test_explicit_groups_override_and_are_validated():
    frame = make_predictions(60, seed=2)
    report = evaluate(frame, groups=np.arange(60) // 2, n_bootstrap=20)
    assert report.metrics["bootstrap"]["grouped"] is True
    assert report.metrics["bootstrap"]["n_groups"] == 30
    assert report.predictions["group"].tolist()[:3] == ["0", "0", "1"]
    with pytest.raises(DermkitError, match="one id per prediction row"):
        evaluate(frame, groups=np.arange(10), n_bootstrap=20)


def test_no_bootstrap_gives_null_intervals(tmp_path):
    report = evaluate(make_predictions(50), n_bootstrap=0)
    assert all(math.isnan(ci["low"]) for ci in report.metrics["ci"].values())
    assert isinstance(report, Report)


def test_long_class_names_are_rotated():
    from dermkit.evaluate.plots import plot_confusion_matrix

    names = ["a very long diagnostic category name number %d" % i for i in range(5)]
    fig = plot_confusion_matrix(np.eye(5, dtype=int) * 3, names)
    ax = fig.axes[0]
    labels = ax.get_xticklabels()
    assert all(label.get_rotation() == 45 for label in labels)
    assert all(len(label.get_text()) <= 28 for label in labels)


# ------------------------------------------------------------------- warnings and undefined values


def test_clean_report_has_empty_warnings_in_json(saved):
    report, out = saved
    metrics = strict_json((out / "metrics.json").read_text())
    assert metrics["warnings"] == [] and report.warnings == []
    assert list(metrics)[:3] == ["n", "classes", "warnings"]
    assert "warnings" not in report.metrics  # the in-memory metrics keep their old shape
    assert "**Warning:**" not in (out / "report.md").read_text()


def test_warnings_are_shown_first_in_every_rendering(tmp_path):
    frame = make_predictions(80, seed=5)
    proba = frame[[f"prob:{c}" for c in CLASSES]].to_numpy()
    frame["prediction"] = [CLASSES[i] for i in proba.argmin(axis=1)]
    report = evaluate(frame, n_bootstrap=10)
    assert len(report.warnings) == 1 and "disagrees with the argmax" in report.warnings[0]
    report.save(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.index("> **Warning:** The 'prediction' column") < md.index("- Samples:")
    html_text = (tmp_path / "report.html").read_text()
    assert html_text.index("<p class='warning'>") < html_text.index("Samples:")
    assert strict_json((tmp_path / "metrics.json").read_text())["warnings"] == report.warnings


def test_format_metric_prints_undefined_as_na():
    from dermkit.evaluate.tables import format_ci, format_metric

    for value in (None, float("nan"), np.float64("nan"), float("inf")):
        assert format_metric(value) == "n/a"
    assert format_metric(np.float64(-0.1), 3) == "-0.100" and format_metric(np.int64(7)) == "7"
    assert format_ci({"low": float("nan"), "high": float("nan"), "level": 0.95}) == "n/a"
    assert format_ci(None) == "n/a"
    assert format_ci({"low": 0.5, "high": 0.75}) == "0.5000 \u2013 0.7500"


def test_messages_print_plain_numbers():
    frame = make_predictions(10)
    frame.loc[1, "prob:MEL"] = np.float64(-0.1)
    with pytest.raises(DermkitError) as err:
        read_predictions(frame)
    assert "has -0.1, outside [0, 1]" in str(err.value) and "np." not in str(err.value)


def test_explicit_groups_with_missing_ids_are_own_clusters():
    frame = make_predictions(60, seed=2)
    groups = [None, np.nan, "NA", " "] + [f"g{i // 2}" for i in range(56)]
    report = evaluate(frame, groups=groups, n_bootstrap=0)
    assert report.metrics["bootstrap"]["n_groups"] == 4 + 28
    assert any("4 row(s) have no group id" in w for w in report.warnings)


def test_frame_warnings_survive_read_then_evaluate(tmp_path):
    frame = make_predictions(30)
    frame.loc[2, "target"] = frame.loc[2, "target"] + "  "
    path = write(tmp_path, frame)
    direct = evaluate(path, n_bootstrap=0)
    via_frame = evaluate(read_predictions(path), n_bootstrap=0)  # what the CLI does
    assert direct.warnings == via_frame.warnings
    assert direct.warnings[0].startswith(f"{path}: Stripped surrounding whitespace")
    assert "line 4" in direct.warnings[0]


def test_bad_n_bootstrap_message_is_plain():
    with pytest.raises(DermkitError) as err:
        evaluate(make_predictions(20), n_bootstrap=np.float64(1.5))
    assert "got 1.5" in str(err.value) and "np." not in str(err.value)
