"""Fitzpatrick17k: `dermkit data fetch fitzpatrick17k` (the CSV, then every image from its URL, against a
local HTTP server on 127.0.0.1) and `dermkit data import fitzpatrick17k` on tiny fixtures in the official
layout (fitzpatrick17k.csv + images/<md5hash>.<ext>), built in tmp_path: no shared data needed."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import Server
from dermkit.cli import main
from dermkit.data.card_schema import packaged_spec, validate_spec
from dermkit.data.fetch import fetch, load_manifest
from dermkit.data.releases import RELEASES, import_release
from dermkit.data.releases.fitzpatrick17k import OFFICIAL, parse
from dermkit.data.url_images import MAX_THREADS, fetch_url_images
from dermkit.errors import DataError

HEADER = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
          "three_partition_label", "qc", "url", "url_alphanum"]
NINE = {"benign": ["benign dermal", "benign epidermal", "benign melanocyte"],
        "malignant": ["malignant melanoma", "malignant epidermal"],
        "non-neoplastic": ["inflammatory", "genodermatoses"]}
CONDITION = {"benign dermal": "dermatofibroma", "benign epidermal": "seborrheic keratosis",
             "benign melanocyte": "nevocytic nevus", "malignant melanoma": "melanoma",
             "malignant epidermal": "basal cell carcinoma", "inflammatory": "psoriasis",
             "genodermatoses": "ichthyosis vulgaris"}
SCALES = ["1", "2", "3", "4", "5", "6", "-1"]
ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV", "5": "V", "6": "VI", "-1": None}


def _md5(i: int) -> str:
    return hashlib.md5(f"image {i}".encode()).hexdigest()


def _image(i: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(i)
    base = np.array([(i * 53) % 256, (i * 97) % 256, (i * 193) % 256], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-60, 60, size=(32, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _rows(n_per_class: int, base_url: str = "https://www.dermaamin.com/site/images/clinical-pic") -> list[dict]:
    rows = []
    i = 0
    for three in ("benign", "malignant", "non-neoplastic"):
        for k in range(n_per_class):
            nine = NINE[three][k % len(NINE[three])]
            url = f"{base_url}/{i}.jpg"
            rows.append({"md5hash": _md5(i), "fitzpatrick_scale": SCALES[i % 7],
                         "fitzpatrick_centaur": SCALES[(i + 3) % 7], "label": CONDITION[nine],
                         "nine_partition_label": nine, "three_partition_label": three,
                         "qc": "1 Diagnostic" if i == 2 else "", "url": url,
                         "url_alphanum": re.sub(r"[^A-Za-z0-9]", "", url) + ".jpg"})
            i += 1
    return rows


def _write_csv(path: Path, rows: list[dict], header=HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=header).to_csv(path, index=False)
    return path


def _release(folder: Path, rows: list[dict], absent: set[int] = frozenset(), missing_csv: dict | None = None) -> Path:
    """fitzpatrick17k.csv + images/<md5hash>.jpg (row 1 as .png) for every row not in ``absent``."""
    _write_csv(folder / "fitzpatrick17k.csv", rows)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        if i in absent:
            continue
        if i == 1:
            (folder / "images" / f"{row['md5hash']}.png").write_bytes(_image(i, "PNG"))
        else:
            (folder / "images" / f"{row['md5hash']}.jpg").write_bytes(_image(i))
    if missing_csv is not None:
        pd.DataFrame([(k, u, r) for k, (u, r) in missing_csv.items()],
                     columns=["md5hash", "url", "reason"]).to_csv(folder / "missing.csv", index=False)
    return folder


def _zip(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, Path("fitzpatrick17k") / f.relative_to(folder))
    return dest


# --------------------------------------------------------------------------- the table alone
def test_parse_maps_classes_and_fitzpatrick_value_by_value(tmp_path):
    rows = _rows(3)
    rows[1]["url"] = "http://atlasdermatologico.com.br/img?imageId=2409"
    rows[2]["url"] = ""  # as in 41 official rows: no url, url_alphanum names dermaamin.com
    path = _write_csv(tmp_path / "fitzpatrick17k.csv", rows)
    table = parse(path)
    assert len(table) == len(rows)
    assert table["diagnosis"].tolist() == [r["three_partition_label"] for r in rows]
    assert table["condition"].tolist() == [r["label"] for r in rows]
    assert table["nine_partition_label"].tolist() == [r["nine_partition_label"] for r in rows]
    for got, raw, row in zip(table["fitzpatrick"], table["fitzpatrick_scale"], rows):
        assert raw == row["fitzpatrick_scale"]  # the raw column is kept as published
        assert (got if isinstance(got, str) else None) == ROMAN[row["fitzpatrick_scale"]]
    assert table["fitzpatrick_centaur"].tolist() == [r["fitzpatrick_centaur"] for r in rows]
    assert table["atlas"].tolist() == ["dermaamin", "atlas_dermatologico"] + ["dermaamin"] * (len(rows) - 2)


def test_official_counts_are_consistent():
    assert sum(OFFICIAL["three_partition_label"].values()) == OFFICIAL["images"] == 16577
    assert sum(OFFICIAL["nine_partition_label"].values()) == OFFICIAL["images"]
    assert sum(OFFICIAL["fitzpatrick_scale"].values()) == OFFICIAL["images"]
    assert sum(OFFICIAL["fitzpatrick_centaur"].values()) == OFFICIAL["images"]
    assert sum(OFFICIAL["url_hosts"].values()) + OFFICIAL["no_url"] == OFFICIAL["images"]


def test_packaged_card_and_manifest_entry():
    spec = validate_spec(packaged_spec("fitzpatrick17k"), "fitzpatrick17k")
    assert spec["classes"] == sorted(spec["classes"]) == ["benign", "malignant", "non-neoplastic"]
    assert set(spec["class_names"]) == set(spec["synonyms"]) == set(spec["classes"])
    assert spec["positive_class"] == "malignant" and spec["license"] and spec["duplicate_column"] == "duplicate_of"
    assert spec["metadata_columns"]["fitzpatrick"] == "categorical"
    assert spec["group_column"] == "md5hash" and spec["modality"] == "clinical"
    raw = packaged_spec("fitzpatrick17k")
    assert all(raw.get(k) for k in ("source", "citation", "url"))
    entry = load_manifest()["releases"]["fitzpatrick17k"]
    assert entry["access"] == "public" and entry["files"][0]["name"] == "fitzpatrick17k.csv"
    assert entry["files"][0]["sha256"] is None and "raw.githubusercontent.com/mattgroh/fitzpatrick17k" in \
        entry["files"][0]["url"]
    assert entry["image_urls"] == {"table": "fitzpatrick17k.csv", "key_column": "md5hash", "url_column": "url",
                                   "folder": "images"}
    assert "fitzpatrick17k" in RELEASES


# ----------------------------------------------------------------------------------- import
def _expected(rows, absent):
    kept = [r for i, r in enumerate(rows) if i not in absent]
    return kept, pd.Series([r["three_partition_label"] for r in kept]).value_counts().sort_index().to_dict()


@pytest.mark.parametrize("as_zip", [False, True])
def test_import_folder_or_zip_leaves_absent_images_out(tmp_path, as_zip):
    rows = _rows(5)
    absent = {0, 6, 12}  # one per class
    reasons = {rows[6]["md5hash"]: (rows[6]["url"], "HTTP 404 Not Found")}
    src = _release(tmp_path / "release", rows, absent, reasons)
    if as_zip:
        src = _zip(src, tmp_path / "fitzpatrick17k.zip")
    result = import_release("fitzpatrick17k", src, tmp_path / "card", progress=False)
    out = tmp_path / "card"
    table = pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)
    kept, counts = _expected(rows, absent)
    assert table["md5hash"].tolist() == [r["md5hash"] for r in kept]
    assert table["diagnosis"].value_counts().sort_index().to_dict() == counts
    assert table["label"].astype(int).tolist() == [["benign", "malignant", "non-neoplastic"].index(r[
        "three_partition_label"]) for r in kept]
    assert table["malignant"].astype(int).tolist() == [int(r["three_partition_label"] == "malignant") for r in kept]
    assert table["condition"].tolist() == [r["label"] for r in kept]
    assert table["nine_partition_label"].tolist() == [r["nine_partition_label"] for r in kept]
    assert table["fitzpatrick_scale"].tolist() == [r["fitzpatrick_scale"] for r in kept]
    assert table["fitzpatrick_centaur"].tolist() == [r["fitzpatrick_centaur"] for r in kept]
    assert table["fitzpatrick"].tolist() == [ROMAN[r["fitzpatrick_scale"]] or "" for r in kept]
    assert table["qc"].tolist() == [r["qc"] for r in kept]
    # images placed under their md5hash with their own extension
    assert table["image"].tolist() == [f"images/{r['md5hash']}{'.png' if r is rows[1] else '.jpg'}" for r in kept]
    for rel in table["image"]:
        assert (out / rel).is_file()
    # no official split: a grouped split, each md5hash in one split
    assert set(table["split"]) <= {"train", "val", "test"} and "official_split" not in table.columns
    assert table.groupby("md5hash")["split"].nunique().max() == 1
    assert "no official split" in result.split_source
    missing = pd.read_csv(out / "missing_images.csv", dtype=str, keep_default_na=False)
    assert missing.columns.tolist() == ["md5hash", "url", "reason"]
    assert missing.to_dict("records") == [
        {"md5hash": rows[0]["md5hash"], "url": rows[0]["url"], "reason": "not downloaded"},
        {"md5hash": rows[6]["md5hash"], "url": rows[6]["url"], "reason": "HTTP 404 Not Found"},
        {"md5hash": rows[12]["md5hash"], "url": rows[12]["url"], "reason": "not downloaded"}]
    notes = " ".join(result.notes)
    assert f"read {len(kept)} of the 16,577 images of the official release: a partial copy" in notes
    assert "NOT the official full list" in notes and "15 rows, the official file has 16577" in notes
    spec = yaml.safe_load((out / "dataset.yaml").read_text())
    assert spec["base_card"] == "fitzpatrick17k"


def test_refusals_name_the_file_column_and_line(tmp_path):
    rows = _rows(3)
    out = tmp_path / "card"

    def refused(folder, *patterns):
        with pytest.raises(DataError) as info:
            import_release("fitzpatrick17k", folder, out, progress=False)
        for pattern in patterns:
            assert re.search(pattern, str(info.value)), (pattern, str(info.value))
        assert not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, r"no 'fitzpatrick17k\.csv' found")
    # missing column
    bad = _release(tmp_path / "nocol", rows)
    _write_csv(bad / "fitzpatrick17k.csv", rows, [c for c in HEADER if c != "three_partition_label"])
    refused(bad, r"fitzpatrick17k\.csv line 1 \(header\): no column 'three_partition_label'")
    # the April 2021 version (index column, 'fitzpatrick' instead of fitzpatrick_scale/centaur)
    old = _release(tmp_path / "old", rows)
    frame = pd.DataFrame(rows).rename(columns={"fitzpatrick_scale": "fitzpatrick"}).drop(columns="fitzpatrick_centaur")
    frame.to_csv(old / "fitzpatrick17k.csv")
    refused(old, r"April 2021 version", r"fitzpatrick_scale")
    # unknown class code (line 3 = second row), unknown Fitzpatrick code, unknown nine-partition code
    for column, value, line, name in (("three_partition_label", "premalignant", 3, "class"),
                                      ("fitzpatrick_scale", "7", 4, "fitz"),
                                      ("nine_partition_label", "tumour", 5, "nine")):
        changed = [dict(r) for r in rows]
        changed[line - 2][column] = value
        folder = _release(tmp_path / name, changed)
        refused(folder, rf"fitzpatrick17k\.csv line {line}, column '{column}': unknown code\(s\) '{value}'")
    # an md5hash listed twice; an md5hash that is not one
    twice = [dict(r) for r in rows]
    twice[4]["md5hash"] = twice[1]["md5hash"]
    refused(_release(tmp_path / "twice", twice), r"lines 3, 6: md5hash [0-9a-f]{32} is listed more than once")
    unsafe = [dict(r) for r in rows]
    unsafe[2]["md5hash"] = "../../etc/passwd"
    refused(_release(tmp_path / "unsafe", unsafe, absent={2}),
            r"line 4, column 'md5hash': '\.\./\.\./etc/passwd' is not")
    # no image at all: says how to fetch them
    none = _release(tmp_path / "none", rows, absent=set(range(len(rows))))
    refused(none, r"none of the 9 images listed in fitzpatrick17k\.csv is there",
            r"dermkit data fetch fitzpatrick17k")


def test_cli_import_ok_and_bad(tmp_path, capsys):
    rows = _rows(4)
    src = _release(tmp_path / "release", rows, absent={3}, missing_csv={})  # a fetch that found no dead link
    assert main(["data", "import", "fitzpatrick17k", "--from", str(src), "--out", str(tmp_path / "card")]) == 0
    captured = capsys.readouterr()
    assert "card written to" in captured.out and "missing_images.csv" in captured.out
    assert pd.read_csv(tmp_path / "card" / "missing_images.csv")["reason"].tolist() == ["not downloaded"]
    assert main(["data", "check", str(tmp_path / "card"), "--no-images"]) == 0
    capsys.readouterr()
    (src / "fitzpatrick17k.csv").unlink()
    assert main(["data", "import", "fitzpatrick17k", "--from", str(src), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "fitzpatrick17k.csv" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------- fetch (HTTP)
@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _served_release(server: Server, tmp_path: Path, per_class: int = 4):
    """A release served by ``server``: the CSV plus its images, some dead. Returns (rows, manifest, roles)."""
    rows = _rows(per_class, base_url=server.url + "/site")
    n = len(rows)
    roles = {"404": 0, "garbage": 5, "no_url": 9, "cut": 2, "atlas": 7}
    for i, row in enumerate(rows):
        if i == roles["atlas"]:  # Atlas Dermatologico's URLs carry no extension: img?imageId=N
            row["url"] = f"{server.url}/img?imageId={i}"
        if i == roles["no_url"]:
            row["url"] = ""
        path = row["url"].removeprefix(server.url)
        if i == roles["garbage"]:
            server.files[path] = b"<html><body>This image is no longer available</body></html>"
        elif i not in (roles["404"], roles["no_url"]):
            server.files[path] = _image(i, "PNG" if i == roles["atlas"] else "JPEG")
    csv = pd.DataFrame(rows, columns=HEADER).to_csv(index=False).encode()
    server.files["/mattgroh/fitzpatrick17k/fitzpatrick17k.csv"] = csv
    entry = load_manifest()["releases"]["fitzpatrick17k"]
    entry["files"] = [{"name": "fitzpatrick17k.csv", "url": server.url + "/mattgroh/fitzpatrick17k/fitzpatrick17k.csv",
                       "size": len(csv), "sha256": None}]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"schema": 1, "releases": {"fitzpatrick17k": entry}}))
    assert n == 3 * per_class
    return rows, manifest, roles


def _image_requests(server: Server) -> list[tuple[str, str | None]]:
    return [(p, r) for p, r in server.log if not p.endswith("fitzpatrick17k.csv")]


def test_fetch_resumes_records_dead_links_and_imports(server, tmp_path):
    rows, manifest, roles = _served_release(server, tmp_path)
    cut_path = rows[roles["cut"]]["url"].removeprefix(server.url)
    server.cut[cut_path] = 300  # the transfer of this image drops after 300 bytes
    cache = tmp_path / "cache"
    folder = cache / "fitzpatrick17k"
    opts = dict(cache=cache, manifest=manifest, accept_licence=True, progress=False, backoff=0, timeout=5)
    with pytest.raises(DataError, match="--record-checksums"):
        fetch("fitzpatrick17k", **opts)
    # run 1: no retries, so the cut transfer stays a partial download
    first = fetch("fitzpatrick17k", record_checksums=True, retries=0, **opts).images
    dead = {roles["404"], roles["garbage"], roles["no_url"], roles["cut"]}
    assert (first.listed, first.downloaded, first.already, first.dead) == (len(rows), len(rows) - 4, 0, 4)
    present = {p.stem: p.suffix for p in (folder / "images").iterdir() if p.is_file()}
    assert set(present) == {r["md5hash"] for i, r in enumerate(rows) if i not in dead}
    assert present[rows[roles["atlas"]]["md5hash"]] == ".png"  # extension from the decoded format
    parts = list((folder / "images" / ".partial").iterdir())
    assert len(parts) == 1 and parts[0].name.startswith(rows[roles["cut"]]["md5hash"]) and \
        parts[0].stat().st_size == 300  # the half image is never in images/
    missing = pd.read_csv(folder / "missing.csv", dtype=str, keep_default_na=False)
    reasons = dict(zip(missing["md5hash"], missing["reason"]))
    assert missing["md5hash"].tolist() == [rows[i]["md5hash"] for i in sorted(dead)]
    assert reasons[rows[roles["404"]]["md5hash"]].startswith("HTTP 404")
    assert reasons[rows[roles["garbage"]]["md5hash"]].startswith("not a decodable image")
    assert reasons[rows[roles["no_url"]]["md5hash"]] == "no URL listed"
    assert reasons[rows[roles["cut"]]["md5hash"]].startswith("connection failed after 0 retries")
    assert dict(zip(missing["md5hash"], missing["url"]))[rows[roles["404"]]["md5hash"]] == rows[roles["404"]]["url"]
    # run 2: the cut image resumes with a Range request; 404 and garbage are not asked for again
    n = len(server.log)
    second = fetch("fitzpatrick17k", **opts).images
    assert (second.downloaded, second.already, second.dead, second.skipped_dead) == (1, len(rows) - 4, 3, 3)
    assert _image_requests(type("S", (), {"log": server.log[n:]})) == [(cut_path, "bytes=300-")]
    assert (folder / "images" / f"{rows[roles['cut']]['md5hash']}.jpg").read_bytes() == _image(roles["cut"])
    assert not (folder / "images" / ".partial").exists()
    missing = pd.read_csv(folder / "missing.csv", dtype=str, keep_default_na=False)
    assert len(missing) == 3 and rows[roles["cut"]]["md5hash"] not in set(missing["md5hash"])
    # run 3: nothing new is downloaded, no image is requested at all; then the import
    n = len(server.log)
    out = tmp_path / "card"
    third = fetch("fitzpatrick17k", out=out, **opts)
    assert (third.images.downloaded, third.images.already, third.images.dead) == (0, len(rows) - 3, 3)
    assert _image_requests(type("S", (), {"log": server.log[n:]})) == []
    table = pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)
    kept = [r for i, r in enumerate(rows) if i not in dead - {roles["cut"]}]
    assert table["md5hash"].tolist() == [r["md5hash"] for r in kept]
    assert table["fitzpatrick"].tolist() == [ROMAN[r["fitzpatrick_scale"]] or "" for r in kept]
    assert set(table["atlas"]) == {""}  # served from 127.0.0.1: neither atlas
    card_missing = pd.read_csv(out / "missing_images.csv", dtype=str, keep_default_na=False)
    assert card_missing.to_dict("records") == missing.to_dict("records")  # reasons from the fetch's missing.csv
    assert any(f"read {len(kept)} of the 16,577 images" in note for note in third.imported.notes)
    # --retry-dead asks again for the permanent failures
    n = len(server.log)
    again = fetch("fitzpatrick17k", image_options={"retry_dead": True}, **opts).images
    assert again.dead == 3 and len(_image_requests(type("S", (), {"log": server.log[n:]}))) == 2  # no url: no request


def test_cli_fetch_prints_the_summary_and_a_second_run_downloads_nothing(server, tmp_path, capsys):
    rows, manifest, roles = _served_release(server, tmp_path)
    cache, out = tmp_path / "cache", tmp_path / "card"
    args = ["data", "fetch", "fitzpatrick17k", "--cache", str(cache), "--manifest", str(manifest), "--accept-licence"]
    assert main([*args, "--record-checksums", "--threads", "2", "--out", str(out)]) == 0
    out_text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"images: {len(rows)} images listed: {len(rows) - 3} downloaded, 0 already there, 3 dead" in out_text
    assert "card written to" in out_text
    n = len(server.log)
    assert main(args) == 0
    out_text = " ".join(capsys.readouterr().out.split())
    assert f"0 downloaded, {len(rows) - 3} already there, 3 dead (3 recorded dead by an earlier fetch" in out_text
    assert _image_requests(type("S", (), {"log": server.log[n:]})) == []
    assert main([*args, "--threads", "9"]) == 2  # more than 4 at a time is refused
    assert "Traceback" not in capsys.readouterr().err


def test_url_images_refuses_unsafe_keys_and_caps_threads(server, tmp_path):
    with pytest.raises(DataError, match="not a plain identifier"):
        fetch_url_images([("../x", server.url + "/a.jpg")], tmp_path, progress=False)
    server.files["/a.jpg"] = _image(1)
    result = fetch_url_images([("a", server.url + "/a.jpg"), ("b", "ftp://example.org/b.jpg")], tmp_path,
                              threads=64, progress=False)
    assert MAX_THREADS == 4 and (result.downloaded, result.dead) == (1, 1)
    assert (tmp_path / "images" / "a.jpg").read_bytes() == _image(1)
    assert pd.read_csv(tmp_path / "missing.csv")["reason"].tolist() == ["not an http(s) URL (ftp://example.org/b.jpg)"]
