"""`dermkit data import`: each official release layout -> a checked dataset card.

Fixtures take a few real images from ../shared/data (copied into tmp_path, never into the repo),
arrange them as the official release does and write the official metadata (official column names
and codes). Expected classes, counts, groups and splits are computed from the fixture's own
official table, independently of the importer.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_DATA, requires_shared_data
from dermkit.cli import main
from dermkit.data import check_dataset, load_card
from dermkit.data.releases import derm7pt as d7
from dermkit.data.releases import import_csv, import_folder, import_release, safe_extract
from dermkit.errors import DataError

pytestmark = [pytest.mark.realdata, requires_shared_data]


def _shared(name: str) -> pd.DataFrame:
    return pd.read_csv(SHARED_DATA / name / "metadata.csv", dtype=str, keep_default_na=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
    return archive


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.import-")]


def _card_table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)


# ----------------------------------------------------------------------------------- HAM10000
def _ham_rows(per_class: int = 4) -> pd.DataFrame:
    meta = _shared("ham10000")
    picks = []
    for _dx, rows in meta.groupby("diagnosis"):
        lesions = sorted(rows["lesion_id"].unique())[:per_class]
        picks.append(rows[rows["lesion_id"].isin(lesions)].head(8))
    return pd.concat(picks, ignore_index=True)


def _write_ham(root: Path, rows: pd.DataFrame, zipped_parts: bool = False) -> Path:
    """HAM10000 as on Dataverse: HAM10000_metadata.csv + HAM10000_images_part_1/2 (folders or zips)."""
    root.mkdir(parents=True)
    official = pd.DataFrame({"lesion_id": rows["lesion_id"], "image_id": rows["image_id"], "dx": rows["diagnosis"],
                             "dx_type": rows["dx_type"], "age": rows["age"], "sex": rows["sex"],
                             "localization": rows["localization"]})
    official.to_csv(root / "HAM10000_metadata.csv", index=False)
    half = len(rows) // 2
    for part, chunk in ((1, rows.iloc[:half]), (2, rows.iloc[half:])):
        folder = root / f"HAM10000_images_part_{part}"
        folder.mkdir()
        for image in chunk["image"]:
            shutil.copy(SHARED_DATA / "ham10000" / image, folder / Path(image).name)
        if zipped_parts:
            _zip_folder(folder, root / f"HAM10000_images_part_{part}.zip")
            shutil.rmtree(folder)
    return root


def test_ham10000_folder_gives_classes_counts_groups_and_types(tmp_path):
    rows = _ham_rows()
    src = _write_ham(tmp_path / "release", rows)
    result = import_release("ham10000", src, tmp_path / "card", progress=False)
    assert result.check.ok
    card = load_card(tmp_path / "card")
    assert card.classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]  # the packaged card's
    assert card.class_names["bkl"] == "benign keratosis-like lesion"
    table = card.table
    assert len(table) == len(rows)
    assert table["diagnosis"].value_counts().to_dict() == rows["diagnosis"].value_counts().to_dict()
    assert table["lesion_id"].nunique() == rows["lesion_id"].nunique()
    assert (table["label"].astype(int) == table["diagnosis"].map(card.classes.index)).all()
    assert set(table["malignant"]) == {"0", "1"}
    assert (table.loc[table["diagnosis"].isin(["akiec", "bcc", "mel"]), "malignant"] == "1").all()
    # grouped by lesion: no lesion in two splits, every split present
    assert table.groupby("lesion_id")["split"].nunique().max() == 1
    assert set(table["split"]) == {"train", "val", "test"}
    assert card.metadata_columns == {"age": "numeric", "sex": "categorical", "localization": "categorical"}
    assert card.group_column == "lesion_id"
    # images are the release's bytes
    by_id = dict(zip(rows["image_id"], rows["image"]))
    for rel, image_id in zip(table["image"].head(5), table["image_id"].head(5)):
        assert _sha(card.root / rel) == _sha(SHARED_DATA / "ham10000" / by_id[image_id])
    assert "official_split" not in table.columns
    assert "grouped stratified split" in result.split_source and "seed 0" in result.split_source


def test_ham10000_zipped_parts_and_seed(tmp_path):
    rows = _ham_rows()
    src = _write_ham(tmp_path / "release", rows, zipped_parts=True)
    a = import_release("ham10000", src, tmp_path / "a", progress=False, check_images=False)
    b = import_release("ham10000", src, tmp_path / "b", progress=False, check_images=False, seed=0)
    c = import_release("ham10000", src, tmp_path / "c", progress=False, check_images=False, seed=5)
    ta, tb, tc = (_card_table(r.root) for r in (a, b, c))
    assert ta["split"].tolist() == tb["split"].tolist()  # same seed, same split
    assert ta["split"].tolist() != tc["split"].tolist()
    assert sorted(ta["image_id"]) == sorted(rows["image_id"])
    assert (src / "HAM10000_images_part_1.zip").is_file()  # the release is left as it was


def test_ham10000_bad_code_missing_file_and_missing_image_are_named(tmp_path):
    rows = _ham_rows(per_class=3)
    src = _write_ham(tmp_path / "release", rows)
    meta = pd.read_csv(src / "HAM10000_metadata.csv", dtype=str)
    meta.loc[2, "dx"] = "melanoma"
    meta.to_csv(src / "HAM10000_metadata.csv", index=False)
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv line 4, column 'dx'.*'melanoma'"):
        import_release("ham10000", src, tmp_path / "out", progress=False)
    _no_leftovers(tmp_path / "out")

    (src / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError, match="HAM10000_metadata"):
        import_release("ham10000", src, tmp_path / "out", progress=False)
    _no_leftovers(tmp_path / "out")

    src2 = _write_ham(tmp_path / "release2", rows)
    gone = sorted((src2 / "HAM10000_images_part_2").iterdir())[0]
    gone.unlink()
    with pytest.raises(DataError, match=rf"line \d+: 1 image\(s\) listed but not in the release \({gone.stem}\)"):
        import_release("ham10000", src2, tmp_path / "out", progress=False)
    _no_leftovers(tmp_path / "out")


def test_corrupt_image_fails_the_check_and_leaves_nothing(tmp_path):
    src = _write_ham(tmp_path / "release", _ham_rows(per_class=3))
    victim = sorted((src / "HAM10000_images_part_1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    # told against the release (its metadata line and image file), not the card's metadata.csv (never written)
    with pytest.raises(DataError, match=rf"(?s)fails `dermkit data check` as imported; nothing was written"
                                        rf".*truncated_image.*HAM10000_metadata\.csv line \d+ \(image "
                                        rf"{re.escape(str(victim))}\)"):
        import_release("ham10000", src, tmp_path / "out", progress=False)
    _no_leftovers(tmp_path / "out")


def test_out_rules(tmp_path):
    src = _write_ham(tmp_path / "release", _ham_rows(per_class=3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty.*--force"):
        import_release("ham10000", src, out, progress=False, check_images=False)
    assert (out / "keep.txt").read_text() == "mine"
    import_release("ham10000", src, out, progress=False, check_images=False, force=True)
    assert not (out / "keep.txt").exists() and (out / "metadata.csv").is_file()
    with pytest.raises(DataError, match="inside the release folder"):
        import_release("ham10000", src, src / "card", progress=False)


# ------------------------------------------------------------------------------ zip safety
def test_zip_slip_is_refused_with_the_member_name(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("HAM10000_metadata.csv", "lesion_id,image_id,dx,dx_type,age,sex,localization\n")
        zf.writestr("../../escaped.txt", "boom")
    with pytest.raises(DataError, match=r"'\.\./\.\./escaped\.txt'.*climbs out"):
        import_release("ham10000", archive, tmp_path / "out", progress=False)
    assert not (tmp_path.parent / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    _no_leftovers(tmp_path / "out")
    with pytest.raises(DataError, match="absolute path"):
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("/etc/evil", "x")
        safe_extract(archive, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_truncated_zip_is_named(tmp_path):
    rows = _ham_rows(per_class=3)
    src = _write_ham(tmp_path / "release", rows)
    archive = _zip_folder(src, tmp_path / "HAM10000.zip")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"HAM10000\.zip.*(not a zip|corrupt)"):
        import_release("ham10000", archive, tmp_path / "out", progress=False)
    _no_leftovers(tmp_path / "out")


# ------------------------------------------------------------------------------- ISIC 2017
def _write_isic2017(root: Path) -> pd.DataFrame:
    meta = _shared("isic2017")
    picks = []
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for dx in ("melanoma", "nevus", "seborrheic keratosis"):
            picks.append(meta[(meta["official_split"] == split) & (meta["diagnosis"] == dx)].head(n))
    # ISIC_0012175 (official train) and ISIC_0015982 (official test) are byte-identical files
    picks.append(meta[meta["image_id"].isin(["ISIC_0012175", "ISIC_0015982"])])
    rows = pd.concat(picks, ignore_index=True).drop_duplicates("image_id")
    for split, part in (("train", "Training"), ("val", "Validation"), ("test", "Test_v2")):
        chunk = rows[rows["official_split"] == split]
        folder = root / f"ISIC-2017_{part}_Data"
        folder.mkdir(parents=True)
        for image in chunk["image"]:
            shutil.copy(SHARED_DATA / "isic2017" / image, folder / Path(image).name)
        sex = chunk["sex"].replace("", "unknown")
        pd.DataFrame({"image_id": chunk["image_id"], "age_approximate": chunk["age_approximate"].replace("", "unknown"),
                      "sex": sex}).to_csv(folder / f"ISIC-2017_{part}_Data_metadata.csv", index=False)
        pd.DataFrame({"image_id": chunk["image_id"],
                      "melanoma": (chunk["diagnosis"] == "melanoma").astype(float),
                      "seborrheic_keratosis": (chunk["diagnosis"] == "seborrheic keratosis").astype(float)}
                     ).to_csv(root / f"ISIC-2017_{part}_Part3_GroundTruth.csv", index=False)
    return rows


def test_isic2017_zip_keeps_the_official_split(tmp_path):
    rows = _write_isic2017(tmp_path / "release")
    archive = _zip_folder(tmp_path / "release", tmp_path / "isic2017.zip", prefix="ISIC2017/")
    result = import_release("isic2017", archive, tmp_path / "card", progress=False)
    assert result.split_source == "official"
    card = load_card(result.root)
    table = card.table
    assert card.classes == ["melanoma", "nevus", "seborrheic keratosis"]
    got = table.groupby(["split", "diagnosis"]).size().to_dict()
    want = rows.groupby(["official_split", "diagnosis"]).size().to_dict()
    assert got == want
    assert (table["split"] == table["official_split"]).all()
    assert table["age_approximate"].isna().sum() == (rows["age_approximate"] == "").sum()  # 'unknown' -> empty
    assert "unknown" not in set(table["sex"].dropna())
    # the identical pair is recorded; the official split keeps it apart (the published benchmark) and says so
    dup = table.set_index("image_id")["duplicate_of"]
    assert dup["ISIC_0012175"] == "ISIC_0015982" and dup["ISIC_0015982"] == "ISIC_0012175"
    assert dup.drop(["ISIC_0012175", "ISIC_0015982"]).isna().all()
    assert {p.kind for p in result.check.errors} == {"duplicate_image_leak"}
    assert any("byte-identical images in different splits" in n for n in result.notes)


def test_isic2017_grouped_split_and_bad_ground_truth(tmp_path):
    _write_isic2017(tmp_path / "release")
    result = import_release("isic2017", tmp_path / "release", tmp_path / "card", split="grouped", progress=False,
                            check_images=False)
    assert "grouped stratified split" in result.split_source and "official_split" in result.split_source
    assert result.check.ok  # identical images share a split
    split = _card_table(result.root).set_index("image_id")["split"]
    assert split["ISIC_0012175"] == split["ISIC_0015982"]
    gt = tmp_path / "release" / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    frame = pd.read_csv(gt)
    frame.loc[1, ["melanoma", "seborrheic_keratosis"]] = 1.0
    frame.to_csv(gt, index=False)
    with pytest.raises(DataError, match=r"Validation_Part3_GroundTruth\.csv line 3: melanoma and seborrheic"):
        import_release("isic2017", tmp_path / "release", tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------- ISIC 2018
def test_isic2018_one_hot_lesion_groupings_and_official_split(tmp_path):
    rows = _ham_rows(per_class=3)
    root = tmp_path / "release"
    codes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    split_of = {img: ("train", "val", "test")[i % 3] for i, img in enumerate(rows["image_id"])}
    rows["part"] = rows["image_id"].map(split_of)
    for split, part in (("train", "Training"), ("val", "Validation"), ("test", "Test")):
        chunk = rows[rows["part"] == split]
        folder = root / f"ISIC2018_Task3_{part}_Input"
        folder.mkdir(parents=True)
        for image in chunk["image"]:
            shutil.copy(SHARED_DATA / "ham10000" / image, folder / Path(image).name)
        gt = pd.DataFrame({"image": chunk["image_id"]})
        for c in codes:
            gt[c] = (chunk["diagnosis"].str.upper() == c).astype(float).to_numpy()
        gtdir = root / f"ISIC2018_Task3_{part}_GroundTruth"
        gtdir.mkdir()
        gt.to_csv(gtdir / f"ISIC2018_Task3_{part}_GroundTruth.csv", index=False)
        _zip_folder(gtdir, root / f"ISIC2018_Task3_{part}_GroundTruth.zip", prefix=gtdir.name + "/")
        shutil.rmtree(gtdir)
    train = rows[rows["part"] == "train"]
    pd.DataFrame({"image": train["image_id"], "lesion_id": train["lesion_id"], "diagnosis_confirm_type": "histo"}
                 ).to_csv(root / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False)
    result = import_release("isic2018", root, tmp_path / "card", progress=False)
    card = load_card(result.root)
    assert card.name == "isic2018" and card.classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    table = card.table
    assert dict(zip(table["image_id"], table["split"])) == split_of
    assert dict(zip(table["image_id"], table["diagnosis"])) == dict(zip(rows["image_id"], rows["diagnosis"]))
    has_lesion = table["lesion_id"].notna()
    assert set(table.loc[has_lesion, "split"]) == {"train"}
    assert has_lesion.sum() == len(train)


# ------------------------------------------------------------------------------------ PH2
PH2_COLOURS = ("white", "red", "light_brown", "dark_brown", "blue_gray", "black")


def _write_ph2(root: Path, n_per_class: int = 4) -> pd.DataFrame:
    meta = _shared("ph2")
    rows = pd.concat([g.head(n_per_class) for _, g in meta.groupby("diagnosis")], ignore_index=True)
    base = root / "PH2Dataset"
    code = {"common nevus": 0, "atypical nevus": 1, "melanoma": 2}
    lines = ["||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | "
             "Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil ||           Colors ||"]
    for _, r in rows.iterrows():
        name = r["image_id"]
        folder = base / "PH2 Dataset images" / name
        (folder / f"{name}_Dermoscopic_Image").mkdir(parents=True)
        (folder / f"{name}_lesion").mkdir()
        Image.open(SHARED_DATA / "ph2" / r["image"]).save(folder / f"{name}_Dermoscopic_Image" / f"{name}.bmp")
        Image.open(SHARED_DATA / "ph2" / r["mask"]).save(folder / f"{name}_lesion" / f"{name}_lesion.bmp")
        colours = "  ".join(str(i) for i, c in enumerate(PH2_COLOURS, start=1) if r[f"color_{c}"] == "1")
        crit = " | ".join(r[c] for c in ("asymmetry", "pigment_network", "dots_globules", "streaks",
                                          "regression_areas", "blue_whitish_veil"))
        lines.append(f"|| {name} || {r['histological_diagnosis']:>22} || {code[r['diagnosis']]:>18} || {crit} || "
                     f"{colours:>12} ||")
    lines += ["", "Legends for Clinical Diagnosis:", "0 - Common Nevus", "1 - Atypical Nevus", "2 - Melanoma"]
    (base / "PH2_dataset.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def test_ph2_txt_criteria_colours_and_masks(tmp_path):
    rows = _write_ph2(tmp_path / "release")
    result = import_release("ph2", tmp_path / "release", tmp_path / "card", progress=False)
    card = load_card(result.root)
    table = card.table.set_index("image_id")
    want = rows.set_index("image_id")
    assert card.classes == ["atypical nevus", "common nevus", "melanoma"]
    assert (table["diagnosis"] == want["diagnosis"]).all()
    for col in ("asymmetry", "pigment_network", "dots_globules", "streaks", "regression_areas", "blue_whitish_veil",
                *[f"color_{c}" for c in PH2_COLOURS]):
        assert (table[col] == want.loc[table.index, col]).all(), col
    assert (table["histological_diagnosis"].fillna("") == want["histological_diagnosis"]).all()
    assert table["mask"].str.endswith("_lesion.bmp").all()
    assert card.metadata_columns["color_black"] == "boolean"
    assert set(table["split"]) == {"train", "val", "test"}
    first = next(iter(table.index))
    assert Image.open(card.root / table.loc[first, "image"]).format == "BMP"


def test_ph2_xlsx_needs_openpyxl_or_reads_it(tmp_path):
    rows = _write_ph2(tmp_path / "release", n_per_class=3)
    base = tmp_path / "release" / "PH2Dataset"
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        (base / "PH2_dataset.txt").unlink()
        (base / "PH2_dataset.xlsx").write_bytes(b"PK\x03\x04 not really")
        with pytest.raises(DataError, match="openpyxl.*PH2_dataset.txt"):
            import_release("ph2", tmp_path / "release", tmp_path / "out", progress=False)
        return
    header = ["Image Name", "Histological Diagnosis", "Common Nevus", "Atypical Nevus", "Melanoma",
              "Asymmetry\n(0/1/2)", "Pigment Network\n(AT/T)", "Dots/Globules\n(A/AT/T)", "Streaks\n(A/P)",
              "Regression Areas\n(A/P)", "Blue-Whitish Veil\n(A/P)", "White", "Red", "Light-Brown", "Dark-Brown",
              "Blue-Gray", "Black"]
    sheet = [[None] * 17 for _ in range(12)] + [header]
    for _, r in rows.iterrows():
        marks = ["X" if r["diagnosis"] == d else None for d in ("common nevus", "atypical nevus", "melanoma")]
        sheet.append([r["image_id"], r["histological_diagnosis"] or None, *marks, r["asymmetry"], r["pigment_network"],
                      r["dots_globules"], r["streaks"], r["regression_areas"], r["blue_whitish_veil"],
                      *["X" if r[f"color_{c}"] == "1" else None for c in PH2_COLOURS]])
    pd.DataFrame(sheet).to_excel(base / "PH2_dataset.xlsx", header=False, index=False)
    (base / "PH2_dataset.txt").unlink()
    table = load_card(import_release("ph2", tmp_path / "release", tmp_path / "card", progress=False).root).table
    assert dict(zip(table["image_id"], table["diagnosis"])) == dict(zip(rows["image_id"], rows["diagnosis"]))


def test_ph2_corrupt_table_line_is_named(tmp_path):
    _write_ph2(tmp_path / "release", n_per_class=3)
    txt = tmp_path / "release" / "PH2Dataset" / "PH2_dataset.txt"
    lines = txt.read_text().splitlines()
    lines[2] = re.sub(r"\|\|\s+[012] \|\|", "|| 7 ||", lines[2], count=1)
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"PH2_dataset\.txt line 3: IMD\d+: clinical diagnosis '7'"):
        import_release("ph2", tmp_path / "release", tmp_path / "out", progress=False)


# -------------------------------------------------------------------------------- Derm7pt
def test_derm7pt_mapping_table_reproduces_the_paper():
    """Kawahara et al. 2019 (release_v0 meta.csv): 20 fine diagnoses -> 5 groups, 1,011 cases
    = BCC 42, MEL 252, MISC 97, NEV 575, SK 45."""
    fine = {"clark nevus": 399, "melanoma (less than 0.76 mm)": 102, "reed or spitz nevus": 79,
            "melanoma (in situ)": 64, "melanoma (0.76 to 1.5 mm)": 53, "seborrheic keratosis": 45,
            "basal cell carcinoma": 42, "dermal nevus": 33, "vascular lesion": 29, "blue nevus": 28,
            "melanoma (more than 1.5 mm)": 28, "lentigo": 24, "dermatofibroma": 20, "congenital nevus": 17,
            "melanosis": 16, "combined nevus": 13, "miscellaneous": 8, "recurrent nevus": 6,
            "melanoma metastasis": 4, "melanoma": 1}
    assert set(fine) == set(d7.GROUPS)
    groups = pd.Series(fine).groupby(lambda d: d7.GROUPS[d]).sum().to_dict()
    assert groups == {"basal cell carcinoma": 42, "melanoma": 252, "miscellaneous": 97, "nevus": 575,
                      "seborrheic keratosis": 45}
    assert sum(fine.values()) == 1011


def _write_derm7pt(root: Path) -> pd.DataFrame:
    meta = _shared("derm7pt")
    picks = [meta[meta["clinic_is_derm_copy"] == "1"].head(1)]
    for (_, _), g in meta.groupby(["diagnosis", "official_split"]):
        picks.append(g.head(2))
    rows = pd.concat(picks).drop_duplicates("case_num").sort_values("case_num", key=lambda s: s.astype(int))
    rows = rows.reset_index(drop=True)
    release = root / "release_v0"
    for _, r in rows.iterrows():
        for col, src in (("derm_source_file", r["image"]), ("clinic_source_file", r["clinic_image"])):
            dest = release / "images" / r[col]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy(SHARED_DATA / "derm7pt" / src, dest)
    official = pd.DataFrame({
        "case_num": rows["case_num"], "diagnosis": rows["diagnosis_fine"],
        "seven_point_score": rows["seven_point_score"],
        **{c: rows[c] for c in d7.CRITERIA},
        "level_of_diagnostic_difficulty": rows["level_of_diagnostic_difficulty"], "elevation": rows["elevation"],
        "location": rows["location"], "sex": rows["sex"], "management": rows["management"],
        "clinic": rows["clinic_source_file"], "derm": rows["derm_source_file"], "case_id": "", "notes": rows["notes"]})
    (release / "meta").mkdir(parents=True)
    official.to_csv(release / "meta" / "meta.csv", index=False)
    for split, file in (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"), ("test", "test_indexes.csv")):
        pd.DataFrame({"indexes": rows.index[rows["official_split"] == split]}).to_csv(release / "meta" / file,
                                                                                     index=False)
    return rows


def test_derm7pt_second_view_criteria_breslow_and_official_split(tmp_path):
    rows = _write_derm7pt(tmp_path / "dl")
    archive = _zip_folder(tmp_path / "dl", tmp_path / "release_v0.zip")
    result = import_release("derm7pt", archive, tmp_path / "card", progress=False)
    assert result.split_source == "official"
    card = load_card(result.root)
    assert card.second_view_column == "clinic_image"
    table = card.table.set_index("case_num")
    want = rows.set_index("case_num")
    for col in ("diagnosis", "diagnosis_fine", "breslow_category", "breslow_ordinal", "clinic_is_derm_copy",
                "seven_point_score", *d7.CRITERIA):
        assert (table[col].fillna("") == want.loc[table.index, col]).all(), col
    assert (table["split"] == want.loc[table.index, "official_split"]).all()
    copy = want.index[want["clinic_is_derm_copy"] == "1"][0]
    assert table.loc[copy, "clinic_image"] == table.loc[copy, "image"]
    other = want.index[want["clinic_is_derm_copy"] == "0"][0]
    assert _sha(card.root / table.loc[other, "clinic_image"]) == _sha(SHARED_DATA / "derm7pt" /
                                                                     want.loc[other, "clinic_image"])
    assert card.metadata_columns["breslow_ordinal"] == "numeric"


def test_derm7pt_missing_image_and_bad_index(tmp_path):
    rows = _write_derm7pt(tmp_path / "dl")
    meta_dir = tmp_path / "dl" / "release_v0" / "meta"
    pd.DataFrame({"indexes": [len(rows) + 5]}).to_csv(meta_dir / "valid_indexes.csv", index=False)
    with pytest.raises(DataError, match=rf"valid_indexes\.csv line 2: index '{len(rows) + 5}' is not a row"):
        import_release("derm7pt", tmp_path / "dl", tmp_path / "out", progress=False)
    (tmp_path / "dl" / "release_v0" / "images" / rows.loc[0, "derm_source_file"]).unlink()
    with pytest.raises(DataError, match=rf"line 2 derm {rows.loc[0, 'derm_source_file']}"):
        import_release("derm7pt", tmp_path / "dl", tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------- PAD-UFES-20
def test_pad_ufes20_nested_zips_patient_groups_and_types(tmp_path):
    meta = _shared("pad_ufes20")
    patients = sorted({p for d, g in meta.groupby("diagnosis") for p in sorted(g["patient_id"].unique())[:4]})
    rows = meta[meta["patient_id"].isin(patients)].reset_index(drop=True)
    root = tmp_path / "PAD-UFES-20"
    cols = ["patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age", "pesticide",
            "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
            "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed",
            "elevation", "img_id", "biopsed"]
    official = rows.rename(columns={"diagnosis": "diagnostic"})[cols].copy()
    official.loc[0, "grew"] = "UNK"
    root.mkdir()
    official.to_csv(root / "metadata.csv", index=False)
    for part, chunk in ((1, rows.iloc[::2]), (2, rows.iloc[1::2])):
        folder = tmp_path / f"imgs_part_{part}"
        folder.mkdir()
        for _, r in chunk.iterrows():
            Image.open(SHARED_DATA / "pad_ufes20" / r["image"]).save(folder / r["img_id"])
        (root / "images").mkdir(exist_ok=True)
        _zip_folder(folder, root / "images" / f"imgs_part_{part}.zip", prefix=f"imgs_part_{part}/")
    archive = _zip_folder(root, tmp_path / "zr7vgbcyr2-1.zip", prefix="PAD-UFES-20/")
    result = import_release("pad_ufes20", archive, tmp_path / "card", progress=False)
    card = load_card(result.root)
    table = card.table
    assert card.classes == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert table["diagnosis"].value_counts().to_dict() == rows["diagnosis"].value_counts().to_dict()
    assert table["patient_id"].nunique() == len(patients)
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    assert table.loc[table["img_id"] == official.loc[0, "img_id"], "grew"].iloc[0] == "UNK"
    assert card.metadata_columns["fitspatrick"] == "numeric" and card.metadata_columns["itch"] == "boolean"
    # the skin type as the one column every card shares: fitspatrick 1.0-6.0 -> I-VI, value by value
    roman = {f"{i}.0": t for i, t in enumerate(("I", "II", "III", "IV", "V", "VI"), start=1)}
    by_id = table.set_index("img_id")
    for _, r in official.iterrows():
        got = by_id.loc[r["img_id"], "fitzpatrick"]
        want = roman.get(str(r["fitspatrick"]).strip())
        assert (got if isinstance(got, str) and got else None) == want, r["img_id"]
    assert card.metadata_columns["fitzpatrick"] == "categorical"
    assert table["image"].str.endswith(".png").all()
    assert check_dataset(card, progress=False).ok


# --------------------------------------------------------------------------- folder / csv
def _class_folders(root: Path, splits: bool = False) -> dict:
    meta = _shared("ph2")
    counts = {}
    for dx, g in meta.groupby("diagnosis"):
        for i, r in enumerate(g.head(6).itertuples()):
            split = ("train", "train", "train", "train", "val", "test")[i] if splits else None
            folder = root / (split or "") / dx
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(SHARED_DATA / "ph2" / r.image, folder / Path(r.image).name)
            counts[(split, dx)] = counts.get((split, dx), 0) + 1
    return counts


def test_import_folder_with_and_without_split_folders(tmp_path):
    counts = _class_folders(tmp_path / "flat")
    result = import_folder(tmp_path / "flat", tmp_path / "card", progress=False)
    card = load_card(result.root)
    assert card.classes == ["atypical nevus", "common nevus", "melanoma"]
    assert card.table["diagnosis"].value_counts().to_dict() == {dx: n for (_, dx), n in counts.items()}
    assert set(card.table["split"]) == {"train", "val", "test"}
    counts = _class_folders(tmp_path / "split", splits=True)
    table = load_card(import_folder(tmp_path / "split", tmp_path / "card2", name="mine", progress=False).root).table
    assert table.groupby(["split", "diagnosis"]).size().to_dict() == counts
    assert load_card(tmp_path / "card2").name == "mine"
    (tmp_path / "empty" / "nevus").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        import_folder(tmp_path / "empty", tmp_path / "card3", progress=False)


def test_import_csv_columns_groups_split_and_escapes(tmp_path):
    meta = _shared("ham10000")
    rows = pd.concat([g.head(9) for _, g in meta.groupby("diagnosis")], ignore_index=True)
    (tmp_path / "pics").mkdir()
    for image in rows["image"]:
        shutil.copy(SHARED_DATA / "ham10000" / image, tmp_path / "pics" / Path(image).name)
    frame = pd.DataFrame({"file": "pics/" + rows["image_id"] + ".jpg", "dx": rows["diagnosis"],
                          "lesion": rows["lesion_id"], "age": rows["age"], "fold": "train"})
    frame.loc[frame.index % 5 == 1, "fold"] = "Validation"
    frame.loc[frame.index % 5 == 2, "fold"] = "test"
    frame.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"(?s)fails `dermkit data check`.*group_leak.*lesion 'HAM_"):
        import_csv(tmp_path / "labels.csv", tmp_path / "out" / "card", image_column="file", label_column="dx",
                   group_column="lesion", split_column="fold", progress=False)  # rows of a lesion in two folds
    _no_leftovers(tmp_path / "out" / "card")
    number = {lesion: i for i, lesion in enumerate(frame["lesion"].unique())}
    frame["fold"] = frame["lesion"].map(lambda x: ("train", "train", "train", "Validation", "test")[number[x] % 5])
    frame.to_csv(tmp_path / "labels.csv", index=False)
    result = import_csv(tmp_path / "labels.csv", tmp_path / "out" / "card", image_column="file", label_column="dx",
                        group_column="lesion", split_column="fold", progress=False)
    card = load_card(result.root)
    assert card.group_column == "lesion"
    assert card.table["split"].tolist() == frame["fold"].str.lower().replace({"validation": "val"}).tolist()
    assert card.metadata_columns["age"] == "numeric"
    frame.loc[3, "file"] = "../outside.jpg"
    frame.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"labels\.csv line 5, column 'file'.*leaves the dataset folder"):
        import_csv(tmp_path / "labels.csv", tmp_path / "out" / "c2", image_column="file", label_column="dx",
                   progress=False)
    with pytest.raises(DataError, match="no column 'label'"):
        import_csv(tmp_path / "labels.csv", tmp_path / "out" / "c3", image_column="file", label_column="label",
                   progress=False)


# ----------------------------------------------------------------------------------- CLI
def test_cli_import_and_bad_input(tmp_path, capsys):
    src = _write_ham(tmp_path / "release", _ham_rows(per_class=3))
    assert main(["data", "import", "ham10000", "--from", str(src), "--out", str(tmp_path / "card"),
                 "--no-images"]) == 0
    out = capsys.readouterr().out
    assert "card written to" in out and "akiec" in out
    assert main(["data", "check", str(tmp_path / "card"), "--no-images"]) == 0
    capsys.readouterr()
    assert main(["data", "import", "isic2099", "--from", str(src), "--out", str(tmp_path / "x")]) == 2
    assert "unknown kind 'isic2099'" in capsys.readouterr().err
    assert main(["data", "import", "csv", "--from", str(src / "HAM10000_metadata.csv"), "--out",
                 str(tmp_path / "y")]) == 2
    assert "--image-column and --label-column" in capsys.readouterr().err
    assert main(["data", "import", "ph2", "--from", str(src), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "PH2_dataset.txt" in err and "Traceback" not in err
    _no_leftovers(tmp_path / "z")
