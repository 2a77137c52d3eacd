"""Datasheets (issue 27): every number equals a count computed directly on the card's table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import SHARED_DATA, requires_shared_data
from dermkit.cli import main
from dermkit.data import load_card
from dermkit.data.datasheet import datasheet, datasheet_html, datasheet_markdown, fitzpatrick_type, save_datasheet

FITZ = ["1", "I", "2.0", "iii", "", "4", "V", "6", "unknown", "7"]
DX = ["histo", "follow_up", "consensus", "confocal", "histo"]
SITES = ["back", "face", "Back", "", "scalp", "trunk", "foot", "neck", "ear", "nose", "lip", "hand", "chest"]


def _enriched(folder):
    """tiny_dataset with Fitzpatrick, dx_type, body site and some missing age/sex cells."""
    path = folder / "metadata.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    n = len(table)
    table["fitzpatrick"] = [FITZ[i % len(FITZ)] for i in range(n)]
    table["dx_type"] = [DX[i % len(DX)] for i in range(n)]
    table["localization"] = [SITES[i % len(SITES)] for i in range(n)]
    table.loc[::7, "age"] = ""
    table.loc[::11, "sex"] = "unknown"
    table.loc[::13, "duplicate_of"] = "images/x.jpg"
    table["duplicate_of"] = table["duplicate_of"].fillna("")
    table.to_csv(path, index=False)
    spec = yaml.safe_load((folder / "dataset.yaml").read_text())
    spec["duplicate_column"] = "duplicate_of"
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return load_card(folder)


@pytest.mark.parametrize("value, expected", [
    (1, "I"), ("1", "I"), ("1.0", "I"), ("I", "I"), ("vi", "VI"), ("type III", "III"), ("4.0", "IV"),
    ("", None), (None, None), (float("nan"), None), ("UNK", None), ("7", None), ("2.5", None), ("x", None),
    ("-1", None), ("-1.0", None), ("FST3", "III"), ("FST", None),
    # the groups of releases that record no single type (DDI's 12/34/56)
    ("12", "I-II"), ("34", "III-IV"), ("56", "V-VI"), ("I-II", "I-II"), ("v - vi", "V-VI"), ("3-4", "III-IV"),
    ("II-IV", None), ("23", None),
])
def test_fitzpatrick_mapping(value, expected):
    assert fitzpatrick_type(value) == expected


@pytest.mark.parametrize("value, expected", [
    (1, 1), ("7.0", 7), ("MST 10", 10), ("mst-3", 3), (0, None), (11, None), ("6.5", None), ("", None), (None, None),
])
def test_monk_mapping(value, expected):
    from dermkit.data.skin_type import monk_tone

    assert monk_tone(value) == expected


def test_grouped_fitzpatrick_and_monk_in_the_datasheet(tiny_dataset):
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    meta["skin_tone"] = [("12", "34", "56", "")[i % 4] for i in range(len(meta))]
    meta["monk_skin_tone"] = [("2", "5.0", "", "9")[i % 4] for i in range(len(meta))]
    meta["fitzpatrick"] = meta["skin_tone"]  # as the DDI importer writes it (raw skin_tone kept)
    meta.to_csv(tiny_dataset / "metadata.csv", index=False)
    sheet = datasheet(load_card(tiny_dataset))
    fz, monk = sheet["skin_type"]["fitzpatrick"], sheet["skin_type"]["monk"]
    groups = {"12": "I-II", "34": "III-IV", "56": "V-VI"}
    direct = meta["skin_tone"].map(groups).value_counts()
    assert {k: v for k, v in fz["counts"].items() if v} == direct.to_dict()
    assert list(fz["counts"])[:6] == ["I", "II", "III", "IV", "V", "VI"]  # single types listed, then the groups
    assert fz["missing"] == int((meta["skin_tone"] == "").sum() + meta["skin_tone"].isna().sum())
    want = pd.to_numeric(meta["monk_skin_tone"], errors="coerce").dropna().astype(int).value_counts()
    assert {int(k): v for k, v in monk["counts"].items() if v} == want.to_dict()
    table = load_card(tiny_dataset).analysis_table()
    assert set(table["fitzpatrick"].dropna()) == {"I-II", "III-IV", "V-VI"}
    assert set(table["monk_skin_tone"].dropna()) == {"2", "5", "9"}


def test_numbers_equal_direct_counts(tiny_dataset):
    card = _enriched(tiny_dataset)
    t = card.table
    sheet = datasheet(card)
    assert sheet["identity"]["rows"] == len(t) == 84
    assert sheet["identity"]["image_type"] == "dermoscopic"
    assert sheet["identity"]["licence"] == "CC0 (generated for tests)"
    assert sheet["identity"]["source"] == "not stated in the card"
    # classes per split and totals
    direct = t.groupby(["split", "diagnosis"]).size()
    for split, counts in sheet["classes"]["per_split"].items():
        for cls, n in counts.items():
            assert n == direct.get((split, cls), 0)
    assert sheet["classes"]["total"] == t["diagnosis"].value_counts().to_dict()
    assert sheet["identity"]["splits"] == t["split"].value_counts().to_dict()
    # partition
    part = sheet["partition"]
    sizes = t.groupby("lesion_id").size()
    assert part["level"] == "lesion" and part["groups"] == t["lesion_id"].nunique()
    assert part["images_per_group_max"] == sizes.max()
    assert part["images_per_group_mean"] == pytest.approx(sizes.mean())
    assert part["groups_across_splits"] == int((t.groupby("lesion_id")["split"].nunique() > 1).sum()) == 0
    # label source
    ls = sheet["label_source"]
    words = {"histo": "histopathology", "follow_up": "follow-up", "consensus": "expert consensus",
             "confocal": "confocal microscopy"}
    assert ls["column"] == "dx_type"
    assert ls["counts"] == t["dx_type"].map(words).value_counts().to_dict()
    assert sum(ls["shares"].values()) == pytest.approx(1.0)
    for split, counts in ls["per_split"].items():
        direct_split = t[t["split"] == split]["dx_type"].map(words).value_counts()
        assert counts == {k: int(direct_split.get(k, 0)) for k in ls["counts"]}
    # Fitzpatrick
    fz = sheet["skin_type"]["fitzpatrick"]
    mapped = t["fitzpatrick"].map(fitzpatrick_type)
    assert fz["counts"] == {k: int((mapped == k).sum()) for k in ["I", "II", "III", "IV", "V", "VI"]}
    missing = int(t["fitzpatrick"].isna().sum() + (t["fitzpatrick"] == "unknown").sum())
    assert fz["missing"] == missing and fz["missing_share"] == pytest.approx(missing / len(t))
    assert fz["unreadable"] == int((t["fitzpatrick"] == "7").sum())
    assert sheet["skin_type"]["monk"]["recorded"] is False
    # age
    age = sheet["demographics"]["age"]
    a = pd.to_numeric(t["age"], errors="coerce").dropna()
    assert age["n"] == len(a) and age["missing"] == len(t) - len(a)
    assert age["median"] == a.median() and age["q1"] == a.quantile(0.25) and age["q3"] == a.quantile(0.75)
    assert age["bands"] == {"<30": int((a < 30).sum()), "30-44": int(((a >= 30) & (a < 45)).sum()),
                            "45-59": int(((a >= 45) & (a < 60)).sum()), "60-74": int(((a >= 60) & (a < 75)).sum()),
                            ">=75": int((a >= 75).sum())}
    # sex
    sex = sheet["demographics"]["sex"]
    known = t["sex"][t["sex"] != "unknown"]
    assert sex["counts"] == known.value_counts().to_dict() and sex["missing"] == (t["sex"] == "unknown").sum()
    # body site: casefolded, top 10 + other
    site = sheet["demographics"]["body_site"]
    s = t["localization"].dropna().str.casefold().value_counts()
    assert site["missing"] == t["localization"].isna().sum() and site["distinct"] == len(s)
    assert sum(site["counts"].values()) == site["n"] == s.sum()
    assert site["counts"]["back"] == s["back"] and len(site["counts"]) == 11
    # duplicates
    assert sheet["duplicates"]["declared"] == int(t["duplicate_of"].notna().sum()) == len(range(0, 84, 13))
    assert sheet["duplicates"]["excluded_total"] == 0
    json.dumps(sheet, allow_nan=False)


def test_rendering_escapes_and_covers_sections(tiny_dataset):
    spec = yaml.safe_load((tiny_dataset / "dataset.yaml").read_text())
    spec["license"] = "<script>alert(1)</script> | pipe"
    del spec["group_column"]
    (tiny_dataset / "dataset.yaml").write_text(yaml.safe_dump(spec))
    sheet = datasheet(load_card(tiny_dataset))
    assert sheet["partition"]["level"] == "image" and sheet["partition"]["groups"] == 84
    assert sheet["label_source"]["recorded"] is False and sheet["skin_type"]["fitzpatrick"]["recorded"] is False
    md, page = datasheet_markdown(sheet), datasheet_html(sheet)
    for title in ("Classes per split", "Partition", "Label source", "Skin type", "Demographics", "Duplicates",
                  "CLEAR Derm items covered"):
        assert title in md and title in page
    assert "<script>" not in page and "&lt;script&gt;" in page and "not recorded" in md


def test_cli_writes_three_files(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "sheet"
    assert main(["data", "sheet", str(tiny_dataset), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["datasheet.html", "datasheet.json", "datasheet.md"]
    text = capsys.readouterr().out
    assert "Datasheet: tiny" in text and "datasheet.json" in text
    saved = json.loads((out / "datasheet.json").read_text())
    assert saved == json.loads(json.dumps(datasheet(tiny_dataset)))
    again = save_datasheet(tiny_dataset, tmp_path / "again")
    assert again["markdown"].read_text() == (out / "datasheet.md").read_text()


def test_cli_unknown_dataset_exits_2(capsys):
    assert main(["data", "sheet", "no_such_dataset_xyz"]) == 2
    assert "error" in capsys.readouterr().err


@requires_shared_data
def test_real_pad_ufes20_and_ham10000():
    pad = load_card(SHARED_DATA / "pad_ufes20")
    fz = datasheet(pad)["skin_type"]["fitzpatrick"]
    direct = pd.to_numeric(pad.table["fitspatrick"], errors="coerce").value_counts()
    assert fz["column"] == "fitspatrick"
    assert {k: v for k, v in fz["counts"].items() if v} == {
        ["I", "II", "III", "IV", "V", "VI"][int(k) - 1]: int(v) for k, v in direct.items()}
    assert fz["missing"] == int(pad.table["fitspatrick"].isna().sum())
    ham = datasheet(load_card(SHARED_DATA / "ham10000"))
    ls = ham["label_source"]
    assert ls["column"] == "dx_type" and sum(ls["shares"].values()) == pytest.approx(1.0)
    assert ls["n"] == ham["identity"]["rows"]
    assert ham["partition"]["level"] == "lesion" and ham["partition"]["groups_across_splits"] == 0


def test_data_check_sheet_prints_it_and_a_runs_report_links_the_test_datas_sheet(tiny_dataset, tmp_path, capsys):
    assert main(["data", "check", str(tiny_dataset), "--no-images", "--sheet"]) == 0
    printed = capsys.readouterr().out
    assert "# Datasheet: tiny" in printed and "Images (rows of metadata.csv): 84" in printed
    import dermkit

    dermkit.run({"method": "supervised", "data": str(tiny_dataset), "model": "timm:test_resnet@random",
                 "image_size": 32, "num_workers": 0, "epochs": 1, "n_bootstrap": 10, "ood_acceptance": None},
                out=tmp_path / "run", progress=False)
    test = tmp_path / "run" / "eval" / "test"
    assert (test / "datasheet.html").is_file() and (test / "datasheet.md").is_file()
    assert "[datasheet.html](datasheet.html)" in (test / "report.md").read_text()
    assert "href='datasheet.html'" in (test / "report.html").read_text()
    sheet = json.loads((test / "datasheet.json").read_text())
    assert sheet == json.loads(json.dumps(datasheet(load_card(tiny_dataset)), default=str))


def test_skin_type_is_one_column_whatever_the_release_calls_it(tiny_dataset, tmp_path, capsys):
    from dermkit.data.skin_type import with_skin_type

    table = pd.DataFrame({"fitspatrick": ["1.0", "3", "VI", "", "7", None], "x": range(6)})
    out = with_skin_type(table)
    assert out["fitzpatrick"].where(out["fitzpatrick"].notna(), None).tolist() == ["I", "III", "VI", None, None, None]
    assert "fitzpatrick" not in table.columns  # the input is not changed
    assert with_skin_type(pd.DataFrame({"age": [1]})).columns.tolist() == ["age"]
    # `evaluate --subgroups fitzpatrick` on a card that names it fitspatrick (PAD-UFES-20's spelling)
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    meta["fitspatrick"] = [["2.0", "3.0", "4.0"][i % 3] for i in range(len(meta))]
    meta.to_csv(tiny_dataset / "metadata.csv", index=False)
    test = meta[meta["split"] == "test"]
    frame = pd.DataFrame({"image": test["image"], "target": test["diagnosis"], "prediction": test["diagnosis"],
                          **{f"prob:{c}": (test["diagnosis"] == c).astype(float) for c in ("bcc", "mel", "nv")}})
    frame.to_csv(tmp_path / "p.csv", index=False)
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--data", str(tiny_dataset), "--out",
                 str(tmp_path / "rep"), "--subgroups", "fitzpatrick", "--n-bootstrap", "20"]) == 0
    levels = pd.read_csv(tmp_path / "rep" / "subgroups.csv")
    got = dict(zip(levels["level"], levels["n"]))
    expected = test["fitspatrick"].map({"2.0": "II", "3.0": "III", "4.0": "IV"}).value_counts().to_dict()
    assert {k: v for k, v in got.items() if k in expected} == expected


def test_grouped_skin_types_and_monk_as_subgroups(tiny_dataset, tmp_path):
    """DDI's grouped types (12/34/56) and SCIN's Monk tone work as `evaluate --subgroups` columns."""
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    meta["fitzpatrick"] = [("12", "34", "56")[i % 3] for i in range(len(meta))]
    meta["monk_skin_tone"] = [("3", "7.0")[i % 2] for i in range(len(meta))]
    meta.to_csv(tiny_dataset / "metadata.csv", index=False)
    test = meta[meta["split"] == "test"]
    frame = pd.DataFrame({"image": test["image"], "target": test["diagnosis"], "prediction": test["diagnosis"],
                          **{f"prob:{c}": (test["diagnosis"] == c).astype(float) for c in ("bcc", "mel", "nv")}})
    frame.to_csv(tmp_path / "p.csv", index=False)
    assert main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--data", str(tiny_dataset), "--out",
                 str(tmp_path / "rep"), "--subgroups", "fitzpatrick,monk", "--n-bootstrap", "20"]) == 0
    levels = pd.read_csv(tmp_path / "rep" / "subgroups.csv", dtype={"level": str})
    got = {(a, lvl): n for a, lvl, n in zip(levels["attribute"], levels["level"], levels["n"])}
    for value, group in (("12", "I-II"), ("34", "III-IV"), ("56", "V-VI")):
        assert got[("fitzpatrick", group)] == int((test["fitzpatrick"] == value).sum())
    for value, tone in (("3", "3"), ("7.0", "7")):
        assert got[("monk", tone)] == int((test["monk_skin_tone"] == value).sum())


def test_a_releases_own_skin_tone_scale_is_shown_not_mapped(tiny_dataset):
    """MILK10k's skin_tone_class (0 very dark - 5 very light) is listed as it is, never as Fitzpatrick."""
    meta = pd.read_csv(tiny_dataset / "metadata.csv")
    meta["skin_tone_class"] = [("0", "3", "5", "")[i % 4] for i in range(len(meta))]
    meta.to_csv(tiny_dataset / "metadata.csv", index=False)
    sheet = datasheet(load_card(tiny_dataset))
    assert not sheet["skin_type"]["fitzpatrick"]["recorded"]
    other = sheet["skin_type"]["other"]
    direct = meta["skin_tone_class"][meta["skin_tone_class"] != ""].value_counts().to_dict()
    assert other["column"] == "skin_tone_class" and other["counts"] == {k: direct[k] for k in ("0", "3", "5")}
    assert other["missing"] == len(meta) - sum(direct.values())
    assert "its own scale, not a Fitzpatrick type" in datasheet_markdown(sheet)
