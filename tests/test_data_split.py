"""make_splits (stratified + grouped) and write_split (metadata.csv split column)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import requires_shared_data
from dermkit.data import check_dataset, effective_groups, load_card, make_splits, write_split
from dermkit.errors import ConfigError, DataError

FRACTIONS = (0.7, 0.15, 0.15)


def _synthetic(n_groups=1500, seed=1) -> pd.DataFrame:
    """Imbalanced classes; groups of 1-4 images (like lesions/patients), one class per group."""
    rng = np.random.default_rng(seed)
    classes = np.array(["nv", "mel", "bkl", "bcc", "df"])
    probs = np.array([0.55, 0.2, 0.13, 0.08, 0.04])
    rows = []
    for g in range(n_groups):
        cls = rng.choice(classes, p=probs)
        for _ in range(int(rng.integers(1, 5))):
            rows.append({"diagnosis": cls, "lesion": f"L{g:05d}"})
    return pd.DataFrame(rows)


def _assert_grouped(df, split, group="lesion"):
    per_group = split.groupby(df[group]).nunique()
    assert (per_group == 1).all(), per_group[per_group > 1]


def test_grouped_stratified_fractions():
    df = _synthetic()
    split = make_splits(df, stratify="diagnosis", group="lesion", fractions=FRACTIONS, seed=0)
    assert split.index.equals(df.index) and split.name == "split"
    assert set(split) == {"train", "val", "test"}
    _assert_grouped(df, split)
    overall = split.value_counts(normalize=True)
    for name, fraction in zip(("train", "val", "test"), FRACTIONS):
        assert overall[name] == pytest.approx(fraction, abs=0.02)
    # Per-class proportions stay close to the targets (stratification).
    table = pd.crosstab(df["diagnosis"], split, normalize="index")
    for name, fraction in zip(("train", "val", "test"), FRACTIONS):
        assert (table[name] - fraction).abs().max() < 0.04, table
    # Every class appears in every split.
    assert (pd.crosstab(df["diagnosis"], split) > 0).all().all()


def test_deterministic_for_seed():
    df = _synthetic(400)
    a = make_splits(df, group="lesion", seed=3)
    b = make_splits(df, group="lesion", seed=3)
    c = make_splits(df, group="lesion", seed=4)
    assert a.equals(b)
    assert not a.equals(c)
    _assert_grouped(df, c)


def test_independent_of_row_order():
    df = _synthetic(300)
    shuffled = df.sample(frac=1.0, random_state=0)
    a = make_splits(df, group="lesion", seed=0)
    b = make_splits(shuffled, group="lesion", seed=0)
    assert a.equals(b.loc[a.index])


def test_ungrouped_stratified():
    df = _synthetic(600).reset_index(drop=True)
    split = make_splits(df, stratify="diagnosis", group=None, seed=0)
    counts = pd.crosstab(df["diagnosis"], split)
    totals = counts.sum(axis=1)
    for name, fraction in zip(("train", "val", "test"), FRACTIONS):
        # Without groups the split is exact up to rounding (one image per class).
        assert ((counts[name] - fraction * totals).abs() <= 1.0).all(), counts


def test_no_stratify_and_custom_fractions():
    df = pd.DataFrame({"x": range(200)})
    split = make_splits(df, stratify=None, fractions=(0.5, 0.5, 0.0), seed=1)
    assert split.value_counts().to_dict() == {"train": 100, "val": 100}


def test_group_spanning_classes_goes_with_majority_class():
    df = pd.DataFrame(
        {
            "diagnosis": ["mel", "mel", "nv"] + ["nv"] * 60 + ["mel"] * 30,
            "patient": ["P0", "P0", "P0"] + [f"N{i}" for i in range(60)] + [f"M{i}" for i in range(30)],
        }
    )
    split = make_splits(df, group="patient", seed=0)
    assert split[:3].nunique() == 1
    _assert_grouped(df, split, "patient")


def test_empty_group_values_are_singletons():
    df = pd.DataFrame({"diagnosis": ["a"] * 40, "g": [np.nan] * 40})
    split = make_splits(df, group="g", seed=0)
    assert split.value_counts().to_dict() == {"train": 28, "val": 6, "test": 6}


def test_class_with_too_few_groups_goes_to_train_with_warning():
    df = pd.DataFrame(
        {
            "diagnosis": ["rare"] * 4 + ["common"] * 40,
            "g": ["R1", "R1", "R2", "R2"] + [f"C{i}" for i in range(40)],
        }
    )
    with pytest.warns(UserWarning, match="train only: 'rare' \\(2 groups\\)"):
        split = make_splits(df, group="g", seed=0)
    assert (split[:4] == "train").all()
    assert set(split[4:]) == {"train", "val", "test"}


def test_three_groups_reach_every_split():
    df = pd.DataFrame({"diagnosis": ["c"] * 9, "g": ["a"] * 5 + ["b"] * 2 + ["c"] * 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = make_splits(df, group="g", seed=0)
    assert set(split) == {"train", "val", "test"}


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.8, 0.2), (1.2, -0.1, -0.1), ("a", 0, 0)])
def test_bad_fractions(fractions):
    with pytest.raises(ConfigError, match="fractions"):
        make_splits(pd.DataFrame({"diagnosis": ["a"] * 10}), fractions=fractions)


def test_bad_columns_and_empty_values():
    df = pd.DataFrame({"diagnosis": ["a", None, "b"], "csv_line": [2, 3, 4]})
    with pytest.raises(DataError, match="empty diagnosis value at metadata.csv line\\(s\\) 3"):
        make_splits(df)
    with pytest.raises(DataError, match="no such column"):
        make_splits(df.dropna(), group="lesion")
    with pytest.raises(DataError, match="empty table"):
        make_splits(df.iloc[:0])


def test_effective_groups_join_declared_duplicates():
    table = pd.DataFrame(
        {
            "image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"],
            "image_id": ["A", "B", "C", "D", "E"],
            "lesion": ["L1", "L1", "L2", "L3", np.nan],
            "duplicate_of": [np.nan, np.nan, "D", "C", np.nan],
        }
    )
    keys = effective_groups(table, "lesion", "duplicate_of", "image_id")
    assert keys[0] == keys[1]  # same lesion
    assert keys[2] == keys[3]  # declared copies
    assert len({keys[0], keys[2], keys[4]}) == 3
    assert effective_groups(table).nunique() == 5


# ----------------------------------------------------------------------------- write_split
def test_write_split_refuses_then_forces(tiny_dataset):
    before = (tiny_dataset / "metadata.csv").read_text()
    with pytest.raises(DataError, match="already has a split column.*force=True"):
        write_split(tiny_dataset)
    assert (tiny_dataset / "metadata.csv").read_text() == before
    out = write_split(tiny_dataset, seed=5, force=True)
    assert out == tiny_dataset / "metadata.csv"
    card = load_card(tiny_dataset)
    table = card.table
    assert list(table.columns) == list(pd.read_csv(tiny_dataset / "metadata.csv", nrows=0).columns)
    assert table["split"].value_counts().to_dict() == {"train": 60, "val": 12, "test": 12}
    assert (table.groupby("lesion_id")["split"].nunique() == 1).all()
    assert check_dataset(card, check_images=False, progress=False).ok


def test_write_split_creates_column_and_keeps_values(tiny_dataset):
    df = pd.read_csv(tiny_dataset / "metadata.csv", dtype=str)
    df = df.drop(columns=["split"]).assign(code=["007"] * len(df), score=["80.0"] * len(df))
    df.to_csv(tiny_dataset / "metadata.csv", index=False)
    card = load_card(tiny_dataset)
    write_split(card)  # no split column yet: no force needed
    assert card.table["split"].notna().all()  # the card re-reads the file it rewrote
    again = pd.read_csv(tiny_dataset / "metadata.csv", dtype=str)
    assert list(again.columns)[-1] == "split"
    # Cells are written back exactly as read (no 7 for 007, no 80 for 80.0).
    assert (again["code"] == "007").all() and (again["score"] == "80.0").all()


def test_write_split_to_other_file_and_group_options(tiny_dataset, tmp_path):
    before = (tiny_dataset / "metadata.csv").read_text()
    out = write_split(tiny_dataset, out_csv=tmp_path / "new.csv", force=True, group="none", seed=1)
    assert (tiny_dataset / "metadata.csv").read_text() == before
    new = pd.read_csv(out)
    assert new["split"].value_counts().to_dict() == {"train": 60, "val": 12, "test": 12}
    with pytest.raises(DataError, match="no group column 'patient'"):
        write_split(tiny_dataset, out_csv=tmp_path / "x.csv", force=True, group="patient")


def test_write_split_with_empty_split_column(tiny_dataset):
    df = pd.read_csv(tiny_dataset / "metadata.csv")
    df["split"] = np.nan
    df.to_csv(tiny_dataset / "metadata.csv", index=False)
    write_split(tiny_dataset)
    assert load_card(tiny_dataset).table["split"].isin(["train", "val", "test"]).all()


@pytest.mark.realdata
@requires_shared_data
def test_resplit_real_ham10000_in_memory():
    card = load_card("ham10000")
    table = card.table
    groups = effective_groups(table, card.group_column, card.duplicate_column, card.id_column)
    split = make_splits(table, "diagnosis", groups, seed=0)
    assert (split.groupby(table["lesion_id"]).nunique() == 1).all()
    share = split.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.01)
    assert share["val"] == pytest.approx(0.15, abs=0.01)
    assert (pd.crosstab(table["diagnosis"], split) > 0).all().all()
