"""Feature-extraction speed: dermkit's cached path vs a plain loop (images/s, printed).

    .venv/bin/python benchmarks/feature_speed.py [--model timm:tf_efficientnet_lite0] [--n 512]
        [--data ham10000] [--split test] [--batch-size 64] [--num-workers 2] [--threads N]

On the first ``--n`` images of the split, with the same encoder:

1. plain loop, as open_clip's examples do: in the main process, for each batch of 64 decode
   with PIL, apply the model's preprocess, stack and run an fp32 forward pass under
   ``torch.no_grad``;
2. dermkit cold cache, PyTorch backend (``DERMKIT_INFERENCE=torch``):
   :func:`dermkit.engine.features.extract_features` into an empty cache folder (DataLoader
   workers decode + preprocess, inference_mode, channels-last, bf16 on hardware with native bf16,
   content hashing and writing the cache included);
3. dermkit cold cache, default backend (ONNX Runtime on the CPU, fp32; the export is cached by
   fingerprint and done before the timing, as every later run finds it);
4. dermkit warm cache: the same call again (hashes the files and reads the cache; no model run);
5. the Predictor: a supervised classifier of the same architecture, plain loop (PIL + eval
   transform + fp32 forward + softmax) vs ``SupervisedPredictor.predict_paths``.

It checks each result against the plain loop (max abs difference; the target is 1e-4).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from dermkit.data import load_card, open_image
from dermkit.engine.features import extract_features
from dermkit.models.encoders import load_encoder
from dermkit.models.onnx import inference_backend
from dermkit.runtime import cpu_has_bf16


def plain_loop(enc, paths, batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([enc.preprocess(open_image(p)) for p in paths[start:start + batch_size]])
            out.append(enc.encode_image(batch, normalize=True).float().numpy())
    return np.concatenate(out)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _env(value: str | None):
    import contextlib
    import os

    @contextlib.contextmanager
    def scope():
        old = os.environ.get("DERMKIT_INFERENCE")
        if value is None:
            os.environ.pop("DERMKIT_INFERENCE", None)
        else:
            os.environ["DERMKIT_INFERENCE"] = value
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("DERMKIT_INFERENCE", None)
            else:
                os.environ["DERMKIT_INFERENCE"] = old
    return scope()


def row(label: str, n: int, seconds: float, base: float | None = None, diff: float | None = None) -> None:
    ratio = f"  x{base / seconds:.2f}" if base else ""
    check = f"  max|diff| {diff:.1e}" if diff is not None else ""
    print(f"{label:<58} {n / seconds:8.1f} img/s  ({seconds:.2f} s){ratio}{check}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:tf_efficientnet_lite0",
                        help="any load_encoder spec, e.g. a dermkit-CLIP folder")
    parser.add_argument("--classifier", default="efficientnet_lite0", help="registry model for the Predictor rows")
    parser.add_argument("--data", default="ham10000")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=512, help="number of images (first N of the split)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    card = load_card(args.data)
    rows = card.rows(args.split).head(args.n)
    paths = [card.image_path(p) for p in rows["image"]]
    enc = load_encoder(args.model, device="cpu")
    n = len(paths)
    print(f"model {enc.name} ({args.model}), {n} images of {card.name}/{args.split}, "
          f"input {enc.image_size}px, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"native bf16: {cpu_has_bf16()}, default backend: {inference_backend('cpu')}")

    # Warm-up outside the timings (first-call allocations, kernel selection, the cached ONNX export).
    plain_loop(enc, paths[: min(8, len(paths))], args.batch_size)
    extract_features(enc, paths[:2], use_cache=False, num_workers=0, progress=False)

    ref, t_plain = timed(lambda: plain_loop(enc, paths, args.batch_size))
    row("plain loop (PIL + preprocess + fp32, main process)", n, t_plain)
    with tempfile.TemporaryDirectory(prefix="dermkit-feature-bench-") as cache:
        with _env("torch"):
            torch_cold, t_torch = timed(lambda: extract_features(enc, paths, cache_dir=cache + "/torch",
                                                                 batch_size=args.batch_size,
                                                                 num_workers=args.num_workers, progress=False))
        row("extract_features, cold cache, PyTorch backend", n, t_torch, t_plain, np.abs(torch_cold - ref).max())
        cold, t_cold = timed(lambda: extract_features(enc, paths, cache_dir=cache, batch_size=args.batch_size,
                                                      num_workers=args.num_workers, progress=False))
        row(f"extract_features, cold cache, default ({inference_backend('cpu')})", n, t_cold, t_plain,
            np.abs(cold - ref).max())
        warm, t_warm = timed(lambda: extract_features(enc, paths, cache_dir=cache, batch_size=args.batch_size,
                                                      num_workers=args.num_workers, progress=False))
        row("extract_features, warm cache (re-run)", n, t_warm, t_plain, np.abs(warm - ref).max())

    # The Predictor of a supervised classifier (random head: speed and equality, not accuracy).
    from dermkit.data.torchdata import eval_transform
    from dermkit.methods.supervised import SupervisedPredictor
    from dermkit.models.registry import create_classifier, model_spec

    spec = model_spec(args.classifier)
    torch.manual_seed(0)
    model = create_classifier(args.classifier, len(card.classes)).eval()
    size = spec.default_size
    card_info = {"model": args.classifier, "classes": list(card.classes), "image_size": size,
                 "mean": list(spec.mean), "std": list(spec.std)}
    transform = eval_transform(size, spec.mean, spec.std)

    def plain_classifier():
        from torchvision.transforms.v2 import functional as TF

        out = []
        with torch.no_grad():
            for start in range(0, n, args.batch_size):
                x = torch.stack([transform(TF.pil_to_tensor(open_image(p)))
                                 for p in paths[start:start + args.batch_size]])
                out.append(torch.softmax(model(x), 1).numpy())
        return np.concatenate(out)

    plain_classifier() if n <= 8 else None
    p_ref, t_pc = timed(plain_classifier)
    row(f"plain loop, {args.classifier} classifier (fp32 + softmax)", n, t_pc)
    with _env("torch"):
        predictor = SupervisedPredictor(model, dict(card_info), device="cpu")
        p_torch, t_pt = timed(lambda: predictor.predict_paths(paths))
    row("SupervisedPredictor.predict_paths, PyTorch backend", n, t_pt, t_pc, np.abs(p_torch - p_ref).max())
    predictor = SupervisedPredictor(model, dict(card_info), device="cpu")
    predictor.predict_paths(paths[:2])  # the cached export
    p_fast, t_pf = timed(lambda: predictor.predict_paths(paths))
    row(f"SupervisedPredictor.predict_paths, default ({inference_backend('cpu')})", n, t_pf, t_pc,
        np.abs(p_fast - p_ref).max())
    print(f"ratios vs the plain loop: extract_features x{t_plain / t_cold:.2f}, Predictor x{t_pc / t_pf:.2f} "
          "(target >= 2.0, max|diff| <= 1e-4)")


if __name__ == "__main__":
    main()
