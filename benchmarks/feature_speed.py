"""Feature-extraction speed: dermkit's cached path vs a plain loop (images/s, printed).

    .venv/bin/python benchmarks/feature_speed.py [--model timm:tf_efficientnet_lite0] [--n 512]
        [--data ham10000] [--split test] [--batch-size 64] [--num-workers 2] [--threads N]

On the first ``--n`` images of the split, with the same encoder:

1. plain loop, as open_clip's examples do: in the main process, for each batch of 64 decode
   with PIL, apply the model's preprocess, stack and run an fp32 forward pass under
   ``torch.no_grad``;
2. dermkit cold cache: :func:`dermkit.engine.features.extract_features` into an empty cache
   folder (DataLoader workers decode + preprocess, inference_mode, channels-last, bf16 only on
   hardware with native bf16, content hashing and writing the cache included);
3. dermkit warm cache: the same call again (hashes the files and reads the cache; no model run).

It also checks that the cached features equal the plain loop's (max abs difference).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from dermkit.data import load_card, open_image
from dermkit.engine.features import extract_features
from dermkit.engine.loop import cpu_has_bf16
from dermkit.models.encoders import load_encoder


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:tf_efficientnet_lite0",
                        help="any load_encoder spec, e.g. a dermkit-CLIP folder")
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
    print(f"model {enc.name} ({args.model}), {len(paths)} images of {card.name}/{args.split}, "
          f"input {enc.image_size}px, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"native bf16: {cpu_has_bf16()}")

    # Warm-up outside the timings (first-call allocations, kernel selection).
    plain_loop(enc, paths[: min(8, len(paths))], args.batch_size)

    ref, t_plain = timed(lambda: plain_loop(enc, paths, args.batch_size))
    with tempfile.TemporaryDirectory(prefix="dermkit-feature-bench-") as cache:
        cold, t_cold = timed(lambda: extract_features(enc, paths, cache_dir=cache, batch_size=args.batch_size,
                                                      num_workers=args.num_workers, progress=False))
        warm, t_warm = timed(lambda: extract_features(enc, paths, cache_dir=cache, batch_size=args.batch_size,
                                                      num_workers=args.num_workers, progress=False))
    n = len(paths)
    print(f"{'plain loop (PIL + preprocess + fp32, main process)':<55} {n / t_plain:8.1f} img/s  ({t_plain:.2f} s)")
    print(f"{'dermkit extract_features, cold cache':<55} {n / t_cold:8.1f} img/s  ({t_cold:.2f} s)"
          f"  x{t_plain / t_cold:.2f}")
    print(f"{'dermkit extract_features, warm cache (re-run)':<55} {n / t_warm:8.1f} img/s  ({t_warm:.3f} s)"
          f"  x{t_plain / t_warm:.1f}")
    print(f"max |cached - plain| = {np.abs(cold - ref).max():.2e}; warm == cold: {np.array_equal(warm, cold)}")


if __name__ == "__main__":
    main()
