"""Training and inference speed of the named models on this machine (images/s, printed).

    .venv/bin/python benchmarks/train_speed.py [--models efficientnet_lite0 resnet18] [--sizes 128 160 224]

For each model and input size: training img/s (forward + backward + AdamW step, batch 32) in
fp32, fp32 channels-last, bf16 autocast + channels-last, and with the first units frozen
(``train_last``); inference img/s (batch 128, inference_mode) fp32 channels-last and bf16.
Synthetic tensors, so it measures compute only (dermkit keeps decoded images in RAM, so
decoding is not on the hot path).
"""

from __future__ import annotations

import argparse
import time

import torch

from dermkit.models.freeze import train_only_last
from dermkit.models.registry import create_classifier
from dermkit.runtime import cpu_has_bf16


def train_speed(model, size, batch, channels_last, bf16, steps=4):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 7, (batch,))
    times = []
    for _ in range(steps + 1):  # first step warms up kernels
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return batch * steps / sum(times[1:])


@torch.inference_mode()
def infer_speed(model, size, batch, bf16, steps=3):
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
        times.append(time.perf_counter() - t)
    return batch * steps / sum(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 160])
    parser.add_argument("--train-last", type=int, default=7)
    parser.add_argument("--skip-bf16", action="store_true", help="bf16 is emulated (slow) on CPUs without AVX512-BF16")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native CPU bf16: {cpu_has_bf16()}")
    header = (f"{'model':<20}{'size':>5}{'fp32':>8}{'fp32-CL':>9}{'bf16-CL':>9}{'frozen':>8}"
              f"{'inf fp32':>10}{'inf bf16':>10}")
    print(header + "   (images/s; 'frozen' = fp32-CL with train_last)")
    for name in args.models:
        for size in args.sizes:
            torch.manual_seed(0)
            fresh = lambda name=name: create_classifier(name, 7, pretrained=False)  # noqa: E731
            fp32 = train_speed(fresh(), size, 32, False, False)
            cl = train_speed(fresh(), size, 32, True, False)
            bf = float("nan") if args.skip_bf16 else train_speed(fresh(), size, 32, True, True)
            partial = fresh()
            train_only_last(partial, args.train_last)
            frozen = train_speed(partial, size, 32, True, False)
            inf32 = infer_speed(fresh(), size, 128, False)
            inf16 = float("nan") if args.skip_bf16 else infer_speed(fresh(), size, 128, True)
            print(f"{name:<20}{size:>5}{fp32:>8.1f}{cl:>9.1f}{bf:>9.1f}{frozen:>8.1f}{inf32:>10.1f}{inf16:>10.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
