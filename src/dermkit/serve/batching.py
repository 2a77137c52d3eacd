"""One model instance, one worker thread, a bounded queue: requests are batched, never run in parallel.

Every request becomes a job on a bounded queue (full: :class:`QueueFull`, the API answers 503).
A single worker thread owns the predictor: it takes the first waiting job, waits up to
``batch_wait_ms`` for more (up to ``max_batch``), and runs compatible prediction jobs as one
``predict_paths`` call, so concurrent clients share one forward pass and the model is loaded
once. Predictors read files, so each batch's images are written (re-encoded from the decoded,
checked pixels, never the uploaded bytes) into a fresh temporary folder under the server's
work folder, which is deleted when the batch is done; feature caches point there too.
Explanations (Grad-CAM) and text ranking run on the same thread, one job at a time.
"""

from __future__ import annotations

import base64
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermkit.methods.ood import assess, trust_fields

__all__ = ["BatchQueue", "PredictJob", "RankJob", "QueueFull"]


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


@dataclass
class PredictJob:
    image: Any  # PIL image (decoded and checked)
    clinical: Any = None  # PIL image or None (fusion models)
    meta: dict[str, str] | None = None  # fusion models
    explain: bool = False
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def group(self) -> tuple:
        # Fusion models mask the metadata of a whole call at once: batch with-meta and without apart.
        return ("predict", self.meta is not None)


@dataclass
class RankJob:
    image: Any
    texts: list[str]
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)

    group = ("rank",)


class BatchQueue:
    """The worker that owns ``predictor`` (see the module docstring). ``start()``/``stop()``."""

    def __init__(self, predictor, workdir: str | os.PathLike, max_batch: int = 16, batch_wait_ms: float = 10.0,
                 max_queue: int = 64, rank_encoder=None):
        self.predictor = predictor
        self.workdir = Path(workdir)
        self.max_batch = max(1, int(max_batch))
        self.batch_wait = max(0.0, float(batch_wait_ms)) / 1000.0
        self.rank_encoder = rank_encoder
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._saliency = None  # built on first use
        self._saliency_error: str | None = None
        self.batches = 0
        self.jobs = 0

    # -- lifecycle
    def start(self) -> "BatchQueue":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="dermkit-serve-model", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:  # whatever still waits is answered, not left hanging
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, job):
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None
        return job.future

    # -- the worker
    def _loop(self) -> None:
        carry = None
        while not self._stop.is_set():
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
            batch = [first]
            if first.group[0] == "predict":
                deadline = time.perf_counter() + self.batch_wait
                while len(batch) < self.max_batch:
                    remaining = deadline - time.perf_counter()
                    try:
                        job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job.group != first.group:
                        carry = job  # first of the next batch
                        break
                    batch.append(job)
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]  # timed-out ones are skipped
            if not live:
                continue
            try:
                if live[0].group[0] == "rank":
                    for job in live:
                        self._run_rank(job)
                else:
                    self._run_predict(live)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything a request causes
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)

    # -- prediction
    def _run_predict(self, jobs: list[PredictJob]) -> None:
        try:
            results = self._predict(jobs)
        except Exception as exc:  # noqa: BLE001
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:  # one bad job must not fail the others: retry alone, errors stay with their request
                self._run_predict([job])
            return
        for job, result in zip(jobs, results):
            if job.explain:
                try:
                    result["explanation"] = self._explain(job, result)
                except Exception as exc:  # noqa: BLE001 - the prediction stands without its map
                    result["explanation"] = {"available": False, "reason": f"Grad-CAM failed: {exc}"}
            job.future.set_result(result)

    def _predict(self, jobs: list[PredictJob]) -> list[dict]:
        predictor = self.predictor
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="batch-", dir=self.workdir) as tmp:
            tmp = Path(tmp)
            paths = [_save(job.image, tmp / f"{i}.png") for i, job in enumerate(jobs)]
            clinical = [None if job.clinical is None else _save(job.clinical, tmp / f"{i}-clinical.png")
                        for i, job in enumerate(jobs)]
            extra = hasattr(predictor, "set_extra_inputs")
            if hasattr(predictor, "cache_dir"):
                predictor.cache_dir = str(tmp / "features")  # embeddings of uploads go away with the batch
            try:
                if extra:
                    meta = [job.meta for job in jobs] if jobs[0].meta is not None else None
                    predictor.set_extra_inputs(clinical=clinical if any(c is not None for c in clinical) else None,
                                               meta=meta)
                proba = np.asarray(predictor.predict_paths(paths), dtype=float)
                details = predictor.predict_details(paths) if hasattr(predictor, "predict_details") else None
                trust = [trust_fields(check) for check in assess(predictor, paths, proba=proba)]
            finally:
                if extra:
                    predictor.set_extra_inputs(None, None)
        inference = time.perf_counter() - started
        self.batches += 1
        self.jobs += len(jobs)
        out = []
        for i, job in enumerate(jobs):
            out.append({"proba": proba[i], "details": details[i] if details else {}, "trust": trust[i],
                        "batch_size": len(jobs),
                        "queue_s": started - job.queued_at, "inference_s": inference})
        return out

    # -- explanations
    def saliency(self):
        """The predictor's :class:`~dermkit.models.explain.SaliencyModule` (None: cannot be explained)."""
        if self._saliency is None and self._saliency_error is None:
            try:
                self._saliency = self.predictor.saliency_module()
                import pytorch_grad_cam  # noqa: F401  (imported here, not on the first explained request)
            except Exception as exc:  # noqa: BLE001
                self._saliency_error = f"this model's image tower cannot be explained ({exc})"
            if self._saliency is None and self._saliency_error is None:
                self._saliency_error = (f"a {self.predictor.method} model has no image tower that Grad-CAM can "
                                        "explain")
        return self._saliency

    def _explain(self, job: PredictJob, result: dict) -> dict:
        from dermkit.models.explain import overlay_png, saliency_map  # torch: this module stays light

        saliency = self.saliency()
        if saliency is None:
            return {"available": False, "reason": self._saliency_error}
        started = time.perf_counter()
        target = int(np.argmax(result["proba"]))
        heat, target = saliency_map(saliency, job.image, target)
        png = overlay_png(job.image, heat)
        layer = type(saliency.target_layers[0]).__name__
        return {"available": True, "method": "Grad-CAM (pytorch-grad-cam)",
                "target_class": self.predictor.classes[target],
                "layer": layer, "tower": saliency.kind, "png_base64": base64.b64encode(png).decode("ascii"),
                "seconds": time.perf_counter() - started}

    # -- ranking texts
    def _run_rank(self, job: RankJob) -> None:
        import torch

        from dermkit.models.text import encode_texts  # torch: this module stays light

        enc = self.rank_encoder
        started = time.perf_counter()
        with torch.inference_mode():
            pixels = enc.preprocess(job.image).unsqueeze(0)
            image = enc.encode_image(pixels, normalize=True).float().cpu()
            scores = (image @ encode_texts(enc, job.texts).T)[0].double().numpy()
        logits = scores * float(enc.logit_scale)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-scores, kind="stable")
        job.future.set_result({
            "ranked": [{"rank": r + 1, "text": job.texts[i], "similarity": float(scores[i]),
                        "probability": float(probs[i])} for r, i in enumerate(order)],
            "queue_s": started - job.queued_at, "inference_s": time.perf_counter() - started})


def _save(image, path: Path) -> Path:
    image.save(path, format="PNG", compress_level=1)  # lossless: the model sees the decoded pixels
    return path
