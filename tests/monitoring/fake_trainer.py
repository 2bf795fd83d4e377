"""Imitates one training process for the Prometheus integration test.

Why a stand-in: it drives the real exporter exactly as the trainer does (start, set_phase,
observe_step per step, set_validation, close) in a few hundred milliseconds per step, without
a model or a dataset. The integration test can swap it for a real 2-process run later.

    python fake_trainer.py --port 9400 --rank 0 --local-rank 0 --steps 1000 --step-seconds 0.1
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from gbcosface.monitoring import TrainingMetrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--local-rank", type=int, default=0)
    parser.add_argument("--job", default="fake")
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    metrics = TrainingMetrics(
        args.port, args.job, args.rank, args.local_rank, "fake-node", bind="127.0.0.1", config_hash="cafe"
    )
    if not metrics.start():
        print(f"cannot serve metrics on port {args.port}", file=sys.stderr)
        return 1
    print("READY", flush=True)
    metrics.set_phase("training")
    loss = 20.0
    for step in range(1, args.steps + 1):
        if stop:
            break
        t0 = time.perf_counter()
        time.sleep(args.step_seconds * 0.2)  # "waiting for data"
        wait = time.perf_counter() - t0
        time.sleep(args.step_seconds * 0.8)  # "forward/backward"
        loss *= 0.999
        metrics.observe_step(
            step=step,
            epoch=step // 100,
            samples=args.batch,
            step_seconds=time.perf_counter() - t0,
            data_wait_seconds=wait,
            loss_terms={"loss": loss, "loss_pos": loss / 2, "loss_neg": loss / 2},
            cos_v=0.1,
            lr=0.1,
        )
    metrics.set_phase("done")
    metrics.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
