"""Scaling curve: feature extraction and one training epoch on 1/4, 1/2 and all of a dataset.

    .venv/bin/python benchmarks/scaling.py [--data ham10000] [--model timm:tf_efficientnet_lite0]
        [--classifier efficientnet_lite0] [--image-size 160] [--fractions 0.25,0.5,1]

For each fraction f of the train split (the first f*N rows, the same order every time):
- extraction: ``extract_features`` of the frozen encoder into an empty cache (the default backend);
- one training epoch of the supervised method (``train_last: 7``, batch 32, no validation
  cost beyond the val split's, which stays the same), timed by the engine's ``train_seconds``.
It prints seconds per image at each size; cost that grows linearly shows as a flat column.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from dermkit.data import load_card
from dermkit.engine.features import extract_features
from dermkit.experiment import run_experiment
from dermkit.models.encoders import load_encoder


def _subset_card(card, fraction: float, root: Path) -> Path:
    """A card folder whose train split is the first ``fraction`` of the original's; its folders are
    symlinks to the original's (``follow_symlinks: true``), so no image is copied."""
    import yaml

    table = card.table.copy()
    train = table.index[table["split"] == "train"]
    keep = set(train[: max(1, int(round(len(train) * fraction)))])
    folder = root / f"{card.name}_{fraction:g}"
    folder.mkdir(parents=True)
    for child in Path(card.root).iterdir():
        if child.is_dir():
            (folder / child.name).symlink_to(child.resolve())
    spec_path = Path(card.root) / "dataset.yaml"
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else {}
    spec = {**(spec or {}), "name": card.name, "follow_symlinks": True}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    table[(table["split"] != "train") | table.index.isin(keep)].to_csv(folder / "metadata.csv", index=False)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="ham10000")
    parser.add_argument("--model", default="timm:tf_efficientnet_lite0", help="encoder for the extraction rows")
    parser.add_argument("--classifier", default="efficientnet_lite0", help="model of the training rows")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--fractions", default="0.25,0.5,1")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()

    card = load_card(args.data)
    enc = load_encoder(args.model, device="cpu")
    train = card.rows("train")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dermkit-scaling-") as tmp:
        tmp = Path(tmp)
        for fraction in [float(f) for f in args.fractions.split(",")]:
            n = max(1, int(round(len(train) * fraction)))
            paths = [card.image_path(p) for p in train["image"].head(n)]
            start = time.perf_counter()
            extract_features(enc, paths, cache_dir=tmp / f"cache_{fraction:g}", num_workers=args.num_workers,
                             progress=False)
            t_extract = time.perf_counter() - start
            folder = _subset_card(card, fraction, tmp)
            config = {"method": "supervised", "data": str(folder), "model": args.classifier,
                      "image_size": args.image_size, "epochs": 1, "batch_size": 32, "train_last": 7,
                      "num_workers": args.num_workers, "n_bootstrap": 0, "warmup_epochs": 0}
            run_experiment(config, tmp / f"run_{fraction:g}", progress=False)
            history = pd.read_csv(tmp / f"run_{fraction:g}" / "history.csv")
            t_train = float(history["train_seconds"].iloc[0])
            rows.append({"fraction": fraction, "train images": n, "extract s": round(t_extract, 1),
                         "extract ms/img": round(1000 * t_extract / n, 2), "epoch s": round(t_train, 1),
                         "epoch ms/img": round(1000 * t_train / n, 2)})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    base = frame.iloc[-1]
    print("ms/img relative to the full set: extraction "
          + ", ".join(f"{r['extract ms/img'] / base['extract ms/img']:.2f}" for _, r in frame.iterrows())
          + "; training " + ", ".join(f"{r['epoch ms/img'] / base['epoch ms/img']:.2f}" for _, r in frame.iterrows())
          + " (1.00 everywhere = linear)")


if __name__ == "__main__":
    main()
