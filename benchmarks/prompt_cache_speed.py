"""Prompt learning speed: training from cached tail inputs vs re-encoding every image every epoch.

    .venv/bin/python benchmarks/prompt_cache_speed.py [--model runs/dermkit_clip/model]
        [--data derm7pt] [--task melanoma_vs_rest] [--variant cgcoop] [--epochs 5] [--threads N]

Runs a ``method: prompt_learning`` config (:func:`dermkit.run`) twice with one config (default: the
full method, CgCoOp + IFT, on Derm7pt melanoma vs rest), ``cache: true`` and ``cache: false``,
same seed, same batches. Both decode the images once; the uncached run then pushes every training
image through the frozen part of the image tower in every step (what the seed's training loop
does), the cached run reads the tail's input from memory. Prints seconds per training epoch
(median, from the engine's history.csv), the one-off cost of building the cache, the speed-up,
and the test ACC / AUC / F1 of both (they must agree: same maths).

The ratio depends on the towers: the cached epoch costs the text tower (per step) and the tail,
the uncached one the image tower. For the seed's architecture without its weights (which are not
available offline), ``--model openclip:ViT-B-16`` times CLIP ViT-B/16 with random weights: the
cost is the same as with trained weights, the accuracies are meaningless.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import dermkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/dermkit_clip/model")
    parser.add_argument("--data", default="derm7pt")
    parser.add_argument("--task", default="melanoma_vs_rest")
    parser.add_argument("--variant", default="cgcoop")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--no-ift", action="store_true", help="Freeze the whole image tower.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="Keep the two runs here (default: a temporary folder).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out or tempfile.mkdtemp(prefix="dermkit-prompt-bench-"))
    random = args.model.startswith("openclip:") and "@" not in args.model
    if random:  # both runs must start from the same random weights: save them once
        from dermkit.models.encoders import load_encoder, save_open_clip_folder

        torch.manual_seed(0)
        enc = load_encoder(args.model)
        save_open_clip_folder(enc.module, out / "base", enc.model_cfg, enc.preprocess_cfg)
    results = {}
    for cache in (True, False):
        cfg = {"method": "prompt_learning", "model": str(out / "base") if random else args.model, "data": args.data,
               "task": args.task, "variant": args.variant, "ift": not args.no_ift, "cache": cache,
               "epochs": args.epochs, "patience": None}
        started = time.perf_counter()
        summary = dermkit.run(cfg, out / ("cached" if cache else "uncached"), force=True, progress=False)
        wall = time.perf_counter() - started
        history = pd.read_csv(out / ("cached" if cache else "uncached") / "history.csv")
        results[cache] = {"sec_per_epoch": float(history["train_seconds"].median()), "train_wall": wall,
                          "test": summary["test"]}
    c, u = results[True], results[False]
    print(f"model {args.model}{' (random weights: timing only)' if random else ''}, "
          f"{args.data} {args.task}, {args.variant}{'' if args.no_ift else ' + IFT'}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads")
    print(f"{'':>10} {'s/epoch':>9} {'run wall s':>11} {'test ACC':>9} {'AUC':>7} {'F1':>7}")
    for name, r in (("cached", c), ("uncached", u)):
        t = r["test"]
        print(f"{name:>10} {r['sec_per_epoch']:9.2f} {r['train_wall']:11.1f} {t['accuracy']:9.4f} "
              f"{t['macro_auc']:7.4f} {t['macro_f1']:7.4f}")
    print(f"speed-up per epoch: x{u['sec_per_epoch'] / c['sec_per_epoch']:.1f}; "
          f"|test ACC difference| = {abs(c['test']['accuracy'] - u['test']['accuracy']) * 100:.2f} points")
    print(json.dumps({"cached": c, "uncached": u}, default=float))


if __name__ == "__main__":
    main()
