"""dermkit-CLIP: seconds per training step of the shipped config, before and after issue 29.

    .venv/bin/python benchmarks/clip_step_speed.py [--steps 6] [--isa native,AVX512_CORE_BF16,AVX2] [--groups 2,4]

One training step of ``configs/contrastive/dermkit_clip.yaml`` as the method runs it (64 pairs
drawn class-balanced from the four train splits with their real metadata captions and hard
negatives, the image tower's trained tail on cached trunk views, the whole text tower on the
tokenised captions + negatives, the global CLIP loss, backward, AdamW step), side by side in one
process for

- ``before``: the shipped config before issue 29: depthwise convolutions under bf16 like every
  other layer, the text tower's own dropout (MiniLM: 0.1);
- ``+ depthwise fp32``: :func:`dermkit.runtime.keep_depthwise_fp32` (what the engine now does on a CPU);
- ``after``: also ``text_dropout: 0.0`` (the shipped config now),
- ``after + cache_captions``: also the text tower's frozen embeddings and layers run once per
  caption draw (``cache_captions: epoch``, exact: epoch e trains on draw e), in
  length-sorted chunks as :class:`dermkit.data.pairs.MemoryPairs` builds them; the step then runs
  the trained layers on the cached states, and the one-off cost (timed on 1,024 of the draw's
  distinct texts, scaled to all of them) is added to every step as its share of an epoch;
- ``... + text_groups G``: also the trained text layers on G groups of similar caption length
  (:meth:`dermkit.data.pairs.MemoryPairs.text_groups`; the same embeddings, less padding),

each in fp32 and in bf16 autocast; ``precision: auto`` takes bf16 where it is >= x1.15 faster
(:data:`dermkit.runtime.BF16_MIN_SPEEDUP`), and the ratio printed is before -> after, each at the
precision auto would pick; a second ratio starts from the step as the issue measured it, at the
precision the old ``auto`` picked by CPU flag alone (bf16 wherever the CPU has bf16 instructions:
AMX or AVX512_BF16, as on a Zen 4; fp32 on an AVX2-only CPU). ``--isa`` reruns the measurement
in a child process per instruction set that oneDNN may use (``ONEDNN_MAX_CPU_ISA``:
``AVX512_CORE_BF16`` is an AVX-512 CPU with BF16 instructions and no AMX, like AMD Zen 4;
``AVX2`` one without AVX-512; ``native`` what the CPU has), so a machine with AMX also shows what
the change is worth on CPUs without it. This is an emulation of those CPUs' instruction sets on
this one (same cores, caches and memory), not a measurement on them.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch


def cpu_has_bf16() -> bool:
    """What the old ``precision: auto`` looked at: bf16 instructions (AMX or AVX512_BF16) in /proc/cpuinfo."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def measure(steps: int, batch: int, groups_tried: list[int]) -> None:
    import open_clip

    from dermkit.data import load_card  # noqa: F401  (cards resolve through the registry)
    from dermkit.data.pairs import MemoryPairs, PairSource
    from dermkit.data.torchdata import decode_all, train_transform
    from dermkit.engine.losses import global_clip_loss
    from dermkit.experiment import load_config
    from dermkit.methods.contrastive import ClipTrainConfig, set_dropout, set_trainable, trim_padding
    from dermkit.models.dermkit_clip import build_dermkit_clip, minilm_folder
    from dermkit.models.frozen_prefix import text_split, trunk_split
    from dermkit.runtime import BF16_MIN_SPEEDUP, cpu_identity, keep_depthwise_fp32

    raw = load_config("configs/contrastive/dermkit_clip.yaml")
    config = ClipTrainConfig.from_dict({k: v for k, v in raw.items() if k not in ("method", "name", "_source")})
    torch.manual_seed(0)
    base, _, preprocess = build_dermkit_clip(config.image_tower, embed_dim=config.embed_dim)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(minilm_folder()), context_length=128)
    pad = base.text.config.pad_token_id

    source = PairSource(config.train_data, "train")
    captions, negatives = source.captions(0, negatives=True)
    order = source.order(0, config.class_balance)[: 2 * batch]
    augment = train_transform(config.image_size, preprocess["mean"], preprocess["std"], config.augment)
    images = decode_all([source.paths[i] for i in order], int(config.image_size * 1.15))
    pixels = torch.stack([augment(im) for im in images]).contiguous(memory_format=torch.channels_last)
    texts = [([captions[i] for i in order[k:k + batch]], [negatives[i] for i in order[k:k + batch]])
             for k in (0, batch)]

    distinct = list(dict.fromkeys(captions + negatives))
    sample = [distinct[i] for i in torch.randperm(len(distinct), generator=torch.Generator().manual_seed(0))[:1024]]
    steps_per_epoch = len(source.paths) // batch

    def text_cache(model, dtype, texts_: list[str]) -> tuple[dict, float]:
        """The frozen text layers' states of ``texts_`` in length-sorted chunks of 256 (fp16, real
        tokens only), and the seconds that took."""
        prefix, _ = text_split(model, config.train_text_last)
        table, start = {}, time.perf_counter()
        ordered = sorted(texts_, key=len)
        for k in range(0, len(ordered), 256):
            chunk = ordered[k:k + 256]
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                hidden, mask = prefix(trim_padding(tokenizer(chunk), pad))
            for t, h, n in zip(chunk, hidden.to(torch.float16), mask.sum(1).tolist()):
                table[t] = h[: int(n)].clone()
        return table, time.perf_counter() - start

    def variant(depthwise_fp32: bool, dropout: float | None, cache_text: bool = False, groups: int = 1):
        model = copy.deepcopy(base).train()
        _, frozen = set_trainable(model, config.train_image_last, config.train_text_last)
        for m in frozen:
            m.eval()
        if dropout is not None:
            set_dropout(model.text, dropout)
        if depthwise_fp32:
            keep_depthwise_fp32(model)
        model = model.to(memory_format=torch.channels_last)
        prefix, tail = trunk_split(model, frozen)
        cached = torch.cat([prefix(pixels[k:k + batch]) for k in (0, batch)])
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        return model, tail, cached, optimizer, cache_text, groups

    def step(parts, k: int, dtype, tables: dict) -> float:
        model, tail, cached, optimizer, cache_text, groups = parts
        caps, negs = texts[k % 2]
        ids = torch.arange(batch)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            image = tail(cached[k % 2 * batch:(k % 2 + 1) * batch])
            if cache_text:  # what MemoryPairs.text_groups + the method's encode_text do
                pairs = MemoryPairs.__new__(MemoryPairs)
                pairs.text_table = tables[dtype]
                text_tail = text_split(model, config.train_text_last)[1]
                parts_ = pairs.text_groups(caps + negs, groups)
                emb = torch.cat([text_tail(h, m) for _, h, m in parts_])
                text, negative = emb[torch.argsort(torch.cat([p for p, _, _ in parts_]))].split(batch)
            else:
                text, negative = model.encode_text(trim_padding(tokenizer(caps + negs), pad)).split(batch)
            loss = global_clip_loss(image, text, model.logit_scale.exp().clamp(max=100), ids, negative, ids + batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    variants = {"before": (False, None, False, 1), "+ depthwise fp32": (True, None, False, 1),
                "+ text_dropout 0": (True, 0.0, False, 1), "+ cache_captions epoch": (True, 0.0, True, 1),
                **{f"+ text_groups {g}": (True, 0.0, True, g) for g in groups_tried}}
    precisions = (("fp32", None), ("bf16", torch.bfloat16))
    parts = {name: variant(*spec) for name, spec in variants.items()}
    # The caches hold the frozen layers' states, the same in every variant (deep copies of one model
    # whose frozen layers never change): built and timed once per precision.
    tables: dict = {}
    once: dict[str, float] = {}
    any_cached = next(p for p in parts.values() if p[4])[0]
    for label, dtype in precisions:
        text_cache(any_cached, dtype, sample[:256])  # warm-up
        _, seconds = text_cache(any_cached, dtype, sample)
        once[label] = seconds * len(distinct) / len(sample) / steps_per_epoch  # one draw's share per step
        tables[dtype], _ = text_cache(any_cached, dtype, [t for pair in texts for group in pair for t in group])
    # Round robin (one step of every variant and precision per round), so that a machine getting
    # slower or faster during the run moves every column alike; the first round warms up.
    times: dict[tuple[str, str], list[float]] = {(n, label): [] for n in parts for label, _ in precisions}
    for k in range(steps + 1):
        for name, part in parts.items():
            for label, dtype in precisions:
                seconds = step(part, k, dtype, tables)
                if k:
                    times[name, label].append(seconds)
    results = {name: {label: statistics.median(times[name, label]) + (once[label] if part[4] else 0.0)
                      for label, _ in precisions} for name, part in parts.items()}
    print(f"CPU: {cpu_identity()}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}; "
          f"batch {batch} pairs + {batch} hard negatives, median of {steps} steps, variants interleaved")
    auto = {}
    for name, r in results.items():
        pick = "bf16" if r["fp32"] / r["bf16"] >= BF16_MIN_SPEEDUP else "fp32"
        auto[name] = (pick, r[pick])
        print(f"  {name:26s} fp32 {r['fp32']:5.2f} s/step  bf16 {r['bf16']:5.2f} s/step  -> auto: {pick}")
    n = steps_per_epoch
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native").upper()
    flag = "bf16" if (isa == "NATIVE" and cpu_has_bf16()) or "BF16" in isa or "AMX" in isa else "fp32"
    for label in [k for k in results if k != "before"]:
        (b_pick, before), (a_pick, after) = auto["before"], auto[label]
        filed = results["before"][flag]
        print(f"  before ({b_pick}) {before:.2f} s/step -> {label} ({a_pick}) {after:.2f} s/step: "
              f"x{before / after:.2f}; as filed (old auto: {flag}) {filed:.2f} -> x{filed / after:.2f}; "
              f"an epoch of {n} steps {n * filed / 60:.1f} -> {n * after / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--isa", default="native", help="comma-separated ONEDNN_MAX_CPU_ISA values (native = unset)")
    parser.add_argument("--groups", default="2,4", help="comma-separated text_groups values to measure")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",") if g.strip()]
    if args.child or args.isa == "native":
        measure(args.steps, args.batch, groups)
        return
    for isa in args.isa.split(","):
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa != "native":
            env["ONEDNN_MAX_CPU_ISA"] = isa
            if isa.upper().startswith("AVX2"):  # torch's own vector kernels: no AVX-512 either
                env["ATEN_CPU_CAPABILITY"] = "avx2"
        subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--batch", str(args.batch),
                        "--groups", args.groups], env=env, check=True)


if __name__ == "__main__":
    main()
