"""Where a concept bottleneck loses against a linear probe: heads on one encoder, val split only.

    .venv/bin/python benchmarks/cbm_heads.py --sae runs/sae_dermkit_clip/model --data ham10000

On the same cached embeddings of one dataset (train to fit, val to choose and to report; the test
split is never read), side by side:

- ``probe``: L2 logistic regression on the raw embedding (the linear-probe baseline);
- ``probe on reconstruction``: the same on the SAE's reconstruction (what the SAE keeps);
- ``L1 on codes``: the CBM's sparse head as PanDerm-2 fits it (L1, C on val);
- ``relaxed L1 on codes``: the CBM's default (L1 chooses the concepts, L2 refits their weights);
- ``L2 on codes``: a dense head on every latent (no concept selection).

Each row: the chosen C (and refit C), the inputs with weight, val balanced accuracy and val
macro-AUC. The rows separate the two losses a CBM can have: the SAE's (probe vs probe on
reconstruction) and the head's (probe on reconstruction vs the code heads).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", required=True, help="model folder of a `method: sae` run")
    parser.add_argument("--data", default="ham10000")
    parser.add_argument("--task", default=None)
    parser.add_argument("--Cs", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3], help="L1 grid (the CBM's)")
    parser.add_argument("--refit-Cs", nargs="+", type=float, default=[0.0003, 0.001, 0.003, 0.01, 0.03])
    parser.add_argument("--l2-Cs", nargs="+", type=float, default=[0.0001, 0.0003, 0.001, 0.003, 0.01])
    args = parser.parse_args()

    import torch
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from dermkit.api import load_dataset
    from dermkit.engine.features import extract_split_features
    from dermkit.methods.cbm import load_sae_folder
    from dermkit.models.linear import fit_probe

    enc, sae, _ = load_sae_folder(args.sae, device="cpu")
    card = load_dataset(args.data, args.task)
    (x_tr, y_tr, _), (x_va, y_va, _) = (extract_split_features(enc, card, s, num_workers=2, progress=False)
                                        for s in ("train", "val"))

    def reconstruction(x):
        with torch.no_grad():
            return sae(torch.as_tensor(np.asarray(x), dtype=torch.float32))[0].numpy()

    inputs = {"raw": (x_tr, x_va), "reconstruction": (reconstruction(x_tr), reconstruction(x_va)),
              "codes": (sae.activations(x_tr), sae.activations(x_va))}
    heads = [("probe", "raw", dict(Cs=args.l2_Cs)),
             ("probe on reconstruction", "reconstruction", dict(Cs=args.l2_Cs)),
             ("L1 on codes", "codes", dict(Cs=args.Cs, penalty="l1", solver="fista", max_iter=5000)),
             ("relaxed L1 on codes", "codes", dict(Cs=args.Cs, penalty="l1", solver="fista", max_iter=5000,
                                                   refit_Cs=args.refit_Cs)),
             ("L2 on codes", "codes", dict(Cs=args.l2_Cs))]
    print(f"{card.name}: {len(y_tr)} train, {len(y_va)} val, {len(card.classes)} classes; SAE ({sae.extra_repr()})")
    print(f"{'head':26s} {'C':>14s} {'inputs':>7s} {'val BACC':>9s} {'val AUC':>8s}")
    for name, key, kw in heads:
        tr, va = inputs[key]
        probe = fit_probe(tr, y_tr, va, y_va, card.classes, **kw)
        p = probe.predict_proba(va)
        present = np.unique(y_va)
        if len(card.classes) == 2:
            auc = roc_auc_score(y_va, p[:, 1])
        else:
            auc = roc_auc_score(y_va, p[:, present] / p[:, present].sum(axis=1, keepdims=True), multi_class="ovr",
                                labels=present)
        C = f"{probe.C:g}" + (f"/{probe.info['refit_C']:g}" if probe.info.get("refit_C") else "")
        used = int((np.abs(probe.coef) > 0).any(axis=0).sum())
        print(f"{name:26s} {C:>14s} {used:>7d} {100 * balanced_accuracy_score(y_va, p.argmax(1)):9.1f} "
              f"{100 * auc:8.1f}", flush=True)


if __name__ == "__main__":
    main()
