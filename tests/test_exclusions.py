"""Exclusions as data (issue 24): ``exclude:`` in dataset.yaml names a CSV (image,reason) of images
that every command leaves out; ``dermkit data audit --confirm`` writes one from the flagged rows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dermkit.cli import main
from dermkit.data import check_dataset, load_card
from dermkit.engine.audit import confirm_exclusions
from dermkit.errors import DataError

# one test image of each class, one train image: 3 test rows and 1 train row left out
EXCLUDED = {"images/bcc_test_00.jpg": "off-topic",
            "images/mel_test_01.jpg": "near-duplicate of images/mel_train_03.jpg (cross-split)",
            "images/nv_test_02.jpg": "label issue: given nv, suggested mel",
            "images/nv_train_05.jpg": "blurry"}


def _exclude(root, text=None, rel="audit/excluded.csv"):
    """Write the exclusion list (``text``, default EXCLUDED) and point dataset.yaml at it."""
    if text is None:
        text = pd.DataFrame({"image": list(EXCLUDED), "reason": list(EXCLUDED.values())}).to_csv(index=False)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    card = yaml.safe_load((root / "dataset.yaml").read_text())
    card["exclude"] = rel
    (root / "dataset.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def _cfg(tmp_path, data, name="c"):
    cfg = {"method": "supervised", "name": name, "data": str(data), "model": "resnet18", "image_size": 32,
           "epochs": 1, "num_workers": 0}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_rows_leave_out_the_listed_images_and_say_why(tiny_dataset):
    _exclude(tiny_dataset)
    card = load_card(tiny_dataset)
    with pytest.warns(UserWarning, match=r"4 of 84 rows left out .*excluded.csv \(1 blurry, 1 label issue"):
        test = card.rows("test")
    assert len(test) == 18 - 3 and not set(test["image"]) & set(EXCLUDED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per card
        assert len(card.rows("train")) == 48 - 1 and len(card.rows("val")) == 18
    assert card.excluded == {"blurry": 1, "label issue": 1, "near-duplicate": 1, "off-topic": 1}
    assert list(card.exclusions["image"]) == list(EXCLUDED) and list(card.exclusions["line"]) == [2, 3, 4, 5]
    assert len(card.table) == 84  # metadata.csv itself is untouched
    assert test["csv_line"].tolist() == (test.index + 2).tolist()


def test_derived_task_keeps_the_exclusions(tiny_dataset):
    from dermkit.data.tasks import derive_task

    _exclude(tiny_dataset)
    with pytest.warns(UserWarning):
        assert len(derive_task(str(tiny_dataset), "binary:mel").rows("test")) == 15


def test_hand_written_list_without_reasons_and_with_blank_lines(tiny_dataset):
    _exclude(tiny_dataset, "image\nimages/bcc_test_00.jpg\n\n images/mel_test_00.jpg \n")
    card = load_card(tiny_dataset)
    with pytest.warns(UserWarning, match="2 no reason given"):
        assert len(card.rows("test")) == 16
    assert list(card.exclusions["line"]) == [2, 4]


@pytest.mark.parametrize("text, rel, words", [
    (None, "audit/missing.csv", ["missing.csv", "does not exist", "dataset.yaml"]),
    ("", "audit/excluded.csv", ["excluded.csv line 1", "empty"]),
    ("file,reason\nimages/bcc_test_00.jpg,x\n", "audit/excluded.csv", ["excluded.csv line 1", "no 'image' column"]),
    ('image,reason\nimages/bcc_test_00.jpg,x\nimages/x.jpg,"a\n', "audit/excluded.csv",
     ["excluded.csv", "cannot read"]),
    ("image,reason\nimages/bcc_test_00.jpg,x\nimages/nope.jpg,y\n", "audit/excluded.csv",
     ["excluded.csv line 3", "'images/nope.jpg' is not in", "metadata.csv"]),
    ("image,reason\n,x\n", "audit/excluded.csv", ["excluded.csv line 2", "empty 'image' cell"]),
    (None, "../outside.csv", ["dataset.yaml", "leaves the dataset folder"]),
    (None, "ABSOLUTE", ["dataset.yaml", "relative to the dataset folder"]),  # tmp_path/abs.csv, made below
])
def test_a_bad_exclusion_list_is_a_clear_error(tiny_dataset, tmp_path, capsys, text, rel, words):
    if rel == "ABSOLUTE":
        rel = str((tmp_path / "abs.csv").resolve())
    if rel.startswith("..") or Path(rel).is_absolute():
        card = yaml.safe_load((tiny_dataset / "dataset.yaml").read_text())
        card["exclude"] = rel
        (tiny_dataset / "dataset.yaml").write_text(yaml.safe_dump(card))
    elif text is None:
        _exclude(tiny_dataset, "image\n", rel="audit/other.csv")
        card = yaml.safe_load((tiny_dataset / "dataset.yaml").read_text())
        card["exclude"] = rel
        (tiny_dataset / "dataset.yaml").write_text(yaml.safe_dump(card))
    else:
        _exclude(tiny_dataset, text, rel=rel)
    with pytest.raises(DataError) as err:
        load_card(tiny_dataset).rows("test")
    assert all(w in str(err.value) for w in words), str(err.value)
    result = check_dataset(tiny_dataset, check_images=False)
    assert [p.kind for p in result.errors] == ["exclusion_list"]
    assert main(["data", "check", str(tiny_dataset), "--no-images"]) == 2
    assert "exclusion_list" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "rep")]) == 2


def test_exclude_key_must_be_a_path(tiny_dataset):
    (tiny_dataset / "dataset.yaml").write_text((tiny_dataset / "dataset.yaml").read_text() + "exclude: [a, b]\n")
    with pytest.raises(DataError, match="'exclude' must be the path of a CSV"):
        load_card(tiny_dataset)


def test_data_check_reports_the_count_as_information(tiny_dataset, capsys):
    _exclude(tiny_dataset)
    result = check_dataset(tiny_dataset, check_images=False)
    assert result.ok and result.extra["excluded"]["off-topic"] == 1
    assert main(["data", "check", str(tiny_dataset), "--no-images"]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "4 of 84 rows left out" in out


def test_run_evaluate_and_suite_leave_the_images_out(tiny_dataset, tmp_path, capsys):
    from dermkit.models.checkpoint import save_model
    from dermkit.models.registry import create_classifier

    _exclude(tiny_dataset)
    with pytest.warns(UserWarning, match="left out by the exclusion list"):
        assert main(["run", str(_cfg(tmp_path, tiny_dataset)), "--out", str(tmp_path / "run")]) == 0
    preds = pd.read_csv(tmp_path / "run" / "eval" / "test" / "predictions.csv")
    assert len(preds) == 15 and not set(preds["image"]) & set(EXCLUDED)
    cleaning = json.loads((tmp_path / "run" / "eval" / "test" / "metrics.json").read_text())["cleaning"]
    assert (cleaning["n_full"], cleaning["n_cleaned"], cleaning["n_excluded"]) == (18, 15, 3)
    assert "## Full vs cleaned split" in (tmp_path / "run" / "eval" / "test" / "report.md").read_text()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["excluded"] == load_card(tiny_dataset).excluded
    assert sum(summary["excluded"].values()) == len(EXCLUDED)

    model = save_model(tmp_path / "model", create_classifier("resnet18", 3, pretrained=False),
                       {"model": "resnet18", "classes": ["bcc", "mel", "nv"], "image_size": 32,
                        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(tiny_dataset), "--out", str(tmp_path / "rep"),
                 "--n-bootstrap", "20"]) == 0
    assert "3 of 18 predicted images are in the exclusion list" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "rep" / "predictions.csv")) == 15
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["cleaning"]["n_full"] == 18

    with pytest.warns(UserWarning, match="left out"):
        assert main(["suite", str(_cfg(tmp_path, tiny_dataset, "s")), "--out", str(tmp_path / "suite")]) == 0
    found = list((tmp_path / "suite").rglob("eval/test/predictions.csv"))
    assert found and all(len(pd.read_csv(p)) == 15 for p in found)


def test_evaluate_predictions_with_data_leaves_the_images_out(tiny_dataset, tmp_path, capsys):
    import json

    table = pd.read_csv(tiny_dataset / "metadata.csv")
    test = table[table["split"] == "test"]
    frame = pd.DataFrame({"image": test["image"], "target": test["diagnosis"], "prediction": test["diagnosis"],
                          **{f"prob:{c}": (test["diagnosis"] == c).astype(float) for c in ("bcc", "mel", "nv")}})
    frame.to_csv(tmp_path / "p.csv", index=False)
    _exclude(tiny_dataset)
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "rep"), "--n-bootstrap", "20"]) == 0
    assert "3 of 18 predicted images are in the exclusion list" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "rep" / "predictions.csv")) == 15
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert any("exclusion list" in w for w in metrics["warnings"])
    # perfect predictions: the cleaned split is as perfect as the full one, the paired difference 0
    accuracy = metrics["cleaning"]["metrics"]["accuracy"]
    assert accuracy["full"] == accuracy["cleaned"] == 1.0 and accuracy["difference"] == 0.0
    assert "Full vs cleaned split" in (tmp_path / "rep" / "report.html").read_text()
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--out", str(tmp_path / "all"),
                 "--n-bootstrap", "20"]) == 0  # without --data: every row
    assert len(pd.read_csv(tmp_path / "all" / "predictions.csv")) == 18


def _audit_folder(folder):
    folder.mkdir()
    pd.DataFrame({"image_a": ["images/mel_train_03.jpg", "images/bcc_train_00.jpg", "images/nv_val_00.jpg"],
                  "image_b": ["images/mel_test_01.jpg", "images/bcc_train_01.jpg", "images/nv_test_04.jpg"],
                  "score": [0.9, 0.8, 0.3], "cross_split": [True, False, True],
                  "flagged": [True, True, False]}).to_csv(folder / "near_duplicates.csv", index=False)
    pd.DataFrame({"image": ["images/bcc_test_00.jpg", "images/bcc_val_00.jpg"], "score": [3.0, 0.1],
                  "flagged": [True, False]}).to_csv(folder / "off_topic.csv", index=False)
    pd.DataFrame({"image": ["images/nv_test_02.jpg", "images/bcc_test_00.jpg", "images/mel_val_00.jpg"],
                  "label": ["nv", "bcc", "mel"], "suggested": ["mel", "nv", "mel"], "score": [0.9, 0.8, 0.1],
                  "flagged": [True, True, False]}).to_csv(folder / "label_issues.csv", index=False)


def test_confirm_writes_the_list_and_the_card_follows_it(tiny_dataset, tmp_path):
    before = (tiny_dataset / "dataset.yaml").read_text()
    _audit_folder(tmp_path / "audit")
    path, n = confirm_exclusions(tiny_dataset, tmp_path / "audit")
    assert path == tiny_dataset / "audit" / "excluded.csv" and n == 3
    listed = pd.read_csv(path)
    assert dict(zip(listed["image"], listed["reason"])) == {
        "images/mel_test_01.jpg": "near-duplicate of images/mel_train_03.jpg (cross-split)",
        "images/bcc_test_00.jpg": "off-topic",
        "images/nv_test_02.jpg": "label issue: given nv, suggested mel"}
    assert (tiny_dataset / "dataset.yaml").read_text() == before + "exclude: audit/excluded.csv\n"
    card = load_card(tiny_dataset)
    with pytest.warns(UserWarning, match="3 of 84"):
        assert len(card.rows("test")) == 15
    assert card.classes == ["bcc", "mel", "nv"] and card.group_column == "lesion_id"  # other keys kept

    # a hand-added line survives the next confirm, and the key is not written twice
    listed.loc[len(listed)] = ["images/nv_train_05.jpg", "blurry"]
    listed.to_csv(path, index=False)
    _, n = confirm_exclusions(tiny_dataset, tmp_path / "audit")
    assert n == 4 and (tiny_dataset / "dataset.yaml").read_text().count("exclude:") == 1


def test_confirm_on_a_folder_without_dataset_yaml_keeps_the_packaged_card(tmp_path):
    from conftest import make_dataset

    root = make_dataset(tmp_path, name="ph2", classes=("common_nevus", "atypical_nevus", "melanoma"),
                        write_yaml=False)
    folder = tmp_path / "audit"
    folder.mkdir()
    pd.DataFrame({"image_a": [], "image_b": [], "cross_split": [], "flagged": []}).to_csv(
        folder / "near_duplicates.csv", index=False)
    pd.DataFrame({"image": ["images/melanoma_test_00.jpg"], "flagged": [True]}).to_csv(
        folder / "off_topic.csv", index=False)
    pd.DataFrame({"image": [], "label": [], "suggested": [], "flagged": []}).to_csv(
        folder / "label_issues.csv", index=False)
    packaged = load_card(root)
    confirm_exclusions(root, folder)
    assert (root / "dataset.yaml").read_text() == "exclude: audit/excluded.csv\n"
    card = load_card(root)
    assert card.sources[0] == "packaged card ph2.yaml" and card.excluded == {"off-topic": 1}
    assert card.classes == packaged.classes and card.class_names == packaged.class_names


def test_data_audit_confirm_cli(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["data", "audit", str(tiny_dataset), "--out", str(out), "--model", "resnet18", "--folds", "3",
                 "--cache-dir", str(tmp_path / "cache"), "--confirm"]) == 0
    assert "exclusion list:" in capsys.readouterr().out
    listed = pd.read_csv(tiny_dataset / "audit" / "excluded.csv")
    card = load_card(tiny_dataset)
    assert card.exclude == "audit/excluded.csv" and len(card.exclusions) == len(listed)
    flagged = sum(int(pd.read_csv(out / f)["flagged"].sum()) for f in ("off_topic.csv", "label_issues.csv"))
    assert len(listed) <= flagged + int(pd.read_csv(out / "near_duplicates.csv")["flagged"].sum())
    if len(listed):
        with pytest.warns(UserWarning, match="left out"):
            rows = pd.concat([card.rows(s) for s in ("train", "val", "test")])
        assert len(rows) == 84 - len(listed)


def test_cleaning_effect_matches_the_metrics_of_both_splits_and_pairs_the_resamples():
    import numpy as np

    from dermkit.evaluate.compare import cleaning_effect
    from dermkit.evaluate.metrics import classification_metrics

    rng = np.random.default_rng(0)
    n = 120
    y = np.arange(n) % 3
    proba = rng.dirichlet(np.ones(3), n)
    proba[np.arange(n), y] += 1.0  # mostly right ...
    excluded = np.zeros(n, bool)
    excluded[:15] = True
    wrong = (y[:15] + 1) % 3
    proba[:15] = 0.05
    proba[np.arange(15), wrong] = 0.9  # ... except the excluded rows, confidently wrong
    proba /= proba.sum(1, keepdims=True)
    result = cleaning_effect(y, proba, excluded=excluded, n=300, seed=1)
    full = classification_metrics(y, proba, ["a", "b", "c"])
    clean = classification_metrics(y[~excluded], proba[~excluded], ["a", "b", "c"])
    acc = result["metrics"]["accuracy"]
    assert acc["full"] == pytest.approx(full["accuracy"]) and acc["cleaned"] == pytest.approx(clean["accuracy"])
    assert result["metrics"]["macro_auc"]["cleaned"] == pytest.approx(clean["macro_auc"])
    assert (result["n_full"], result["n_cleaned"], result["n_excluded"]) == (120, 105, 15)
    # removing only wrong answers raises accuracy in every resample: the paired CI is above 0, p tiny
    assert acc["difference"] > 0 and acc["ci"]["low"] > 0 and acc["p"] < 0.01
    assert acc["full_ci"]["low"] <= acc["full"] <= acc["full_ci"]["high"]
    assert acc["cleaned_ci"]["low"] <= acc["cleaned"] <= acc["cleaned_ci"]["high"]
    # excluding rows at random changes little: the paired CI covers 0
    random_rows = np.zeros(n, bool)
    random_rows[rng.choice(n, 15, replace=False)] = True
    proba_ok = proba.copy()
    proba_ok[:15] = np.eye(3)[y[:15]] * 0.8 + 0.2 / 3
    drift = cleaning_effect(y, proba_ok, excluded=random_rows, n=300, seed=1)["metrics"]["balanced_accuracy"]
    assert drift["ci"]["low"] <= 0 <= drift["ci"]["high"]
    with pytest.raises(Exception, match="every row is excluded"):
        cleaning_effect(y, proba, excluded=np.ones(n, bool), n=10)
