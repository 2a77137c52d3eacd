"""The REST API and web page of ``dermkit serve``: :func:`create_app` (a FastAPI app, run on uvicorn).

Endpoints::

    GET  /                 the web page (plain HTML/CSS/JS from dermkit/serve/static, no build step)
    GET  /health           {"status": "ok", ...}
    GET  /api/model        the model card: classes, inputs, training data, test metrics with CIs
    POST /api/predict      multipart: image, optional clinical_image + metadata fields (fusion), top_k;
                           ?explain=1 adds a Grad-CAM overlay (PNG, base64) for image models
    POST /api/rank         multipart: image + texts (repeat the field, or one per line): ranked similarities
    GET  /docs             OpenAPI documentation

One predictor instance serves every request through :class:`~dermkit.serve.batching.BatchQueue`
(bounded queue, batched forward passes). Bad requests get a 4xx answer whose ``detail`` says
what to change (413 too large, 415 not an image, 422 unreadable / too small / absurd aspect
ratio / decompression bomb / a metadata field the model does not know or a value of the wrong
type / a form field given twice or longer than ``max_field_chars`` / a query parameter the endpoint
does not declare, or given twice, 503 queue full, 504 timed out); a client that disconnects
mid-upload is logged at info level (499), not as an internal error; the server itself never
stops on one.
"""


import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from dermkit.data.card_schema import BOOLEAN_FALSE, BOOLEAN_TRUE
from dermkit.errors import DermkitError, excerpt
from dermkit.methods.ood import NOT_IN_DOMAIN
from dermkit.serve.batching import BatchQueue, PredictJob, QueueFull, RankJob
from dermkit.serve.uploads import CLIENT_CLOSED, ServeLimits, UploadError, decode_upload, finite_float, read_form

__all__ = ["create_app", "model_info", "NOTICE", "ServeLimits"]

log = logging.getLogger("dermkit.serve")

NOTICE = ("Research use only. Not a medical device: not for diagnosis, screening or treatment decisions. "
          "A dermatologist must assess every lesion.")
_RESERVED = {"image", "clinical_image", "top_k", "explain"}


def domain_notice(trust: dict) -> str | None:
    """What the page shows instead of a diagnosis when the image is out of the model's domain or of
    poor quality (None when neither)."""
    parts = []
    if trust.get("in_domain") is False:
        parts.append(f"{NOT_IN_DOMAIN[0].upper()}{NOT_IN_DOMAIN[1:]}"
                     + (f": {trust['domain']}" if trust.get("domain") else "")
                     + f" (out-of-distribution score {trust['ood_score']:.4g} above the limit "
                       f"{trust['ood_limit']:.4g}).")
    if trust.get("quality_flags"):
        parts.append(f"Image quality: {trust['quality']}.")
    if not parts:
        return None
    return " ".join(parts) + " The probabilities below are not a diagnosis."


# ------------------------------------------------------------------------------ the model card


def _fingerprint(predictor, folder: Path | None) -> str:
    """SHA-256 (first 16 hex) of the model folder's model.json + model.safetensors, else of the card."""
    digest = hashlib.sha256()
    files = [folder / n for n in ("model.json", "model.safetensors")] if folder else []
    if files and all(f.is_file() for f in files):
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    else:
        digest.update(json.dumps(predictor.model_card, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()[:16]


def _run_summary(folder: Path | None) -> dict | None:
    """The run's summary.json (a model folder sits at RUN/model), if there is one."""
    if folder is None:
        return None
    path = folder.parent / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _rank_encoder(predictor):
    for enc in (getattr(predictor, "enc", None), getattr(getattr(predictor, "model", None), "enc", None)):
        if enc is not None and getattr(enc, "has_text", False):
            return enc
    return None


def _meta_fields(predictor) -> list[dict]:
    encoder = getattr(predictor, "meta_encoder", None)
    if encoder is None or "meta" not in getattr(predictor, "modalities", []):
        return []
    out = []
    for column, kind in encoder.columns.items():
        entry = {"name": column, "type": kind}
        if kind == "categorical":
            entry["levels"] = list(encoder.stats.get(column, {}).get("levels", []))
        out.append(entry)
    return out


def model_info(predictor, folder: Path | None, limits: ServeLimits) -> dict[str, Any]:
    """What ``GET /api/model`` returns (computed once at start-up)."""
    card = predictor.model_card
    modalities = list(getattr(predictor, "modalities", []) or [])
    summary = _run_summary(folder) or {}
    main = getattr(predictor, "main_view", None) if modalities else "image"
    return {
        "name": predictor.name,
        "method": predictor.method,
        "fingerprint": _fingerprint(predictor, folder),
        "classes": list(predictor.classes),
        "task": card.get("task"),
        "inputs": {
            "image": main is not None,
            "image_view": {"derm": "dermoscopic image", "clin": "clinical image"}.get(main, "image"),
            "clinical_image": "clin" in modalities and main != "clin",
            "metadata": _meta_fields(predictor),
            "modalities": modalities or ["image"],
            "explain": None,  # filled in by create_app once the saliency module is known
            "rank": _rank_encoder(predictor) is not None,
            "thickness": bool((card.get("thickness") or {}).get("kind")),
        },
        "training": {"dataset": card.get("dataset") or summary.get("dataset"),
                     "base_model": card.get("base_model") or card.get("image_encoder"),
                     "run": summary.get("name"), "selected_on": summary.get("selected_on"),
                     "best_epoch": summary.get("best_epoch")},
        "test_metrics": summary.get("test"),
        "test_ci": summary.get("test_ci"),
        "transfer": summary.get("transfer"),
        "limits": limits.to_dict(),
        "notice": NOTICE,
    }


# ------------------------------------------------------------------------------ request checks


def _check_meta(predictor, fields: dict[str, list[str]]) -> dict[str, str] | None:
    """Metadata form fields checked against the model card (UploadError 422 names the field)."""
    given = {k: v for k, v in fields.items() if k not in _RESERVED}
    if not given:
        return None
    known = {f["name"]: f for f in _meta_fields(predictor)}
    if not known:
        raise UploadError(422, f"unknown field(s) {_names(given)}: this {predictor.method} model reads no metadata "
                               "(its inputs: GET /api/model); drop them")
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UploadError(422, f"unknown metadata field(s) {_names(unknown)}; this model reads {', '.join(known)}")
    out = {}
    for name, values in given.items():
        if len(values) != 1:
            raise UploadError(422, f"metadata field {name!r} given {len(values)} times; give it once")
        value = values[0].strip()
        kind = known[name]["type"]
        if value == "":
            continue  # unknown: the model masks it as missing
        if kind == "numeric" and finite_float(value) is None:
            raise UploadError(422, f"metadata field {name!r} must be a number, got {excerpt(value)}")
        if kind == "boolean" and value.casefold() not in BOOLEAN_TRUE | BOOLEAN_FALSE:
            raise UploadError(422, f"metadata field {name!r} must be true/false, yes/no or 1/0, got {excerpt(value)}")
        if kind == "categorical" and known[name].get("levels") and value not in known[name]["levels"]:
            raise UploadError(422, f"metadata field {name!r} must be one of {known[name]['levels']}, got "
                                   f"{excerpt(value)} (leave it empty if unknown)")
        out[name] = value
    return out


def _names(names) -> str:
    """Field names a request sent, as a message quotes them: a few, each a short excerpt."""
    names = sorted(names)
    return "[" + ", ".join(excerpt(n, 40) for n in names[:8]) + (f", and {len(names) - 8} more]" if len(names) > 8
                                                                  else "]")


def _top_k(fields: dict[str, list[str]], n_classes: int) -> int:
    raw = (fields.get("top_k") or ["3"])[-1].strip()
    try:
        k = int(raw)
    except ValueError:
        raise UploadError(422, f"field 'top_k' must be an integer between 1 and {n_classes}, "
                               f"got {excerpt(raw)}") from None
    if not 1 <= k <= n_classes:
        raise UploadError(422, f"field 'top_k' must be between 1 and {n_classes} (the model's classes), got {k}")
    return k


def _image_upload(files, name: str, limits: ServeLimits, required: bool = True):
    if name not in files:
        if required:
            raise UploadError(422, f"missing the file field {name!r}; send the image as multipart/form-data, "
                                   f"e.g. curl -F {name}=@lesion.jpg")
        return None
    filename, data = files[name]
    return decode_upload(data, name, filename, limits)


def _texts(fields: dict[str, list[str]], limits: ServeLimits) -> list[str]:
    texts = [t.strip() for value in fields.get("texts", []) for t in value.splitlines() if t.strip()]
    if not texts:
        raise UploadError(422, "no candidate texts: add one or more form fields 'texts' (or one text per line)")
    if len(texts) > limits.max_texts:
        raise UploadError(422, f"{len(texts)} candidate texts; the limit is {limits.max_texts}")
    long = [t for t in texts if len(t) > limits.max_text_chars]
    if long:
        raise UploadError(422, f"a candidate text has {len(long[0])} characters; the limit is {limits.max_text_chars}")
    extra = sorted(set(fields) - {"texts"})
    if extra:
        raise UploadError(422, f"unknown field(s) {_names(extra)}; /api/rank takes 'image' and 'texts'")
    return texts


# ------------------------------------------------------------------------------ the app


def _multipart_doc(properties: dict, required: list[str]) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}}


def create_app(model, limits: ServeLimits | None = None, *, device: str = "auto",
               model_dir: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None):
    """A FastAPI app serving ``model`` (a model folder of any method, or a loaded Predictor).

    ``limits``: :class:`ServeLimits` (upload size, pixels, batching, queue, timeout). ``model_dir``:
    the folder a Predictor was loaded from (for its fingerprint and its run's test metrics).
    ``workdir``: where batches write their temporary files (default: a new temporary folder,
    deleted when the app shuts down).
    """
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    from dermkit.methods import Predictor, load_predictor

    limits = limits or ServeLimits()
    if isinstance(model, Predictor):
        predictor, folder = model, (Path(model_dir) if model_dir else None)
    else:
        folder = Path(model)
        predictor = load_predictor(folder, device=device)
    own_workdir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dermkit-serve-") if own_workdir else workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rank_enc = _rank_encoder(predictor)
    worker = BatchQueue(predictor, workdir, limits.max_batch, limits.batch_wait_ms, limits.max_queue, rank_enc)
    info = model_info(predictor, folder, limits)
    started_at = time.time()

    def close() -> None:
        worker.stop()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            close()

    async def known_query(request: Request) -> None:
        """Every endpoint refuses a query parameter it does not declare, or one given twice (never
        ignored, never last-wins): ``?explian=1`` is a typo the user must hear about."""
        route = request.scope.get("route")
        dependant = getattr(route, "dependant", None)
        known = sorted({p.alias for p in dependant.query_params}) if dependant is not None else []
        given = request.query_params
        unknown = sorted(k for k in given.keys() if k not in known)
        if unknown:
            raise UploadError(422, f"unknown query parameter(s) {', '.join(excerpt(k, 40) for k in unknown[:5])}; "
                                   f"{request.url.path} takes {', '.join(known) or 'none'}")
        twice = [k for k in known if len(given.getlist(k)) > 1]
        if twice:
            raise UploadError(422, f"query parameter {twice[0]!r} given {len(given.getlist(twice[0]))} times; give "
                                   "it once")

    app = FastAPI(title="dermkit serve", version="1", lifespan=lifespan, dependencies=[Depends(known_query)],
                  description=f"Single-image prediction with {predictor.name} ({predictor.method}). {NOTICE}")
    app.state.predictor, app.state.worker, app.state.info, app.state.workdir = predictor, worker, info, workdir
    app.state.close = close
    if own_workdir:
        weakref.finalize(app, shutil.rmtree, str(workdir), True)  # also when the app is dropped unclosed

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    async def answer(job):
        worker.start()
        try:
            future = worker.submit(job)
        except QueueFull:
            return None, error(503, f"the server is busy ({limits.max_queue} requests waiting); retry in a moment",
                               {"Retry-After": "1"})
        remaining = max(0.1, limits.timeout_s - (time.perf_counter() - job.queued_at))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), remaining), None
        except asyncio.TimeoutError:
            future.cancel()
            return None, error(504, f"the prediction took longer than the {limits.timeout_s:g} s limit; retry "
                                    "later or ask for fewer explanations")
        except DermkitError as exc:
            return None, error(422, str(exc))

    async def form_of(request: Request, repeatable: tuple[str, ...] = ()):
        try:
            return await asyncio.wait_for(read_form(request, limits, repeatable), limits.timeout_s)
        except asyncio.TimeoutError:
            raise UploadError(408, f"the upload did not arrive within {limits.timeout_s:g} s") from None

    @app.exception_handler(UploadError)
    async def _upload_error(request, exc: UploadError):
        if exc.status == CLIENT_CLOSED:  # nobody to answer: a note in the log, not an internal error
            log.info("client disconnected during the upload of %s %s; request dropped", request.method,
                     request.url.path)
        return error(exc.status, exc.message)

    @app.exception_handler(DermkitError)
    async def _dermkit_error(request, exc: DermkitError):
        return error(422, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server keeps running, see its log")

    static = resources.files("dermkit.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/health", summary="liveness and queue state")
    async def health():
        return {"status": "ok", "model": predictor.name, "fingerprint": info["fingerprint"],
                "queue": worker.pending, "batches": worker.batches, "predictions": worker.jobs,
                "uptime_s": round(time.time() - started_at, 1)}

    @app.get("/api/model", summary="the model card: classes, inputs, training data, test metrics with 95% CIs")
    async def model_card():
        if info["inputs"]["explain"] is None:
            saliency = await run_in_threadpool(worker.saliency)
            info["inputs"]["explain"] = saliency is not None
        return info

    predict_doc = _multipart_doc({
        "image": {"type": "string", "format": "binary", "description": "the (dermoscopic) image: JPEG/PNG/DICOM..."},
        "clinical_image": {"type": "string", "format": "binary", "description": "fusion models: the clinical image"},
        "top_k": {"type": "integer", "default": 3, "description": "how many classes in `top` (1..classes)"},
    } | {f["name"]: {"type": "string", "description": f"metadata ({f['type']})"} for f in info["inputs"]["metadata"]},
        ["image"])

    @app.post("/api/predict", summary="classify one image", openapi_extra=predict_doc)
    async def predict(request: Request, explain: bool = Query(False, description="add a Grad-CAM overlay PNG")):
        arrived = time.perf_counter()
        fields, files = await form_of(request)
        unknown_files = sorted(set(files) - {"image", "clinical_image"})
        if unknown_files:
            raise UploadError(422, f"unknown file field(s) {_names(unknown_files)}; send 'image' (and "
                                   "'clinical_image' for fusion models)")
        top_k = _top_k(fields, len(predictor.classes))
        if "clinical_image" in files and not info["inputs"]["clinical_image"]:
            raise UploadError(422, f"field 'clinical_image': this model ({', '.join(info['inputs']['modalities'])}) "
                                   "reads no clinical image; drop it")
        meta = _check_meta(predictor, {k: v for k, v in fields.items() if k != "top_k"})
        image = await run_in_threadpool(_image_upload, files, "image", limits)
        clinical = await run_in_threadpool(_image_upload, files, "clinical_image", limits, False)
        decoded = time.perf_counter()
        job = PredictJob(image.image, clinical.image if clinical else None, meta, explain)
        result, failure = await answer(job)
        if failure is not None:
            return failure
        proba = result["proba"]
        order = sorted(range(len(proba)), key=lambda i: -proba[i])
        ranked = [{"class": predictor.classes[i], "probability": float(proba[i])} for i in order]
        details = result["details"]
        modalities = info["inputs"]["modalities"]
        used = details.get("modalities used")
        used = used.split("+") if isinstance(used, str) else (modalities if modalities != ["image"] else ["image"])
        used = [u.strip() for u in used]
        body = {
            "model": {"name": predictor.name, "method": predictor.method, "fingerprint": info["fingerprint"]},
            "top_class": ranked[0]["class"], "confidence": ranked[0]["probability"],
            "top": ranked[:top_k], "probabilities": ranked,
            "thickness": details.get("thickness"),
            "modalities": {"used": used, "missing": [m for m in modalities if m not in used]},
            "image": {"width": image.size[0], "height": image.size[1], "format": image.format},
            "batch_size": result["batch_size"],
            "timing_ms": {"decode": round(1000 * (decoded - arrived), 2), "queue": round(1000 * result["queue_s"], 2),
                          "inference": round(1000 * result["inference_s"], 2),
                          "total": round(1000 * (time.perf_counter() - arrived), 2)},
            **result["trust"],
            "domain_notice": domain_notice(result["trust"]),
            "notice": NOTICE,
        }
        if explain:
            body["explanation"] = result.get("explanation")
            if body["explanation"] and "seconds" in body["explanation"]:
                body["timing_ms"]["explain"] = round(1000 * body["explanation"].pop("seconds"), 2)
        return body

    rank_doc = _multipart_doc({
        "image": {"type": "string", "format": "binary"},
        "texts": {"type": "array", "items": {"type": "string"}, "description": "candidate texts (or one per line)"},
    }, ["image", "texts"])

    @app.post("/api/rank", summary="rank candidate texts by similarity to one image (vision-language models)",
              openapi_extra=rank_doc)
    async def rank(request: Request):
        arrived = time.perf_counter()
        if rank_enc is None:
            raise UploadError(422, f"this {predictor.method} model has no text encoder; /api/rank needs a "
                                   "vision-language model (a CLIP folder, a zero-shot or prompt-learning model)")
        fields, files = await form_of(request, repeatable=("texts",))
        texts = _texts(fields, limits)
        unknown_files = sorted(set(files) - {"image"})
        if unknown_files:
            raise UploadError(422, f"unknown file field(s) {_names(unknown_files)}; /api/rank takes 'image' and "
                                   "'texts'")
        image = await run_in_threadpool(_image_upload, files, "image", limits)
        result, failure = await answer(RankJob(image.image, texts))
        if failure is not None:
            return failure
        return {"model": {"name": rank_enc.name, "fingerprint": info["fingerprint"]}, "ranked": result["ranked"],
                "timing_ms": {"queue": round(1000 * result["queue_s"], 2),
                              "inference": round(1000 * result["inference_s"], 2),
                              "total": round(1000 * (time.perf_counter() - arrived), 2)}}

    return app


def app_from_env():
    """Factory for ``uvicorn --factory`` with several worker processes (``dermkit serve --workers N``):
    the options travel in ``DERMKIT_SERVE_CONFIG`` (JSON: model, device, limits)."""
    config = json.loads(os.environ["DERMKIT_SERVE_CONFIG"])
    return create_app(config["model"], ServeLimits(**config.get("limits", {})), device=config.get("device", "auto"))
