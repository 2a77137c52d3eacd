"""Run every CUDA path of dermkit once and print what ran, how fast, and what failed.

    .venv/bin/python benchmarks/gpu_check.py                  # CUDA when present, else the CPU fallback
    .venv/bin/python benchmarks/gpu_check.py --device cuda    # exit 2 when there is no CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --device cpu --out gpu_check.json

Everything is built in a temporary folder, nothing is downloaded: a synthetic dataset folder
(images/ + metadata.csv + dataset.yaml, class = dominant colour), a tiny random open_clip CLIP and a
tiny random LLaVA (as tests/conftest.py builds them). The paths, each in its own try/except so one
failure does not hide the others:

  supervised     ``dermkit.experiment.run_experiment``: timm EfficientNet-Lite0 (random init) through
                 the engine, bf16 autocast + channels-last, 2 short epochs, then its evaluation
  contrastive    CLIP contrastive training of the tiny CLIP (``method: contrastive``, ``init``)
  prompt         CoOp prompt learning on the tiny CLIP (``method: prompt_learning``)
  lora           LoRA fine-tuning of the tiny LLaVA (``method: vqa``, ``lora: true``)
  features       ``dermkit.engine.features.extract_features`` with the tiny CLIP
  serve          the FastAPI app (``dermkit.serve.create_app``) serving the supervised run's model,
                 concurrent POST /api/predict in-process (fastapi.testclient), so they batch
  onnx           ONNX Runtime with the CUDA execution provider on the exported Lite0 (SKIPPED when
                 onnxruntime-gpu is not installed); on ``--device cpu`` the CPU provider

Speeds of the training paths are those of the last epoch (the first one warms kernels up); each
row's seconds are the whole path (building, training, evaluation). Exit code 0 when every path ran
(OK or SKIPPED), 1 when any FAILED, 2 when ``--device cuda`` is asked for without a CUDA GPU.
``--preset gpu`` (the default on CUDA) uses 224 px Lite0 batches of 64 and more images; ``tiny``
(the default on CPU) keeps the fallback near a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

PATHS = ("supervised", "contrastive", "prompt", "lora", "features", "serve", "onnx")
PRESETS = {
    # images per class in train/val/test, supervised image size and batch, steps per epoch, epochs,
    # served requests
    "tiny": {"train": 8, "val": 4, "test": 4, "image_size": 32, "batch_size": 8, "steps": 2, "epochs": 2,
             "requests": 8},
    "gpu": {"train": 128, "val": 16, "test": 16, "image_size": 224, "batch_size": 64, "steps": 6, "epochs": 2,
            "requests": 32},
}
CLASSES = ("bcc", "mel", "nv")  # the tiny LLaVA's tokenizer knows these answers
COLOURS = {"bcc": (200, 60, 60), "mel": (60, 190, 70), "nv": (60, 80, 200)}
VQA_TEMPLATE = "what is the lesion type ? choose one of : {options} ."

# The tiny CLIP of tests/conftest.py (32 px, 16-d embeddings).
CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
LLAVA_WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "what", "is", "the", "lesion",
               "type", "choose", "one", "of", "bcc", "mel", "nv", "a", ",", ".", "?", ":"]
LLAVA_TEMPLATE = ("{% for m in messages %}{{ 'USER: ' if m['role']=='user' else 'ASSISTANT: ' }}"
                  "{% for c in m['content'] %}{% if c['type']=='image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
                  "{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@dataclass
class Row:
    path: str
    device: str = "-"
    dtype: str = "-"
    what: str = ""
    speed: str = "-"
    seconds: float = 0.0
    status: str = "OK"  # OK | FAILED | SKIPPED
    error: str = ""
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"path": self.path, "device": self.device, "dtype": self.dtype, "what": self.what,
                "speed": self.speed, "seconds": round(self.seconds, 2), "status": self.status, "error": self.error,
                **({"details": self.details} if self.details else {})}


class Skip(Exception):
    """The path cannot run here for a reason that is not a failure (e.g. onnxruntime-gpu absent)."""


# ------------------------------------------------------------------------------ fixtures built once


def make_dataset(root: Path, counts: dict[str, int], size: int = 48, seed: int = 0) -> Path:
    """A valid dataset folder (3 colour classes, lesion ids, age/sex) like tests/conftest.py's."""
    import numpy as np
    import pandas as pd
    import yaml
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for label, cls in enumerate(CLASSES):
        for split, n in counts.items():
            for k in range(n):
                rel = f"images/{cls}_{split}_{k:03d}.jpg"
                pixels = np.array(COLOURS[cls], dtype=float) + rng.normal(0, 10) + rng.normal(0, 25, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(root / rel, "JPEG", quality=90)
                rows.append({"image": rel, "label": label, "diagnosis": cls, "split": split,
                             "lesion_id": f"L_{cls}_{split}_{k // 2:03d}", "age": int(rng.integers(20, 90)),
                             "sex": "female" if rng.random() < 0.5 else "male"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    card = {"name": root.name, "description": "Synthetic gpu_check dataset: class = dominant colour.",
            "modality": "dermoscopy", "classes": list(CLASSES), "class_names": {c: f"{c} lesion" for c in CLASSES},
            "synonyms": {c: [c.upper()] for c in CLASSES}, "group_column": "lesion_id",
            "metadata_columns": {"age": "numeric", "sex": "categorical"}, "positive_class": "mel",
            "license": "CC0 (generated)"}
    (root / "dataset.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
    return root


def make_clip(folder: Path) -> Path:
    import open_clip
    import torch

    from dermkit.models.encoders import save_open_clip_folder

    torch.manual_seed(0)
    save_open_clip_folder(open_clip.CLIP(**CLIP_CFG), folder, CLIP_CFG, CLIP_PREPROCESS)
    return folder


def make_llava(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(LLAVA_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=["<image>"])
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30},
                                                                  crop_size={"height": 30, "width": 30}),
                               tokenizer=tokenizer, patch_size=6, vision_feature_select_strategy="default",
                               chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=30, patch_size=6, projection_dim=32)
    text = LlamaConfig(vocab_size=len(LLAVA_WORDS) + 1, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                         vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=25)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class Context(dict):
    """What the paths share: ``args``, ``preset``, ``tmp``, ``data``; ``clip`` and ``llava`` are built on
    first use (inside the path that needs them, so a failure to build one is that path's failure)."""

    def __missing__(self, key):
        builders = {"clip": lambda: make_clip(self["tmp"] / "tiny-clip"),
                    "llava": lambda: make_llava(self["tmp"] / "tiny-llava")}
        if key not in builders:
            raise KeyError(key)
        self[key] = builders[key]()
        return self[key]


# ------------------------------------------------------------------------------ helpers


def _dtype_name(dtype) -> str:
    return "fp32" if dtype is None else {"torch.bfloat16": "bf16", "torch.float16": "fp16",
                                         "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def _last_line(exc: BaseException) -> str:
    """The error's last line, with its type: what a table cell can hold."""
    lines = [ln for ln in "".join(traceback.format_exception_only(type(exc), exc)).splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else type(exc).__name__
    return last if last.startswith(type(exc).__name__) else f"{type(exc).__name__}: ... {last}"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _param_device(module) -> str:
    try:
        return str(next(module.parameters()).device)
    except (StopIteration, AttributeError):
        return "?"


class EngineSpy:
    """Records every Engine the runs build (device, autocast dtype, channels-last) and its fit's state."""

    def __init__(self):
        self.engines: list = []

    def __enter__(self):
        from dermkit.engine.loop import Engine

        self._fit = Engine.fit
        spy = self

        def fit(engine, *args, **kwargs):
            spy.engines.append(engine)
            return spy._fit(engine, *args, **kwargs)

        Engine.fit = fit
        return self

    def __exit__(self, *exc):
        from dermkit.engine.loop import Engine

        Engine.fit = self._fit

    def describe(self, row: Row, expect_device: str, unit: str = "img/s") -> None:
        """Fill ``row`` from the last engine: its device, dtype and the last epoch's speed; checks that
        the weights really sit on the requested device."""
        if not self.engines:
            raise RuntimeError("the run built no training engine")
        engine = self.engines[-1]
        row.device = str(engine.device)
        row.dtype = _dtype_name(engine.amp_dtype)
        where = _param_device(engine.module)
        if not where.startswith(expect_device.split(":")[0]):
            raise RuntimeError(f"the engine's weights are on {where}, not {expect_device}")
        history = engine.state.history
        if not history:
            raise RuntimeError("the engine ran no epoch")
        last = history[-1]
        steps = engine.state.step // max(1, len(history))
        seconds = float(last["train_seconds"]) or 1e-9
        speed = f"{steps / seconds:.1f} steps/s"
        if last.get("train_images_per_second"):
            speed += f", {float(last['train_images_per_second']):.0f} {unit}"
        row.speed = speed
        row.details.update(epochs=len(history), optimizer_steps=engine.state.step,
                           last_epoch_seconds=seconds, last_train_loss=float(last["train_loss"]),
                           channels_last=bool(engine.config.channels_last))


def _run_config(config: dict, out: Path) -> dict:
    from dermkit.experiment import run_experiment

    return run_experiment(config, out, progress=False, force=True)


def _engine(args, preset, channels_last: bool | None = None) -> dict:
    engine = {"epochs": preset["epochs"], "max_steps_per_epoch": preset["steps"], "device": args.device,
              "precision": args.precision, "warmup_epochs": 0.5}
    if channels_last is not None:
        engine["channels_last"] = channels_last
    return engine


# ------------------------------------------------------------------------------ the paths


def check_supervised(ctx, row: Row) -> None:
    args, preset = ctx["args"], ctx["preset"]
    config = {"method": "supervised", "data": str(ctx["data"]), "model": "efficientnet_lite0", "pretrained": False,
              "image_size": preset["image_size"], "batch_size": preset["batch_size"],
              "eval_batch_size": preset["batch_size"], "num_workers": 0, "augment": "light", "n_bootstrap": 20,
              "engine": {**_engine(args, preset, channels_last=True), "lr": 1e-3}}
    with EngineSpy() as spy:
        summary = _run_config(config, ctx["tmp"] / "supervised")
    spy.describe(row, args.device)
    module = spy.engines[-1].module
    import torch

    conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    if not conv.weight.is_contiguous(memory_format=torch.channels_last):
        raise RuntimeError("the model is not channels-last")
    bacc = (summary.get("test") or {}).get("balanced_accuracy")
    row.what = (f"Lite0 {preset['image_size']}px, batch {preset['batch_size']}, channels-last, "
                f"{row.details['optimizer_steps']} steps + eval"
                + (f" (test BACC {bacc:.2f})" if bacc is not None else ""))
    ctx["supervised_model"] = ctx["tmp"] / "supervised" / "model"


def check_contrastive(ctx, row: Row) -> None:
    args, preset = ctx["args"], ctx["preset"]
    data = str(ctx["data"])
    config = {"method": "contrastive", "init": str(ctx["clip"]), "train_data": [data], "data": data, "eval_data": [],
              "batch_size": min(16, preset["batch_size"]), "train_image_last": None, "train_text_last": None,
              "num_workers": 0, "val_per_dataset": 12, "n_bootstrap": 20,
              "engine": {**_engine(args, preset), "lr": 1e-3, "select_metric": "zeroshot_balanced_accuracy"}}
    with EngineSpy() as spy:
        summary = _run_config(config, ctx["tmp"] / "contrastive")
    spy.describe(row, args.device, unit="pairs/s")
    row.what = (f"tiny open_clip ViT, batch {config['batch_size']} pairs, {row.details['optimizer_steps']} steps "
                f"+ zero-shot val ({summary.get('pairs', '?')} pairs)")


def check_prompt(ctx, row: Row) -> None:
    args, preset = ctx["args"], ctx["preset"]
    config = {"method": "prompt_learning", "data": str(ctx["data"]), "model": str(ctx["clip"]),
              "task": "melanoma_vs_rest", "variant": "coop", "ift": False, "n_ctx": 4, "ctx_init": "a photo of a",
              "batch_size": min(16, preset["batch_size"]), "num_workers": 0, "n_bootstrap": 20,
              "engine": {**_engine(args, preset), "lr": 5e-3}}
    with EngineSpy() as spy:
        _run_config(config, ctx["tmp"] / "prompt")
    spy.describe(row, args.device)
    row.what = (f"CoOp, 4 context tokens, tiny CLIP, batch {config['batch_size']}, "
                f"{row.details['optimizer_steps']} steps + eval")


def check_lora(ctx, row: Row) -> None:
    args, preset = ctx["args"], ctx["preset"]
    config = {"method": "vqa", "data": str(ctx["data"]), "model": str(ctx["llava"]), "template": VQA_TEMPLATE,
              "lora": True, "lora_rank": 4, "batch_size": 4, "n_bootstrap": 20,
              "engine": {**_engine(args, preset), "lr": 5e-3}}
    with EngineSpy() as spy:
        summary = _run_config(config, ctx["tmp"] / "lora")
    spy.describe(row, args.device)
    if not summary.get("trainable_parameters"):
        raise RuntimeError("the LoRA run trained no parameters")
    row.what = (f"tiny LLaVA, LoRA rank 4 ({summary['trainable_parameters']:,} params), batch 4, "
                f"{row.details['optimizer_steps']} steps + option scoring")


def check_features(ctx, row: Row) -> None:
    from dermkit.engine.features import _plan, extract_features
    from dermkit.models.encoders import load_encoder

    args = ctx["args"]
    enc = load_encoder(str(ctx["clip"]), device=args.device)
    backend, dtype = _plan(enc)
    row.device = _param_device(enc.module)
    row.dtype = _dtype_name(dtype) + (" (onnxruntime)" if backend == "onnx" else "")
    paths = sorted((ctx["data"] / "images").glob("*.jpg"))
    extract_features(enc, paths[:8], use_cache=False, num_workers=0, progress=False)  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    feats = extract_features(enc, paths, cache_dir=ctx["tmp"] / "features", num_workers=0, progress=False)
    _sync(args.device)
    seconds = time.perf_counter() - start
    import numpy as np

    if feats.shape[0] != len(paths) or not np.isfinite(feats).all():
        raise RuntimeError(f"features of shape {feats.shape} (finite: {bool(np.isfinite(feats).all())})")
    row.speed = f"{len(paths) / seconds:.0f} img/s"
    row.what = f"tiny CLIP image embeddings of {len(paths)} files ({backend}), cached"


def check_serve(ctx, row: Row) -> None:
    if "supervised_model" not in ctx:
        raise Skip("needs the supervised run's model (the supervised path failed or was not selected)")
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from dermkit.models.onnx import inference_backend
    from dermkit.serve import ServeLimits, create_app

    args, preset = ctx["args"], ctx["preset"]
    n = preset["requests"]
    images = sorted((ctx["data"] / "images").glob("*_test_*.jpg"))
    payloads = [images[i % len(images)].read_bytes() for i in range(n)]
    limits = ServeLimits(max_batch=min(16, n), batch_wait_ms=50)
    app = create_app(ctx["supervised_model"], limits, device=args.device)
    predictor = app.state.predictor
    device = getattr(predictor, "device", None)
    row.device = str(device) if device is not None else "?"
    backend = inference_backend(device or "cpu")
    row.dtype = "fp32 (onnxruntime)" if backend == "onnx" else _dtype_name(getattr(predictor, "amp_dtype", None))

    def post(client, data: bytes):
        return client.post("/api/predict", files={"image": ("x.jpg", data, "image/jpeg")})

    with TestClient(app) as client:
        first = post(client, payloads[0])  # warm-up (model on the device, kernels)
        if first.status_code != 200:
            raise RuntimeError(f"POST /api/predict -> {first.status_code}: {first.text[:200]}")
        batches_before = app.state.worker.batches
        _sync(args.device)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(16, n)) as pool:
            answers = list(pool.map(lambda b: post(client, b), payloads))
        _sync(args.device)
        seconds = time.perf_counter() - start
        batches = app.state.worker.batches - batches_before
    bad = [a for a in answers if a.status_code != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} of {n} requests failed, e.g. {bad[0].status_code}: {bad[0].text[:200]}")
    bodies = [a.json() for a in answers]
    if not all(b.get("top_class") in CLASSES and len(b.get("probabilities", [])) == len(CLASSES) for b in bodies):
        raise RuntimeError(f"unexpected answer {str(bodies[0])[:200]}")
    largest = max(b.get("batch_size", 1) for b in bodies)
    row.speed = f"{n / seconds:.0f} img/s"
    row.what = f"{n} concurrent POST /api/predict, Lite0 model, {batches} batches (largest {largest})"


def check_onnx(ctx, row: Row) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime not installed") from None
    import numpy as np
    import torch

    from dermkit.models.onnx import onnx_function
    from dermkit.models.registry import create_classifier

    args, preset = ctx["args"], ctx["preset"]
    cuda = args.device.startswith("cuda")
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    row.device, row.dtype = ("cuda" if cuda else "cpu"), "fp32"
    if provider not in ort.get_available_providers():
        raise Skip("CUDA provider not installed (pip install onnxruntime-gpu); "
                   f"onnxruntime {ort.__version__} has {', '.join(ort.get_available_providers())}")
    size = preset["image_size"]
    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", len(CLASSES), pretrained=False).eval()
    fn = onnx_function(model, (size, size), key="gpu-check-lite0", cache_dir=ctx["tmp"] / "onnx")
    if fn is None:
        raise RuntimeError("dermkit could not export Lite0 to ONNX (see the warning above)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = [provider, "CPUExecutionProvider"] if cuda else [provider]
    session = ort.InferenceSession(str(fn.path), options, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} did not load (session providers: {session.get_providers()}); "
                           "check the CUDA/cuDNN libraries onnxruntime-gpu needs")
    batch = preset["batch_size"]
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        reference = model(x).numpy()
    name = session.get_inputs()[0].name
    out = session.run(None, {name: x.numpy()})[0]  # warm-up (+ cuDNN algorithm search)
    difference = float(np.abs(out - reference).max())
    if not difference <= 1e-2:
        raise RuntimeError(f"ONNX Runtime ({provider}) differs from PyTorch by {difference:.2e}")
    reps = 5
    start = time.perf_counter()
    for _ in range(reps):
        session.run(None, {name: x.numpy()})
    seconds = time.perf_counter() - start
    row.speed = f"{reps * batch / seconds:.0f} img/s"
    row.what = f"Lite0 {size}px exported by dermkit, {provider}, {reps}x batch {batch}, max |diff| {difference:.1e}"


CHECKS = {"supervised": check_supervised, "contrastive": check_contrastive, "prompt": check_prompt,
          "lora": check_lora, "features": check_features, "serve": check_serve, "onnx": check_onnx}


# ------------------------------------------------------------------------------ driver


def run_checks(args) -> list[Row]:
    import torch

    preset = dict(PRESETS[args.preset])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dermkit-gpu-check-") as tmp_name:
        tmp = Path(args.keep) if args.keep else Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        # Caches (features, ONNX exports) and run folders stay inside the temporary folder.
        os.environ["DERMKIT_CACHE"] = str(tmp / "cache")
        os.environ["DERMKIT_ONNX_CACHE"] = str(tmp / "cache" / "onnx")
        start = time.perf_counter()
        counts = {"train": preset["train"], "val": preset["val"], "test": preset["test"]}
        ctx = Context(args=args, preset=preset, tmp=tmp, data=make_dataset(tmp / "gpucheck", counts))
        print(f"built the dataset ({3 * sum(counts.values())} images) in {time.perf_counter() - start:.1f}s",
              flush=True)
        for name in args.paths:
            row = Row(name, device=args.device)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                CHECKS[name](ctx, row)
                _sync(args.device)
            except Skip as exc:
                row.status, row.error = "SKIPPED", str(exc)
            except BaseException as exc:  # noqa: BLE001 - one failure must not hide the others
                if isinstance(exc, KeyboardInterrupt):
                    raise
                row.status = "FAILED"
                row.error = _last_line(exc)
                row.details["traceback"] = traceback.format_exc()
                print(f"--- {name} FAILED:\n{row.details['traceback']}", file=sys.stderr, flush=True)
            row.seconds = time.perf_counter() - start
            if args.device.startswith("cuda"):
                row.details["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            rows.append(row)
            print(f"{name}: {row.status} in {row.seconds:.1f}s{' - ' + row.error if row.error else ''}", flush=True)
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("path", "device", "dtype", "what ran", "speed", "seconds", "status")
    body = [(r.path, r.device, r.dtype, r.what or "-", r.speed, f"{r.seconds:.1f}",
             r.status + (f": {r.error}" if r.error else "")) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head[:-1])]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head[:-1], widths)) + " | status |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|--------|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b[:-1], widths)) + f" | {b[-1]} |" for b in body]
    return "\n".join(lines)


def environment(device: str) -> dict:
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    try:
        import onnxruntime

        env["onnxruntime"] = f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    except ImportError:
        env["onnxruntime"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:N or cpu (default: cuda when a CUDA GPU is present, else the CPU fallback)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32", "auto"],
                        help="autocast of the training paths (default bf16; fp16 needs CUDA)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="sizes: gpu (default on CUDA: Lite0 224 px, batch 64) or tiny (default on CPU)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), metavar="PATH",
                        help=f"which paths to run (default all: {' '.join(PATHS)})")
    parser.add_argument("--out", help="also write the table (and the environment) as JSON to this file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 avoids oversubscription on a busy machine)")
    parser.add_argument("--keep", help="build everything in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)

    import torch

    have_cuda = torch.cuda.is_available()
    if args.device is None:
        if have_cuda:
            args.device = "cuda"
        else:
            args.device = "cpu"
            print("no CUDA GPU present: running the CPU fallback (the same paths on the CPU)", flush=True)
    elif args.device.startswith("cuda") and not have_cuda:
        print(f"gpu_check: --device {args.device} asked for, but no CUDA GPU is present "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run without --device "
              "or with --device cpu for the CPU fallback", file=sys.stderr)
        return 2
    elif not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        parser.error("--precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
    args.preset = args.preset or ("gpu" if args.device.startswith("cuda") else "tiny")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
    import transformers

    transformers.utils.logging.disable_progress_bar()
    env = environment(args.device)
    print("gpu_check: " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None)
          + f", preset {args.preset}, precision {args.precision}", flush=True)

    started = time.perf_counter()
    rows = run_checks(args)
    total = time.perf_counter() - started
    print()
    print(format_table(rows))
    failed = [r.path for r in rows if r.status == "FAILED"]
    skipped = [r.path for r in rows if r.status == "SKIPPED"]
    print(f"\n{len(rows) - len(failed) - len(skipped)} of {len(rows)} paths OK"
          + (f"; SKIPPED: {', '.join(skipped)}" if skipped else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + f" ({total:.0f}s in all, on {args.device})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"environment": env, "preset": {args.preset: PRESETS[args.preset]},
                                              "precision": args.precision, "seconds": round(total, 1),
                                              "rows": [r.as_dict() for r in rows]}, indent=2), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
