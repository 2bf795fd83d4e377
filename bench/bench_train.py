"""Training-step throughput (samples/s) and MFU of the trainer's step, on this machine.

Measures exactly what one trainer step does: the FaceModel (backbone under autocast, float32 head),
the GB-CosFace loss, backward, SGD with momentum and weight decay, on random uint8 batches prepared by
`prepare_batch` (flips + normalisation on the device). Data loading is excluded (see
bench/bench_loader.py for it).

Configurations:
  - `demo`: the demo recipe's tiny model (iresnet18 width 16, one block per stage, stride-2 stem,
    embedding 128) at batch 64, amp none, on the CPU.
  - `iresnet50` / `iresnet100` at a realistic per-GPU batch with bf16 autocast + channels_last, with
    and without torch.compile, on a GPU when one is present; MFU = samples/s x 3 x 2 x MACs per sample
    (r50: 6.3 GMACs -> 37.8 GFLOP, r100: 12.1 GMACs -> 72.6 GFLOP) / the GPU's dense bf16 peak.
On a CPU shared with other work the wall-clock rate depends on the load: the load average and the
rate per CPU-second this process actually received are printed too.

Usage: python bench/bench_train.py [--configs demo iresnet50 iresnet100] [--batch 128] [--steps 20]
       [--warmup 5] [--classes 85742] [--no-compile]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass

import torch

from gbcosface.config import ModelConfig, OptimConfig
from gbcosface.data.train_set import prepare_batch
from gbcosface.heads import get_head
from gbcosface.losses import get_loss
from gbcosface.models import backbone_from_config
from gbcosface.train.model import FaceModel
from gbcosface.train.optim import build_optimizer

FLOP_PER_SAMPLE = {"iresnet50": 3 * 2 * 6.3e9, "iresnet100": 3 * 2 * 12.1e9}
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class Case:
    name: str
    model: ModelConfig
    batch: int
    amp: str
    channels_last: bool
    compile: bool
    classes: int


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"cpu {cpu}",
             f"cores {len(os.sched_getaffinity(0))}", f"torch threads {torch.get_num_threads()}"]
    if hasattr(os, "getloadavg"):
        parts.append("loadavg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts.append(f"gpu {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    return "; ".join(parts)


def gpu_peak() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run_case(case: Case, device: torch.device, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    backbone = backbone_from_config(case.model)
    if case.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    head = get_head("linear", case.model.embedding_size, case.classes)
    model = FaceModel(backbone, head, case.amp).to(device)
    if case.compile:
        model.backbone.compile()
    loss_fn = get_loss("gb_cosface").to(device)
    opt = build_optimizer(model.backbone, model.head, OptimConfig(), 0.1, 0.1)
    images = torch.randint(0, 256, (case.batch, 3, 112, 112), dtype=torch.uint8)
    labels = torch.randint(0, case.classes, (case.batch,))
    if device.type == "cuda":
        images = images.pin_memory()

    def step(i: int) -> None:
        x = prepare_batch(images, device, i, 0, True, case.channels_last)
        y = labels.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        cos, norms = model(x)
        out = loss_fn(cos, y, norms=norms)
        out["loss"].backward()
        opt.step()
        out["loss"].item()  # the trainer's one host sync per step (finiteness check)

    t_first = time.perf_counter()
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s = time.perf_counter() - t_first
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    sps = steps * case.batch / wall
    res = {"samples_per_s": sps, "step_ms": 1000 * wall / steps, "warmup_s": warm_s}
    if device.type == "cpu":
        res["samples_per_cpu_s"] = steps * case.batch / cpu if cpu > 0 else float("nan")
    else:
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    flop = FLOP_PER_SAMPLE.get(case.model.name)
    peak = gpu_peak()
    if flop and peak and device.type == "cuda":
        res["tflops"] = sps * flop / 1e12
        res["mfu"] = sps * flop / peak
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["demo", "iresnet50", "iresnet100"])
    ap.add_argument("--batch", type=int, default=128, help="per-GPU batch of the full-size models")
    ap.add_argument("--classes", type=int, default=85742, help="head size of the full-size models (MS1MV2)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = ap.parse_args()

    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"machine: {machine()}")
    cases: list[Case] = []
    for name in args.configs:
        if name == "demo":
            tiny = ModelConfig(name="iresnet18", embedding_size=128, width=16, layers=[1, 1, 1, 1], stem_stride=2)
            cases.append(Case("demo (tiny, amp none)", tiny, 64, "none", False, False, 1000))
            continue
        if not gpu:
            print(f"{name}: skipped (no GPU; full-size backbones take seconds per step on a CPU)")
            continue
        model = ModelConfig(name=name)
        cases.append(Case(f"{name} bf16 channels_last", model, args.batch, "bf16", True, False, args.classes))
        if not args.no_compile:
            cases.append(Case(f"{name} bf16 channels_last compile", model, args.batch, "bf16", True, True,
                              args.classes))
    for case in cases:
        res = run_case(case, device if case.amp != "none" or gpu else torch.device("cpu"), args.steps, args.warmup)
        extra = ""
        if "samples_per_cpu_s" in res:
            extra += f", {res['samples_per_cpu_s']:.1f} samples per CPU-second"
        if "peak_mem_gib" in res:
            extra += f", peak mem {res['peak_mem_gib']:.1f} GiB"
        if "mfu" in res:
            extra += f", {res['tflops']:.0f} TFLOP/s, MFU {100 * res['mfu']:.1f}%"
        print(f"{case.name}: batch {case.batch} on {device.type}: {res['samples_per_s']:.1f} samples/s "
              f"({res['step_ms']:.1f} ms/step; warm-up {res['warmup_s']:.1f} s){extra}", flush=True)


if __name__ == "__main__":
    main()
