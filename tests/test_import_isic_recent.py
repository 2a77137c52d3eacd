"""`dermkit data import isic2019 / isic2020`: the official challenge layouts -> checked dataset cards.

Fixtures are tiny and synthetic (64x64 JPEGs with a random block pattern each, written with PIL in
tmp_path), arranged as the official releases are, with the official file names, column names and
codes. Expected classes, counts, groups and splits are computed from the fixture's own tables,
independently of the importer. Nothing here reads ../shared/data.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.near_duplicates import file_hash
from dermkit.data.releases import import_release
from dermkit.data.releases import isic2019 as i19
from dermkit.data.releases import isic2020 as i20
from dermkit.errors import DataError

CODES_2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def _picture(seed: int, brighter: int = 0) -> Image.Image:
    """A 64x64 picture from a random 8x8 block pattern: every seed its own picture (perceptual
    hashes >100 bits apart); ``brighter`` lifts every pixel (a near-duplicate, not identical bytes)."""
    blocks = np.random.default_rng(seed).integers(0, 250, (8, 8, 3), dtype=np.uint8) + np.uint8(brighter)
    return Image.fromarray(blocks).resize((64, 64), Image.BICUBIC)


def _save(path: Path, seed: int, brighter: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _picture(seed, brighter).save(path, "JPEG", quality=95)


def _zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
    return archive


def _card_table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.import-")]


# ------------------------------------------------------------------------------- ISIC 2019
def _one_hot(codes) -> pd.DataFrame:
    return pd.DataFrame({c: [1.0 if code == c else 0.0 for code in codes] for c in CODES_2019})


def _write_isic2019(root: Path, test: bool = True, zipped_images: bool = False) -> dict[str, pd.DataFrame]:
    """The ISIC 2019 files: per training class 3 lesions of 2 images + 1 image without a lesion id
    (the first of them with a `_downsampled` id); MEL's lone image is a near-duplicate of an NV
    image. Test: 2 images per class + 2 UNK."""
    rows, n = [], 0
    sites = ["anterior torso", "head/neck", None, "lower extremity"]
    for ci, code in enumerate(CODES_2019[:-1]):
        for lesion in range(3):
            for _ in range(2):
                n += 1
                rows.append({"image": f"ISIC_{n:07d}", "code": code, "lesion_id": f"BCN_{ci}{lesion:04d}"})
        n += 1
        rows.append({"image": f"ISIC_{n:07d}", "code": code, "lesion_id": None})
    train = pd.DataFrame(rows)
    train.loc[0, "image"] = train.loc[0, "image"] + "_downsampled"
    train["age_approx"] = [None if i % 7 == 3 else str(20 + 5 * (i % 12)) for i in range(len(train))]
    train["anatom_site_general"] = [sites[i % 4] for i in range(len(train))]
    train["sex"] = [None if i % 9 == 4 else ("male", "female")[i % 2] for i in range(len(train))]
    near_of = {train.index[(train["code"] == "MEL") & train["lesion_id"].isna()][0]:
               train.index[(train["code"] == "NV") & train["lesion_id"].isna()][0]}
    folder = root / "ISIC_2019_Training_Input"
    for i, image in enumerate(train["image"]):
        if i in near_of:
            _save(folder / f"{image}.jpg", near_of[i], brighter=4)
        else:
            _save(folder / f"{image}.jpg", i)
    (folder / "LICENSE.txt").write_text("CC BY-NC 4.0\n")
    gt = pd.concat([train[["image"]], _one_hot(train["code"])], axis=1)
    gt.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    train[["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]].to_csv(
        root / "ISIC_2019_Training_Metadata.csv", index=False)
    out = {"train": train, "near": near_of}
    test_rows = [{"image": f"ISIC_{100 + k:07d}", "code": code}
                 for k, code in enumerate([c for c in CODES_2019 for _ in range(2)])]
    testt = pd.DataFrame(test_rows)
    testt["age_approx"] = [str(30 + 5 * (i % 8)) for i in range(len(testt))]
    testt["anatom_site_general"] = [sites[i % 4] for i in range(len(testt))]
    testt["sex"] = [("female", "male")[i % 2] for i in range(len(testt))]
    tfolder = root / "ISIC_2019_Test_Input"
    for i, image in enumerate(testt["image"]):
        _save(tfolder / f"{image}.jpg", 1000 + i)
    testt[["image", "age_approx", "anatom_site_general", "sex"]].to_csv(root / "ISIC_2019_Test_Metadata.csv",
                                                                         index=False)
    if test:
        gt = pd.concat([testt[["image"]], _one_hot(testt["code"])], axis=1)
        gt["score_weight"] = 1.0  # a column the importer does not need is ignored
        gt.to_csv(root / "ISIC_2019_Test_GroundTruth.csv", index=False)
    out["test"] = testt
    if zipped_images:
        for name in ("ISIC_2019_Training_Input", "ISIC_2019_Test_Input"):
            _zip_folder(root / name, root / f"{name}.zip", prefix=f"{name}/")
            shutil.rmtree(root / name)
    return out


def test_isic2019_official_tables_parse_without_images(tmp_path):
    fx = _write_isic2019(tmp_path / "r")
    r = tmp_path / "r"
    table, unknown = i19.parse(r / "ISIC_2019_Training_GroundTruth.csv", r / "ISIC_2019_Training_Metadata.csv",
                               r / "ISIC_2019_Test_GroundTruth.csv", r / "ISIC_2019_Test_Metadata.csv")
    train, test = fx["train"], fx["test"]
    assert unknown == int((test["code"] == "UNK").sum()) == 2
    want = pd.concat([train.assign(s="train"), test[test["code"] != "UNK"].assign(s="test")], ignore_index=True)
    assert table["image_id"].tolist() == want["image"].tolist()
    assert table["diagnosis"].tolist() == want["code"].tolist()
    assert table["challenge_split"].tolist() == want["s"].tolist()
    assert table["isic_id"].tolist() == want["image"].str.replace("_downsampled", "").tolist()
    assert table["lesion_id"].tolist() == [*train["lesion_id"], *[None] * (len(table) - len(train))]
    # training notes: a partial copy of the 25,331 images
    assert "a partial copy" in i19.count_notes(table)[0] and "25,331" in i19.count_notes(table)[0]


def test_isic2019_training_only_folder_is_a_grouped_split(tmp_path):
    fx = _write_isic2019(tmp_path / "release", test=False)
    train = fx["train"]
    result = import_release("isic2019", tmp_path / "release", tmp_path / "card", progress=False)
    card = load_card(result.root)
    assert card.name == "isic2019" and card.classes == ["AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC"]
    assert card.group_column == "lesion_id" and card.positive_class == "MEL"
    assert "grouped stratified split" in result.split_source and "grouped by lesion_id" in result.split_source
    assert result.check.ok
    table = _card_table(result.root)
    assert "official_split" not in table.columns
    assert set(table["challenge_split"]) == {"train"}
    assert table["diagnosis"].value_counts().to_dict() == train["code"].value_counts().to_dict()
    assert dict(zip(table["image_id"], table["diagnosis"])) == dict(zip(train["image"], train["code"]))
    # a lesion never spans two splits; the near-duplicate pair (no lesion ids) shares one
    lesions = table[table["lesion_id"] != ""]
    assert (lesions.groupby("lesion_id")["split"].nunique() == 1).all()
    split = dict(zip(table["image_id"], table["split"]))
    (a, b), = fx["near"].items()
    assert split[train["image"][a]] == split[train["image"][b]]
    # the `_downsampled` id keeps its name; metadata joined by id, empty stays empty
    first = train["image"][0]
    assert first.endswith("_downsampled") and (result.root / "images" / f"{first}.jpg").is_file()
    meta = table.set_index("image_id")
    for col in ("age_approx", "anatom_site_general", "sex"):
        assert meta.loc[train["image"], col].tolist() == train[col].fillna("").tolist()
    malignant = dict(zip(table["image_id"], table["malignant"]))
    assert all(malignant[i] == ("1" if c in ("AK", "BCC", "MEL", "SCC") else "0")
               for i, c in zip(train["image"], train["code"]))
    assert "fitzpatrick" not in table.columns and "monk_skin_tone" not in table.columns  # not recorded
    assert any(f"read {len(train)} of the 25,331 training images" in n and "a partial copy" in n
               for n in result.notes)
    assert any("no ISIC_2019_Test_GroundTruth.csv" in n for n in result.notes)


def test_isic2019_zip_with_the_test_ground_truth_keeps_the_official_test(tmp_path):
    fx = _write_isic2019(tmp_path / "release", zipped_images=True)
    train, test = fx["train"], fx["test"]
    archive = _zip_folder(tmp_path / "release", tmp_path / "isic2019.zip", prefix="ISIC2019/")
    result = import_release("isic2019", archive, tmp_path / "card", progress=False)
    assert result.split_source == "official"
    assert result.check.ok
    table = _card_table(result.root)
    labelled = test[test["code"] != "UNK"]
    # the official test images of the 8 classes are the test split; UNK is left out
    assert set(table.loc[table["split"] == "test", "image_id"]) == set(labelled["image"])
    assert not set(test.loc[test["code"] == "UNK", "image"]) & set(table["image_id"])
    got = table.groupby(["challenge_split", "diagnosis"]).size().to_dict()
    want = {**{("train", c): n for c, n in train["code"].value_counts().items()},
            **{("test", c): n for c, n in labelled["code"].value_counts().items()}}
    assert got == want
    # the challenge's training images are split into train and val, every class in both, lesions kept whole
    tr = table[table["challenge_split"] == "train"]
    assert set(tr["split"]) == {"train", "val"}
    assert (tr.groupby("diagnosis")["split"].nunique() == 2).all()
    assert (tr[tr["lesion_id"] != ""].groupby("lesion_id")["split"].nunique() == 1).all()
    split = dict(zip(table["image_id"], table["split"]))
    (a, b), = fx["near"].items()
    assert split[train["image"][a]] == split[train["image"][b]]
    assert (table["split"] == table["official_split"]).all()
    # test metadata joined
    meta = table.set_index("image_id")
    assert meta.loc[labelled["image"], "sex"].tolist() == labelled["sex"].tolist()
    assert any("2 UNK (out-of-distribution) test images are left out" in n for n in result.notes)
    assert any("18 of the 8,238 official test images: a partial copy" in n for n in result.notes)
    # --split grouped: one grouped split of everything, the official assignment kept
    again = import_release("isic2019", archive, tmp_path / "card2", split="grouped", progress=False,
                           check_images=False)
    assert "grouped stratified split" in again.split_source and "official_split" in again.split_source
    table2 = _card_table(again.root)
    assert (table2["official_split"] == table["official_split"]).all()


def test_isic2019_near_duplicate_fixture_is_one(tmp_path):
    """The fixture's near copy is within the near-duplicate threshold and other pictures are far."""
    from dermkit.data.hashes import NEAR_DUPLICATE_BITS, hash_distance

    fx = _write_isic2019(tmp_path / "r", test=False)
    (a, b), = fx["near"].items()
    folder = tmp_path / "r" / "ISIC_2019_Training_Input"
    ha, hb = (file_hash(folder / f"{fx['train']['image'][i]}.jpg") for i in (a, b))
    hc = file_hash(folder / f"{fx['train']['image'][b + 1]}.jpg")
    assert hash_distance(ha, hb) <= NEAR_DUPLICATE_BITS < hash_distance(ha, hc)


def test_isic2019_refusals_name_the_file_column_and_line(tmp_path):
    _write_isic2019(tmp_path / "release")
    root = tmp_path / "release"
    gt_path = root / "ISIC_2019_Training_GroundTruth.csv"
    gt = pd.read_csv(gt_path)
    out = tmp_path / "out"

    def fails(pattern: str) -> None:
        with pytest.raises(DataError, match=pattern):
            import_release("isic2019", root, out, progress=False)
        _no_leftovers(out)

    # a value that is not 0/1, and a row with two classes
    bad = gt.copy()
    bad.loc[4, "NV"] = 2.0
    bad.to_csv(gt_path, index=False)
    fails(r"ISIC_2019_Training_GroundTruth\.csv line 6, column 'NV': expected 0 or 1")
    bad = gt.copy()
    bad.loc[2, "MEL"], bad.loc[2, "NV"] = 1.0, 1.0
    bad.to_csv(gt_path, index=False)
    fails(r"ISIC_2019_Training_GroundTruth\.csv line 4: expected exactly one 1\.0")
    bad = gt.copy()
    bad.loc[3, CODES_2019] = 0.0
    bad.loc[3, "UNK"] = 1.0
    bad.to_csv(gt_path, index=False)
    fails(r"ISIC_2019_Training_GroundTruth\.csv line 5: UNK is 1")
    # a missing class column
    gt.drop(columns=["SCC"]).to_csv(gt_path, index=False)
    fails(r"ISIC_2019_Training_GroundTruth\.csv line 1 \(header\): no column 'SCC'")
    gt.to_csv(gt_path, index=False)
    # metadata: a missing column, a missing row
    meta_path = root / "ISIC_2019_Training_Metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str)
    meta.drop(columns=["lesion_id"]).to_csv(meta_path, index=False)
    fails(r"ISIC_2019_Training_Metadata\.csv line 1 \(header\): no column 'lesion_id'")
    meta.iloc[1:].to_csv(meta_path, index=False)
    fails(rf"ISIC_2019_Training_Metadata\.csv: no row for 1 image\(s\) of the ground truth \({meta['image'][0]}\)")
    meta.to_csv(meta_path, index=False)
    # a listed image that is missing (a test image: the test ground truth names it)
    test_gt = pd.read_csv(root / "ISIC_2019_Test_GroundTruth.csv")
    gone = test_gt["image"][3]
    (root / "ISIC_2019_Test_Input" / f"{gone}.jpg").unlink()
    fails(rf"ISIC_2019_Test_GroundTruth\.csv line 5: 1 image\(s\) listed but not in the release \({gone}\); "
          "add ISIC_2019_Test_Input.zip")
    # no ground truth at all
    gt_path.unlink()
    fails(r"no 'ISIC_2019_Training_GroundTruth\.csv' found")


# ------------------------------------------------------------------------------- ISIC 2020
GT_COLUMNS_2020 = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
                   "benign_malignant", "target"]


def _write_isic2020(root: Path, v2: bool = True, duplicates: bool = True, zipped: bool = True) -> dict:
    """The ISIC 2020 training files: 10 patients with 3-6 images each, all but one image malignant
    for half of them, rows shuffled as in the official file; two official duplicate pairs, one
    within a patient and one across two (benign) patients."""
    rows, n = [], 0
    fine_benign = ["unknown", "nevus", "seborrheic keratosis", "lentigo NOS"]
    for p in range(10):
        for k in range(3 + p % 4):
            n += 1
            malignant = p % 2 == 0 and k > 0
            rows.append({
                "image_name": f"ISIC_{1000000 + 37 * n:07d}", "patient_id": f"IP_{1000000 + p:07d}",
                "lesion_id": f"IL_{2000000 + n:07d}", "sex": ("male", "female", "")[p % 3],
                "age_approx": "" if n % 11 == 0 else str(30 + 5 * (n % 9)),
                "anatom_site_general_challenge": ("torso", "lower extremity", "", "head/neck")[n % 4],
                "diagnosis": "melanoma" if malignant else fine_benign[n % 4],
                "benign_malignant": "malignant" if malignant else "benign", "target": int(malignant)})
    gt = pd.DataFrame(rows)
    gt = gt.iloc[np.random.default_rng(3).permutation(len(gt))].reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    name = "ISIC_2020_Training_GroundTruth_v2.csv" if v2 else "ISIC_2020_Training_GroundTruth.csv"
    cols = GT_COLUMNS_2020[:2] + (["lesion_id"] if v2 else []) + GT_COLUMNS_2020[2:]
    gt[cols].to_csv(root / name, index=False)
    by_patient = gt.groupby("patient_id")["image_name"].apply(sorted)
    pairs = [(by_patient.iloc[0][0], by_patient.iloc[0][1]), (by_patient.iloc[1][0], by_patient.iloc[3][0])]
    if duplicates:
        pd.DataFrame(pairs, columns=["image_name_1", "image_name_2"]).to_csv(
            root / "ISIC_2020_Training_Duplicates.csv", index=False)
    folder = root / "train"
    for i, image in enumerate(gt["image_name"]):
        _save(folder / f"{image}.jpg", 500 + i)
    if zipped:
        _zip_folder(folder, root / "ISIC_2020_Training_JPEG.zip", prefix="train/")
        shutil.rmtree(folder)
    return {"gt": gt, "pairs": pairs, "gt_path": root / name}


def test_isic2020_classes_patients_and_official_duplicates(tmp_path):
    fx = _write_isic2020(tmp_path / "release")
    gt, pairs = fx["gt"], fx["pairs"]
    result = import_release("isic2020", tmp_path / "release", tmp_path / "card", progress=False)
    card = load_card(result.root)
    assert card.name == "isic2020" and card.classes == ["benign", "malignant"]
    assert card.group_column == "patient_id" and card.duplicate_column == "official_duplicate_of"
    assert card.positive_class == "malignant"
    assert result.check.ok
    table = _card_table(result.root)
    want = gt["target"].map({0: "benign", 1: "malignant"})
    assert dict(zip(table["image_name"], table["diagnosis"])) == dict(zip(gt["image_name"], want))
    assert table["diagnosis"].value_counts().to_dict() == want.value_counts().to_dict()
    by_name = table.set_index("image_name")
    for col, official in (("diagnosis_fine", "diagnosis"), *((c, c) for c in (
            "patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general_challenge", "benign_malignant"))):
        assert by_name.loc[gt["image_name"], col].tolist() == gt[official].astype(str).tolist(), col
    assert by_name.loc[gt["image_name"], "malignant"].tolist() == gt["target"].astype(str).tolist()
    # a patient never spans two splits; each official pair is recorded both ways and shares a split
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    paired = {}
    for a, b in pairs:
        paired.setdefault(a, set()).add(b)
        paired.setdefault(b, set()).add(a)
    got = {k: set(v.split(";")) for k, v in by_name["official_duplicate_of"].items() if v}
    assert got == paired
    for a, b in pairs:
        assert by_name.loc[a, "split"] == by_name.loc[b, "split"]
    assert "fitzpatrick" not in table.columns and "monk_skin_tone" not in table.columns  # not recorded
    assert any(f"read {len(gt)} images" in n and "33,126" in n and "a partial copy" in n for n in result.notes)
    assert any("public test set has no labels" in n for n in result.notes)
    assert any("4 images in official duplicate pairs" in n for n in result.notes)


def test_isic2020_v1_ground_truth_without_duplicates_file_zipped_release(tmp_path):
    fx = _write_isic2020(tmp_path / "release", v2=False, duplicates=False)
    archive = _zip_folder(tmp_path / "release", tmp_path / "isic2020.zip")
    result = import_release("isic2020", archive, tmp_path / "card", progress=False, check_images=False)
    table = _card_table(result.root)
    assert len(table) == len(fx["gt"]) and (table["lesion_id"] == "").all()
    assert (table["official_duplicate_of"] == "").all()
    assert any("has no lesion ids" in n for n in result.notes)
    assert any("no ISIC_2020_Training_Duplicates.csv" in n for n in result.notes)


def test_isic2020_official_tables_parse_without_images(tmp_path):
    fx = _write_isic2020(tmp_path / "r", zipped=False)
    table = i20.parse_ground_truth(fx["gt_path"])
    assert table["image_name"].tolist() == fx["gt"]["image_name"].tolist()
    assert table["diagnosis"].tolist() == fx["gt"]["target"].map({0: "benign", 1: "malignant"}).tolist()
    dup = i20.parse_duplicates(tmp_path / "r" / "ISIC_2020_Training_Duplicates.csv", table["image_name"])
    assert int(dup.notna().sum()) == 4
    assert "a partial copy" in i20.count_notes(table)[0]


def test_isic2020_refusals_name_the_file_column_and_line(tmp_path):
    fx = _write_isic2020(tmp_path / "release", zipped=False)
    root, gt_path = tmp_path / "release", fx["gt_path"]
    gt = pd.read_csv(gt_path, dtype=str, keep_default_na=False)
    out = tmp_path / "out"

    def fails(pattern: str) -> None:
        with pytest.raises(DataError, match=pattern):
            import_release("isic2020", root, out, progress=False)
        _no_leftovers(out)

    bad = gt.copy()
    bad.loc[5, "target"] = "2"
    bad.to_csv(gt_path, index=False)
    fails(r"GroundTruth_v2\.csv line 7, column 'target': unknown code\(s\) '2'")
    bad = gt.copy()
    bad.loc[2, "benign_malignant"] = "malignant" if bad.loc[2, "target"] == "0" else "benign"
    bad.to_csv(gt_path, index=False)
    fails(r"GroundTruth_v2\.csv line 4: benign_malignant .* disagrees with target")
    gt.drop(columns=["patient_id"]).to_csv(gt_path, index=False)
    fails(r"GroundTruth_v2\.csv line 1 \(header\): no column 'patient_id'")
    gt.to_csv(gt_path, index=False)
    dup_path = root / "ISIC_2020_Training_Duplicates.csv"
    dup = pd.read_csv(dup_path, dtype=str)
    dup.loc[1, "image_name_2"] = "ISIC_9999999"
    dup.to_csv(dup_path, index=False)
    fails(r"ISIC_2020_Training_Duplicates\.csv line 3: image 'ISIC_9999999' is not in the ground truth")
    dup_path.unlink()
    gone = gt["image_name"][6]
    (root / "train" / f"{gone}.jpg").unlink()
    fails(rf"GroundTruth_v2\.csv line 8: 1 image\(s\) listed but not in the release \({gone}\)")
    gt_path.unlink()
    fails(r"no 'ISIC_2020_Training_GroundTruth_v2\.csv' or 'ISIC_2020_Training_GroundTruth\.csv' found")


# ----------------------------------------------------------------------------------- CLI
def test_cli_import_both_and_bad_input(tmp_path, capsys):
    _write_isic2019(tmp_path / "r19", test=False)
    _write_isic2020(tmp_path / "r20")
    for name, src in (("isic2019", "r19"), ("isic2020", "r20")):
        assert main(["data", "import", name, "--from", str(tmp_path / src), "--out", str(tmp_path / name),
                     "--no-images"]) == 0
        out = capsys.readouterr().out
        assert "card written to" in out and "a partial copy" in out
        spec = yaml.safe_load((tmp_path / name / "dataset.yaml").read_text())
        assert spec["base_card"] == name and spec["import"]["release"] == name
    assert main(["data", "sheet", str(tmp_path / "isic2020")]) == 0
    sheet = capsys.readouterr().out
    assert "Citation: Rotemberg V. et al." in sheet and "Source: International Skin Imaging Collaboration" in sheet
    # the 2020 release is not a 2019 one: exit 2, the missing file named, no traceback, nothing written
    assert main(["data", "import", "isic2019", "--from", str(tmp_path / "r20"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "ISIC_2019_Training_GroundTruth.csv" in err and "Traceback" not in err
    _no_leftovers(tmp_path / "x")
