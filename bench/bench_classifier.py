"""Classifier memory and step time against the class count: replicated, sharded and sampled heads.

Two tables.
1. COMPUTED, for D = 512, float32 weights, SGD with momentum, G GPUs (default 8), a per-GPU batch B
   (default 128): bytes per GPU of the classifier (weight + gradient + momentum, and the logits of one
   step: cosines, their exp and their gradient, 3 x 4 bytes per entry), the bytes each GPU all-reduces
   per step for the head, and the largest class count whose classifier fits the per-GPU memory left
   after the backbone (default 80 GB minus a 20 GB backbone/activation budget for iresnet100 at B=128
   bf16; an assumption, printed).
     replicated: 3 C D 4 + 3 B C 4 bytes per GPU; all-reduce C D 4 bytes (the head gradient).
     sharded:    3 (C/G) D 4 + 3 (G B) (C/G) 4; no head all-reduce (the gathered embeddings are G B D 4).
     sampled:    Partial-FC style (rate r): the weight, gradient and momentum stay whole per shard, the
                 logits shrink to 3 (G B) (r C/G) 4 (`head.sample_rate`, gbcosface.sharded.sampling).
   Anchor: insightface's Partial FC trains 29M identities on 8 V100 (32 GB) at r = 0.1 with fp16 logits.
2. MEASURED on this machine's CPU (smaller D, default 64): one classifier step (head forward, GB-CosFace
   loss, backward, SGD update) as ONE rank does it: replicated (B rows against C classes) and sharded on
   G ranks (G B gathered rows against C/G classes); the sharded row is one rank's compute, the collectives
   (a G B x D gather and three (G B)-vectors of all-reduces) are not in it. Class counts that would not
   fit in the memory limit (--max-gb) are skipped and said so.
3. MEASURED: how much sampling lowers GB-CosFace's soft negative n_i (random unit vectors, D=512, s=64).

Usage: python bench/bench_classifier.py [--gpus 8] [--batch 128] [--measure-dim 64] [--max-gb 8]
       [--classes 100000 1000000 2000000 10000000] [--steps 3]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

from gbcosface.heads import NormLinearHead  # noqa: E402
from gbcosface.losses import get_loss  # noqa: E402

GB = 1e9


def classifier_bytes(kind: str, c: int, d: int, g: int, b: int, rate: float) -> tuple[float, float]:
    """(bytes per GPU, head all-reduce bytes per GPU per step) of the classifier: see the docstring."""
    if kind == "replicated":
        return 3 * c * d * 4 + 3 * b * c * 4, c * d * 4
    local = c / g
    logits_cols = local * (rate if kind == "sampled" else 1.0)
    return 3 * local * d * 4 + 3 * (g * b) * logits_cols * 4, 0.0


def max_classes(kind: str, d: int, g: int, b: int, rate: float, budget: float) -> int:
    lo, hi = 1, 1 << 40
    while lo < hi:  # bytes grow linearly in c: bisect the largest that fits
        mid = (lo + hi + 1) // 2
        if classifier_bytes(kind, mid, d, g, b, rate)[0] <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def step_seconds(rows: int, classes: int, d: int, steps: int) -> float:
    torch.manual_seed(0)
    head = NormLinearHead(d, classes)
    loss = get_loss("gb_cosface")
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(rows, d, requires_grad=True)
    y = torch.randint(0, classes, (rows,))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss(head(x), y)["loss"].backward()
        opt.step()
        if i:  # the first step allocates the momentum buffer
            times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128, help="per GPU")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--backbone-gb", type=float, default=20.0, help="assumed backbone + activations per GPU")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000, 10_000_000])
    ap.add_argument("--measure-dim", type=int, default=64)
    ap.add_argument("--measure-batch", type=int, default=64, help="per rank, CPU measurement")
    ap.add_argument("--max-gb", type=float, default=6.0, help="skip CPU measurements above this estimate")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    g, b, d = args.gpus, args.batch, args.dim

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, python {platform.python_version()}, "
          f"loadavg {os.getloadavg()[0]:.1f} (a shared machine: CPU times scale with it)")
    print(f"\n1. computed: D={d}, {g} GPUs, batch {b}/GPU, fp32, SGD momentum; sampled rate {args.rate}")
    print(f"{'classes':>11} | {'replicated GB/GPU':>17} {'allreduce GB':>12} | {'sharded GB/GPU':>14} | "
          f"{'sampled GB/GPU':>14}")
    for c in args.classes:
        rep, ar = classifier_bytes("replicated", c, d, g, b, args.rate)
        sh, _ = classifier_bytes("sharded", c, d, g, b, args.rate)
        sa, _ = classifier_bytes("sampled", c, d, g, b, args.rate)
        print(f"{c:>11,} | {rep / GB:>17.2f} {ar / GB:>12.2f} | {sh / GB:>14.2f} | {sa / GB:>14.2f}")
    budget = (args.gpu_gb - args.backbone_gb) * GB
    print(f"largest class count whose classifier fits {args.gpu_gb:.0f} GB - {args.backbone_gb:.0f} GB backbone "
          f"budget per GPU:")
    for kind in ("replicated", "sharded", "sampled"):
        print(f"  {kind:>10}: {max_classes(kind, d, g, b, args.rate, budget):>13,}")
    v100 = max_classes("sampled", d, g, b, args.rate, (32 - 8) * GB)
    print(f"  anchor: Partial FC reports 29M identities on 8 V100 (32 GB, fp16 logits); this model gives "
          f"{v100:,} for sampled fp32 logits with an 8 GB backbone budget")

    dm, bm = args.measure_dim, args.measure_batch
    print(f"\n2. measured here: one classifier step of one rank (D={dm}, batch {bm}/rank, gb_cosface, SGD); "
          f"sharded = {g} ranks: {g * bm} gathered rows x C/{g} classes")
    print(f"{'classes':>11} | {'replicated s':>12} | {'sharded s/rank':>14}")
    for c in args.classes:
        est_rep = (3 * c * dm * 4 + 4 * bm * c * 4) / GB
        est_sh = (3 * (c / g) * dm * 4 + 4 * g * bm * (c / g) * 4) / GB
        rep = f"{step_seconds(bm, c, dm, args.steps):.3f}" if est_rep <= args.max_gb else f"skip {est_rep:.0f}GB"
        sh = f"{step_seconds(g * bm, c // g, dm, args.steps):.3f}" if est_sh <= args.max_gb else f"skip {est_sh:.0f}GB"
        print(f"{c:>11,} | {rep:>12} | {sh:>14}", flush=True)
    soft_negative_shift([0.1, 0.3, 0.5], 64.0, 100_000, 512, 256)


def soft_negative_shift(rates: list[float], s: float, classes: int, d: int, rows: int) -> None:
    """n_i over the sampled negatives minus n_i over all, on random unit vectors (see sharded/sampling.py)."""
    from gbcosface.sharded.sampling import sample_columns

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(rows, d, generator=g), dim=1)
    w = torch.nn.functional.normalize(torch.randn(d, classes, generator=g), dim=0)
    y = torch.randint(0, classes, (rows,), generator=g)
    cos = x @ w
    pos = torch.zeros_like(cos, dtype=torch.bool)
    pos[torch.arange(rows), y] = True
    n_full = torch.logsumexp((s * cos).masked_fill(pos, float("-inf")), dim=1) / s
    print(f"\n3. soft negative n_i over sampled negatives vs all ({classes:,} random classes, D={d}, s={s:g}, "
          f"{rows} rows): mean shift, its std, and log(rate)/s")
    for rate in rates:
        cols = sample_columns(y, 0, classes, rate, seed=1)
        sub = (s * cos[:, cols]).masked_fill(pos[:, cols], float("-inf"))
        diff = torch.logsumexp(sub, dim=1) / s - n_full
        print(f"  rate {rate:<4}: {diff.mean().item():+.4f} +- {diff.std().item():.4f}  "
              f"(log(rate)/s = {math.log(rate) / s:+.4f}); V shifts by half of it")


if __name__ == "__main__":
    main()
