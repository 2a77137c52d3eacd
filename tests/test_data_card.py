"""Dataset cards: loading, packaged defaults, dataset.yaml overrides, rows and labels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

import dermkit.data.card as card_module
from conftest import SHARED_DATA, TINY_CLASSES, make_dataset, requires_shared_data
from dermkit.data import DatasetCard, data_root, known_cards, load_card
from dermkit.data.card_schema import packaged_spec, validate_spec
from dermkit.errors import DataError

KNOWN = ["derm7pt", "ham10000", "isic2017", "pad_ufes20", "ph2"]  # prepared in ../shared/data
# packaged for `dermkit data import` only (no prepared copy in ../shared/data)
IMPORTED = ["bcn20000", "ddi", "fitzpatrick17k", "isic2019", "isic2020", "milk10k", "scin"]


def test_tiny_card_fields(tiny_dataset):
    card = load_card(tiny_dataset)
    assert isinstance(card, DatasetCard)
    assert card.name == "tiny"
    assert card.root == tiny_dataset
    assert card.classes == list(TINY_CLASSES)
    assert card.class_names["mel"] == "mel lesion"
    assert card.synonyms["nv"] == ["NV"]
    assert card.group_column == "lesion_id"
    assert card.metadata_columns == {"age": "numeric", "sex": "categorical"}
    assert card.positive_class == "mel"
    assert card.second_view_column is None
    # Every cell stays a string, so ids and paths are never turned into numbers.
    assert card.table["image"].map(type).eq(str).all()
    assert card.table["label"].iloc[0] == "0"
    assert len(card.table) == 3 * 28
    assert load_card(card) is card


def test_metadata_csv_path_and_str_accepted(tiny_dataset):
    assert load_card(str(tiny_dataset / "metadata.csv")).root == tiny_dataset
    assert load_card(str(tiny_dataset)).classes == list(TINY_CLASSES)


def test_table_is_read_once_and_reload(tiny_dataset):
    card = load_card(tiny_dataset)
    first = card.table
    assert card.table is first
    card.reload()
    assert card.table is not first


def test_defaults_without_yaml_are_sorted_classes(tmp_path):
    root = make_dataset(tmp_path, classes=("zeta", "alpha", "mid"), write_yaml=False)
    card = load_card(root)
    assert card.classes == ["alpha", "mid", "zeta"]
    assert card.class_names == {"alpha": "alpha", "mid": "mid", "zeta": "zeta"}
    assert card.synonyms == {"alpha": [], "mid": [], "zeta": []}
    assert card.group_column is None
    # Metadata types are inferred when the card declares none.
    assert card.metadata_columns["age"] == "numeric"
    assert card.metadata_columns["sex"] == "categorical"
    assert "image" not in card.metadata_columns and "split" not in card.metadata_columns


def test_rows_keep_index_and_csv_line(tiny_card):
    train = tiny_card.rows("train")
    assert len(train) == 3 * 16
    assert (train["split"] == "train").all()
    assert (train["csv_line"] == train.index + 2).all()
    # csv_line really is the line in the file (header = line 1).
    lines = (tiny_card.metadata_csv).read_text().splitlines()
    first = train.iloc[0]
    assert lines[first["csv_line"] - 1].startswith(first["image"] + ",")
    assert "csv_line" not in tiny_card.table.columns  # the cached table is not modified


def test_rows_unknown_and_empty_split(tiny_dataset):
    card = load_card(tiny_dataset)
    with pytest.raises(DataError, match="unknown split 'valid'.*train, val, test"):
        card.rows("valid")
    df = pd.read_csv(tiny_dataset / "metadata.csv")
    df.loc[df["split"] == "val", "split"] = "train"
    df.to_csv(tiny_dataset / "metadata.csv", index=False)
    card = load_card(tiny_dataset)
    with pytest.raises(DataError, match=r"split 'val' .* has no rows.*dermkit data split"):
        card.rows("val")


def test_labels(tiny_card):
    test = tiny_card.rows("test")
    labels = tiny_card.labels(test)
    assert labels.dtype == np.int64
    expected = test["diagnosis"].map({c: i for i, c in enumerate(TINY_CLASSES)}).to_numpy()
    assert (labels == expected).all()


def test_labels_unknown_diagnosis_names_line_and_classes(tiny_card):
    df = tiny_card.rows("val").copy()
    df.loc[df.index[2], "diagnosis"] = "Mel"
    line = int(df["csv_line"].iloc[2])
    with pytest.raises(DataError) as err:
        tiny_card.labels(df)
    msg = str(err.value)
    assert f"line {line}" in msg
    assert "bcc, mel, nv" in msg
    assert "did you mean 'mel'" in msg


def test_image_path(tiny_card):
    rel = tiny_card.table["image"].iloc[0]
    assert tiny_card.image_path(rel) == tiny_card.root / rel
    with pytest.raises(DataError, match="outside|leaves"):
        tiny_card.image_path("../secret.jpg")


def test_match_class_uses_names_and_synonyms(tiny_card):
    assert tiny_card.match_class("MEL") == "mel"
    assert tiny_card.match_class("nv lesion") == "nv"
    assert tiny_card.match_class("psoriasis") is None


# ------------------------------------------------------------------------------ errors
def test_load_card_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist.*metadata.csv"):
        load_card(tmp_path / "nope")


def test_load_card_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'hamm10000'.*ham10000"):
        load_card("hamm10000")


def test_load_card_folder_without_metadata(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata.csv.*image.*diagnosis.*split"):
        load_card(tmp_path / "empty")


@pytest.mark.parametrize(
    "patch, pattern",
    [
        ({"metadata_columns": {"age": "number"}}, "metadata_columns.age.*categorical, numeric, boolean"),
        ({"positive_class": "melanoma"}, "positive_class 'melanoma' is not one of the classes"),
        ({"synonyms": {"mell": ["x"]}}, "synonyms has entries for 'mell'"),
        ({"modality": "xray"}, "modality must be one of"),
        ({"classes": ["bcc", "bcc", "nv"]}, "more than once"),
    ],
)
def test_invalid_dataset_yaml(tiny_dataset, patch, pattern):
    path = tiny_dataset / "dataset.yaml"
    spec = yaml.safe_load(path.read_text())
    spec.update(patch)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DataError, match=pattern):
        load_card(tiny_dataset)


def test_yaml_syntax_error_names_file_and_line(tiny_dataset):
    (tiny_dataset / "dataset.yaml").write_text("name: tiny\nclasses: [a, b\n")
    with pytest.raises(DataError, match=r"dataset.yaml line \d+, column \d+: not valid YAML"):
        load_card(tiny_dataset)


def test_unreadable_csv(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "metadata.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_card(root).table  # noqa: B018 - the read raises
    (root / "metadata.csv").write_text('image,diagnosis,split\n"a.jpg,nv,train\n')
    with pytest.raises(DataError, match="cannot parse"):
        load_card(root).table  # noqa: B018 - the read raises


def test_header_spaces_are_ignored(tmp_path):
    root = make_dataset(tmp_path)
    text = (root / "metadata.csv").read_text().splitlines()
    text[0] = ", ".join(text[0].split(","))
    (root / "metadata.csv").write_text("\n".join(text) + "\n")
    assert "diagnosis" in load_card(root).table.columns


# ---------------------------------------------------------------- packaged cards, merging
def test_known_cards_are_packaged_and_valid():
    packaged = [n for n in IMPORTED if n in known_cards()]  # isic2019/2020 land with their importer
    assert known_cards() == sorted(KNOWN + packaged)
    for name in known_cards():
        raw = packaged_spec(name)
        spec = validate_spec(raw, name)
        assert spec["name"] == name
        assert spec["license"]
        # ISIC 2020 publishes its own duplicate pairs: the card's duplicate column holds those
        assert spec["duplicate_column"] == ("official_duplicate_of" if name == "isic2020" else "duplicate_of")
        assert spec["group_column"] and spec["modality"]
        # the datasheet's identity items: where the images come from, what to cite, the homepage
        assert all(str(raw.get(key) or "").strip() for key in ("source", "citation", "url")), name
        if name == "scin":  # its classes are the conditions the import finds (hundreds, most rare)
            assert spec.get("classes") is None
            continue
        # The shared data uses the alphabetically sorted class order for `label`.
        assert spec["classes"] == sorted(spec["classes"])
        assert set(spec["class_names"]) == set(spec["classes"])
        assert set(spec["synonyms"]) == set(spec["classes"])
        assert spec["positive_class"] in spec["classes"]


def test_packaged_card_contents():
    ham = validate_spec(packaged_spec("ham10000"), "ham")
    assert ham["group_column"] == "lesion_id"
    assert "malignant melanoma" in ham["synonyms"]["mel"]
    assert "mole" in ham["synonyms"]["nv"]
    assert {"seborrheic keratosis", "solar lentigo", "lichen planus-like keratosis"} <= set(ham["synonyms"]["bkl"])
    assert "Bowen's disease" in ham["synonyms"]["akiec"]
    derm = validate_spec(packaged_spec("derm7pt"), "derm7pt")
    assert derm["group_column"] == "case_num"
    assert derm["second_view_column"] == "clinic_image"
    assert derm["modality"] == "mixed"
    pad = validate_spec(packaged_spec("pad_ufes20"), "pad")
    assert pad["group_column"] == "patient_id" and pad["modality"] == "clinical"
    assert pad["metadata_columns"]["fitspatrick"] == "numeric"
    assert pad["metadata_columns"]["itch"] == "boolean"


def test_folder_named_like_known_card_gets_its_defaults(tmp_path):
    # A local copy of a known dataset (here a tiny stand-in for ph2) inherits the packaged card;
    # its dataset.yaml extends synonyms and overrides the group column.
    root = make_dataset(tmp_path, name="ph2", classes=("atypical nevus", "common nevus", "melanoma"), write_yaml=False)
    (root / "dataset.yaml").write_text(
        yaml.safe_dump({"synonyms": {"melanoma": ["MM"]}, "group_column": "lesion_id"})
    )
    card = load_card(root)
    assert card.name == "ph2"
    assert card.modality == "dermoscopy"
    assert card.synonyms["melanoma"] == ["MM"]
    assert "dysplastic nevus" in card.synonyms["atypical nevus"]  # inherited
    assert card.group_column == "lesion_id"
    assert card.metadata_columns["color_black"] == "boolean"


def test_base_card_with_new_classes_drops_stale_entries(tmp_path):
    root = make_dataset(tmp_path, name="mine", write_yaml=False)
    (root / "dataset.yaml").write_text(
        yaml.safe_dump({"base_card": "ham10000", "name": "mine", "classes": list(TINY_CLASSES)})
    )
    card = load_card(root)
    assert card.name == "mine"
    assert card.classes == list(TINY_CLASSES)
    assert card.class_names["bcc"] == "basal cell carcinoma"  # kept: still a class
    assert card.positive_class == "mel"
    assert set(card.synonyms) == set(TINY_CLASSES)
    (root / "dataset.yaml").write_text(yaml.safe_dump({"base_card": "nope"}))
    with pytest.raises(DataError, match="base_card 'nope' is not a packaged card"):
        load_card(root)


def test_group_column_none_string(tiny_dataset):
    path = tiny_dataset / "dataset.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["group_column"] = "none"
    path.write_text(yaml.safe_dump(spec))
    assert load_card(tiny_dataset).group_column is None


# --------------------------------------------------------------------------- data_root
def test_data_root_env(monkeypatch, tmp_path):
    make_dataset(tmp_path, name="ph2", classes=("atypical nevus", "common nevus", "melanoma"), write_yaml=False)
    monkeypatch.setenv("DERMKIT_DATA", str(tmp_path))
    assert data_root() == tmp_path
    card = load_card("ph2")
    assert card.root == tmp_path / "ph2"
    assert card.classes == ["atypical nevus", "common nevus", "melanoma"]
    monkeypatch.setenv("DERMKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="DERMKIT_DATA=.* is not a folder"):
        data_root()


def test_data_root_not_found(monkeypatch, tmp_path):
    monkeypatch.delenv("DERMKIT_DATA", raising=False)
    monkeypatch.setattr(card_module, "__file__", str(tmp_path / "pkg" / "dermkit" / "data" / "card.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="set DERMKIT_DATA"):
        data_root()
    with pytest.raises(DataError, match="set DERMKIT_DATA"):
        load_card("ham10000")


def test_data_root_walks_up_to_shared_data(monkeypatch, tmp_path):
    monkeypatch.delenv("DERMKIT_DATA", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    deep = tmp_path / "main" / "src" / "dermkit" / "data"
    deep.mkdir(parents=True)
    monkeypatch.setattr(card_module, "__file__", str(deep / "card.py"))
    assert data_root() == tmp_path / "shared" / "data"


@pytest.mark.realdata
@requires_shared_data
@pytest.mark.parametrize("name", KNOWN)
def test_real_cards_load(name):
    card = load_card(name)
    assert card.root == SHARED_DATA / name
    assert sorted(card.table["diagnosis"].unique()) == card.classes
    labels = card.labels(card.table)
    # The shared metadata's label column is the index in the sorted class list.
    assert (labels == card.table["label"].astype(int).to_numpy()).all()
    for col in card.metadata_columns:
        assert col in card.table.columns, col
    for split in ("train", "val", "test"):
        assert len(card.rows(split)) > 0


# ------------------------------------------------------- spellings, missing tokens, delimiters
def _rewrite(root, fn, **to_csv):
    df = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    df = fn(df) if fn is not None else df
    df.to_csv(root / "metadata.csv", index=False, **to_csv)
    return df


def test_case_variants_without_class_list_are_refused(tmp_path):
    root = make_dataset(tmp_path, write_yaml=False)

    def fn(df):
        df.loc[df.index[df["diagnosis"] == "mel"][:2], "diagnosis"] = "Mel"
        return df

    df = _rewrite(root, fn)
    lines = [i + 2 for i in df.index[df["diagnosis"] == "Mel"]]
    card = load_card(root)
    with pytest.raises(DataError) as err:
        card.classes  # noqa: B018 - the read raises
    msg = str(err.value)
    assert "metadata.csv" in msg and "column 'diagnosis'" in msg
    assert f"'Mel' (lines {lines[0]}, {lines[1]})" in msg and "'mel' (lines" in msg
    assert "differ only by case" in msg
    assert "use one spelling" in msg and "dataset.yaml" in msg
    with pytest.raises(DataError, match="differ only by case"):
        card.labels(card.rows("train"))


def test_whitespace_variants_are_one_class_and_split(tmp_path):
    root = make_dataset(tmp_path, write_yaml=False)

    def fn(df):
        df.loc[0, "diagnosis"] = "bcc "
        df.loc[1, "diagnosis"] = "  bcc"
        df.loc[2, "split"] = " train "
        return df

    _rewrite(root, fn)
    card = load_card(root)
    assert card.classes == list(TINY_CLASSES)
    assert card.table.loc[0, "diagnosis"] == "bcc" and card.table.loc[2, "split"] == "train"
    assert len(card.rows("train")) == 3 * 16
    assert (card.labels(card.rows("train")) >= 0).all()


def test_case_variant_of_listed_class_names_the_class(tiny_card):
    df = tiny_card.rows("val").copy()
    df.loc[df.index[0], "diagnosis"] = "NV"
    with pytest.raises(DataError) as err:
        tiny_card.labels(df)
    msg = str(err.value)
    assert "differs only by case from the class 'nv'" in msg
    assert f"line {int(df['csv_line'].iloc[0])}, column 'diagnosis'" in msg


@pytest.mark.parametrize("token", ["NA", "null", "None", "NaN", "N/A", "-", "?", " NA "])
def test_missing_group_tokens_are_own_groups(tiny_dataset, token):
    from dermkit.data.split import effective_groups, row_groups

    def fn(df):
        df.loc[df.index[df["split"] == "train"][:4], "lesion_id"] = token
        df.loc[0, "sex"] = "NA"  # other columns keep their value (no missing_values in the card)
        return df

    _rewrite(tiny_dataset, fn)
    card = load_card(tiny_dataset)
    rows = card.rows("train")
    assert rows["lesion_id"].isna().sum() == 4
    assert card.missing_tokens["lesion_id"].str.strip().eq(token.strip()).all()
    groups = row_groups(rows, card.group_column)
    assert len(set(groups[:4])) == 4  # each row its own group, never one "NA" group
    keys = effective_groups(card.table, card.group_column)
    assert keys.iloc[:4].nunique() == 4
    assert card.table.loc[0, "sex"] == "NA"


@pytest.mark.parametrize("token", ["NA", "null", "n/a", "-", "Null", "NONE", "#N/A", "<NA>", "--"])
def test_missing_diagnosis_token_is_an_empty_diagnosis(tiny_dataset, token):
    # dermkit.values.MISSING_TOKENS in any letter case (the same set the predictions table reads)
    _rewrite(tiny_dataset, lambda df: df.assign(diagnosis=df["diagnosis"].where(df.index != 0, token)))
    card = load_card(tiny_dataset)
    assert pd.isna(card.table.loc[0, "diagnosis"])
    expected = rf"line 2, column 'diagnosis': empty diagnosis \('{re.escape(token)}' means missing\)"
    with pytest.raises(DataError, match=expected):
        card.labels(card.table)


def test_card_missing_values_apply_to_key_columns(tiny_dataset):
    path = tiny_dataset / "dataset.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["missing_values"] = ["unknown"]
    path.write_text(yaml.safe_dump(spec))
    _rewrite(tiny_dataset, lambda df: df.assign(lesion_id=df["lesion_id"].where(df.index > 1, "unknown")))
    card = load_card(tiny_dataset)
    assert card.table["lesion_id"].iloc[:2].isna().all()


def test_card_missing_values_ignore_letter_case_in_key_columns(tiny_dataset):
    path = tiny_dataset / "dataset.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["missing_values"] = ["Unknown"]
    path.write_text(yaml.safe_dump(spec))
    _rewrite(tiny_dataset, lambda df: df.assign(lesion_id=df["lesion_id"].where(df.index > 1, " UNKNOWN")))
    card = load_card(tiny_dataset)
    assert card.table["lesion_id"].iloc[:2].isna().all()
    assert card.missing_tokens["lesion_id"].tolist() == [" UNKNOWN", " UNKNOWN"]


@pytest.mark.parametrize("sep, name", [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_other_delimiters_are_read(tiny_dataset, sep, name):
    _rewrite(tiny_dataset, None, sep=sep)
    card = load_card(tiny_dataset)
    assert card.csv_delimiter == sep
    assert list(card.table.columns) == ["image", "label", "diagnosis", "split", "lesion_id", "age", "sex"]
    assert card.classes == list(TINY_CLASSES) and len(card.rows("test")) == 18


def test_comma_csv_with_semicolons_in_values_stays_comma(tiny_dataset):
    _rewrite(tiny_dataset, lambda df: df.assign(sex="a;b;c"))
    card = load_card(tiny_dataset)
    assert card.csv_delimiter == "," and card.table["sex"].iloc[0] == "a;b;c"


def test_bom_is_ignored(tiny_dataset):
    text = (tiny_dataset / "metadata.csv").read_text(encoding="utf-8")
    (tiny_dataset / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_card(tiny_dataset).table.columns[0] == "image"


def test_repeated_header_column_is_refused(tiny_dataset):
    lines = (tiny_dataset / "metadata.csv").read_text().splitlines()
    lines = [line + "," + line.split(",")[2] for line in lines]  # a second diagnosis column
    (tiny_dataset / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_card(tiny_dataset).table  # noqa: B018 - the read raises
    msg = str(err.value)
    assert "metadata.csv line 1 (header)" in msg and "'diagnosis' in columns 3, 8" in msg
    assert "keep one column" in msg


def test_image_path_remembers_its_csv_line(tiny_dataset):
    _rewrite(tiny_dataset, lambda df: df.assign(image=df["image"].where(df.index != 4, "../secret.jpg")))
    card = load_card(tiny_dataset)
    rel = card.table["image"].iloc[3]
    path = card.image_path(rel)
    assert path == card.root / rel
    assert path.source == "csv"
    assert path.where == f"{card.metadata_csv} line 5, column 'image' ({rel!r})"
    with pytest.raises(DataError, match=r"line 6, column 'image'.*leaves the dataset folder"):
        card.image_path("../secret.jpg")
