"""`dermkit data import ddi` and `... scin` on tiny fixtures in the official layouts (images made
here with PIL, no shared data): classes, counts, groups, skin-type columns value by value, every
refusal, a zip, and the CLI."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermkit.cli import main
from dermkit.data.releases import ddi, import_release, scin
from dermkit.errors import DataError

# The fixtures' rare class (one SCIN case) goes to train only, as the split warns.
pytestmark = pytest.mark.filterwarnings("ignore:classes with fewer groups than splits")


def _png(path: Path, seed: int) -> None:
    """A 32x32 PNG of its own random pattern (no two alike, not near-duplicates either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _read(card: Path) -> pd.DataFrame:
    frame = pd.read_csv(card / "metadata.csv", dtype=str, keep_default_na=False)
    return pd.DataFrame({c: [v if v != "" else None for v in frame[c]] for c in frame.columns}, dtype=object)


def _zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder.parent).as_posix())
    return out


# ------------------------------------------------------------------------------------- DDI
# (DDI_ID, skin_tone, malignant, disease): the official columns, 16 images.
DDI_ROWS = [(i, tone, mal, dis) for i, (tone, mal, dis) in enumerate([
    ("56", "TRUE", "melanoma-in-situ"), ("56", "FALSE", "verruca-vulgaris"), ("12", "TRUE", "basal-cell-carcinoma"),
    ("12", "FALSE", "melanocytic-nevi"), ("34", "TRUE", "mycosis-fungoides"), ("34", "FALSE", "seborrheic-keratosis"),
    ("56", "TRUE", "squamous-cell-carcinoma"), ("12", "FALSE", "epidermal-cyst"), ("34", "TRUE", "melanoma"),
    ("34", "FALSE", "acrochordon"), ("12", "TRUE", "kaposi-sarcoma"), ("56", "FALSE", "dermatofibroma"),
    ("12", "TRUE", "melanoma-acral-lentiginous"), ("34", "FALSE", "melanocytic-nevi"),
    ("56", "TRUE", "basal-cell-carcinoma"), ("12", "FALSE", "verruca-vulgaris")], start=1)]
EXPECT_GROUP = {"12": "I-II", "34": "III-IV", "56": "V-VI"}


def _ddi_csv(rows, malignant_column="malignant") -> str:
    lines = [f",DDI_ID,DDI_file,skin_tone,{malignant_column},disease"]
    for k, (i, tone, mal, dis) in enumerate(rows):
        lines.append(f"{k},{i},{i:06d}.png,{tone},{mal},{dis}")
    return "\n".join(lines) + "\n"


def _write_ddi(root: Path, rows=DDI_ROWS, images_dir: str = "", text: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ddi_metadata.csv").write_text(_ddi_csv(rows) if text is None else text)
    for i, *_ in rows:
        _png(root / images_dir / f"{i:06d}.png", i)
    return root


def test_ddi_folder(tmp_path):
    src = _write_ddi(tmp_path / "DDI")
    result = import_release("ddi", src, tmp_path / "card", progress=False)
    table = _read(tmp_path / "card")
    assert len(table) == len(DDI_ROWS)
    by_id = table.set_index("DDI_ID")
    for i, tone, mal, dis in DDI_ROWS:
        row = by_id.loc[str(i)]
        assert row["image"] == f"images/{i:06d}.png"
        assert row["diagnosis"] == ("malignant" if mal == "TRUE" else "benign")
        assert row["malignant"] == ("1" if mal == "TRUE" else "0")
        assert row["disease"] == dis and row["skin_tone"] == tone
        assert row["fitzpatrick"] == EXPECT_GROUP[tone]
        assert row["label_source"] == "histopathology"
    expected = pd.Series([("malignant" if r[2] == "TRUE" else "benign") for r in DDI_ROWS]).value_counts()
    assert table["diagnosis"].value_counts().to_dict() == expected.to_dict()
    assert set(table["split"]) == {"train", "val", "test"}
    assert result.split_source.startswith("grouped stratified split")
    assert "grouped by DDI_ID" in result.split_source
    notes = " ".join(result.notes)
    assert "read 16 of the 656 images of the official release: a partial copy" in notes
    assert "no patient id" in notes
    yaml_text = (tmp_path / "card" / "dataset.yaml").read_text()
    assert "base_card: ddi" in yaml_text
    # the grouped skin types are read as such by the datasheet and the analyses (not "unreadable")
    from dermkit.data import load_card
    from dermkit.data.datasheet import datasheet

    card = load_card(tmp_path / "card")
    fz = datasheet(card)["skin_type"]["fitzpatrick"]
    direct = pd.Series([EXPECT_GROUP[r[1]] for r in DDI_ROWS]).value_counts().to_dict()
    assert {k: v for k, v in fz["counts"].items() if v} == direct and fz["unreadable"] == 0
    assert card.analysis_table()["fitzpatrick"].value_counts().to_dict() == direct


def test_ddi_zip_with_images_folder_and_old_malignancy_column(tmp_path):
    root = tmp_path / "DDI"
    _write_ddi(root, images_dir="images", text=_ddi_csv(
        [(i, t, "1" if m == "TRUE" else "0", d) for i, t, m, d in DDI_ROWS], "malignancy(malig=1)"))
    archive = _zip(root, tmp_path / "ddidiversedermatologyimages.zip")
    import_release("ddi", archive, tmp_path / "card", progress=False)
    table = _read(tmp_path / "card")
    assert sorted(table["image"]) == sorted(f"images/{i:06d}.png" for i, *_ in DDI_ROWS)
    assert table.set_index("DDI_ID")["diagnosis"].to_dict() == {
        str(i): "malignant" if m == "TRUE" else "benign" for i, _, m, _ in DDI_ROWS}


def test_ddi_full_release_counts_from_metadata_only(tmp_path):
    tones = ["12"] * 208 + ["34"] * 241 + ["56"] * 207
    rows = [(i, t, "FALSE", "melanocytic-nevi") for i, t in enumerate(tones, start=1)]
    path = tmp_path / "ddi_metadata.csv"
    path.write_text(_ddi_csv(rows))
    table = ddi.parse_metadata(path)
    assert len(table) == ddi.OFFICIAL["images"] == 656
    assert ddi.completeness(table).startswith("read all 656 images of the official release")
    assert ddi.completeness(table.iloc[:-3]).startswith("read 653 of the 656 images")
    assert "DDI_ID 654, 655, 656 absent" in ddi.completeness(table.iloc[:-3])


def test_ddi_refusals(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _png(empty / "000001.png", 1)
    with pytest.raises(DataError, match="ddi_metadata.csv"):
        import_release("ddi", empty, tmp_path / "c0", progress=False)
    no_col = _write_ddi(tmp_path / "nocol", text=_ddi_csv(DDI_ROWS).replace("skin_tone", "fitz"))
    with pytest.raises(DataError, match=r"line 1 \(header\): no column 'skin_tone'"):
        import_release("ddi", no_col, tmp_path / "c1", progress=False)
    rows = list(DDI_ROWS)
    rows[3] = (4, "78", "FALSE", "melanocytic-nevi")
    bad_tone = _write_ddi(tmp_path / "tone", rows=rows)
    with pytest.raises(DataError, match=r"ddi_metadata.csv line 5, column 'skin_tone': unknown code\(s\) '78'"):
        import_release("ddi", bad_tone, tmp_path / "c2", progress=False)
    rows = list(DDI_ROWS)
    rows[0] = (1, "56", "maybe", "melanoma-in-situ")
    bad_mal = _write_ddi(tmp_path / "mal", rows=rows)
    with pytest.raises(DataError, match=r"line 2, column 'malignant': unknown code\(s\) 'maybe'"):
        import_release("ddi", bad_mal, tmp_path / "c3", progress=False)
    gone = _write_ddi(tmp_path / "gone")
    (gone / "000005.png").unlink()
    with pytest.raises(DataError, match=r"ddi_metadata.csv line 6: 1 image\(s\) named in DDI_file .*000005.png"):
        import_release("ddi", gone, tmp_path / "c4", progress=False)
    for out in ("c0", "c1", "c2", "c3", "c4"):
        assert not (tmp_path / out).exists()


# ------------------------------------------------------------------------------------ SCIN
CASE_HEADER = ["case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type",
               "race_ethnicity_asian", "race_ethnicity_white", "textures_raised_or_bumpy", "textures_flat",
               "body_parts_arm", "body_parts_leg", "related_category", "condition_duration",
               "image_1_path", "image_2_path", "image_3_path", "image_1_shot_type", "image_2_shot_type",
               "image_3_shot_type", "combined_race"]
LABEL_HEADER = ["case_id", "dermatologist_gradable_for_skin_condition_1", "dermatologist_skin_condition_on_label_name",
                "dermatologist_skin_condition_confidence", "weighted_skin_condition_label",
                "dermatologist_fitzpatrick_skin_type_label_1", "dermatologist_fitzpatrick_skin_type_label_2",
                "dermatologist_fitzpatrick_skin_type_label_3", "gradable_for_monk_skin_tone_india",
                "gradable_for_monk_skin_tone_us", "monk_skin_tone_label_india", "monk_skin_tone_label_us"]
# case: (n images, weighted label, derm FST labels, self FST, monk india, monk us,
#        expected diagnosis, expected fitzpatrick, expected self-reported)
SCIN_CASES = {
    "101": (1, "{'Eczema': 1.0}", ("FST2", "FST2", "FST3"), "FST6", "2", "3", "Eczema", "II", "VI"),
    "102": (2, "{'Psoriasis': 0.6, 'Tinea': 0.4}", ("FST2", "FST3", ""), "NONE_IDENTIFIED", "4", "5", "Psoriasis",
            "II", None),
    "103": (3, "{'Eczema': 0.7, 'Urticaria': 0.3}", ("FST1", "FST4", "FST6"), "", "1", "1", "Eczema", "IV", None),
    "104": (1, "{'Tinea': 0.3, 'Psoriasis': 0.7}", ("", "", ""), "FST1", "", "10", "Psoriasis", None, "I"),
    "105": (2, "{'Eczema': 1.0}", ("FST5", "", ""), "FST3", "6", "7", "Eczema", "V", "III"),
    "106": (1, "{'Psoriasis': 1.0}", ("FST4", "FST4", ""), "FST4", "3", "2", "Psoriasis", "IV", "IV"),
    "107": (2, "{'Eczema': 0.5, 'Psoriasis': 0.5}", ("FST3", "FST3", "FST3"), "FST2", "2", "2", "Eczema", "III",
            "II"),
    "108": (1, "{'Psoriasis': 0.8, 'Eczema': 0.2}", ("FST6", "FST5", ""), "FST5", "8", "9", "Psoriasis", "V", "V"),
    "109": (3, "{'Eczema': 0.9, 'Acne': 0.1}", ("FST2", "", ""), "", "3", "4", "Eczema", "II", None),
    "110": (2, "{'Psoriasis': 0.55, 'Eczema': 0.45}", ("FST3", "FST2", "FST2"), "FST2", "5", "5", "Psoriasis", "II",
            "II"),
    "111": (1, "{'Eczema': 1.0}", ("FST1", "", ""), "FST1", "1", "2", "Eczema", "I", "I"),
    "112": (2, "{'Psoriasis': 1.0}", ("FST4", "FST5", "FST6"), "FST6", "7", "8", "Psoriasis", "V", "VI"),
    "113": (1, "{'Tinea': 0.5, 'Eczema': 0.5}", ("FST2", "", ""), "FST2", "2", "3", "Tinea", "II", "II"),
    "114": (2, "{}", ("", "", ""), "FST3", "2", "2", None, None, "III"),  # no dermatologist label: left out
}
SHARED = ("112", "111")  # case 112 lists case 111's image as its image 2


def _scin_paths(case: str) -> list[str]:
    n = SCIN_CASES[case][0]
    paths = [f"dataset/images/{case}{k}.png" for k in range(1, n + 1)]
    if case == SHARED[0]:
        paths[1] = f"dataset/images/{SHARED[1]}1.png"
    return paths


def _write_scin(root: Path, cases=None, labels=None, skip_image: str | None = None) -> Path:
    data = root / "dataset"
    data.mkdir(parents=True, exist_ok=True)
    case_rows, label_rows = [], []
    for case, (n, weighted, derm, self_fst, india, us, *_) in SCIN_CASES.items():
        paths = _scin_paths(case) + [""] * (3 - n)
        shots = (["CLOSE_UP", "AT_AN_ANGLE", "AT_DISTANCE"][:n] + [""] * 3)[:3]
        case_rows.append({"case_id": case, "source": "SCIN", "release": "1.0.0", "year": "2023",
                          "age_group": "AGE_18_TO_29", "sex_at_birth": "FEMALE", "fitzpatrick_skin_type": self_fst,
                          "race_ethnicity_asian": "YES" if int(case) % 2 else "", "race_ethnicity_white": "",
                          "textures_raised_or_bumpy": "YES" if int(case) % 3 else "", "textures_flat": "",
                          "body_parts_arm": "YES", "body_parts_leg": "", "related_category": "RASH",
                          "condition_duration": "ONE_DAY", "image_1_path": paths[0], "image_2_path": paths[1],
                          "image_3_path": paths[2], "image_1_shot_type": shots[0], "image_2_shot_type": shots[1],
                          "image_3_shot_type": shots[2], "combined_race": ""})
        label_rows.append({"case_id": case, "dermatologist_gradable_for_skin_condition_1":
                           "DEFAULT_YES_IMAGE_QUALITY_SUFFICIENT", "dermatologist_skin_condition_on_label_name": "[]",
                           "dermatologist_skin_condition_confidence": "[]", "weighted_skin_condition_label": weighted,
                           "dermatologist_fitzpatrick_skin_type_label_1": derm[0],
                           "dermatologist_fitzpatrick_skin_type_label_2": derm[1],
                           "dermatologist_fitzpatrick_skin_type_label_3": derm[2],
                           "gradable_for_monk_skin_tone_india": "True", "gradable_for_monk_skin_tone_us": "True",
                           "monk_skin_tone_label_india": india, "monk_skin_tone_label_us": us})
    cases_frame = pd.DataFrame(case_rows, columns=CASE_HEADER)
    labels_frame = pd.DataFrame(label_rows, columns=LABEL_HEADER)
    if cases is not None:
        cases_frame = cases(cases_frame)
    if labels is not None:
        labels_frame = labels(labels_frame)
    cases_frame.to_csv(data / "scin_cases.csv", index=False)
    labels_frame.to_csv(data / "scin_labels.csv", index=False)
    seed = 1000
    for case in SCIN_CASES:
        for path in _scin_paths(case):
            seed += 1
            if path != skip_image and not (root / path).exists():
                _png(root / path, seed)
    return root


def _expected_rows() -> dict[str, str]:
    """image -> case, for the labelled cases, the shared file counted once (its first case)."""
    out = {}
    for case, spec in SCIN_CASES.items():
        if spec[6] is None:
            continue
        for path in _scin_paths(case):
            out.setdefault(path.removeprefix("dataset/"), case)
    return out


def test_scin_folder(tmp_path):
    src = _write_scin(tmp_path / "scin")
    result = import_release("scin", src, tmp_path / "card", progress=False)
    table = _read(tmp_path / "card")
    expected = _expected_rows()
    assert dict(zip(table["image"], table["case_id"])) == expected
    for row in table.to_dict("records"):
        spec = SCIN_CASES[row["case_id"]]
        assert row["diagnosis"] == spec[6]
        assert row["fitzpatrick"] == spec[7]
        assert row["fitzpatrick_self_reported"] == spec[8]
        assert row["fitzpatrick_skin_type"] == (spec[3] or None)
        assert row["monk_skin_tone"] == (spec[5] or None) == row["monk_skin_tone_label_us"]
        assert row["monk_skin_tone_label_india"] == (spec[4] or None)
        assert row["weighted_skin_condition_label"] == spec[1]
        assert row["image_id"] == Path(row["image"]).stem
    ties = {c for c, s in SCIN_CASES.items() if s[1] in ("{'Eczema': 0.5, 'Psoriasis': 0.5}",
                                                           "{'Tinea': 0.5, 'Eczema': 0.5}")}
    assert set(table.loc[table["condition_tied"] == "1", "case_id"]) == ties
    # tick boxes: 1 ticked, 0 another box of the family ticked, empty when none of the family was
    by_case = table.drop_duplicates("case_id").set_index("case_id")
    assert by_case.loc["101", "race_ethnicity_asian"] == "1" and by_case.loc["101", "race_ethnicity_white"] == "0"
    assert pd.isna(by_case.loc["102", "race_ethnicity_asian"]) and pd.isna(by_case.loc["102", "race_ethnicity_white"])
    assert by_case.loc["102", "body_parts_arm"] == "1" and by_case.loc["102", "body_parts_leg"] == "0"
    # classes: every diagnosis that occurs; a case never spans two splits, nor do cases sharing an image
    card_yaml = (tmp_path / "card" / "dataset.yaml").read_text()
    assert "classes:\n- Eczema\n- Psoriasis\n- Tinea\n" in card_yaml
    assert table["diagnosis"].value_counts().to_dict() == pd.Series(
        [SCIN_CASES[c][6] for c in expected.values()]).value_counts().to_dict()
    assert (table.groupby("case_id")["split"].nunique() == 1).all()
    assert table.loc[table["case_id"].isin(SHARED), "split"].nunique() == 1
    shared = table[table["image"] == f"images/{SHARED[1]}1.png"]
    assert len(shared) == 1 and shared["also_in_cases"].iloc[0] == SHARED[0]
    assert "114" not in set(table["case_id"])
    notes = " ".join(result.notes)
    assert "1 cases (2 images) have no dermatologist condition" in notes
    assert "read 14 of the 5,033 cases" in notes and "a partial copy" in notes
    assert "1 image file(s) are listed by several labelled cases" in notes


def test_scin_zip_and_dataset_folder(tmp_path):
    src = _write_scin(tmp_path / "bucket")
    import_release("scin", _zip(src / "dataset", tmp_path / "scin.zip"), tmp_path / "card", progress=False)
    assert dict(zip(*[_read(tmp_path / "card")[c] for c in ("image", "case_id")])) == _expected_rows()
    import_release("scin", src / "dataset", tmp_path / "card2", progress=False)  # CSVs at the top
    assert len(_read(tmp_path / "card2")) == len(_expected_rows())


def test_scin_parse_counts_without_images(tmp_path):
    src = _write_scin(tmp_path / "scin")
    table, stats = scin.parse_metadata(src / "dataset/scin_cases.csv", src / "dataset/scin_labels.csv")
    n_images = sum(s[0] for s in SCIN_CASES.values())
    assert stats["cases"] == 14 and stats["images"] == n_images and stats["image_files"] == n_images - 1
    assert stats["unlabelled_cases"] == 1 and stats["unlabelled_images"] == 2
    assert len(table) == n_images - 2


@pytest.mark.parametrize("bad, why", [("../outside.png", "climbs out of the release folder"),
                                       ("/etc/passwd", "is an absolute path")])
def test_scin_refuses_paths_outside_the_release(tmp_path, bad, why):
    def edit(frame):
        frame.loc[frame["case_id"] == "103", "image_2_path"] = bad
        return frame
    src = _write_scin(tmp_path / "scin", cases=edit)
    with pytest.raises(DataError, match=rf"scin_cases.csv line 4, column 'image_2_path': the image path "
                                        rf"'{bad}' {why}"):
        import_release("scin", src, tmp_path / "card", progress=False)
    assert not (tmp_path / "card").exists()


def test_scin_refuses_a_link_out_of_the_release(tmp_path):
    src = _write_scin(tmp_path / "scin")
    outside = tmp_path / "elsewhere.png"
    _png(outside, 5)
    target = src / "dataset/images/1011.png"
    target.unlink()
    try:
        target.symlink_to(outside)
    except OSError:
        pytest.skip("no symlinks here")
    with pytest.raises(DataError, match=r"line 2, column 'image_1_path'.*outside the release folder"):
        import_release("scin", src, tmp_path / "card", progress=False)


def test_scin_refusals(tmp_path):
    src = _write_scin(tmp_path / "a")
    (src / "dataset/scin_labels.csv").unlink()
    with pytest.raises(DataError, match="scin_labels.csv"):
        import_release("scin", src, tmp_path / "c0", progress=False)
    src = _write_scin(tmp_path / "b", labels=lambda f: f.drop(columns=["monk_skin_tone_label_us"]))
    with pytest.raises(DataError, match=r"scin_labels.csv line 1 \(header\): no column 'monk_skin_tone_label_us'"):
        import_release("scin", src, tmp_path / "c1", progress=False)
    src = _write_scin(tmp_path / "c", cases=lambda f: f.drop(columns=["image_3_path"]))
    with pytest.raises(DataError, match=r"scin_cases.csv line 1 \(header\): no column 'image_3_path'"):
        import_release("scin", src, tmp_path / "c2", progress=False)

    def fst7(frame):
        frame.loc[frame["case_id"] == "105", "dermatologist_fitzpatrick_skin_type_label_2"] = "FST7"
        return frame
    src = _write_scin(tmp_path / "d", labels=fst7)
    with pytest.raises(DataError, match=r"scin_labels.csv line 6, column 'dermatologist_fitzpatrick_skin_type_label_2'"
                                        r": unknown code\(s\) 'FST7'"):
        import_release("scin", src, tmp_path / "c3", progress=False)

    def weights(frame):
        frame.loc[frame["case_id"] == "102", "weighted_skin_condition_label"] = "Eczema"
        return frame
    src = _write_scin(tmp_path / "e", labels=weights)
    with pytest.raises(DataError, match=r"scin_labels.csv line 3, column 'weighted_skin_condition_label'"):
        import_release("scin", src, tmp_path / "c4", progress=False)

    def monk(frame):
        frame.loc[frame["case_id"] == "101", "monk_skin_tone_label_india"] = "11"
        return frame
    src = _write_scin(tmp_path / "f", labels=monk)
    with pytest.raises(DataError, match=r"line 2, column 'monk_skin_tone_label_india': '11' is not a Monk"):
        import_release("scin", src, tmp_path / "c5", progress=False)
    src = _write_scin(tmp_path / "g", skip_image="dataset/images/1052.png")
    with pytest.raises(DataError, match=r"1 image\(s\) named in scin_cases.csv are not in the release \(line 6 "
                                        r"image_2_path dataset/images/1052.png\).*gsutil -m cp -r"):
        import_release("scin", src, tmp_path / "c6", progress=False)
    for k in range(7):
        assert not (tmp_path / f"c{k}").exists()


# ------------------------------------------------------------------------------------- CLI
def test_cli_import_ddi_and_scin(tmp_path, capsys):
    src = _write_ddi(tmp_path / "DDI")
    assert main(["data", "import", "ddi", "--from", str(src), "--out", str(tmp_path / "card")]) == 0
    out = capsys.readouterr().out
    assert "card written to" in out and "a partial copy" in out
    (src / "ddi_metadata.csv").write_text(_ddi_csv(DDI_ROWS).replace("DDI_file", "file"))
    assert main(["data", "import", "ddi", "--from", str(src), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "ddi_metadata.csv" in err and "Traceback" not in err
    scin_src = _write_scin(tmp_path / "scin")
    assert main(["data", "import", "scin", "--from", str(scin_src), "--out", str(tmp_path / "scard")]) == 0
    capsys.readouterr()
    (scin_src / "dataset/scin_cases.csv").unlink()
    assert main(["data", "import", "scin", "--from", str(scin_src), "--out", str(tmp_path / "sbad")]) == 2
    err = capsys.readouterr().err
    assert "scin_cases.csv" in err and "Traceback" not in err
