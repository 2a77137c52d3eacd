"""`dermkit data fetch` end to end against a local HTTP server on 127.0.0.1 (Range requests,
a Dataverse-style file listing, an interrupted transfer), with a test manifest."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import Server
from dermkit.cli import main
from dermkit.data.fetch import RemoteFile, download, fetch, load_manifest
from dermkit.errors import DataError


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(tmp_path: Path, releases: dict) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"schema": 1, "releases": releases}))
    return path


def _blob(n: int = 300_000) -> bytes:
    return bytes((i * 7919) % 251 for i in range(n))


# ------------------------------------------------------------------------------- download()
def test_checksum_accepted_and_file_reused(server, tmp_path):
    data = _blob()
    server.files["/a.bin"] = data
    remote = RemoteFile("a.bin", server.url + "/a.bin", len(data), {"sha256": _sha(data)})
    path, sha = download(remote, tmp_path, progress=False)
    assert path == tmp_path / "a.bin" and path.read_bytes() == data and sha == _sha(data)
    assert not any((tmp_path / ".partial").iterdir())
    n = len(server.log)
    assert download(remote, tmp_path, progress=False)[1] == sha
    assert len(server.log) == n  # verified copy reused, nothing downloaded


def test_wrong_checksum_refused_and_nothing_left(server, tmp_path):
    data = _blob()
    server.files["/a.bin"] = data
    remote = RemoteFile("a.bin", server.url + "/a.bin", None, {"sha256": "0" * 64})
    with pytest.raises(DataError, match=r"a\.bin: sha256 checksum mismatch \(expected 0{64}.*deleted"):
        download(remote, tmp_path, progress=False)
    assert not (tmp_path / "a.bin").exists()
    assert not list((tmp_path / ".partial").iterdir())
    md5 = RemoteFile("a.bin", server.url + "/a.bin", len(data) + 1, {"md5": hashlib.md5(data).hexdigest()})
    with pytest.raises(DataError, match=f"{len(data)} bytes downloaded, the source publishes {len(data) + 1}"):
        download(md5, tmp_path, progress=False)
    assert not (tmp_path / "a.bin").exists() and not list((tmp_path / ".partial").iterdir())


def test_interrupted_download_is_resumed_with_a_range_request(server, tmp_path):
    data = _blob()
    server.files["/a.bin"] = data
    server.cut["/a.bin"] = 100_000  # the first response drops after 100 kB
    remote = RemoteFile("a.bin", server.url + "/a.bin", len(data), {"sha256": _sha(data)})
    path, sha = download(remote, tmp_path, progress=False, backoff=0, timeout=5)
    assert path.read_bytes() == data and sha == _sha(data)
    ranges = [r for p, r in server.log if p == "/a.bin"]
    assert ranges == [None, "bytes=100000-"]


def test_partial_file_from_a_killed_run_is_resumed(server, tmp_path):
    data = _blob()
    server.files["/a.bin"] = data
    (tmp_path / ".partial").mkdir()
    (tmp_path / ".partial" / "a.bin.part").write_bytes(data[:123_456])
    remote = RemoteFile("a.bin", server.url + "/a.bin", len(data), {"sha256": _sha(data)})
    path, _ = download(remote, tmp_path, progress=False)
    assert path.read_bytes() == data
    assert server.log == [("/a.bin", "bytes=123456-")]
    # a .part that is already complete: the server answers 416 and the file is verified as is
    server.log.clear()
    path.unlink()
    (tmp_path / ".partial" / "a.bin.part").write_bytes(data)
    assert download(remote, tmp_path, progress=False)[0].read_bytes() == data
    # a corrupted .part is resumed, fails verification and is deleted
    path.unlink()
    (tmp_path / ".partial" / "a.bin.part").write_bytes(b"x" * 1000)
    with pytest.raises(DataError, match="checksum mismatch"):
        download(remote, tmp_path, progress=False)
    assert not (tmp_path / ".partial" / "a.bin.part").exists() and not path.exists()


def test_unreachable_and_non_http_urls(tmp_path):
    with pytest.raises(DataError, match="only http"):
        download(RemoteFile("a", "file:///etc/passwd", None, {"sha256": "0" * 64}), tmp_path, progress=False)
    with pytest.raises(DataError, match="HTTP 404"):
        s = Server()
        try:
            download(RemoteFile("a", s.url + "/missing", None, {"sha256": "0" * 64}), tmp_path, progress=False)
        finally:
            s.close()


# ---------------------------------------------------------------------------------- fetch()
def test_unpublished_checksum_needs_record_then_is_pinned(server, tmp_path):
    data = b"image_id,melanoma,seborrheic_keratosis\n"
    server.files["/gt.csv"] = data
    manifest = _manifest(tmp_path, {"demo": {"title": "Demo", "licence": "CC0", "access": "public",
                                             "files": [{"name": "gt.csv", "url": server.url + "/gt.csv"}]}})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="--accept-licence"):
        fetch("demo", cache=cache, manifest=manifest, progress=False)
    with pytest.raises(DataError, match="no published checksum for gt.csv.*--record-checksums"):
        fetch("demo", cache=cache, manifest=manifest, accept_licence=True, progress=False)
    assert not (cache / "demo" / "gt.csv").exists()
    result = fetch("demo", cache=cache, manifest=manifest, accept_licence=True, record_checksums=True, progress=False)
    assert result.sha256["gt.csv"] == _sha(data)
    assert (cache / "demo" / "SHA256SUMS").read_text() == f"{_sha(data)}  gt.csv\n"
    # the server's file changes: a new download must match the recorded SHA-256
    (cache / "demo" / "gt.csv").unlink()
    server.files["/gt.csv"] = b"tampered\n"
    with pytest.raises(DataError, match="recorded in SHA256SUMS"):
        fetch("demo", cache=cache, manifest=manifest, accept_licence=True, progress=False)
    assert not (cache / "demo" / "gt.csv").exists()


def test_registration_only_release_says_where_and_how():
    with pytest.raises(DataError, match=r"derm\.cs\.sfu\.ca.*dermkit data import derm7pt --from"):
        fetch("derm7pt", accept_licence=True, progress=False)
    assert "derm7pt" in load_manifest()["releases"]
    with pytest.raises(DataError, match="unknown release 'isic2099'"):
        fetch("isic2099", accept_licence=True)


def _tiny_ham_release() -> dict[str, bytes]:
    """HAM10000-shaped downloads: two image zips and the metadata CSV (real JPEG bytes)."""
    meta, parts = [], {1: io.BytesIO(), 2: io.BytesIO()}
    zips = {k: zipfile.ZipFile(v, "w") for k, v in parts.items()}
    colours = {"akiec": (180, 90, 80), "bcc": (200, 60, 60), "bkl": (150, 120, 90), "df": (120, 90, 60),
               "mel": (60, 50, 40), "nv": (160, 110, 90), "vasc": (200, 40, 90)}
    n = 0
    for dx, colour in colours.items():
        for lesion in range(3):
            n += 1
            image_id = f"ISIC_{n:07d}"
            buf = io.BytesIO()
            Image.new("RGB", (24, 18), tuple(c + 5 * lesion for c in colour)).save(buf, "JPEG")
            zips[1 + n % 2].writestr(f"{image_id}.jpg", buf.getvalue())
            meta.append((f"HAM_{n:07d}", image_id, dx, "histo", "50.0", "male", "back"))
    for z in zips.values():
        z.close()
    csv = pd.DataFrame(meta, columns=["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
    return {"HAM10000_images_part_1.zip": parts[1].getvalue(), "HAM10000_images_part_2.zip": parts[2].getvalue(),
            "HAM10000_metadata.csv": csv.to_csv(index=False).encode()}


def test_fetch_ham10000_through_a_dataverse_listing_then_import(server, tmp_path, capsys):
    files = _tiny_ham_release()
    listing = []
    for i, (name, data) in enumerate(files.items(), start=10):
        entry = {"id": i, "filename": name, "filesize": len(data),
                 "checksum": {"type": "MD5", "value": hashlib.md5(data).hexdigest()}}
        if name.endswith(".csv"):  # Dataverse ingests CSVs as .tab and keeps the original
            entry.update(filename="HAM10000_metadata.tab", originalFileName="HAM10000_metadata.csv",
                         originalFileSize=len(data), filesize=len(data) + 99)
        server.files[f"/api/access/datafile/{i}"] = data
        listing.append({"label": entry["filename"], "dataFile": entry})
    doi = "doi:10.7910/DVN/TEST"
    server.json[f"/api/datasets/:persistentId/versions/:latest-published/files?persistentId={doi}"] = {
        "status": "OK", "data": listing}
    manifest = yaml.safe_load((Path(__file__).parents[1] / "src/dermkit/data/releases/manifest.yaml").read_text())
    entry = manifest["releases"]["ham10000"]
    entry["dataverse"] = {"server": server.url, "doi": doi, "version": ":latest-published"}
    path = _manifest(tmp_path, {"ham10000": entry})
    server.cut["/api/access/datafile/10"] = 500  # the first zip's transfer drops once
    cache, out = tmp_path / "cache", tmp_path / "data" / "ham10000"
    code = main(["data", "fetch", "ham10000", "--out", str(out), "--cache", str(cache), "--manifest", str(path),
                 "--accept-licence"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name, data in files.items():
        assert _sha(data) in captured.out, name  # each verified file's SHA-256 is printed
    assert sorted(p.name for p in (cache / "ham10000").iterdir()) == [
        "HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip", "HAM10000_metadata.csv", "SHA256SUMS"]
    assert ("/api/access/datafile/10", "bytes=500-") in server.log
    assert any(p.startswith("/api/access/datafile/12") and "format=original" in p for p, _ in server.log)
    table = pd.read_csv(out / "metadata.csv")
    assert len(table) == 21 and table["diagnosis"].value_counts().to_dict() == {c: 3 for c in
                                                                                 ("akiec", "bcc", "bkl", "df", "mel",
                                                                                  "nv", "vasc")}
    # a corrupted copy in the cache is not trusted: it is downloaded again
    (cache / "ham10000" / "HAM10000_images_part_2.zip").write_bytes(b"garbage")
    result = fetch("ham10000", cache=cache, manifest=path, accept_licence=True, progress=False)
    assert (cache / "ham10000" / "HAM10000_images_part_2.zip").read_bytes() == files["HAM10000_images_part_2.zip"]
    assert result.imported is None


def test_cli_fetch_refuses_without_licence(tmp_path, capsys):
    assert main(["data", "fetch", "pad_ufes20", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--accept-licence" in err and "CC BY 4.0" in err and "Traceback" not in err
    assert not (tmp_path / "pad_ufes20").exists()
