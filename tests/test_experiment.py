"""Binary tasks derived from a card, and the config/suite layer (dermkit.experiment)."""

from __future__ import annotations

import pytest
import yaml

from dermkit.data.tasks import derive_task
from dermkit.errors import ConfigError
from dermkit.experiment import load_config, run_suite, suite_table


def test_binary_task_relabels_and_keeps_the_original(tiny_dataset):
    card = derive_task(str(tiny_dataset), "binary:mel", negative_name="benign lesion")
    assert card.classes == ["other", "mel"]  # positive second: the binary metrics' positive class
    assert card.class_names["other"] == "benign lesion" and card.positive_class == "mel"
    rows = card.rows("test")
    assert set(rows["diagnosis"]) == {"other", "mel"}
    assert (rows["diagnosis"] == "mel").sum() == (rows["diagnosis_original"] == "mel").sum() == 6
    assert list(card.labels(rows)) == [int(d == "mel") for d in rows["diagnosis"]]
    assert derive_task(str(tiny_dataset), "all").classes == ["bcc", "mel", "nv"]


def test_task_errors(tiny_dataset):
    with pytest.raises(ConfigError, match="is not a class"):
        derive_task(str(tiny_dataset), "binary:melanoma")
    with pytest.raises(ConfigError, match="unknown task"):
        derive_task(str(tiny_dataset), "one_vs_one")
    assert derive_task(str(tiny_dataset), "melanoma_vs_rest").classes == ["other", "mel"]  # the card's positive_class
    (tiny_dataset / "dataset.yaml").write_text(
        (tiny_dataset / "dataset.yaml").read_text().replace("positive_class: mel", ""))
    with pytest.raises(ConfigError, match="positive_class"):
        derive_task(str(tiny_dataset), "melanoma_vs_rest")


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "x.yaml").write_text(yaml.safe_dump({"method": "magic"}))
    with pytest.raises(ConfigError, match="method must be one of"):
        run_suite([tmp_path / "x.yaml"], tmp_path / "out")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"method": "supervised", "name": "same"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"method": "supervised", "name": "same"}))
    with pytest.raises(ConfigError, match="share the name"):
        run_suite([tmp_path / "a.yaml", tmp_path / "b.yaml"], tmp_path / "out")


def test_suite_table_formats_cis_and_transfer_rows():
    summary = {"name": "r", "method": "prompt_learning", "dataset": "derm7pt", "task": "melanoma_vs_rest",
               "test": {"accuracy": 0.8253, "balanced_accuracy": 0.8, "macro_f1": 0.8119, "macro_auc": None},
               "test_ci": {"accuracy": {"low": 0.75, "high": 0.9}},
               "table_extra": {"note": "x"},
               "transfer": [{"eval_dataset": "ph2", "test": {"accuracy": 0.5}, "test_ci": {}}]}
    table = suite_table([summary])
    assert list(table["data"]) == ["derm7pt", "derm7pt -> ph2"]
    assert table["ACC"].iloc[0] == "82.5 [75.0, 90.0]" and table["BACC"].iloc[0] == "80.0"
    assert table["AUC"].iloc[0] == "n/a" and table["ACC"].iloc[1] == "50.0"
    assert table["note"].iloc[0] == "x"
