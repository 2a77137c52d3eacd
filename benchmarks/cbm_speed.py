"""Concept-bottleneck fitting time: scikit-learn's saga vs dermkit's FISTA on the same SAE codes.

    .venv/bin/python benchmarks/cbm_speed.py --sae runs/sae_dermkit_clip/model --data ham10000
    .venv/bin/python benchmarks/cbm_speed.py --synthetic 7000 2048     # random sparse codes

Both fit the L1 multinomial head of ``method: cbm`` (standardised codes, balanced class weights,
warm-started along the C grid, C chosen on val by balanced accuracy) on one set of SAE activations,
side by side in one run: saga as the CBM ran it before (``--saga-iter`` passes, default 300) and
FISTA (``--fista-iter`` full-batch steps). Prints seconds, the val balanced accuracy per C, the
chosen C, non-zero latents and whether each converged, and the ratio of the times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _real_codes(sae_folder, data, task):
    from dermkit.api import load_dataset
    from dermkit.engine.features import extract_split_features
    from dermkit.methods.cbm import load_sae_folder

    enc, sae, _ = load_sae_folder(sae_folder, device="cpu")
    card = load_dataset(data, task)
    x_tr, y_tr, _ = extract_split_features(enc, card, "train", num_workers=2, progress=False)
    x_va, y_va, _ = extract_split_features(enc, card, "val", num_workers=2, progress=False)
    return sae.activations(x_tr), y_tr, sae.activations(x_va), y_va, list(card.classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", help="model folder of a `method: sae` run")
    parser.add_argument("--data", default="ham10000")
    parser.add_argument("--task", default=None)
    parser.add_argument("--synthetic", nargs=2, type=int, metavar=("N", "D"), help="random sparse codes instead")
    parser.add_argument("--Cs", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--saga-iter", type=int, default=300)
    parser.add_argument("--fista-iter", type=int, default=5000)
    args = parser.parse_args()
    if not args.sae and not args.synthetic:
        parser.error("give --sae RUN/model (real SAE codes) or --synthetic N D")

    import torch

    from dermkit.models.linear import fit_probe

    if args.synthetic:
        n, d = args.synthetic
        rng = np.random.default_rng(0)
        x = rng.gamma(0.5, size=(n, d)) * (rng.random((n, d)) < 32 / d)
        w = rng.normal(size=(d, 7)) * (rng.random((d, 7)) < 0.02)
        y = (x @ w + rng.gumbel(size=(n, 7))).argmax(axis=1)
        cut = int(0.8 * n)
        x_tr, y_tr, x_va, y_va, classes = x[:cut], y[:cut], x[cut:], y[cut:], [str(c) for c in range(7)]
        source = f"synthetic sparse codes {n} x {d}"
    else:
        x_tr, y_tr, x_va, y_va, classes = _real_codes(args.sae, args.data, args.task)
        source = f"SAE codes of {args.sae} on {args.data} ({x_tr.shape[0]} train x {x_tr.shape[1]} latents)"
    print(f"{source}; torch threads {torch.get_num_threads()}; Cs {args.Cs}")
    rows = {}
    for solver, max_iter in (("saga", args.saga_iter), ("fista", args.fista_iter)):
        t = time.perf_counter()
        probe = fit_probe(x_tr, y_tr, x_va, y_va, classes, Cs=args.Cs, class_weight="balanced", max_iter=max_iter,
                          penalty="l1", solver=solver)
        rows[solver] = (time.perf_counter() - t, probe)
    print("| solver | max_iter | seconds | val BACC per C | chosen C | non-zero latents | converged |")
    print("|---|---|---|---|---|---|---|")
    for solver, (seconds, probe) in rows.items():
        per_c = ", ".join(f"{c:g}: {v:.3f}" for c, v in probe.val_scores.items())
        print(f"| {solver} | {probe.info['max_iter']} | {seconds:.1f} | {per_c} | {probe.C:g} | "
              f"{probe.info['nonzero_inputs']} | {probe.info['converged']} |")
    print(f"saga / fista time: x{rows['saga'][0] / max(rows['fista'][0], 1e-9):.1f}")


if __name__ == "__main__":
    main()
