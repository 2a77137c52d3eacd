"""BCN20000 and MILK10k importers on tiny fixtures in the official layouts (no shared data needed).

Each fixture writes the official CSVs (real file and column names, real codes) and 32x32 JPEGs of
random noise (so no two images are near-duplicates); what the import must give is computed from
the fixture's own rows, not from the importer.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.releases import bcn20000 as bcn
from dermkit.data.releases import import_release
from dermkit.data.releases import milk10k as milk
from dermkit.data.skin_type import with_skin_type
from dermkit.errors import DataError


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return archive


def _table(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.import-")]


# ----------------------------------------------------------------------------------- BCN20000
BCN_SITES = ("anterior torso", "head/neck", "lower extremity", "", "palms/soles", "oral/genital")


def _bcn_rows() -> pd.DataFrame:
    """3 lesions per class; the first lesion of each class has 2 images."""
    rows, n = [], 1
    for c, code in enumerate(sorted(bcn.CODES)):
        for les in range(3):
            for _ in range(2 if les == 0 else 1):
                rows.append({"bcn_filename": f"BCN_{n:010d}.jpg", "age_approx": "" if n % 7 == 0 else f"{20 + n}.0",
                             "anatom_site_general": BCN_SITES[n % len(BCN_SITES)], "diagnosis": code,
                             "lesion_id": f"BCN_{c * 10 + les:07d}", "capture_date": "2014-05-16",
                             "sex": "" if n % 7 == 0 else ("male" if n % 2 else "female"), "split": "train"})
                n += 1
    return pd.DataFrame(rows, columns=list(bcn.COLUMNS))


def _write_bcn(root: Path, rows: pd.DataFrame, zipped_images: bool = False) -> Path:
    """figshare layout: bcn_20k_train.csv + BCN_20k_train/ (or BCN_20k_train.zip) + bcn_20k_test.csv."""
    root.mkdir(parents=True)
    rows.to_csv(root / "bcn_20k_train.csv", index=False)
    for i, name in enumerate(rows["bcn_filename"]):
        _jpeg(root / "BCN_20k_train" / name, seed=1000 + i)
    if zipped_images:
        _zip(root / "BCN_20k_train", root / "BCN_20k_train.zip")
        for f in (root / "BCN_20k_train").iterdir():
            f.unlink()
        (root / "BCN_20k_train").rmdir()
    test = pd.DataFrame({"bcn_filename": ["BCN_0000090000.jpg", "BCN_0000090001.jpg", "BCN_0000090002.jpg"],
                         "age_approx": ["60.0", "50.0", "35.0"], "anatom_site_general": ["anterior torso"] * 3,
                         "diagnosis": ["", "", ""], "lesion_id": ["BCN4657", "BCN689", "BCN481"],
                         "capture_date": ["2016-06-01"] * 3, "sex": ["male"] * 3, "split": ["test"] * 3})
    test.to_csv(root / "bcn_20k_test.csv", index=False)
    return root


def _check_bcn(result, rows: pd.DataFrame) -> None:
    card = load_card(result.root)
    assert card.classes == sorted(set(rows["diagnosis"]))
    assert card.modality == "dermoscopy" and card.group_column == "lesion_id"
    table = _table(result.root).set_index("bcn_filename")
    want = rows.set_index("bcn_filename")
    assert sorted(table.index) == sorted(want.index)
    for col in ("diagnosis", "lesion_id", "age_approx", "anatom_site_general", "sex", "capture_date"):
        assert (table[col] == want.loc[table.index, col]).all(), col
    assert table["diagnosis"].value_counts().to_dict() == want["diagnosis"].value_counts().to_dict()
    assert (table["official_split"] == "train").all()
    assert result.split_source != "official" and "grouped by lesion_id" in result.split_source
    assert set(table["split"]) <= {"train", "val", "test"}
    assert (table.groupby("lesion_id")["split"].nunique() == 1).all()  # a lesion never spans two splits
    assert (table["malignant"] == table["diagnosis"].isin(["BCC", "MEL", "SCC"]).astype(int).astype(str)).all()
    assert "fitzpatrick" not in table.columns and "fitzpatrick" not in with_skin_type(table).columns
    assert card.metadata_columns == {"age_approx": "numeric", "anatom_site_general": "categorical",
                                     "sex": "categorical"}
    notes = " ".join(result.notes)
    assert f"read {len(rows)} of the 12,413 labelled training images of the official release: a partial copy" in notes
    assert "bcn_20k_test.csv: 3 test images" in notes and "left out" in notes


def test_bcn20000_folder_counts_groups_metadata_and_notes(tmp_path):
    rows = _bcn_rows()
    src = _write_bcn(tmp_path / "dl", rows)
    result = import_release("bcn20000", src, tmp_path / "card", progress=False)
    _check_bcn(result, rows)
    image = _table(result.root).set_index("bcn_filename").loc[rows.loc[0, "bcn_filename"], "image"]
    assert _sha(result.root / image) == _sha(src / "BCN_20k_train" / rows.loc[0, "bcn_filename"])


def test_bcn20000_zip_with_nested_image_zip(tmp_path):
    rows = _bcn_rows()
    src = _write_bcn(tmp_path / "dl", rows, zipped_images=True)
    result = import_release("bcn20000", _zip(src, tmp_path / "BCN20000.zip"), tmp_path / "card", progress=False)
    _check_bcn(result, rows)


def test_bcn20000_count_note_full_and_partial():
    full = pd.DataFrame({"diagnosis": [c for c, n in bcn.OFFICIAL["train_per_class"].items() for _ in range(n)]})
    full["lesion_id"] = [f"BCN_{i // 4:07d}" for i in range(len(full))]
    assert len(full) == bcn.OFFICIAL["train_images"] == 12413
    assert bcn.count_note(full).startswith("read all 12,413 labelled training images")
    assert "a partial copy" in bcn.count_note(full.head(10))
    assert "counts differ" in bcn.count_note(pd.concat([full, full.head(1)]))


def test_bcn20000_refusals_name_file_column_line_and_image(tmp_path):
    rows = _bcn_rows()
    src = _write_bcn(tmp_path / "dl", rows)
    out = tmp_path / "out"
    csv = src / "bcn_20k_train.csv"
    bad = rows.copy()
    bad.loc[4, "diagnosis"] = "UNK"
    bad.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"bcn_20k_train\.csv line 6, column 'diagnosis': unknown code\(s\) 'UNK'"):
        import_release("bcn20000", src, out, progress=False)
    _no_leftovers(out)
    rows.drop(columns=["lesion_id"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"bcn_20k_train\.csv line 1 \(header\): no column 'lesion_id'"):
        import_release("bcn20000", src, out, progress=False)
    rows.to_csv(csv, index=False)
    (src / "BCN_20k_train" / rows.loc[2, "bcn_filename"]).unlink()
    gone = rows.loc[2, "bcn_filename"]
    with pytest.raises(DataError, match=rf"line 4: 1 image\(s\) listed but not in the release \({gone}"):
        import_release("bcn20000", src, out, progress=False)
    csv.unlink()
    with pytest.raises(DataError, match=r"no 'bcn_20k_train\.csv' found"):
        import_release("bcn20000", src, out, progress=False)
    _no_leftovers(out)


# ------------------------------------------------------------------------------------ MILK10k
MILK_SITES = ("trunk", "head_neck_face", "lower_extremity", "upper_extremity", "", "hand")


def _milk_lesions() -> pd.DataFrame:
    """3 lesions per class (33 lesions): lesion_id, class, ids of both images and per-lesion values."""
    rows, n = [], 0
    for code in milk.CLASSES:
        for _ in range(3):
            rows.append({"lesion_id": f"IL_{1000 + n:07d}", "diagnosis": code, "derm": f"ISIC_{2000000 + n:07d}",
                         "clinic": f"ISIC_{3000000 + n:07d}",
                         "age_approx": "" if n % 9 == 0 else str(20 + 5 * (n % 12)),
                         "sex": "female" if n % 2 else "male", "skin_tone_class": str(n % 6),
                         "site": MILK_SITES[n % len(MILK_SITES)]})
            n += 1
    return pd.DataFrame(rows)


def _monet(seed: int) -> list[str]:
    return [f"{v:.6f}" for v in np.random.default_rng(seed).random(len(milk.MONET))]


def _write_milk(root: Path, lesions: pd.DataFrame, zipped_input: bool = False) -> Path:
    """ISIC challenge layout: MILK10k_Training_Input/<lesion_id>/ISIC_*.jpg (or its zip) + the CSVs."""
    root.mkdir(parents=True)
    meta, truth, sup = [], [], []
    for i, r in lesions.iterrows():
        for kind, isic, seed in (("clinical: close-up", r["clinic"], 2 * i), ("dermoscopic", r["derm"], 2 * i + 1)):
            meta.append([r["lesion_id"], kind, isic, "MILK study team", "CC-BY-NC",
                         "altered" if (kind == "dermoscopic" and i % 5 == 0) else "instrument only",
                         r["age_approx"], r["sex"], r["skin_tone_class"], r["site"], *_monet(seed)])
            _jpeg(root / "MILK10k_Training_Input" / r["lesion_id"] / f"{isic}.jpg", seed=5000 + seed)
            sup.append([isic, f"{r['diagnosis']} full name", "histopathology" if i % 4 else
                        "single contributor clinical assessment", "<0.8" if r["diagnosis"] == "MEL" else ""])
        truth.append([r["lesion_id"], *[f"{float(c == r['diagnosis']):.1f}" for c in milk.CLASSES]])
    pd.DataFrame(meta, columns=list(milk.COLUMNS)).to_csv(root / "MILK10k_Training_Metadata.csv", index=False)
    pd.DataFrame(truth, columns=["lesion_id", *milk.CLASSES]).to_csv(root / "MILK10k_Training_GroundTruth.csv",
                                                                     index=False)
    pd.DataFrame(sup, columns=["isic_id", *milk.SUPPLEMENT]).to_csv(root / "MILK10k_Training_Supplement.csv",
                                                                    index=False)
    test = pd.DataFrame([["IL_0006205", "clinical: close-up", "ISIC_9611969"], ["IL_0006205", "dermoscopic",
                                                                                "ISIC_5027091"]],
                        columns=["lesion_id", "image_type", "isic_id"])
    test.to_csv(root / "MILK10k_Test_Metadata.csv", index=False)
    if zipped_input:
        _zip(root / "MILK10k_Training_Input", root / "MILK10k_Training_Input.zip")
        shutil.rmtree(root / "MILK10k_Training_Input")
    return root


def _check_milk(result, lesions: pd.DataFrame, src: Path | None) -> None:
    card = load_card(result.root)
    assert card.classes == list(milk.CLASSES) and card.modality == "mixed"
    assert card.second_view_column == "clinic_image" and card.group_column == "lesion_id"
    table = _table(result.root).set_index("lesion_id")
    want = lesions.set_index("lesion_id")
    assert sorted(table.index) == sorted(want.index)  # one row per lesion
    assert (table["diagnosis"] == want.loc[table.index, "diagnosis"]).all()
    assert (table["isic_id"] == want.loc[table.index, "derm"]).all()
    assert (table["clinic_isic_id"] == want.loc[table.index, "clinic"]).all()
    for lesion in table.index:
        assert table.loc[lesion, "image"] == f"images/{lesion}/{want.loc[lesion, 'derm']}.jpg"
        assert table.loc[lesion, "clinic_image"] == f"images/{lesion}/{want.loc[lesion, 'clinic']}.jpg"
        if src is not None:
            assert _sha(result.root / table.loc[lesion, "image"]) == _sha(
                src / "MILK10k_Training_Input" / lesion / f"{want.loc[lesion, 'derm']}.jpg")
    for col in ("age_approx", "sex", "site"):
        assert (table[col] == want.loc[table.index, col]).all(), col
    # skin_tone_class stays the release's 0-5 value, value by value; no Fitzpatrick/Monk column is made.
    assert (table["skin_tone_class"] == want.loc[table.index, "skin_tone_class"]).all()
    assert sorted(set(table["skin_tone_class"])) == ["0", "1", "2", "3", "4", "5"]
    for col in ("fitzpatrick", "monk_skin_tone"):
        assert col not in table.columns
    assert "fitzpatrick" not in card.analysis_table().columns
    assert card.metadata_columns["skin_tone_class"] == "categorical"
    for m in milk.MONET:
        assert card.metadata_columns[m] == card.metadata_columns[f"clinic_{m}"] == "numeric"
        assert pd.to_numeric(table[m]).between(0, 1).all() and (table[m] != table[f"clinic_{m}"]).all()
    assert (table["diagnosis_confirm_type"] != "").all()
    assert (table["invasion_thickness_interval"][table["diagnosis"] == "MEL"] == "<0.8").all()
    assert (table["malignant"] == table["diagnosis"].isin(milk.MALIGNANT).astype(int).astype(str)).all()
    assert (table["official_split"] == "train").all() and result.split_source != "official"
    counts = table.groupby("split").size()
    assert counts.sum() == len(lesions) and set(counts.index) <= {"train", "val", "test"}
    notes = " ".join(result.notes)
    assert f"read {len(lesions)} of the 5,240 lesions of the official MILK10k training set: a partial copy" in notes
    assert "MILK10k_Test_Metadata.csv: 1 test lesion(s)" in notes


def test_milk10k_folder_pairs_one_row_per_lesion(tmp_path):
    lesions = _milk_lesions()
    src = _write_milk(tmp_path / "dl", lesions)
    result = import_release("milk10k", src, tmp_path / "card", progress=False)
    _check_milk(result, lesions, src)


def test_milk10k_zip_with_nested_input_zip(tmp_path):
    lesions = _milk_lesions()
    src = _write_milk(tmp_path / "dl", lesions, zipped_input=True)
    result = import_release("milk10k", _zip(src, tmp_path / "milk.zip"), tmp_path / "card", progress=False)
    _check_milk(result, lesions, None)


def test_milk10k_count_note_full_and_partial():
    full = pd.DataFrame({"diagnosis": [c for c, n in milk.OFFICIAL["per_class"].items() for _ in range(n)]})
    assert len(full) == milk.OFFICIAL["lesions"] == 5240
    assert milk.count_note(full).startswith("read all 5,240 lesions (10,480 images)")
    assert "a partial copy" in milk.count_note(full.head(3))


def test_milk10k_refusals_name_file_column_line_and_lesion(tmp_path):
    lesions = _milk_lesions()
    src = _write_milk(tmp_path / "dl", lesions)
    out = tmp_path / "out"
    meta_csv, gt_csv = src / "MILK10k_Training_Metadata.csv", src / "MILK10k_Training_GroundTruth.csv"
    meta = pd.read_csv(meta_csv, dtype=str, keep_default_na=False)
    gt = pd.read_csv(gt_csv, dtype=str, keep_default_na=False)

    bad = gt.copy()
    bad.loc[3, "MEL"] = "2.0"
    bad.to_csv(gt_csv, index=False)
    with pytest.raises(DataError, match=r"GroundTruth\.csv line 5, column 'MEL': expected 0 or 1"):
        import_release("milk10k", src, out, progress=False)
    bad = gt.copy()
    bad.loc[3, list(milk.CLASSES)] = "0.0"
    bad.to_csv(gt_csv, index=False)
    with pytest.raises(DataError, match=r"GroundTruth\.csv line 5: expected exactly one 1\.0"):
        import_release("milk10k", src, out, progress=False)
    gt.drop(columns=["VASC"]).to_csv(gt_csv, index=False)
    with pytest.raises(DataError, match=r"GroundTruth\.csv line 1 \(header\): no column 'VASC'"):
        import_release("milk10k", src, out, progress=False)
    gt.drop(index=[0]).to_csv(gt_csv, index=False)
    first = lesions.loc[0, "lesion_id"]
    with pytest.raises(DataError, match=rf"Metadata\.csv lines 2, 3: lesion\(s\) {first} have no row"):
        import_release("milk10k", src, out, progress=False)
    gt.to_csv(gt_csv, index=False)

    meta.drop(columns=["skin_tone_class"]).to_csv(meta_csv, index=False)
    with pytest.raises(DataError, match=r"Metadata\.csv line 1 \(header\): no column 'skin_tone_class'"):
        import_release("milk10k", src, out, progress=False)
    odd = meta.copy()
    odd.loc[5, "image_type"] = "clinical: overview"
    odd.to_csv(meta_csv, index=False)
    with pytest.raises(DataError,
                       match=r"Metadata\.csv line 7, column 'image_type': unknown value 'clinical: overview'"):
        import_release("milk10k", src, out, progress=False)
    meta.drop(index=[2]).to_csv(meta_csv, index=False)  # lesion 1 loses its close-up
    with pytest.raises(DataError, match=rf"line 4: lesion {lesions.loc[1, 'lesion_id']} has 1 dermoscopic and 0 "
                                        r"clinical close-up image\(s\)"):
        import_release("milk10k", src, out, progress=False)
    meta.to_csv(meta_csv, index=False)
    (src / "MILK10k_Training_Input" / lesions.loc[2, "lesion_id"] / f"{lesions.loc[2, 'clinic']}.jpg").unlink()
    gone = lesions.loc[2, "clinic"]
    with pytest.raises(DataError, match=rf"line 6: 1 image\(s\) listed but not in the release \({gone}\)"):
        import_release("milk10k", src, out, progress=False)
    gt_csv.unlink()
    with pytest.raises(DataError, match=r"no 'MILK10k_Training_GroundTruth\.csv' found"):
        import_release("milk10k", src, out, progress=False)
    _no_leftovers(out)


# ------------------------------------------------------------------------------ CLI + fetch
def test_cli_import_and_refusal(tmp_path, capsys):
    src = _write_milk(tmp_path / "dl", _milk_lesions())
    assert main(["data", "import", "milk10k", "--from", str(src), "--out", str(tmp_path / "card"),
                 "--no-images"]) == 0
    out = capsys.readouterr().out
    assert "card written to" in out and "SCCKA" in out
    assert main(["data", "import", "bcn20000", "--from", str(src), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "bcn_20k_train.csv" in err and "Traceback" not in err
    _no_leftovers(tmp_path / "x")


@pytest.mark.parametrize("name", ["bcn20000", "milk10k"])
def test_fetch_says_where_to_get_it_and_how_to_import(name, tmp_path):
    from dermkit.data.fetch import fetch, load_manifest

    entry = load_manifest()["releases"][name]
    assert entry["access"] == "registration" and "files" not in entry
    with pytest.raises(DataError, match=rf"`dermkit data import {name} --from FOLDER --out DIR`"):
        fetch(name, cache=tmp_path)
