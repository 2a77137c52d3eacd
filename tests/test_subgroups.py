"""Subgroup tables: each subgroup's metrics equal the metrics of that subset alone; bands, aliases,
missing values and flags; gaps; errors; `dermkit evaluate --subgroups` and `dermkit suite
--subgroups --baseline` on finished runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dermkit.cli import main
from dermkit.errors import ConfigError, DataError
from dermkit.evaluate import evaluate, read_predictions
from dermkit.evaluate.metrics import classification_metrics
from dermkit.evaluate.predictions import predictions_frame
from dermkit.evaluate.subgroups import (
    attach_metadata,
    parse_bins,
    parse_subgroups,
    subgroup_analysis,
    subgroup_labels,
    subgroup_table,
)

CLASSES = ["bcc", "mel", "nv"]


def _frame(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    proba = rng.dirichlet(np.ones(3), n)
    proba[np.arange(n), y] += rng.uniform(0, 0.8, n)
    proba /= proba.sum(axis=1, keepdims=True)
    frame = predictions_frame([f"images/{i:03d}.jpg" for i in range(n)], proba, CLASSES,
                              [CLASSES[i] for i in y], [f"L{i // 2}" for i in range(n)])
    frame["sex"] = rng.choice(["female", "male"], n)
    frame["age"] = rng.integers(18, 90, n).astype(float)
    frame.loc[:4, "age"] = np.nan
    frame["site"] = np.where(np.arange(n) < 12, "ear", rng.choice(["back", "face"], n))
    return read_predictions(frame)


def test_each_subgroup_equals_the_metrics_of_that_subset_alone():
    frame = _frame()
    labels, how = subgroup_labels(frame, ["sex", "age_band", "localization"])
    result = subgroup_analysis(frame, labels, how, n_bootstrap=50)
    index = {c: i for i, c in enumerate(CLASSES)}
    for attribute in result["attributes"]:
        for level in attribute["levels"]:
            rows = (labels[attribute["attribute"]] == level["level"]).to_numpy()
            sub = frame[rows]
            y = sub["target"].map(index).to_numpy()
            m = classification_metrics(y, sub[[f"prob:{c}" for c in CLASSES]].to_numpy(), CLASSES,
                                       sub["prediction"].map(index).to_numpy())
            assert level["n"] == rows.sum()
            assert level["metrics"]["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
            assert level["metrics"]["macro_auc"] == pytest.approx(m["macro_auc"])
            assert level["metrics"]["melanoma_sensitivity"] == pytest.approx(m["per_class"]["mel"]["sensitivity"])
            assert level["n_melanoma"] == int((y == 1).sum())
    # subgroups partition the set: their sizes add up, nothing was dropped or merged
    for attribute in result["attributes"]:
        assert sum(level["n"] for level in attribute["levels"]) == len(frame)


def test_bands_aliases_missing_and_flags():
    frame = _frame()
    labels, how = subgroup_labels(frame, ["age_band", "localization"], bins={"age": (40, 60)})
    ages = frame["age"].to_numpy()
    expected = np.where(np.isnan(ages), "missing", np.where(ages < 40, "<40", np.where(ages < 60, "[40, 60)", ">=60")))
    assert list(labels["age_band"]) == list(expected)
    assert how["age_band"]["edges"] == [40, 60]
    assert how["localization"]["column"] == "site"  # alias
    default, _ = subgroup_labels(frame, ["age"])  # the default bands of age
    assert set(default["age"]) <= {"<30", "[30, 45)", "[45, 60)", "[60, 75)", ">=75", "missing"}
    result = subgroup_analysis(frame, labels, how, n_bootstrap=30)
    site = {lv["level"]: lv for lv in result["attributes"][1]["levels"]}
    assert site["ear"]["n"] == 12 and "n < 30" in site["ear"]["flags"]  # shown and flagged, not merged
    age = {lv["level"]: lv for lv in result["attributes"][0]["levels"]}
    assert age["missing"]["n"] == 5
    # the gap compares unflagged, non-missing subgroups: worst minus best point estimate
    gap = result["attributes"][1]["gaps"]["balanced_accuracy"]
    assert set(gap["compared"]) == {"back", "face"}
    values = {k: site[k]["metrics"]["balanced_accuracy"] for k in ("back", "face")}
    assert gap["gap"] == pytest.approx(min(values.values()) - max(values.values()))
    assert gap["worst"] == min(values, key=values.get) and gap["ci"]["low"] <= gap["ci"]["high"]
    table = subgroup_table(result)
    assert table.iloc[0]["attribute"] == "overall" and table.iloc[0]["n"] == len(frame)


def test_card_missing_values_and_small_numeric_columns():
    frame = _frame()
    frame["sex"] = frame["sex"].where(np.arange(len(frame)) > 3, "unknown")
    frame["fitspatrick"] = np.resize([1.0, 2.0, 3.0, 4.0], len(frame))
    labels, how = subgroup_labels(frame, ["sex", "fitzpatrick"], missing_values=["unknown"])
    assert (labels["sex"] == "missing").sum() == 4
    assert set(labels["fitzpatrick"]) == {"1", "2", "3", "4"} and how["fitzpatrick"]["kind"] == "numeric values"


def test_subgroup_errors():
    frame = _frame()
    with pytest.raises(ConfigError, match="no metadata column 'skin'.*the columns are"):
        subgroup_labels(frame, ["skin"])
    frame["diameter"] = np.arange(len(frame), dtype=float)
    with pytest.raises(ConfigError, match="--bins diameter:"):
        subgroup_labels(frame, ["diameter"])
    with pytest.raises(ConfigError, match="not numeric"):
        subgroup_labels(frame, ["sex_band"])
    with pytest.raises(ConfigError, match="COLUMN:EDGE"):
        parse_bins(["age"])
    with pytest.raises(ConfigError, match="increasing order"):
        parse_bins(["age:60,30"])
    with pytest.raises(ConfigError, match="more than once"):
        parse_subgroups("sex,sex")
    assert parse_bins(["age_band:30,60"]) == {"age": (30.0, 60.0)}
    with pytest.raises(DataError, match="image 'images/000.jpg' is not in"):
        attach_metadata(frame, pd.DataFrame({"image": ["other.jpg"], "sex": ["male"]}))


def _tiny_predictions(tiny_dataset, seed=0):
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    test = meta[meta["split"] == "test"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(3), len(test))
    return predictions_frame(list(test["image"]), proba, CLASSES, list(test["diagnosis"]), list(test["lesion_id"]))


def test_cli_evaluate_subgroups_from_a_dataset(tiny_dataset, tmp_path, capsys):
    _tiny_predictions(tiny_dataset).to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--data", str(tiny_dataset), "--subgroups",
                 "sex,age_band", "--bins", "age:50", "--out", str(out), "--n-bootstrap", "20"]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    levels = [lv["level"] for lv in saved["subgroups"]["attributes"][1]["levels"]]
    assert set(levels) <= {"<50", ">=50"}
    assert (out / "subgroups_forest.png").is_file() and (out / "subgroups.csv").is_file()
    assert "## Subgroups" in (out / "report.md").read_text()
    assert "<h2>Subgroups</h2>" in (out / "report.html").read_text()
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--data", str(tiny_dataset), "--subgroups",
                 "skin_type", "--out", str(tmp_path / "bad")]) == 2
    assert "no metadata column" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_evaluate_without_subgroups_has_no_subgroup_files(tmp_path):
    report = evaluate(_frame(60), n_bootstrap=10)
    report.save(tmp_path)
    assert "subgroups" not in json.loads((tmp_path / "metrics.json").read_text())
    assert not (tmp_path / "subgroups_forest.png").exists()


def test_suite_adds_subgroup_gaps_and_baseline_columns(tiny_dataset, tmp_path):
    """Finished runs (summary.json + eval/test/predictions.csv) are reused, so nothing is trained."""
    out = tmp_path / "suite"
    configs = []
    for k, name in enumerate(("base", "other")):
        config = {"method": "linear_probe", "name": name, "data": str(tiny_dataset),
                  "model": "timm:tf_efficientnet_lite0"}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        configs.append(path)
        report_dir = out / name / "eval" / "test"
        report_dir.mkdir(parents=True)
        _tiny_predictions(tiny_dataset, seed=k).to_csv(report_dir / "predictions.csv", index=False)
        summary = {"name": name, "method": "linear_probe", "dataset": "tiny", "task": "all", "report": str(report_dir),
                   "test": {"accuracy": 0.5}, "test_ci": {}, "transfer": [], "table_extra": {}}
        (out / name / "summary.json").write_text(json.dumps(summary))
    table = run_suite_table(configs, out)
    assert list(table["run"]) == ["base", "other"]
    assert table["ΔBACC vs base"].iloc[0] == "baseline"
    assert " p=" in table["ΔBACC vs base"].iloc[1] and table["McNemar p"].iloc[1] != ""
    assert "ΔBACC sex" in table.columns
    assert (out / "other" / "compare_vs_base" / "comparison.json").is_file()
    assert (out / "base" / "subgroups" / "subgroups_forest.png").is_file()


def run_suite_table(configs, out):
    from dermkit.experiment import run_suite

    return run_suite(configs, out, subgroups=["sex"], baseline="base", n_bootstrap=20, progress=False)
