"""DICOM in (issue 30 item 3) and 16-bit images scaled by their bit depth (issue 31 root cause 6).

DICOM files are built here with pydicom from a JPEG (a synthetic one everywhere, a real HAM10000
one when ../shared/data is present): uncompressed RGB from the decoded JPEG, YBR_FULL, the JPEG
bytes themselves encapsulated under the JPEG Baseline transfer syntax (pydicom has no JPEG
encoder), RLE and JPEG 2000 (pydicom's encoders). Every DICOM carries a patient name, id and birth
date; none of them may appear in anything dermkit prints or writes.

Tolerances: the encapsulated JPEG is decoded by the same libjpeg-turbo as the .jpg (pydicom's
Pillow plugin), and the uncompressed / RLE / JPEG 2000 lossless files hold the JPEG's decoded
pixels, so all give the JPEG's pixels exactly and the same probabilities (1e-6 leaves room for
nothing but float summation order inside one batch). YBR_FULL goes RGB -> YCbCr -> RGB with 8-bit
rounding both ways: pixels within 1 level, probabilities within 1e-3.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dermkit
from conftest import SHARED_DATA, make_dataset, requires_shared_data
from dermkit.cli import main
from dermkit.data.images import decode_image_bytes, open_image
from dermkit.errors import DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import convert_color_space  # noqa: E402
from pydicom.uid import (  # noqa: E402
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

PATIENT_NAME = "Quillfeather^Ysolde"
PATIENT_ID = "PID-93571-XQ"
BIRTH_DATE = "19411207"
SECRETS = [PATIENT_NAME.encode(), b"Quillfeather", b"Ysolde", PATIENT_ID.encode(), BIRTH_DATE.encode()]
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"


# ------------------------------------------------------------------------------ building DICOM files
def _dataset(rows: int, cols: int, photometric: str, syntax, samples: int = 3, bits: int = 8,
             stored: int | None = None, signed: bool = False) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_PHOTOGRAPHIC, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    ds.PatientSex, ds.InstitutionName, ds.Modality = "F", "Quillfeather Clinic", "XC"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, samples, photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    stored = bits if stored is None else stored
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, int(signed)
    return ds


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rgb_dicom(pixels: np.ndarray) -> bytes:
    ds = _dataset(*pixels.shape[:2], "RGB", ExplicitVRLittleEndian)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return _bytes(ds)


def ybr_dicom(pixels: np.ndarray) -> bytes:
    ds = _dataset(*pixels.shape[:2], "YBR_FULL", ExplicitVRLittleEndian)
    ds.PixelData = convert_color_space(pixels, "RGB", "YBR_FULL").tobytes()
    return _bytes(ds)


def jpeg_dicom(jpeg: bytes) -> bytes:
    """The JPEG's own bytes as one encapsulated frame (JPEG Baseline; YBR_FULL_422 as the standard says)."""
    with Image.open(io.BytesIO(jpeg)) as im:
        width, height = im.size
    ds = _dataset(height, width, "YBR_FULL_422", JPEGBaseline8Bit)
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return _bytes(ds)


def compressed_dicom(pixels: np.ndarray, syntax) -> bytes:
    ds = _dataset(*pixels.shape[:2], "RGB", ExplicitVRLittleEndian)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.compress(syntax, encoding_plugin="pydicom" if syntax == RLELossless else "")
    return _bytes(ds)


def grey_dicom(values: np.ndarray, stored: int, photometric: str = "MONOCHROME2", signed: bool = False) -> bytes:
    ds = _dataset(*values.shape, photometric, ExplicitVRLittleEndian, samples=1, bits=16, stored=stored,
                  signed=signed)
    ds.PixelData = values.astype(np.int16 if signed else np.uint16).tobytes()
    return _bytes(ds)


def multiframe_dicom(pixels: np.ndarray, frames: int = 3) -> bytes:
    ds = _dataset(*pixels.shape[:2], "RGB", ExplicitVRLittleEndian)
    ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(np.stack([pixels] * frames)).tobytes()
    return _bytes(ds)


def _picture(width: int = 64, height: int = 48, seed: int = 0, dark: bool = False) -> np.ndarray:
    """A lesion-like RGB picture: smooth gradients, a dark blob and noise (so JPEG has work to do)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    rx, ry = rng.uniform(0.12, 0.35) * width, rng.uniform(0.12, 0.35) * height
    blob = np.exp(-(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2))
    wave = 25 * np.sin(x * rng.uniform(0.05, 0.4) + y * rng.uniform(0.05, 0.4))
    base = np.stack([200 - 120 * blob + wave, 150 - 100 * blob + x - wave, 130 - 60 * blob + y], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255)
    return (pixels * (0.45 if dark else 1.0)).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _no_secrets(*texts: str | bytes, folders: tuple[Path, ...] = ()) -> None:
    """No patient element in any text, nor in any file under ``folders``."""
    blobs = [t.encode() if isinstance(t, str) else t for t in texts]
    for folder in folders:
        files = [folder] if folder.is_file() else [p for p in folder.rglob("*") if p.is_file()]
        assert files, folder
        blobs += [p.read_bytes() for p in files]
    for blob in blobs:
        for secret in SECRETS:
            assert secret not in blob


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny supervised model (random timm test_resnet, 1 epoch, 32 px): outputs move with the pixels."""
    root = tmp_path_factory.mktemp("dicom-run")
    data = make_dataset(root, counts={"train": 6, "val": 4, "test": 2})
    config = {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
              "batch_size": 16, "num_workers": 0, "epochs": 1, "n_bootstrap": 10, "ood_acceptance": None}
    dermkit.run(config, out=root / "run", progress=False)
    return root / "run" / "model"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic JPEG and DICOM versions of it (written with .dcm names and one without a suffix)."""
    root = tmp_path_factory.mktemp("dicom-files")
    jpeg = _jpeg(_picture())
    return _versions(root, jpeg)


def _versions(root: Path, jpeg: bytes) -> dict:
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    files = {"jpeg": root / "lesion.jpg", "rgb": root / "rgb.dcm", "encapsulated": root / "jpeg.dcm",
             "ybr": root / "ybr.dcm", "rle": root / "rle.dcm", "j2k": root / "j2k.dcm", "bare": root / "IM000001"}
    files["jpeg"].write_bytes(jpeg)
    files["rgb"].write_bytes(rgb_dicom(pixels))
    files["encapsulated"].write_bytes(jpeg_dicom(jpeg))
    files["ybr"].write_bytes(ybr_dicom(pixels))
    files["rle"].write_bytes(compressed_dicom(pixels, RLELossless))
    files["j2k"].write_bytes(compressed_dicom(pixels, JPEG2000Lossless))
    files["bare"].write_bytes(jpeg_dicom(jpeg))  # no suffix: told by its DICM marker
    return {"pixels": pixels, "files": files, "root": root}


def _predict(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _probabilities(csv: Path, classes=("bcc", "mel", "nv")) -> np.ndarray:
    return pd.read_csv(csv)[[f"prob:{c}" for c in classes]].to_numpy()


# ------------------------------------------------------------------------------ decoding
def test_every_dicom_variant_decodes_to_the_jpegs_pixels(synthetic):
    pixels, files = synthetic["pixels"], synthetic["files"]
    for name in ("rgb", "encapsulated", "rle", "j2k", "bare"):
        image = open_image(files[name])
        assert image.mode == "RGB" and image.format == "DICOM" and image.size == (64, 48), name
        np.testing.assert_array_equal(np.asarray(image), pixels, err_msg=name)
    ybr = np.asarray(open_image(files["ybr"])).astype(int)
    assert np.abs(ybr - pixels).max() <= 1  # 8-bit rounding of RGB -> YCbCr -> RGB


def test_dicom_without_preamble_is_read_by_its_suffix(synthetic, tmp_path):
    data = synthetic["files"]["rgb"].read_bytes()[132:]  # no preamble, no DICM marker
    (tmp_path / "raw.dcm").write_bytes(data)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "raw.dcm")), synthetic["pixels"])
    (tmp_path / "raw.bin").write_bytes(data)  # the content decides; a non-DICOM name is not forced
    with pytest.raises(DataError, match="not an image file"):
        open_image(tmp_path / "raw.bin")


def test_grey_dicom_is_scaled_by_bits_stored_not_by_its_maximum():
    values = np.array([[0, 1000, 2047], [3000, 4000, 4095]], dtype=np.uint16)  # 12 bits stored
    expected = np.rint(values.astype(float) * 255 / 4095).astype(np.uint8)
    grey = np.asarray(decode_image_bytes(grey_dicom(values, 12), Path("mono.dcm")))
    assert grey.shape == (2, 3, 3)
    np.testing.assert_array_equal(grey[..., 0], expected)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    dark = values // 4  # the same sensor, a darker scene: stays dark (not stretched to white)
    np.testing.assert_array_equal(np.asarray(decode_image_bytes(grey_dicom(dark, 12), Path("d.dcm")))[..., 0],
                                  np.rint(dark.astype(float) * 255 / 4095).astype(np.uint8))
    inverted = np.asarray(decode_image_bytes(grey_dicom(values, 12, "MONOCHROME1"), Path("m1.dcm")))
    np.testing.assert_array_equal(inverted[..., 0], 255 - expected)
    signed = np.array([[-2048, 0, 2047]], dtype=np.int16)
    got = np.asarray(decode_image_bytes(grey_dicom(signed, 12, signed=True), Path("s.dcm")))[..., 0]
    np.testing.assert_array_equal(got, [[0, 128, 255]])


# ------------------------------------------------------------------------------ dermkit predict
def test_predict_on_dicom_equals_the_jpeg_and_leaks_no_patient_data(synthetic, model_dir, tmp_path, capsys):
    files = synthetic["files"]
    order = ["jpeg", "rgb", "encapsulated", "rle", "j2k", "bare", "ybr"]
    out_csv, heat = tmp_path / "pred" / "p.csv", tmp_path / "heat"
    code, out, err = _predict([*(str(files[k]) for k in order), "--model", str(model_dir), "--json",
                               "--out", str(out_csv), "--explain", str(heat)], capsys)
    assert code == 0, err
    proba = _probabilities(out_csv)
    for i, name in enumerate(order[1:-1], start=1):
        np.testing.assert_allclose(proba[i], proba[0], atol=1e-6, err_msg=name)
    np.testing.assert_allclose(proba[-1], proba[0], atol=1e-3)  # YBR_FULL: pixels within 1 level
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(files[k]) for k in order]
    assert results[1]["quality"] == results[0]["quality"]  # the quality check reads the DICOM's pixels too
    assert len(list(heat.glob("*.png"))) == len(order)
    _no_secrets(out, err, folders=(tmp_path / "pred", heat))


def test_predict_scores_move_with_the_pixels(synthetic, model_dir, tmp_path, capsys):
    """The equality above has teeth: a different picture gets different probabilities."""
    other = tmp_path / "other.dcm"
    other.write_bytes(rgb_dicom(_picture(seed=5)[::-1].copy()))
    code, _, err = _predict([str(synthetic["files"]["jpeg"]), str(other), "--model", str(model_dir),
                             "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    proba = _probabilities(tmp_path / "p.csv")
    assert np.abs(proba[0] - proba[1]).max() > 1e-4


# ------------------------------------------------------------------------------ refusals (exit 2)
def _bad_dicoms(pixels: np.ndarray) -> dict[str, tuple[bytes, list[str]]]:
    """name -> (file bytes, words the message must hold)."""
    no_pixels = _dataset(*pixels.shape[:2], "RGB", ExplicitVRLittleEndian)
    palette = _dataset(*pixels.shape[:2], "PALETTE COLOR", ExplicitVRLittleEndian, samples=1)
    palette.PixelData = pixels[..., 0].tobytes()
    video = _dataset(*pixels.shape[:2], "YBR_PARTIAL_420", MPEG2MPML)
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    video["PixelData"].VR = "OB"
    bomb = _dataset(60000, 60000, "RGB", ExplicitVRLittleEndian)  # claims 3.6e9 pixels, holds a few bytes
    bomb.PixelData = b"\x00" * 300
    return {
        "frames.dcm": (multiframe_dicom(pixels, 3), ["frames.dcm", "multi-frame", "3 frames", "export the frame"]),
        "nopixels.dcm": (_bytes(no_pixels), ["nopixels.dcm", "no pixel data"]),
        "palette.dcm": (_bytes(palette), ["palette.dcm", "PALETTE COLOR", "not read by dermkit"]),
        "video.dcm": (_bytes(video), ["video.dcm", "MPEG2", "not supported"]),
        "bomb.dcm": (_bytes(bomb), ["bomb.dcm", "60000x60000", "more than the limit"]),
        "short.dcm": (rgb_dicom(pixels)[:-500], ["short.dcm", "shorter than its header says", "cut short"]),
        "garbage.dcm": (b"\x00" * 128 + b"DICM" + b"\xff\x13" * 40, ["garbage.dcm", "DICOM"]),
    }


@pytest.mark.parametrize("name", ["frames.dcm", "nopixels.dcm", "palette.dcm", "video.dcm", "bomb.dcm", "short.dcm",
                                  "garbage.dcm"])
def test_bad_dicom_is_refused_clearly(name, synthetic, model_dir, tmp_path, capsys):
    data, words = _bad_dicoms(synthetic["pixels"])[name]
    (tmp_path / name).write_bytes(data)
    out_csv = tmp_path / "pred.csv"
    code, out, err = _predict([str(tmp_path / name), "--model", str(model_dir), "--out", str(out_csv)], capsys)
    text = " ".join((out + err).split())
    assert code == 2, text
    assert "Traceback" not in text
    for word in words:
        assert word in text, (word, text)
    assert not out_csv.exists()
    _no_secrets(out, err)


# ------------------------------------------------------------------------------ POST /api/predict
@pytest.fixture
def client(model_dir, tmp_path, monkeypatch):
    fastapi = pytest.importorskip("fastapi")  # noqa: F841
    from fastapi.testclient import TestClient

    from dermkit.serve import ServeLimits, create_app

    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    with TestClient(create_app(model_dir, ServeLimits())) as c:
        yield c


def _post(client, content: bytes, name: str):
    return client.post("/api/predict", files={"image": (name, content, "application/dicom")})


def test_api_predict_reads_dicom_like_the_jpeg(synthetic, client, caplog, capsys):
    files = synthetic["files"]
    answers = {}
    with caplog.at_level("DEBUG"):
        for name in ("jpeg", "rgb", "encapsulated", "j2k"):
            r = _post(client, files[name].read_bytes(), files[name].name)
            assert r.status_code == 200, r.text
            body = r.json()
            answers[name] = {p["class"]: p["probability"] for p in body["probabilities"]}
            assert body["image"]["format"] == ("JPEG" if name == "jpeg" else "DICOM")
            assert body["image"]["width"] == 64 and body["image"]["height"] == 48
            _no_secrets(r.text)
        bad = _post(client, multiframe_dicom(synthetic["pixels"], 4), "movie.dcm")
    for name in ("rgb", "encapsulated", "j2k"):
        assert answers[name] == pytest.approx(answers["jpeg"], abs=1e-6), name
    assert bad.status_code == 422
    assert "multi-frame" in bad.json()["detail"] and "4 frames" in bad.json()["detail"]
    out, err = capsys.readouterr()
    _no_secrets(bad.text, caplog.text, out, err)


def _tiny_dicom() -> bytes:
    return rgb_dicom(_picture(width=8, height=8))


BAD_DICOM_UPLOADS = [
    ("multi-frame", lambda px: multiframe_dicom(px, 4), ["multi-frame", "4 frames"]),
    ("no pixel data", lambda px: _bad_dicoms(px)["nopixels.dcm"][0], ["no pixel data"]),
    ("garbage after the marker", lambda px: _bad_dicoms(px)["garbage.dcm"][0], ["DICOM"]),
    ("header claims 3.6 GP", lambda px: _bad_dicoms(px)["bomb.dcm"][0], ["60000x60000", "more than the limit"]),
    ("8x8 pixels", lambda px: _tiny_dicom(), ["8x8", "too small"]),
    ("unsupported transfer syntax", lambda px: _bad_dicoms(px)["video.dcm"][0], ["MPEG2", "not supported"]),
    ("cut short", lambda px: rgb_dicom(px)[:-700], ["shorter than its header says"]),
]


@pytest.mark.parametrize("name, make, words", BAD_DICOM_UPLOADS, ids=[b[0] for b in BAD_DICOM_UPLOADS])
def test_api_refuses_bad_dicom_uploads_with_the_reason(name, make, words, synthetic, client, capsys):
    r = _post(client, make(synthetic["pixels"]), "scan.dcm")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("upload") and "Traceback" not in r.text
    for word in words:
        assert word in detail, (word, detail)
    assert _post(client, synthetic["files"]["rgb"].read_bytes(), "ok.dcm").status_code == 200  # still answering
    out, err = capsys.readouterr()
    _no_secrets(r.text, out, err)


def test_dicom_is_sniffed_by_its_marker_even_behind_a_tiff_preamble(synthetic):
    from dermkit.serve.uploads import sniff_format

    data = synthetic["files"]["rgb"].read_bytes()
    assert sniff_format(data) == "DICOM"
    dual = b"II*\x00" + data[4:]  # a dual-personality file: TIFF header in the preamble
    assert sniff_format(dual) == "DICOM"
    np.testing.assert_array_equal(np.asarray(decode_image_bytes(dual, Path("upload image"))), synthetic["pixels"])
    assert sniff_format(synthetic["files"]["jpeg"].read_bytes()) == "JPEG"


# ------------------------------------------------------------------------------ data import folder | csv
def _dicom_tree(root: Path) -> dict[str, np.ndarray]:
    """Class folders holding DICOM (.dcm, and one without suffix) and JPEG files; rel path -> pixels."""
    expected = {}
    for c, cls in enumerate(("mel", "nv")):
        (root / cls).mkdir(parents=True)
        for k in range(8):
            pixels = _picture(seed=10 * c + k)
            pixels[..., c] = np.clip(pixels[..., c].astype(int) + 40, 0, 255).astype(np.uint8)  # no near-duplicates
            if k % 3 == 0:
                rel = f"{cls}/photo{k}.jpg"
                (root / rel).write_bytes(_jpeg(pixels))
                pixels = np.asarray(Image.open(root / rel).convert("RGB"))
            elif k == 1:
                rel = f"{cls}/IM{k:04d}"
                (root / rel).write_bytes(rgb_dicom(pixels))
            else:
                rel = f"{cls}/scan{k}.dcm"
                (root / rel).write_bytes(rgb_dicom(pixels))
            expected[rel] = pixels
    return expected


def test_import_folder_converts_dicom_to_png_without_patient_data(tmp_path, capsys):
    source = tmp_path / "dicoms"
    expected = _dicom_tree(source)
    out = tmp_path / "card"
    code = main(["data", "import", "folder", "--from", str(source), "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stdout + stderr
    assert "DICOM file(s) converted to PNG" in " ".join(stdout.split())
    table = pd.read_csv(out / "metadata.csv")
    assert len(table) == len(expected)
    by_source = dict(zip(table["source_file"], table["image"]))
    for rel, pixels in expected.items():
        image = by_source[rel]
        if rel.endswith(".jpg"):
            assert image == f"images/{rel}"
        else:
            assert image == f"images/{rel.removesuffix('.dcm')}.png"
            assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(np.asarray(open_image(out / image)), pixels, err_msg=rel)
    assert not list(out.rglob("*.dcm"))
    _no_secrets(stdout, stderr, folders=(out,))


def test_import_csv_converts_dicom_and_keeps_the_path_checks(tmp_path, capsys):
    source = tmp_path / "dicoms"
    expected = _dicom_tree(source)
    rows = [{"file": rel, "dx": rel.split("/")[0]} for rel in expected]
    pd.DataFrame(rows).to_csv(source / "list.csv", index=False)
    out = tmp_path / "card"
    code = main(["data", "import", "csv", "--from", str(source / "list.csv"), "--out", str(out),
                 "--image-column", "file", "--label-column", "dx"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stdout + stderr
    table = pd.read_csv(out / "metadata.csv")
    assert sorted(table["image"]) == sorted(
        f"images/{png_name_of(rel)}" for rel in expected)
    for rel, pixels in expected.items():
        np.testing.assert_array_equal(np.asarray(open_image(out / f"images/{png_name_of(rel)}")), pixels)
    _no_secrets(stdout, stderr, folders=(out,))
    # A DICOM path that climbs out of the image root is refused like any other path.
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(rgb_dicom(_picture()))
    pd.DataFrame(rows + [{"file": "../outside.dcm", "dx": "mel"}]).to_csv(source / "bad.csv", index=False)
    code = main(["data", "import", "csv", "--from", str(source / "bad.csv"), "--out", str(tmp_path / "bad"),
                 "--image-column", "file", "--label-column", "dx"])
    text = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "'../outside.dcm'" in text and "leaves the dataset folder" in text
    assert not (tmp_path / "bad").exists()


def png_name_of(rel: str) -> str:
    return rel.removesuffix(".dcm") + ".png" if rel.endswith(".dcm") or "/IM" in rel else rel


def test_import_refuses_a_dicom_that_would_overwrite_a_png_and_a_multiframe(tmp_path, capsys):
    source = tmp_path / "clash"
    _dicom_tree(source)
    Image.fromarray(_picture(seed=99)).save(source / "mel" / "scan2.png")  # scan2.dcm would become scan2.png
    code = main(["data", "import", "folder", "--from", str(source), "--out", str(tmp_path / "card")])
    text = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "mel/scan2.dcm and mel/scan2.png" in text and "rename one" in text
    assert not (tmp_path / "card").exists()
    (source / "mel" / "scan2.png").unlink()
    (source / "nv" / "movie.dcm").write_bytes(multiframe_dicom(_picture(seed=7), 5))
    code = main(["data", "import", "folder", "--from", str(source), "--out", str(tmp_path / "card")])
    stdout, stderr = capsys.readouterr()
    text = " ".join(stderr.split())
    assert code == 2 and "movie.dcm" in text and "5 frames" in text and "Traceback" not in text
    assert not (tmp_path / "card").exists()
    _no_secrets(stdout, stderr)


def test_a_card_may_list_dicom_files_in_place(tmp_path, capsys):
    """A hand-written card that lists .dcm files is read through the same decoder (data check decodes them)."""
    data = make_dataset(tmp_path)
    table = pd.read_csv(data / "metadata.csv")
    first = data / table.loc[0, "image"]
    (data / "images" / "first.dcm").write_bytes(rgb_dicom(np.asarray(Image.open(first).convert("RGB"))))
    first.unlink()
    table.loc[0, "image"] = "images/first.dcm"
    table.to_csv(data / "metadata.csv", index=False)
    assert main(["data", "check", str(data)]) == 0
    stdout, stderr = capsys.readouterr()
    _no_secrets(stdout, stderr)


# ------------------------------------------------------------------------------ 16-bit images
def _png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, or RGB: Pillow cannot write 16-bit RGB, so the chunks are written here)."""
    height, width = values.shape[:2]
    colour = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _twin16(eight: np.ndarray, seed: int = 0) -> np.ndarray:
    """The 16-bit twin of an 8-bit picture: v * 257 plus sub-level noise (a real 16-bit capture)."""
    noise = np.random.default_rng(seed).integers(-120, 121, eight.shape)
    return np.clip(eight.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


def test_16_bit_png_gives_its_8_bit_twins_pixels(tmp_path):
    grey8 = _picture(dark=True)[..., 1]  # a dark picture: its maximum is far below white
    assert grey8.max() < 160
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    (tmp_path / "grey16.png").write_bytes(_png16(_twin16(grey8)))
    with Image.open(tmp_path / "grey16.png") as im:
        assert im.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "grey16.png")),
                                  np.asarray(open_image(tmp_path / "grey8.png")))
    rgb8 = _picture(dark=True)
    (tmp_path / "rgb16.png").write_bytes(_png16(_twin16(rgb8)))
    got = np.asarray(open_image(tmp_path / "rgb16.png")).astype(int)
    assert np.abs(got - rgb8).max() <= 1  # Pillow keeps the high byte of 16-bit RGB: within 1 level

    from dermkit.data.quality import measure_quality
    from dermkit.data.torchdata import decode

    assert measure_quality(tmp_path / "grey16.png") == measure_quality(tmp_path / "grey8.png")
    assert decode(tmp_path / "grey16.png", None).equal(decode(tmp_path / "grey8.png", None))  # training/evaluation


def test_32_bit_integer_image_is_refused(tmp_path):
    Image.fromarray(np.full((40, 40), 200_000, dtype=np.int32)).save(tmp_path / "deep.tif")
    with Image.open(tmp_path / "deep.tif") as im:
        assert im.mode == "I"
    with pytest.raises(DataError, match="beyond 16 bits"):
        open_image(tmp_path / "deep.tif")


def test_predict_16_bit_png_equals_its_8_bit_twin(model_dir, tmp_path, capsys):
    grey8 = _picture(dark=True)[..., 0]
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    (tmp_path / "grey16.png").write_bytes(_png16(_twin16(grey8, seed=3)))
    stretched = np.rint(grey8 * (255.0 / grey8.max())).astype(np.uint8)  # what scaling by the maximum gave
    Image.fromarray(stretched).save(tmp_path / "stretched.png")
    code, _, err = _predict([str(tmp_path / n) for n in ("grey8.png", "grey16.png", "stretched.png")]
                            + ["--model", str(model_dir), "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    proba = _probabilities(tmp_path / "p.csv")
    np.testing.assert_allclose(proba[1], proba[0], atol=1e-4)
    assert np.abs(proba[2] - proba[0]).max() > 1e-4  # the old scaling would have failed this test


# ------------------------------------------------------------------------------ a real dataset JPEG
@pytest.mark.realdata
@requires_shared_data
def test_real_jpeg_as_dicom_predicts_like_the_jpeg(model_dir, tmp_path, capsys):
    table = pd.read_csv(SHARED_DATA / "ham10000" / "metadata.csv")
    jpeg = (SHARED_DATA / "ham10000" / table.loc[table["split"] == "test", "image"].iloc[0]).read_bytes()
    files = _versions(tmp_path, jpeg)["files"]
    order = ["jpeg", "encapsulated", "rgb", "j2k", "ybr"]
    code, out, err = _predict([*(str(files[k]) for k in order), "--model", str(model_dir),
                               "--out", str(tmp_path / "out" / "p.csv")], capsys)
    assert code == 0, err
    proba = _probabilities(tmp_path / "out" / "p.csv")
    for i in range(1, 4):  # the JPEG's own pixels: identical decode
        np.testing.assert_allclose(proba[i], proba[0], atol=1e-6, err_msg=order[i])
    np.testing.assert_allclose(proba[4], proba[0], atol=1e-3)
    _no_secrets(out, err, folders=(tmp_path / "out",))
