"""dermkit-CLIP training speed: a step from pixels and tokens vs from the cached frozen parts.

    .venv/bin/python benchmarks/clip_cache_speed.py [--steps 6] [--batch 64] [--image-last 4] [--text-last 2]

Side by side in one process, on real pairs of the shared train splits (HAM10000 + Derm7pt, captions
written from metadata), with the towers dermkit-CLIP is built from (ImageNet EfficientNet-Lite0 +
MiniLM, from PyPI) and the engine's precision for this machine: the seconds of one training step
(forward, loss, backward; median of ``--steps``) for

- ``pixels``: every image through the whole image tower, every caption through the whole text
  tower (``cache_views: 0``, ``cache_captions: 0``: the training of the first dermkit-CLIP),
- ``image cached``: the image tower's trained tail only, from the cached prefix (``cache_views``),
- ``both cached``: also the text tower's trained layers only, from its cached frozen layers
  (``cache_captions``),
- ``both cached + hard negatives``: each caption's hard negative encoded too (twice the texts),

the one-off cost of caching one image view and one caption, and what ``--epochs`` epochs from
the caches cost, counted in uncached epochs of the 9,243 pairs of the default config.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--image-last", type=int, default=4)
    parser.add_argument("--text-last", type=int, default=2)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--draws", type=int, default=4, help="caption draws cached (cache_captions)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=9243)
    args = parser.parse_args()

    import open_clip

    from dermkit.data import load_card
    from dermkit.data.captions import captions_with_negatives
    from dermkit.data.torchdata import decode_all, train_transform
    from dermkit.engine.losses import soft_clip_loss
    from dermkit.methods.contrastive import set_trainable, trim_padding
    from dermkit.models.dermkit_clip import build_dermkit_clip, minilm_folder
    from dermkit.models.frozen_prefix import text_split, trunk_split
    from dermkit.runtime import resolve_device, resolve_precision

    device = resolve_device("auto")
    dtype = resolve_precision("auto", device)
    autocast = lambda: torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)  # noqa: E731
    torch.manual_seed(0)
    model, _, preprocess = build_dermkit_clip(embed_dim=256)
    model.to(device).train()
    _, frozen = set_trainable(model, args.image_last, args.text_last)
    for m in frozen:
        m.eval()
    prefix, tail = trunk_split(model, frozen)
    text_prefix, text_tail = text_split(model, args.text_last)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(minilm_folder()), context_length=128)
    pad = model.text.config.pad_token_id

    pairs, paths = [], []
    for name in ("ham10000", "derm7pt"):
        card = load_card(name)
        rows = card.rows("train").iloc[: args.batch]
        pairs += captions_with_negatives(card, "train", seed=0)[: args.batch]
        paths += [card.image_path(p) for p in rows["image"]]
    augment = train_transform(args.image_size, preprocess["mean"], preprocess["std"], "strong")
    images = decode_all(paths, int(args.image_size * 1.15))
    pixels = torch.stack([augment(im) for im in images]).to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast():
        start = time.perf_counter()
        cached = prefix(pixels)
        cache_seconds = (time.perf_counter() - start) / len(pixels)
    cached = cached.to(torch.float16).float().clone()
    texts = [c for c, _ in pairs] + [n for _, n in pairs]
    with torch.inference_mode(), autocast():
        start = time.perf_counter()
        hidden, mask = text_prefix(trim_padding(tokenizer(texts), pad).to(device))
        text_cache_seconds = (time.perf_counter() - start) / len(texts)
    table = {t: h[: int(m.sum())].to(torch.float16).clone() for t, h, m in zip(texts, hidden, mask)}

    def cached_text(batch: list[str]):
        rows = [table[t] for t in batch]
        lengths = torch.tensor([len(r) for r in rows])
        h = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).float().to(device)
        return text_tail(h, (torch.arange(h.shape[1])[None, :] < lengths[:, None]).long().to(device))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(rows: slice, mode: str) -> tuple[float, float]:
        captions = [c for c, _ in pairs[rows]]
        texts = captions + ([n for _, n in pairs[rows]] if mode == "negatives" else [])
        ids = torch.arange(len(captions))
        start = time.perf_counter()
        with autocast():
            t0 = time.perf_counter()
            text = (cached_text(texts) if mode in ("both", "negatives") else
                    model.encode_text(trim_padding(tokenizer(texts), pad).to(device)))
            text_seconds = time.perf_counter() - t0
            image = model.encode_image(pixels[rows]) if mode == "pixels" else tail(cached[rows])
            negative = text[len(captions):] if mode == "negatives" else None
            loss = soft_clip_loss(image, text[: len(captions)], model.logit_scale.exp(), ids, negative,
                                  None if negative is None else ids + len(ids))
        loss.backward()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, text_seconds

    results = {}
    for mode in ("pixels", "cached", "both", "negatives"):
        times = [step(slice(k % 2 * args.batch, (k % 2 + 1) * args.batch), mode) for k in range(args.steps + 1)][1:]
        results[mode] = (statistics.median(t for t, _ in times), statistics.median(s for _, s in times))
    steps = args.pairs // args.batch
    epoch = {mode: steps * t for mode, (t, _) in results.items()}
    build_images = cache_seconds * args.pairs * args.views
    build_texts = text_cache_seconds * args.pairs * args.draws
    print(f"device {device}, precision {dtype}, batch {args.batch}, {args.image_size} px, "
          f"trained: last {args.image_last} trunk units, last {args.text_last} text layers")
    labels = {"pixels": "pixels + tokens (no cache)", "cached": "image cached", "both": "image + text cached",
              "negatives": "both cached + hard negatives"}
    for mode, label in labels.items():
        t, text = results[mode]
        print(f"  {label:29s} {t:6.2f} s/step (text side {text:5.2f} s), epoch of {args.pairs} pairs "
              f"{epoch[mode] / 60:5.1f} min, x{epoch['pixels'] / epoch[mode]:.2f}")
    print(f"  caching once: {cache_seconds * 1e3:.1f} ms per image view "
          f"({args.views} views: {build_images / 60:.1f} min), "
          f"{text_cache_seconds * 1e3:.1f} ms per caption ({args.draws} draws, captions and negatives: "
          f"{2 * build_texts / 60:.1f} min)")
    for mode, build in (("cached", build_images), ("both", build_images + build_texts),
                        ("negatives", build_images + 2 * build_texts)):
        total = build + args.epochs * epoch[mode]
        print(f"  {args.epochs} epochs, {labels[mode]}: {total / 60:.1f} min in all = "
              f"{total / epoch['pixels']:.1f} uncached epochs")


if __name__ == "__main__":
    main()
