"""dermkit serve: every endpoint with FastAPI's test client, every refused request, batching and cleanup.

Models are tiny real runs (supervised timm, zero-shot on the tiny CLIP, fusion with metadata);
answers are compared with the predictor called directly on the same file."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dermkit
from conftest import make_dataset

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from dermkit.serve import NOTICE, ServeLimits, create_app  # noqa: E402
from dermkit.serve.uploads import sniff_format  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clip_folder):
    """Tiny trained runs: {"supervised": RUN, "zeroshot": RUN, "fusion": RUN} and the dataset."""
    root = tmp_path_factory.mktemp("serve")
    data = make_dataset(root)
    cache = str(root / "train-cache")
    configs = {
        "supervised": {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random",
                       "image_size": 32, "batch_size": 16, "num_workers": 0, "epochs": 1, "n_bootstrap": 20},
        "zeroshot": {"method": "zeroshot", "data": str(data), "model": str(clip_folder), "num_workers": 0,
                     "n_bootstrap": 20, "cache_dir": cache},
        "fusion": {"method": "fusion", "data": str(data), "image_encoder": str(clip_folder), "use_meta": True,
                   "hidden": 16, "num_heads": 2, "meta_num_heads": 2, "epochs": 2, "n_bootstrap": 20,
                   "cache_dir": cache},
    }
    out = {}
    for name, config in configs.items():
        dermkit.run(config, out=root / name, progress=False)
        out[name] = root / name
    out["data"] = data
    return out


def _image(runs, k: int = 0, split: str = "test", cls: str = "mel") -> Path:
    return runs["data"] / "images" / f"{cls}_{split}_{k:02d}.jpg"


def _png(size=(64, 48), colour=(180, 90, 60), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client_of(monkeypatch, tmp_path):
    """``client_of(run_or_predictor, **limits)`` -> a started TestClient; all are closed after the test."""
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "default-cache"))
    opened = []

    def make(model, model_dir=None, **limits):
        app = create_app(model, ServeLimits(**limits), model_dir=model_dir)
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _post(client, path: Path | bytes, name="lesion.jpg", url="/api/predict", data=None, **files):
    content = path.read_bytes() if isinstance(path, Path) else path
    return client.post(url, files={"image": (name, content, "image/jpeg"), **files}, data=data or {})


# ------------------------------------------------------------------------------ endpoints


def test_predict_equals_the_predictor_on_the_same_file(runs, client_of):
    model_dir = runs["supervised"] / "model"
    client = client_of(model_dir)
    predictor = dermkit.load_predictor(model_dir)
    for k, cls in ((0, "mel"), (1, "bcc"), (2, "nv")):
        path = _image(runs, k, cls=cls)
        expected = predictor.predict_paths([path])[0]
        r = _post(client, path, data={"top_k": "2"})
        assert r.status_code == 200, r.text
        body = r.json()
        got = {p["class"]: p["probability"] for p in body["probabilities"]}
        assert set(got) == set(predictor.classes)
        np.testing.assert_allclose([got[c] for c in predictor.classes], expected, atol=1e-5)
        probs = [p["probability"] for p in body["probabilities"]]
        assert probs == sorted(probs, reverse=True)
        assert body["top_class"] == predictor.classes[int(np.argmax(expected))]
        assert body["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)
        assert body["top"] == body["probabilities"][:2]
        assert body["model"]["method"] == "supervised" and len(body["model"]["fingerprint"]) == 16
        assert body["modalities"] == {"used": ["image"], "missing": []}
        assert body["thickness"] is None and body["image"] == {"width": 32, "height": 32, "format": "JPEG"}
        assert set(body["timing_ms"]) >= {"decode", "queue", "inference", "total"} and "explanation" not in body
        assert NOTICE in body["notice"]


def test_model_card_reports_the_runs_test_metrics_with_cis(runs, client_of):
    client = client_of(runs["supervised"] / "model")
    card = client.get("/api/model").json()
    summary = json.loads((runs["supervised"] / "summary.json").read_text())
    assert card["classes"] == ["bcc", "mel", "nv"] and card["method"] == "supervised"
    assert card["test_metrics"] == pytest.approx(summary["test"])
    assert card["test_ci"]["balanced_accuracy"]["low"] == pytest.approx(summary["test_ci"]["balanced_accuracy"]["low"])
    assert card["training"]["dataset"] == "tiny" and card["training"]["run"] == summary["name"]
    assert card["inputs"]["image"] and card["inputs"]["explain"] is True and card["inputs"]["rank"] is False
    assert card["inputs"]["metadata"] == [] and card["inputs"]["clinical_image"] is False
    assert card["limits"]["max_upload_bytes"] == ServeLimits().max_upload_bytes
    # the fingerprint is the hash of the folder's files: a copy has the same, a changed model another
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["fingerprint"] == card["fingerprint"]


def test_a_predictor_object_without_a_run_has_no_metrics(runs, client_of):
    predictor = dermkit.load_predictor(runs["supervised"] / "model")
    card = client_of(predictor).get("/api/model").json()
    assert card["test_metrics"] is None and card["classes"] == predictor.classes


def test_page_docs_and_static_files(runs, client_of):
    client = client_of(runs["supervised"] / "model")
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "not a medical device" in page.text and 'capture="environment"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/rank", "/api/model", "/health"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert client.get("/static/../../../../etc/passwd").status_code == 404


def test_explain_adds_a_grad_cam_overlay_of_the_image_size(runs, client_of):
    for run in ("supervised", "zeroshot"):  # a CNN and a ViT tower
        client = client_of(runs[run] / "model")
        r = _post(client, _image(runs), url="/api/predict?explain=1")
        assert r.status_code == 200, r.text
        ex = r.json()["explanation"]
        assert ex["available"] and ex["method"].startswith("Grad-CAM")
        assert ex["tower"] == ("cnn" if run == "supervised" else "vit")
        assert ex["target_class"] == r.json()["top_class"]  # the map explains the top class
        overlay = Image.open(io.BytesIO(base64.b64decode(ex["png_base64"])))
        assert overlay.format == "PNG" and overlay.size == (32, 32)
        assert "explain" in r.json()["timing_ms"]


def test_explain_on_a_model_without_an_image_tower_says_so(runs, client_of):
    client = client_of(runs["fusion"] / "model")
    r = _post(client, _image(runs), url="/api/predict?explain=1")
    assert r.status_code == 200
    assert r.json()["explanation"]["available"] is False and "fusion" in r.json()["explanation"]["reason"]
    assert client.get("/api/model").json()["inputs"]["explain"] is False


def test_rank_orders_texts_like_the_cli(runs, client_of):
    from dermkit.engine.retrieval import rank_texts

    client = client_of(runs["zeroshot"] / "model")
    texts = ["a melanoma", "a benign nevus", "a basal cell carcinoma"]
    r = client.post("/api/rank", files={"image": ("x.jpg", _image(runs).read_bytes(), "image/jpeg")},
                    data={"texts": texts[:2] + [texts[2] + "\n  \n"]})
    assert r.status_code == 200, r.text
    ranked = r.json()["ranked"]
    expected = rank_texts(dermkit.load_predictor(runs["zeroshot"] / "model").enc, _image(runs), texts)
    assert [x["text"] for x in ranked] == [t for t, _ in expected]
    np.testing.assert_allclose([x["similarity"] for x in ranked], [s for _, s in expected], atol=1e-5)
    assert sum(x["probability"] for x in ranked) == pytest.approx(1.0)
    assert [x["rank"] for x in ranked] == [1, 2, 3]
    assert client.get("/api/model").json()["inputs"]["rank"] is True


def test_rank_refuses_image_only_models_and_bad_texts(runs, client_of):
    sup = client_of(runs["supervised"] / "model")
    r = sup.post("/api/rank", files={"image": ("x.jpg", _image(runs).read_bytes())}, data={"texts": ["a"]})
    assert r.status_code == 422 and "text encoder" in r.json()["detail"]
    zs = client_of(runs["zeroshot"] / "model", max_texts=2)
    cases = [({}, "no candidate texts"), ({"texts": ["a", "b", "c"]}, "limit is 2"),
             ({"texts": ["x" * 600]}, "characters"), ({"texts": ["a"], "colour": "red"}, "'colour'")]
    for data, message in cases:
        r = zs.post("/api/rank", files={"image": ("x.jpg", _image(runs).read_bytes())}, data=data)
        assert r.status_code == 422 and message in r.json()["detail"], (data, r.text)


def test_fusion_metadata_is_validated_against_the_card(runs, client_of):
    client = client_of(runs["fusion"] / "model")
    card = client.get("/api/model").json()
    fields = {f["name"]: f for f in card["inputs"]["metadata"]}
    assert fields["age"]["type"] == "numeric" and fields["sex"]["levels"] == ["female", "male"]
    ok = _post(client, _image(runs), data={"age": "55", "sex": "female"})
    assert ok.status_code == 200, ok.text
    assert "meta" in ok.json()["modalities"]["used"]
    without = _post(client, _image(runs)).json()
    assert "meta" in without["modalities"]["missing"] and "meta" not in without["modalities"]["used"]
    # metadata changes the answer (the model reads it), and equals the predictor given the same metadata
    predictor = dermkit.load_predictor(runs["fusion"] / "model")
    predictor.set_extra_inputs(meta={"age": "55", "sex": "female"})
    expected = predictor.predict_paths([_image(runs)])[0]
    got = {p["class"]: p["probability"] for p in ok.json()["probabilities"]}
    np.testing.assert_allclose([got[c] for c in predictor.classes], expected, atol=1e-5)
    bad = [({"age": "old"}, "'age' must be a number"), ({"sex": "alien"}, "'sex' must be one of"),
           ({"height": "180"}, "unknown metadata field(s) ['height']"), ({"age": "inf"}, "'age'")]
    for data, message in bad:
        r = _post(client, _image(runs), data=data)
        assert r.status_code == 422 and message in r.json()["detail"], (data, r.text)
    r = _post(client, _image(runs), clinical_image=("c.jpg", _image(runs, 1).read_bytes(), "image/jpeg"))
    assert r.status_code == 422 and "clinical_image" in r.json()["detail"]


# ------------------------------------------------------------------------------ refused requests


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buffer, format="PNG")  # 36 MP, a few KiB
    return buffer.getvalue()


def _truncated(runs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[:3000]


BAD_UPLOADS = [
    ("text named .jpg", lambda runs: b"just some text, not pixels", 415, "not an image"),
    ("PDF", lambda runs: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", 415, "PDF"),
    ("empty file", lambda runs: b"", 415, "empty"),
    ("PNG magic, garbage after", lambda runs: b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, 422, "cannot be read"),
    ("truncated JPEG", _truncated, 422, "truncated"),
    ("decompression bomb", lambda runs: _bomb(), 422, "decompression bomb"),
    ("tiny image", lambda runs: _png((8, 8)), 422, "too small"),
    ("absurd aspect ratio", lambda runs: _png((900, 40)), 422, "aspect ratio"),
]


@pytest.mark.parametrize("name, make, status, message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_refused_with_the_reason(runs, client_of, name, make, status, message):
    client = client_of(runs["supervised"] / "model")
    r = _post(client, make(runs), name="lesion.jpg")
    assert r.status_code == status, r.text
    assert message in r.json()["detail"] and "Traceback" not in r.text
    assert _post(client, _image(runs)).status_code == 200  # the server keeps answering


def test_too_large_bodies_get_413_declared_or_streamed(runs, client_of):
    client = client_of(runs["supervised"] / "model", max_upload_bytes=4000)
    big = _png((400, 400), mode="RGB") + b"\x00" * 5000
    r = _post(client, big)
    assert r.status_code == 413 and "limit is" in r.json()["detail"]
    # chunked upload without Content-Length: counted while it streams in
    boundary = "dermkitboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    chunks = (body[i:i + 1000] for i in range(0, len(body), 1000))
    r = client.post("/api/predict", content=chunks,
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert _post(client, _image(runs)).status_code == 200


@pytest.mark.parametrize("kwargs, status, message", [
    ({"files": {"picture": ("a.jpg", b"x")}}, 422, "'picture'"),
    ({"files": [("image", (None, "/etc/passwd"))]}, 422, "missing the file field 'image'"),
    ({"json": {"image": "aGVsbG8="}}, 415, "multipart/form-data"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "multipart"),
], ids=["unknown file field", "path instead of a file", "JSON body", "malformed multipart"])
def test_malformed_requests(runs, client_of, kwargs, status, message):
    client = client_of(runs["supervised"] / "model")
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status and message in r.json()["detail"], r.text


@pytest.mark.parametrize("data, message", [
    ({"top_k": "abc"}, "'top_k' must be an integer"), ({"top_k": "0"}, "between 1 and 3"),
    ({"top_k": "9"}, "between 1 and 3"), ({"age": "55"}, "reads no metadata"),
])
def test_bad_form_fields_name_the_field(runs, client_of, data, message):
    client = client_of(runs["supervised"] / "model")
    r = _post(client, _image(runs), data=data)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_a_filename_is_never_opened(runs, client_of):
    client = client_of(runs["supervised"] / "model")
    r = _post(client, _image(runs), name="../../../../etc/passwd")
    assert r.status_code == 200  # the bytes are the image; the name is only echoed in errors


def test_sniffing_ignores_names_and_content_types():
    assert sniff_format(_png()) == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0....") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"<svg xmlns=...>") is None and sniff_format(b"") is None


# ------------------------------------------------------------------------------ queue, batching, timeouts


class Gate:
    """A real predictor whose predict_paths waits for a signal (to hold the worker busy)."""

    def __init__(self, predictor):
        self.inner = predictor
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_paths(self, paths, progress=False):
        self.calls.append(len(paths))
        self.entered.set()
        assert self.release.wait(30)
        return self.inner.predict_paths(paths)


def _gated(runs):
    from dermkit.methods.base import Predictor

    predictor = dermkit.load_predictor(runs["supervised"] / "model")
    gate = Gate(predictor)
    # create_app accepts any Predictor; the gate forwards everything else to the real one
    gated = type("GatedPredictor", (type(predictor),), {
        "__init__": lambda self: None, "__getattr__": lambda self, n: getattr(predictor, n),
        "predict_paths": lambda self, paths, progress=False: gate.predict_paths(paths)})()
    gated.__dict__.update(predictor.__dict__)
    assert isinstance(gated, Predictor)
    return gated, gate


def _in_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", fn()))
    thread.start()
    return thread, out


def test_full_queue_answers_503_and_recovers(runs, client_of):
    gated, gate = _gated(runs)
    client = client_of(gated, max_queue=1, max_batch=1, batch_wait_ms=0)
    image = _image(runs)
    first, out1 = _in_thread(lambda: _post(client, image))
    assert gate.entered.wait(30)  # the worker holds request 1
    second, out2 = _in_thread(lambda: _post(client, image))
    deadline = time.time() + 10
    while client.get("/health").json()["queue"] < 1 and time.time() < deadline:
        time.sleep(0.02)
    r = _post(client, image)
    assert r.status_code == 503 and "busy" in r.json()["detail"] and r.headers["retry-after"] == "1"
    gate.release.set()
    first.join(30)
    second.join(30)
    assert out1["r"].status_code == 200 and out2["r"].status_code == 200
    assert _post(client, image).status_code == 200


def test_slow_predictions_time_out_with_504_and_the_server_goes_on(runs, client_of):
    gated, gate = _gated(runs)
    client = client_of(gated, timeout_s=0.5, batch_wait_ms=0)
    r = _post(client, _image(runs))
    assert r.status_code == 504 and "0.5 s" in r.json()["detail"]
    gate.release.set()
    assert client.get("/health").json()["status"] == "ok"
    assert _post(client, _image(runs)).status_code == 200


def test_concurrent_requests_are_batched_and_batching_changes_no_answer(runs, client_of):
    gated, gate = _gated(runs)
    client = client_of(gated, max_batch=8, batch_wait_ms=50)
    paths = [_image(runs, k, cls=c) for k in range(2) for c in ("bcc", "mel", "nv")]
    blocker, _ = _in_thread(lambda: _post(client, paths[0]))
    assert gate.entered.wait(30)  # while the worker is busy, the next requests queue up...
    threads = [_in_thread(lambda p=p: _post(client, p)) for p in paths]
    deadline = time.time() + 10
    while client.get("/health").json()["queue"] < len(paths) and time.time() < deadline:
        time.sleep(0.02)
    gate.release.set()  # ...and run as one batch
    blocker.join(30)
    for thread, _ in threads:
        thread.join(30)
    bodies = [out["r"].json() for _, out in threads]
    assert max(gate.calls) == len(paths) and {b["batch_size"] for b in bodies} == {len(paths)}
    single = dermkit.load_predictor(runs["supervised"] / "model")
    for path, body in zip(paths, bodies):
        got = {p["class"]: p["probability"] for p in body["probabilities"]}
        np.testing.assert_allclose([got[c] for c in single.classes], single.predict_paths([path])[0], atol=1e-5)


def test_nothing_is_written_outside_the_work_folder_which_is_removed(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "default-cache"))
    app = create_app(runs["zeroshot"] / "model")  # a feature-cache user
    workdir = app.state.workdir
    with TestClient(app) as client:
        for k in range(3):
            assert _post(client, _image(runs, k), url="/api/predict?explain=1").status_code == 200
        assert list(workdir.iterdir()) == []  # each batch's folder is gone after the batch
    assert not workdir.exists()
    assert not (tmp_path / "default-cache").exists()


# ------------------------------------------------------------------------------ the command


def test_serve_command_binds_loopback_by_default_and_refuses_a_bad_folder(runs, monkeypatch, capsys, tmp_path):
    import uvicorn

    from dermkit.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", "--model", str(runs["supervised"] / "model"), "--max-batch", "1"]) == 0
    app, kw = calls[0]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8000
    assert app.state.worker.max_batch == 1
    app.state.close()
    capsys.readouterr()
    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "model.json" in err and "Traceback" not in err and not calls[1:]
