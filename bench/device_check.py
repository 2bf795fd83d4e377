"""The checks of bench/device_check.sh, one table: GPU throughput, MFU and every CUDA path once.

Each check runs inside its own try block and reports ok / FAIL (with the error's first line) and its
figure, so one broken path does not hide the others; the exit status is 1 when any check failed.
`--cpu` runs the same checks with tiny sizes on the CPU (a smoke test for this script, run by
tests/train/test_device_check.py); its figures mean nothing.

Checks (GPU mode):
  train-r100-eager     iresnet100, batch 128, bf16 + channels_last: samples/s, MFU (72.6 GFLOP/sample)
  train-r100-compile   the same with torch.compile of the backbone
  sharded-head         the trainer's ShardedClassifier on one GPU (1M classes, D=512): ms/step, peak GiB
  ijb-embed-r100       IJB image embedding (the evaluation's extract_features) for iresnet100: images/s
  nvml                 the NVML sampler reads utilisation and memory of the GPU
  trainer-cuda         `gbcosface train` (demo model) on a synthetic world in the real format: replicated
                       bf16 + channels_last + torch.compile, and sharded fp16 (grad scaler), each with
                       validation, a checkpoint and a resume on CUDA
  eval-cuda            `gbcosface eval-bin` and `eval-ijb` on the trained model, on CUDA
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ROWS: list[tuple[str, str, str, float]] = []


def check(name: str, fn: Callable[[], str]) -> None:
    t0 = time.perf_counter()
    try:
        figure, status = fn(), "ok"
    except Exception as exc:  # reported in the table, the other checks still run
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        figure, status = f"{type(exc).__name__}: {first}"[:100], "FAIL"
        traceback.print_exc(file=sys.stderr)
    ROWS.append((name, status, figure, time.perf_counter() - t0))
    print(f"[{status}] {name}: {figure}", file=sys.stderr, flush=True)


def train_throughput(cpu: bool, compile: bool) -> str:
    from bench_train import Case, run_case

    from gbcosface.config import ModelConfig

    if cpu:
        model = ModelConfig(name="iresnet18", embedding_size=32, width=8, layers=[1, 1, 1, 1], stem_stride=2)
        case = Case("tiny", model, 8, "none", False, False, 50)
        res = run_case(case, torch.device("cpu"), 2, 1)
    else:
        case = Case("r100", ModelConfig(name="iresnet100"), 128, "bf16", True, compile, 85742)
        res = run_case(case, torch.device("cuda", 0), 30, 15 if compile else 5)
    out = f"{res['samples_per_s']:.0f} samples/s, {res['step_ms']:.1f} ms/step"
    if "mfu" in res:
        out += f", {res['tflops']:.0f} TFLOP/s, MFU {100 * res['mfu']:.1f}%, peak {res['peak_mem_gib']:.1f} GiB"
    return out + f", warm-up {res['warmup_s']:.0f} s"


def sharded_head(cpu: bool) -> str:
    from gbcosface.config import from_dict
    from gbcosface.train.classifier import build_classifier
    from gbcosface.train.distributed import DistEnv
    from gbcosface.train.optim import build_optimizer

    dev = torch.device("cpu") if cpu else torch.device("cuda", 0)
    classes, dim, batch = (1000, 16, 8) if cpu else (1_000_000, 512, 1024)
    cfg = from_dict({"model": {"embedding_size": dim}, "head": {"sharded": True}, "run": {"amp": "none"}})
    torch.manual_seed(0)
    clf = build_classifier(cfg, DistEnv(0, 0, 1, 1, dev, None), torch.nn.Identity(), classes)
    clf.wrap()
    opt = build_optimizer(clf.backbone, clf.head, cfg.optim, 0.1, 0.1)
    x = torch.randn(batch, dim, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        clf.loss_terms(x, y)["loss"].backward()
        clf.clip_grad_norm_(5.0)
        opt.step()
        if not cpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = "" if cpu else f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    return f"{classes:,} classes x D={dim}, batch {batch}: {1000 * min(times[1:]):.1f} ms/step{peak}"


def ijb_embed(cpu: bool, world: Path) -> str:
    """The evaluation's extract_features (decode + 5-point alignment + embedding) on the synthetic IJB-C."""
    from gbcosface.config import ModelConfig
    from gbcosface.data.ijb import read_ijb_meta
    from gbcosface.eval.features import extract_features
    from gbcosface.models import backbone_from_config

    root = world / "IJBC"
    meta = read_ijb_meta(root, "IJBC")
    tiny = ModelConfig(name="iresnet18", embedding_size=32, width=8, layers=[1, 1, 1, 1], stem_stride=2)
    model = backbone_from_config(tiny if cpu else ModelConfig(name="iresnet100"))
    dev = torch.device("cpu") if cpu else torch.device("cuda", 0)
    res = extract_features(model, root, meta.images, meta.landmarks, batch_size=32 if cpu else 256, device=dev,
                           fp16=not cpu, workers=2 if cpu else 12)
    n = len(meta.images)
    return f"{n} images in {res.seconds:.1f} s: {n / res.seconds:.0f} images/s (decode + align included, fp16)"


def nvml(cpu: bool) -> str:
    from gbcosface.monitoring.gpu import NvmlSampler

    if cpu:
        return "skipped on CPU (no NVML)"
    got = []
    sampler = NvmlSampler(0, 0.2, on_sample=got.append)
    if not sampler.start():
        raise RuntimeError("NVML could not be opened (nvidia-ml-py missing, or no driver library)")
    time.sleep(1.0)
    sampler.stop()
    if not got:
        raise RuntimeError("no NVML sample in 1 s")
    s = got[-1]
    return f"{len(got)} samples; last {s}"


def run(cmd: list[str], timeout: float) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])}... exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout + proc.stderr


def make_world(cpu: bool, out: Path) -> Path:
    size = (["--identities", "40", "--images-per-identity", "8", "--eval-identities", "8",
             "--templates-per-identity", "2", "--bin-identities", "20", "--impostor-pairs", "500"] if cpu else
            ["--identities", "200", "--images-per-identity", "20", "--eval-identities", "300"])
    run([sys.executable, "-m", "gbcosface", "synth", "--out", str(out), "--pairs", "40", "--workers", "4", *size], 300)
    return out


def trainer_cuda(cpu: bool, world: Path, out: Path) -> str:
    base = [sys.executable, "-m", "gbcosface", "train", "--config", "demo", f"data.train_dir={world}/train",
            f"data.val_dir={world}/val", "data.num_workers=2", "run.metrics_port=0", "run.val_every=5",
            "schedule.max_steps=10", "run.checkpoint_every=5"]
    if cpu:  # the smoke test: a smaller model and batch
        base += ["model.width=8", "model.embedding_size=32", "data.batch_size=16", "data.num_workers=0"]
    figures = []
    gpu_only = [] if cpu else ["run.channels_last=true"]
    for name, extra in (("replicated-bf16", ["run.amp=" + ("none" if cpu else "bf16"), *gpu_only,
                                             *([] if cpu else ["run.compile=true"])]),
                        ("sharded-fp16", ["head.sharded=true", "run.amp=" + ("none" if cpu else "fp16"), *gpu_only])):
        run([*base, f"run.output={out}/{name}", *extra, "schedule.max_steps=5"], 600)
        text = run([*base, f"run.output={out}/{name}", *extra], 600)  # resumes from step 5
        summary = json.loads((out / name / "train_summary.json").read_text())
        if summary["steps"] != 10 or not summary["resumed_from"] or "resumed from" not in text:
            raise RuntimeError(f"{name}: no resume to step 10: {summary}")
        figures.append(f"{name} on {summary['device']}: {summary['samples_per_second']:.0f} samples/s")
    return "; ".join(figures)


def eval_cuda(cpu: bool, world: Path, out: Path) -> str:
    model = out / "replicated-bf16" / "model" / "backbone.pt"
    dev = "cpu" if cpu else "cuda"
    text = run([sys.executable, "-m", "gbcosface", "eval-bin", "--model-prefix", str(model), "--data-dir",
                f"{world}/val", "--targets", "lfw", "--device", dev], 600)
    run([sys.executable, "-m", "gbcosface", "eval-ijb", "--model-prefix", str(model), "--image-path",
         f"{world}/IJBC", "--result-dir", str(out / "ijb"), "--device", dev, "--batch-size", "64"], 600)
    metrics = json.loads(next((out / "ijb").rglob("metrics.json")).read_text())
    last = [line for line in text.splitlines() if "lfw" in line.lower()][-1:]
    return f"eval-bin {last[0].strip()[:60] if last else 'ran'}; eval-ijb keys {sorted(metrics)[:3]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: a smoke test of this script")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    cpu = args.cpu
    if not cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the smoke test", file=sys.stderr)
        return 2
    if not cpu:
        torch.backends.cudnn.benchmark = True
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gbcosface-device-"))
    gpu = "cpu" if cpu else torch.cuda.get_device_name(0)
    world = work / "world"
    check("train-r100-eager", lambda: train_throughput(cpu, False))
    if not cpu:
        check("train-r100-compile", lambda: train_throughput(cpu, True))
    check("sharded-head", lambda: sharded_head(cpu))
    check("synthetic-world", lambda: f"written to {make_world(cpu, world)}")
    check("ijb-embed", lambda: ijb_embed(cpu, world))
    check("nvml", lambda: nvml(cpu))
    check("trainer-cuda", lambda: trainer_cuda(cpu, world, work / "runs"))
    check("eval-cuda", lambda: eval_cuda(cpu, world, work / "runs"))
    print(f"device check: {gpu}; python {sys.version.split()[0]}; torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}); {os.cpu_count()} CPUs")
    print(f"| {'check':<18} | {'status':<6} | {'seconds':>7} | figure")
    print(f"|{'-' * 20}|{'-' * 8}|{'-' * 9}|{'-' * 40}")
    for name, status, figure, seconds in ROWS:
        print(f"| {name:<18} | {status:<6} | {seconds:>7.1f} | {figure}")
    return 1 if any(status != "ok" for _, status, _, _ in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
