"""check_dataset: every error kind is found with its CSV line and a fix; safe paths and images."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import SHARED_DATA, make_dataset, requires_shared_data
from dermkit.data import CheckResult, Problem, check_dataset, load_card, open_image, resolve_image_path
from dermkit.errors import DataError


# ----------------------------------------------------------------------------- helpers
def edit_metadata(root, fn):
    """Apply ``fn`` to metadata.csv (as strings) and write it back."""
    df = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False, na_values=[""])
    out = fn(df)
    df = df if out is None else out
    df.to_csv(root / "metadata.csv", index=False)
    return df


def set_cell(root, row, column, value):
    """Write ``value`` into one cell of metadata.csv; returns the CSV line of that row."""
    def fn(df):
        df.loc[row, column] = value
        return df

    edit_metadata(root, fn)
    return row + 2  # CSV line of that row


def _yaml(root, **changes):
    path = root / "dataset.yaml"
    spec = yaml.safe_load(path.read_text())
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))


def _check(root, **kw) -> CheckResult:
    kw.setdefault("progress", False)
    return check_dataset(load_card(root), **kw)


def _only(result: CheckResult, kind: str) -> list[Problem]:
    found = [p for p in result.problems if p.kind == kind]
    assert found, f"no {kind} problem in:\n{result.format()}"
    return found


def _names_line(text: str, line: int) -> bool:
    """True if ``text`` says "line N" or "lines A, B, N"."""
    return re.search(rf"\blines? (\d+, )*{line}\b", text) is not None


def _assert_reported(result: CheckResult, kind: str, line: int | None, severity="error"):
    """The problem exists with that line, the message names the line, a fix is given, and
    raise_if_errors carries both."""
    problems = _only(result, kind)
    match = [p for p in problems if p.csv_line == line] if line is not None else problems
    assert match, f"{kind} not reported at line {line}: {[p.csv_line for p in problems]}"
    problem = match[0]
    assert problem.severity == severity
    assert problem.fix and len(problem.fix) > 15
    if line is not None:
        assert _names_line(problem.message, line), problem.message
    if severity == "error":
        assert not result.ok
        with pytest.raises(DataError) as err:
            result.raise_if_errors()
        text = str(err.value)
        assert kind in text and problem.fix in text
        if line is not None:
            assert _names_line(text, line)
    return problem


# ------------------------------------------------------------------------------- happy path
def test_tiny_dataset_is_valid(tiny_dataset):
    result = _check(tiny_dataset)
    assert result.ok, result.format()
    assert result.problems == []
    assert result.images_checked == 84
    assert result.raise_if_errors() is result
    summary = result.summary
    assert list(summary.columns) == ["train", "val", "test", "total"]
    assert summary.loc["mel", "train"] == 16 and summary.loc["nv", "test"] == 6
    assert summary.loc["total", "total"] == 84
    cov = result.metadata_coverage.set_index("column")
    assert cov.loc["age", "type"] == "numeric" and cov.loc["age", "non_missing_pct"] == 100.0
    assert cov.loc["sex", "type"] == "categorical"


def test_check_accepts_path_and_progress_bar(tiny_dataset):
    assert check_dataset(tiny_dataset, progress=True).ok


def test_save_writes_reports(tiny_dataset, tmp_path):
    line = set_cell(tiny_dataset, 3, "diagnosis", "unknown")
    result = _check(tiny_dataset)
    out = result.save(tmp_path / "report")
    data = json.loads((out / "check.json").read_text())
    assert data["ok"] is False and data["counts"]["unknown_diagnosis"] == 1
    problems = pd.read_csv(out / "problems.csv")
    assert problems.loc[0, "csv_line"] == line
    assert (out / "summary.csv").is_file() and (out / "metadata_coverage.csv").is_file()


# ------------------------------------------------------------------ one test per error kind
@pytest.mark.parametrize("column", ["image", "diagnosis", "split"])
def test_missing_required_column(tiny_dataset, column):
    edit_metadata(tiny_dataset, lambda df: df.drop(columns=[column]))
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "missing_column", 1)
    assert problem.column == column and f"'{column}'" in problem.message


@pytest.mark.parametrize("column", ["image", "diagnosis", "split"])
def test_empty_required_value(tiny_dataset, column):
    line = set_cell(tiny_dataset, 10, column, np.nan)
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "missing_value", line)
    assert problem.column == column


def test_missing_image(tiny_dataset):
    rel = load_card(tiny_dataset).table["image"][5]
    (tiny_dataset / rel).unlink()
    for check_images in (True, False):  # existence is checked even without decoding
        result = _check(tiny_dataset, check_images=check_images)
        problem = _assert_reported(result, "missing_image", 7)
        assert rel in problem.message


def test_unreadable_image(tiny_dataset):
    rel = load_card(tiny_dataset).table["image"][0]
    (tiny_dataset / rel).write_bytes(b"this is not a jpeg")
    result = _check(tiny_dataset)
    _assert_reported(result, "unreadable_image", 2)
    # Without decoding, the corrupt file goes unnoticed (only existence is checked).
    assert _check(tiny_dataset, check_images=False).ok


def test_truncated_image(tiny_dataset):
    rel = load_card(tiny_dataset).table["image"][20]
    data = (tiny_dataset / rel).read_bytes()
    (tiny_dataset / rel).write_bytes(data[: len(data) * 2 // 3])
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "truncated_image", 22)
    assert "truncated" in problem.message


@pytest.mark.parametrize("side", [48, 64])  # 48: Pillow only warns; 64: Pillow raises
def test_decompression_bomb(tiny_dataset, monkeypatch, side):
    rel = load_card(tiny_dataset).table["image"][1]
    Image.new("RGB", (side, side), (200, 50, 50)).save(tiny_dataset / rel, "JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "decompression_bomb", 3)
    assert "too large" in problem.message
    assert len(result.errors) == 1  # the 32x32 images are fine


def test_unknown_diagnosis(tiny_dataset):
    line = set_cell(tiny_dataset, 30, "diagnosis", "melanoma")
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "unknown_diagnosis", line)
    assert "bcc, mel, nv" in problem.message
    assert "'classes'" in problem.fix


@pytest.mark.parametrize("value, detail", [("2", "label 2 (nv) disagrees"), ("x", "not an integer"), (np.nan, "empty")])
def test_label_mismatch(tiny_dataset, value, detail):
    line = set_cell(tiny_dataset, 0, "label", value)  # row 0 is bcc = class 0
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "label_mismatch", line)
    assert detail in problem.message
    assert "set label to 0" in problem.fix


def test_invalid_split(tiny_dataset):
    line = set_cell(tiny_dataset, 40, "split", "valid")
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "invalid_split", line)
    assert "'valid'" in problem.message


def test_empty_split(tiny_dataset):
    edit_metadata(tiny_dataset, lambda df: df.assign(split=df["split"].replace({"test": "val"})))
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "empty_split", None)
    assert "'test' has no rows" in problem.message
    assert "dermkit data split" in problem.fix


def test_required_metadata_missing_value(tiny_dataset):
    _yaml(tiny_dataset, required_metadata=["age"])
    assert _check(tiny_dataset, check_images=False).ok
    line = set_cell(tiny_dataset, 12, "age", np.nan)
    result = _check(tiny_dataset, check_images=False)
    problem = _assert_reported(result, "missing_value", line)
    assert problem.column == "age" and "required metadata" in problem.message


def test_required_metadata_column_missing(tiny_dataset):
    _yaml(tiny_dataset, required_metadata=["fitzpatrick"])
    result = _check(tiny_dataset, check_images=False)
    _assert_reported(result, "missing_column", 1)


def test_non_numeric_metadata(tiny_dataset):
    line = set_cell(tiny_dataset, 8, "age", "forty")
    result = _check(tiny_dataset, check_images=False)
    problem = _assert_reported(result, "non_numeric", line)
    assert "'forty'" in problem.message and "categorical" in problem.fix


def test_missing_values_tokens_are_not_numeric_errors(tiny_dataset):
    set_cell(tiny_dataset, 8, "age", "unknown")
    assert not _check(tiny_dataset, check_images=False).ok
    _yaml(tiny_dataset, missing_values=["unknown"])
    assert _check(tiny_dataset, check_images=False).ok


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_unsafe_path(tiny_dataset, tmp_path, kind):
    outside = tmp_path / "outside.jpg"
    shutil.copy(tiny_dataset / load_card(tiny_dataset).table["image"][0], outside)
    if kind == "absolute":
        value = str(outside)
    elif kind == "dotdot":
        value = "images/../../outside.jpg"
    else:
        os.symlink(outside, tiny_dataset / "images" / "link.jpg")
        value = "images/link.jpg"
    line = set_cell(tiny_dataset, 4, "image", value)
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "unsafe_path", line)
    assert "dataset folder" in problem.message
    assert result.images_checked == 83  # the unsafe file is never opened


def test_symlink_inside_folder_is_fine(tiny_dataset):
    rel = load_card(tiny_dataset).table["image"][0]
    os.symlink(tiny_dataset / rel, tiny_dataset / "images" / "alias.jpg")
    set_cell(tiny_dataset, 0, "image", "images/alias.jpg")
    assert _check(tiny_dataset).ok


def test_group_in_two_splits(tiny_dataset):
    df = load_card(tiny_dataset).table
    lesion = df["lesion_id"][0]
    rows = df.index[df["lesion_id"] == lesion].tolist()
    assert len(rows) == 2
    set_cell(tiny_dataset, rows[1], "split", "test")
    result = _check(tiny_dataset, check_images=False)
    problem = _assert_reported(result, "group_leak", rows[0] + 2)
    assert lesion in problem.message and f"line {rows[1] + 2}" in problem.message
    assert "lesion_id" in problem.fix


def test_group_column_missing(tiny_dataset):
    edit_metadata(tiny_dataset, lambda df: df.drop(columns=["lesion_id"]))
    result = _check(tiny_dataset, check_images=False)
    problem = _assert_reported(result, "missing_column", 1)
    assert "group_column" in problem.message


def test_byte_identical_images_in_two_splits(tiny_dataset):
    df = load_card(tiny_dataset).table
    train_row = df.index[df["split"] == "train"][0]
    test_row = df.index[df["split"] == "test"][0]
    shutil.copy(tiny_dataset / df["image"][train_row], tiny_dataset / df["image"][test_row])
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "duplicate_image_leak", train_row + 2)
    assert f"line {test_row + 2}" in problem.message and "(test)" in problem.message


def test_byte_identical_images_in_one_split_is_a_warning(tiny_dataset):
    df = load_card(tiny_dataset).table
    a, b = df.index[df["split"] == "val"][:2]
    shutil.copy(tiny_dataset / df["image"][a], tiny_dataset / df["image"][b])
    result = _check(tiny_dataset)
    assert result.ok
    _assert_reported(result, "identical_images", a + 2, severity="warning")


def test_declared_duplicates_in_two_splits(tiny_dataset):
    _yaml(tiny_dataset, duplicate_column="duplicate_of", id_column="image")
    df = load_card(tiny_dataset).table
    a = df.index[df["split"] == "train"][0]
    b = df.index[df["split"] == "val"][0]

    def fn(frame):
        frame["duplicate_of"] = ""
        frame.loc[a, "duplicate_of"] = frame.loc[b, "image"]
        return frame

    edit_metadata(tiny_dataset, fn)
    result = _check(tiny_dataset, check_images=False)
    problem = _assert_reported(result, "duplicate_image_leak", a + 2)
    assert f"line {b + 2}" in problem.message


def test_duplicate_image_rows(tiny_dataset):
    edit_metadata(tiny_dataset, lambda df: pd.concat([df, df.iloc[[7]]], ignore_index=True))
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "duplicate_row", 3 * 28 + 2)
    assert "lines 9, 86" in problem.message


def test_case_variant_of_listed_class(tiny_dataset):
    line = set_cell(tiny_dataset, 30, "diagnosis", "Mel")
    result = _check(tiny_dataset, check_images=False)
    problem = _assert_reported(result, "case_variant", line)
    assert "differs only by case from the class 'mel'" in problem.message
    assert problem.column == "diagnosis" and "column 'diagnosis'" in problem.message
    assert "'unknown_diagnosis'" not in str(result.counts())


def test_case_variants_without_class_list(tmp_path):
    root = make_dataset(tmp_path, write_yaml=False)
    a = set_cell(root, 30, "diagnosis", "Mel")
    b = set_cell(root, 31, "diagnosis", "MEL")
    result = _check(root, check_images=False)
    problem = _assert_reported(result, "case_variant", a)
    assert f"'Mel' (line {a})" in problem.message and f"'MEL' (line {b})" in problem.message
    assert "'mel' (lines" in problem.message and "2 classes" not in problem.message
    assert "dataset.yaml" in problem.fix
    # One error per class name; the variant rows are not reported again (unknown, label).
    assert result.counts() == {"case_variant": 1}


def test_surrounding_spaces_are_accepted(tmp_path):
    root = make_dataset(tmp_path, write_yaml=False)
    set_cell(root, 30, "diagnosis", " mel")
    set_cell(root, 31, "diagnosis", "mel  ")
    set_cell(root, 32, "split", "train ")
    result = _check(root, check_images=False)
    assert result.ok and result.problems == [], result.format()


@pytest.mark.parametrize("token", ["NA", "null", "None", "?"])
def test_missing_group_ids_are_never_pooled(tiny_dataset, token):
    df = load_card(tiny_dataset).table
    rows = [df.index[df["split"] == s][0] for s in ("train", "val", "test")]
    for row in rows:
        set_cell(tiny_dataset, row, "lesion_id", token)
    result = _check(tiny_dataset, check_images=False)
    assert result.ok, result.format()  # not one "NA" lesion spread over three splits
    problem = _assert_reported(result, "missing_group", rows[0] + 2, severity="warning")
    assert f"'{token}' means missing" in problem.message and "own" in problem.message


@pytest.mark.parametrize("token", ["NA", "null", "-"])
def test_missing_diagnosis_token(tiny_dataset, token):
    line = set_cell(tiny_dataset, 10, "diagnosis", token)
    result = _check(tiny_dataset, check_images=False)
    problem = _assert_reported(result, "missing_value", line)
    assert f"'{token}' means missing" in problem.message
    assert "unknown_diagnosis" not in result.counts()


@pytest.mark.parametrize("sep", [";", "\t"])
def test_other_delimiter_is_read_with_a_warning(tiny_dataset, sep):
    df = pd.read_csv(tiny_dataset / "metadata.csv", dtype=str)
    df.to_csv(tiny_dataset / "metadata.csv", index=False, sep=sep)
    result = _check(tiny_dataset, check_images=False)
    assert result.ok, result.format()
    problem = _assert_reported(result, "csv_delimiter", 1, severity="warning")
    assert f"read with {sep!r}" in problem.message


def test_semicolon_csv_reports_only_really_missing_columns(tiny_dataset):
    df = pd.read_csv(tiny_dataset / "metadata.csv", dtype=str).drop(columns=["split"])
    df.to_csv(tiny_dataset / "metadata.csv", index=False, sep=";")
    result = _check(tiny_dataset, check_images=False)
    missing = [p.column for p in result.problems if p.kind == "missing_column"]
    assert missing == ["split"]


def test_header_without_rows(tiny_dataset):
    (tiny_dataset / "metadata.csv").write_text("image,label,diagnosis,split,lesion_id,age,sex\n")
    result = _check(tiny_dataset)
    problem = _assert_reported(result, "no_rows", 2)
    assert "header" in problem.message
    assert "empty_split" not in result.counts()


# ------------------------------------------------------------------------------- warnings
def test_small_class_warning(tmp_path):
    root = make_dataset(tmp_path, counts={"train": 8, "val": 3, "test": 5})
    result = _check(root, check_images=False)
    assert result.ok
    warnings = _only(result, "small_class")
    assert len(warnings) == 3 and all(w.severity == "warning" for w in warnings)
    assert "3 images in val" in warnings[0].message


def test_sparse_metadata_warning(tiny_dataset):
    edit_metadata(tiny_dataset, lambda df: df.assign(age=df["age"].where(df.index % 3 == 0)))
    result = _check(tiny_dataset, check_images=False)
    assert result.ok
    problem = _only(result, "sparse_metadata")[0]
    assert problem.severity == "warning" and problem.column == "age"
    cov = result.metadata_coverage.set_index("column")
    assert cov.loc["age", "non_missing_pct"] == pytest.approx(100 * 28 / 84, abs=0.1)


def test_non_boolean_warning(tiny_dataset):
    edit_metadata(tiny_dataset, lambda df: df.assign(itch=["yes", "no", "maybe"] * 28))
    _yaml(tiny_dataset, metadata_columns={"itch": "boolean"})
    result = _check(tiny_dataset, check_images=False)
    assert result.ok
    problem = _only(result, "non_boolean")[0]
    assert "'maybe'" in problem.message and problem.csv_line == 4


# ---------------------------------------------------------------- all problems, capped output
def test_collects_all_problems_and_caps_listing(tiny_dataset):
    card = load_card(tiny_dataset)
    for rel in card.table["image"][:30]:
        (tiny_dataset / rel).unlink()
    set_cell(tiny_dataset, 50, "diagnosis", "xyz")
    set_cell(tiny_dataset, 60, "split", "dev")
    result = _check(tiny_dataset)
    counts = result.counts()
    assert counts["missing_image"] == 30
    assert counts["unknown_diagnosis"] == 1 and counts["invalid_split"] == 1
    text = result.format(max_per_kind=5)
    assert "... and 25 more" in text
    assert text.count("image file not found") == 5
    with pytest.raises(DataError) as err:
        result.raise_if_errors(max_per_kind=5)
    assert "missing_image (30)" in str(err.value) and "line 52" in str(err.value)


# --------------------------------------------------------------------- paths and images
def test_resolve_image_path(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    assert resolve_image_path(root, "images/a.jpg") == root / "images" / "a.jpg"
    assert resolve_image_path(root, "./images/sub/../a.jpg") == root / "images" / "a.jpg"
    assert resolve_image_path(root, "images\\a.jpg") == root / "images" / "a.jpg"
    for bad, pattern in [
        ("/etc/passwd", "absolute"),
        ("C:/x.jpg", "absolute"),
        ("../x.jpg", "leaves the dataset folder"),
        ("images/../../x.jpg", "leaves the dataset folder"),
        ("", "empty image path"),
        (".", "folder itself"),
    ]:
        with pytest.raises(DataError, match=pattern):
            resolve_image_path(root, bad)
    os.symlink(tmp_path, root / "images" / "up")
    with pytest.raises(DataError, match="outside the dataset folder"):
        resolve_image_path(root, "images/up/x.jpg")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_open_image_converts_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    Image.new(mode, (10, 8)).save(path)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (10, 8)


def test_open_image_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        open_image(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(DataError, match="not an image file"):
        open_image(tmp_path / "text.jpg")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        open_image(tmp_path / "cut.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 48)  # 64x64 only triggers the warning
    with pytest.raises(DataError, match="too large to decode safely"):
        open_image(tmp_path / "ok.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16 * 16)  # > 2x the limit: Pillow raises
    with pytest.raises(DataError, match="too large to decode safely"):
        open_image(tmp_path / "ok.jpg")


def test_open_image_wording_follows_where_the_path_came_from(tiny_card, tmp_path):
    from dermkit.data.images import command_line_path

    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    # A plain path (Python API, `dermkit predict`): neutral wording, nothing about a CSV row.
    with pytest.raises(DataError) as err:
        open_image(fake)
    text = str(err.value)
    assert str(fake) in text and "not an image file" in text
    assert "metadata.csv" not in text and "row" not in text
    assert "fix the path or convert the image" in text
    for path, kw in ((command_line_path(fake), {}), (fake, {"source": "command line"})):
        with pytest.raises(DataError) as err:
            open_image(path, **kw)
        text = str(err.value)
        assert f"the file {fake} given on the command line" in text
        assert "fix the path or convert the image" in text and "metadata.csv" not in text
    with pytest.raises(DataError, match="given on the command line: image file not found; fix the path"):
        open_image(command_line_path(tmp_path / "missing.jpg"))
    # A path from the card: the metadata.csv line and column, and the CSV fix.
    rel = tiny_card.table["image"][4]
    (tiny_card.root / rel).write_text("not an image either")
    with pytest.raises(DataError) as err:
        open_image(tiny_card.image_path(rel))
    text = str(err.value)
    assert f"metadata.csv line 6, column 'image' ({rel!r})" in text
    assert "fix the path in metadata.csv, or remove the row" in text
    (tiny_card.root / rel).unlink()
    with pytest.raises(DataError,
                       match="line 6, column 'image'.*not found.*fix the path in metadata.csv or remove the row"):
        open_image(tiny_card.image_path(rel))


def test_image_path_keeps_its_origin_through_pickling(tiny_card):
    import pickle

    path = tiny_card.image_path(tiny_card.table["image"][0])
    again = pickle.loads(pickle.dumps(path))
    assert again == path and again.where == path.where and again.source == "csv"


def test_open_image_fully_loaded(tiny_card):
    image = open_image(tiny_card.image_path(tiny_card.table["image"][0]))
    assert image.mode == "RGB" and image.size == (32, 32)
    # Decoded pixels carry the class colour (row 0 is bcc = reddish).
    r, g, b = np.asarray(image, dtype=float).reshape(-1, 3).mean(0)
    assert r > g + 60 and r > b + 60


# ------------------------------------------------------------------------------- real data
@pytest.mark.realdata
@requires_shared_data
@pytest.mark.parametrize("name", ["ham10000", "derm7pt", "ph2", "isic2017", "pad_ufes20"])
def test_real_datasets_pass_metadata_checks(name):
    result = check_dataset(load_card(name), check_images=False, progress=False)
    assert result.ok, result.format()
    assert result.summary.loc["total", "total"] == len(load_card(name).table)


@pytest.mark.realdata
@requires_shared_data
def test_real_ph2_full_image_check():
    result = check_dataset(load_card("ph2"), check_images=True, progress=False)
    assert result.ok, result.format()
    assert result.images_checked == 170
    assert result.summary.loc["total", ["train", "val", "test"]].tolist() == [120, 25, 25]
    assert SHARED_DATA is not None
