"""Tracking overhead per step: the trainer's steps/s with and without MLflow + TensorBoard, same run.

What is measured:
  1. `Tracker.step` itself, the only tracking call on a step's path, with both sinks on and a point
     written at every step (log_every=1, the worst case): microseconds per call.
  2. The demo recipe's model trained for `--steps` steps in this process, tracking off and on
     (a real MLflow server on 127.0.0.1, event files), alternating off/on `--repeats` times so that load
     drift on a shared machine hits both alike: steps/s of the training loop (summary's samples/s over
     the global batch) and the seconds `close()` added at the end (the last batch and the run's end).
Prints the machine it ran on. No assertion: figures only.

Usage: python bench/bench_tracking.py [--steps 200] [--repeats 2] [--log-every 1 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402


def tiny_trainset(root: Path) -> Path:
    import cv2
    import numpy as np

    from gbcosface.data.recordio import write_face_rec

    rng = np.random.default_rng(0)

    def img(i: int) -> bytes:
        base = np.random.default_rng(i).integers(30, 226, size=3)
        arr = np.clip(base[None, None, :] + rng.normal(0, 20, (112, 112, 3)), 0, 255).astype(np.uint8)
        return cv2.imencode(".jpg", arr)[1].tobytes()

    return write_face_rec(root / "train", ((i, img(i)) for i in range(32) for _ in range(32)),
                          num_images=1024, num_classes=32)


def train_once(train_dir: Path, out: Path, steps: int, log_every: int, tracking_uri: str, tb: bool) -> dict:
    from gbcosface.config import load_config
    from gbcosface.train.trainer import train

    cfg = load_config("demo", [f"data.train_dir={train_dir}", "data.val_dir=", "data.val_targets=[]",
                               "data.num_workers=0", f"schedule.max_steps={steps}", "schedule.epochs=1000",
                               f"run.output={out}", f"run.log_every={log_every}", "run.checkpoint_every=100000",
                               "run.val_every=0", "run.metrics_port=0", f"run.tensorboard={str(tb).lower()}",
                               f"run.mlflow_tracking_uri={tracking_uri}"])
    t = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - t
    return {"steps_per_s": summary["samples_per_second"] / summary["global_batch"],
            "after_loop_s": wall - summary["train_seconds"]}


def bench_step_call(tracking_uri: str, root: Path, n: int = 2000) -> float:
    from gbcosface.tracking import Tracker
    from gbcosface.tracking.mlflow_run import MlflowRun
    from gbcosface.tracking.tensorboard import TensorBoardLog

    tracker = Tracker(mlflow=MlflowRun(tracking_uri=tracking_uri, run_name="bench-step-call",
                                       experiment_name="bench"),
                      tensorboard=TensorBoardLog(str(root / "call")), total=n, global_batch=64, log_every=1)
    terms = {"loss": 12.3, "cos_v": 0.42, "loss_cls": 11.0, "loss_norm": 1.3}
    t = time.perf_counter()
    for step in range(1, n + 1):
        tracker.step(step, 0, terms, 0.1)
    per_call = (time.perf_counter() - t) / n
    tracker.finish({"steps": n, "final_loss_terms": terms})
    tracker.close()
    return per_call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--log-every", type=int, nargs="+", default=[1, 10])
    args = ap.parse_args()
    import torch

    from gbcosface.tracking.local_server import LocalMlflowServer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        root = Path(tmp)
        train_dir = tiny_trainset(root / "data")
        with LocalMlflowServer(root / "mlflow") as server:
            per_call = bench_step_call(server.url, root)
            print(f"Tracker.step with MLflow + TensorBoard, a point every step: {per_call * 1e6:.1f} us per call")
            for log_every in args.log_every:
                rows: dict[str, list[dict]] = {"off": [], "on": []}
                for rep in range(args.repeats):
                    for mode in ("off", "on"):
                        out = root / f"run-{log_every}-{mode}-{rep}"
                        rows[mode].append(train_once(train_dir, out, args.steps, log_every,
                                                     server.url if mode == "on" else "", tb=mode == "on"))
                off = statistics.median(r["steps_per_s"] for r in rows["off"])
                on = statistics.median(r["steps_per_s"] for r in rows["on"])
                close = statistics.median(r["after_loop_s"] - o["after_loop_s"]
                                          for r, o in zip(rows["on"], rows["off"], strict=True))
                print(f"log_every={log_every}: {off:.2f} steps/s off, {on:.2f} steps/s on "
                      f"({100 * (on / off - 1):+.1f} %), after the loop +{close:.1f} s with tracking "
                      f"(demo model, batch 64, {args.steps} steps x {args.repeats})")


if __name__ == "__main__":
    main()
