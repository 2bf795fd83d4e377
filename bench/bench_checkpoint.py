"""How long a full-state checkpoint takes: what a SIGTERM stop must fit into the pod's grace period.

Builds the real training state (the trainer's classifier with an iresnet100 backbone and a head of
--classes x 512, SGD momentum buffers for every parameter) and times the trainer's own path:
`Classifier.full_state` (copies to the CPU), `checkpoint.to_bytes` (torch.save) and `checkpoint.save`
(temporary directory, fsync, rename, marker) to a local directory, and with --s3 to a moto S3 server on
127.0.0.1 (multipart upload with sha256 metadata, the marker last). The S3 figure is a lower bound for a
real object store only in latency, not in bandwidth: moto runs on the same CPUs.

Usage: python bench/bench_checkpoint.py [--classes 85742] [--model iresnet100] [--s3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

from gbcosface.config import ModelConfig, OptimConfig  # noqa: E402
from gbcosface.heads import get_head  # noqa: E402
from gbcosface.losses import get_loss  # noqa: E402
from gbcosface.models import backbone_from_config  # noqa: E402
from gbcosface.train import checkpoint  # noqa: E402
from gbcosface.train.classifier import ReplicatedClassifier  # noqa: E402
from gbcosface.train.distributed import DistEnv  # noqa: E402
from gbcosface.train.optim import build_optimizer  # noqa: E402


def timed_save(clf: ReplicatedClassifier, opt: torch.optim.Optimizer, output: str, step: int) -> dict[str, float]:
    t0 = time.perf_counter()
    state = clf.full_state(opt)
    t1 = time.perf_counter()
    data = checkpoint.to_bytes({"format": 1, **state})
    t2 = time.perf_counter()
    checkpoint.save(output, step, {checkpoint.STATE_FILE: data}, {"bench": True})
    t3 = time.perf_counter()
    return {"state": t1 - t0, "serialise": t2 - t1, "write": t3 - t2, "total": t3 - t0, "bytes": len(data)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=85742)
    ap.add_argument("--model", default="iresnet100")
    ap.add_argument("--s3", action="store_true", help="also to a local moto S3 server")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    backbone = backbone_from_config(ModelConfig(name=args.model))
    head = get_head("linear", 512, args.classes)
    env = DistEnv(0, 0, 1, 1, torch.device("cpu"), None)
    clf = ReplicatedClassifier(backbone, head, get_loss("gb_cosface"), "none", env)
    opt = build_optimizer(clf.backbone, clf.head, OptimConfig(), 0.1, 0.1)
    for group in opt.param_groups:  # momentum buffers as after the first step
        for p in group["params"]:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}; "
          f"loadavg {os.getloadavg()[0]:.1f}")
    targets = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        targets.append(("local", str(Path(tmp) / "run")))
        server = None
        if args.s3:
            from gbcosface.storage.local_server import LocalS3Server

            server = LocalS3Server().start()
            os.environ.update(server.env())
            server.create_bucket("bench")
            targets.append(("s3 (moto)", "s3://bench/run"))
        try:
            for name, output in targets:
                for i in range(args.repeat):
                    r = timed_save(clf, opt, output, i)
                    print(f"{args.model} + {args.classes:,} x 512 head, {name}: {r['bytes'] / 2**20:,.0f} MiB in "
                          f"{r['total']:.1f} s (state {r['state']:.1f} s, torch.save {r['serialise']:.1f} s, "
                          f"write {r['write']:.1f} s)", flush=True)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
