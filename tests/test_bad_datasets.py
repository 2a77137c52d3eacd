"""A catalogue of broken dataset folders: each is reported with file, line, column and a fix.

Every case starts from the valid tiny dataset (``make_dataset``), breaks one thing and checks
two ways in: the Python API (``load_card`` + ``check_dataset``) and the command line
(``dermkit data check`` exits 2 for an error, 0 for a folder that is accepted, never with a
traceback). Folders that only *look* odd (spaces around a class name, "NA" as a group id, a
semicolon- or tab-separated file, a byte-order mark) are accepted and read correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_CLASSES, make_dataset
from dermkit.cli import main
from dermkit.data import check_dataset, load_card
from dermkit.data.split import row_groups
from dermkit.errors import DataError
from test_cli import model_dir  # noqa: F401  (fixture: an untrained model folder)
from test_data_validate import edit_metadata, set_cell


# ------------------------------------------------------------------------------ the catalogue
@dataclass
class Bad:
    """One broken folder: ``build(root)`` breaks it and returns the CSV line (and column) that
    the report must name; ``kind`` is the problem kind, or None when reading the table already
    fails (a DataError); ``fix`` is a phrase of the suggested fix."""

    id: str
    build: Callable[[Path], tuple[int, str | None]]
    kind: str | None
    fix: str
    yaml: bool = True
    images: bool = False  # the CLI must decode images to find it


def _value(column: str, value, row: int = 10):
    def build(root):
        return set_cell(root, row, column, value), column

    return build


def _write(root: Path, text: str, encoding="utf-8"):
    (root / "metadata.csv").write_text(text, encoding=encoding)


def _repeated_header(root):
    lines = (root / "metadata.csv").read_text().splitlines()
    _write(root, "\n".join(f"{line},{line.split(',')[2]}" for line in lines) + "\n")
    return 1, "diagnosis"


def _empty_csv(root):
    _write(root, "")
    return 1, None


def _header_only(root):
    header = (root / "metadata.csv").read_text().splitlines()[0]
    _write(root, header + "\n")
    return 2, None


def _semicolon_without_split(root):
    df = pd.read_csv(root / "metadata.csv", dtype=str).drop(columns=["split"])
    df.to_csv(root / "metadata.csv", index=False, sep=";")
    return 1, "split"


def _image_file(row: int, content: Callable[[bytes], bytes] | None):
    def build(root):
        rel = load_card(root).table["image"][row]
        if content is None:
            (root / rel).unlink()
        else:
            (root / rel).write_bytes(content((root / rel).read_bytes()))
        return row + 2, "image"

    return build


def _group_leak(root):
    df = load_card(root).table
    rows = df.index[df["lesion_id"] == df["lesion_id"][0]].tolist()
    set_cell(root, rows[1], "split", "test")
    return rows[0] + 2, "lesion_id"


def _duplicate_row(root):
    edit_metadata(root, lambda df: pd.concat([df, df.iloc[[7]]], ignore_index=True))
    return 3 * 28 + 2, "image"  # the repeated row (the message names lines 9 and 86)


def _near_duplicate(root):
    """A train image that is a re-encoded (JPEG q50) copy of a test image of another lesion."""
    df = load_card(root).table
    train, test = df.index[df["split"] == "train"][3], df.index[df["split"] == "test"][2]
    small = np.random.default_rng(0).integers(40, 216, size=(16, 16, 3), dtype=np.uint8)
    picture = Image.fromarray(small).resize((96, 96), Image.Resampling.BICUBIC)  # detail a pHash sees
    picture.save(root / df["image"][test], "JPEG", quality=90)
    picture.save(root / df["image"][train], "JPEG", quality=50)
    return min(train, test) + 2, "image"


def _case_variants(root):
    set_cell(root, 31, "diagnosis", "MEL")
    return set_cell(root, 30, "diagnosis", "Mel"), "diagnosis"


BAD = [
    Bad("case-variants-no-class-list", _case_variants, "case_variant", "dataset.yaml", yaml=False),
    Bad("case-variant-of-listed-class", _value("diagnosis", "Mel", 30), "case_variant", "exactly as in the class list"),
    Bad("diagnosis-NA", _value("diagnosis", "NA"), "missing_value", "fill in 'diagnosis'"),
    Bad("diagnosis-null", _value("diagnosis", "null"), "missing_value", "fill in 'diagnosis'"),
    Bad("diagnosis-None", _value("diagnosis", "None"), "missing_value", "fill in 'diagnosis'"),
    Bad("diagnosis-dash-no-class-list", _value("diagnosis", "-"), "missing_value", "fill in 'diagnosis'", yaml=False),
    Bad("unknown-diagnosis", _value("diagnosis", "melanoma"), "unknown_diagnosis", "add the class to 'classes'"),
    Bad("unknown-split", _value("split", "training"), "invalid_split", "use train, val or test"),
    Bad("split-NA", _value("split", "NA"), "missing_value", "fill in 'split'"),
    Bad("label-disagrees", _value("label", "2", 0), "label_mismatch", "set label to 0"),
    Bad("label-NA", _value("label", "NA", 0), "label_mismatch", "set label to 0"),
    Bad("path-dotdot", _value("image", "images/../../outside.jpg"), "unsafe_path", "relative to the dataset folder"),
    Bad("path-absolute", _value("image", "/etc/hostname"), "unsafe_path", "relative to the dataset folder"),
    Bad("image-missing", _image_file(5, None), "missing_image", "fix the path in metadata.csv or remove the row"),
    Bad("image-is-text", _image_file(6, lambda _: b"this is a text file"), "unreadable_image", "re-export",
        images=True),
    Bad("image-truncated", _image_file(20, lambda data: data[: len(data) * 2 // 3]), "truncated_image",
        "copy it again", images=True),
    Bad("non-numeric-metadata", _value("age", "forty"), "non_numeric", "write a number"),
    Bad("group-in-two-splits", _group_leak, "group_leak", "move all rows"),
    Bad("duplicate-row", _duplicate_row, "duplicate_row", "keep one row per image"),
    Bad("near-duplicate-in-two-splits", _near_duplicate, "near_duplicate_leak", "put both in one split",
        images=True),
    Bad("semicolon-csv-missing-split", _semicolon_without_split, "missing_column", "add a 'split' column"),
    Bad("repeated-header-column", _repeated_header, None, "keep one column"),
    Bad("empty-csv", _empty_csv, None, "write a header line"),
    Bad("header-only-csv", _header_only, "no_rows", "add one row per image"),
]


def _names_line(text: str, line: int) -> bool:
    """``text`` (whitespace removed, as rich may wrap it anywhere) says line N / lines A, B, N."""
    squashed = re.sub(r"\s+", "", text)
    return re.search(rf"lines?(\d+,)*{line}(?!\d)", squashed) is not None


def _contains(text: str, phrase: str) -> bool:
    return re.sub(r"\s+", "", phrase) in re.sub(r"\s+", "", text)


def _run_cli(root: Path, capsys, images: bool) -> tuple[int, str]:
    argv = ["data", "check", str(root)] + ([] if images else ["--no-images"])
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_dataset_is_reported_with_line_column_and_fix(case: Bad, tmp_path, capsys):
    root = make_dataset(tmp_path, write_yaml=case.yaml)
    line, column = case.build(root)

    # Python API: a Problem of the expected kind, or a DataError when the table cannot be read.
    if case.kind is None:
        with pytest.raises(DataError) as err:
            check_dataset(load_card(root), progress=False)
        text, fix = str(err.value), str(err.value)
    else:
        result = check_dataset(load_card(root), progress=False)
        assert not result.ok
        found = [p for p in result.errors if p.kind == case.kind]
        assert found, f"no {case.kind} error in:\n{result.format()}"
        problem = next((p for p in found if p.csv_line == line), found[0])
        assert problem.csv_line == line, (problem, line)
        assert column is None or problem.column == column
        text, fix = problem.message, problem.fix
        assert len(fix) > 15
    assert "metadata.csv" in text, text
    assert _names_line(text, line), text
    if column is not None:
        assert column in text, text
    assert _contains(fix, case.fix), fix

    # Command line: exit 2, the same file/line/fix, no traceback.
    code, output = _run_cli(root, capsys, case.images)
    assert code == 2, output
    assert "Traceback" not in output
    assert _contains(output, "metadata.csv") and _names_line(output, line), output
    assert _contains(output, case.fix), output


# ------------------------------------------------------------------- odd-looking but accepted
def _spaces(root):
    set_cell(root, 30, "diagnosis", " mel")
    set_cell(root, 31, "diagnosis", "mel  ")
    set_cell(root, 0, "diagnosis", "\tbcc")
    set_cell(root, 32, "split", " train ")


def _write_with(sep: str):
    def build(root):
        df = pd.read_csv(root / "metadata.csv", dtype=str)
        df.to_csv(root / "metadata.csv", index=False, sep=sep)

    return build


def _bom(root):
    text = (root / "metadata.csv").read_text(encoding="utf-8")
    (root / "metadata.csv").write_text(text, encoding="utf-8-sig")


GOOD = [
    ("whitespace-variants-no-class-list", _spaces, False, set()),
    ("whitespace-variants-listed-classes", _spaces, True, set()),
    ("semicolon-csv", _write_with(";"), True, {"csv_delimiter"}),
    ("tab-csv", _write_with("\t"), True, {"csv_delimiter"}),
    ("byte-order-mark", _bom, True, set()),
]


@pytest.mark.parametrize("build, yaml, warnings", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_odd_but_valid_dataset_is_accepted(build, yaml, warnings, tmp_path, capsys):
    root = make_dataset(tmp_path, write_yaml=yaml)
    build(root)
    card = load_card(root)
    assert list(card.table.columns)[:4] == ["image", "label", "diagnosis", "split"]
    assert card.classes == list(TINY_CLASSES)
    assert len(card.rows("train")) == 3 * 16
    result = check_dataset(card, progress=False)
    assert result.ok, result.format()
    assert {p.kind for p in result.problems} == warnings
    code, output = _run_cli(root, capsys, images=False)
    assert code == 0, output
    assert "Traceback" not in output


@pytest.mark.parametrize("token", ["NA", "null", "None", "NaN", "n/a", "", "?"])
def test_missing_group_ids_are_each_their_own_group(token, tmp_path, capsys):
    root = make_dataset(tmp_path)
    df = load_card(root).table
    rows = [df.index[df["split"] == s][i] for s in ("train", "val", "test") for i in (0, 2)]
    for row in rows:
        set_cell(root, row, "lesion_id", np.nan if token == "" else token)
    card = load_card(root)
    assert card.table.loc[rows, "lesion_id"].isna().all()
    train = card.rows("train")
    groups = row_groups(train, card.group_column)
    empty = [g for g, missing in zip(groups, train["lesion_id"].isna()) if missing]
    assert len(empty) == 2 and len(set(empty)) == 2  # never one shared "NA" lesion
    result = check_dataset(card, progress=False, check_images=False)
    assert result.ok, result.format()  # no leak across splits through a pooled "NA" group
    (warning,) = [p for p in result.problems if p.kind == "missing_group"]
    assert warning.csv_line == rows[0] + 2 and warning.column == "lesion_id"
    code, output = _run_cli(root, capsys, images=False)
    assert code == 0 and "Traceback" not in output


# ------------------------------------------------------------------ images named on the command line
def test_predict_on_a_bad_file_uses_command_line_wording(model_dir, tmp_path, capsys):  # noqa: F811
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is a text file")
    code = main(["predict", "--model", str(model_dir), str(fake)])
    output = capsys.readouterr().err
    assert code == 2 and "Traceback" not in output
    assert _contains(output, "notes.jpg")
    assert "remove the row" not in " ".join(output.split())
    assert "metadata.csv" not in output
    assert _contains(output, "convert the image")
