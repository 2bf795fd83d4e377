"""`gbcosface train --config FILE [key=value ...]`: the same command alone, under torchrun, or in a pod.

Why overrides as `section.key=value`: the pipeline and the PyTorchJob pass one config file and change a
few keys (output URI, max_steps) without writing a new file; the overrides are validated as strictly
as the file and are part of the hashed, resolved config.
"""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("gbcosface.train")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train GB-CosFace (one process, torchrun, or a PyTorchJob pod)",
        description="Train from a config file (or a shipped recipe: demo, paper) plus key=value overrides. "
        "Under torchrun each process reads RANK/LOCAL_RANK/WORLD_SIZE; a bare process trains alone.",
    )
    p.add_argument("--config", required=True, help="YAML config file or recipe name (demo, paper)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. run.output=s3://b/run schedule.max_steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gbcosface.config import load_config
    from gbcosface.train.preemption import EXIT_CODE, Preempted
    from gbcosface.train.trainer import train

    # ConfigError, DataFormatError, NonFiniteLossError, CheckpointError, StorageError reach gbcosface.cli:
    # one line (naming the rank) and the exit code of their class.
    cfg = load_config(args.config, list(args.overrides))
    rank = os.environ.get("RANK", "0")
    try:
        summary = train(cfg)
    except Preempted as exc:  # checkpoint written; a non-zero exit makes the operator restart the pod
        log.warning("rank %s: %s", rank, exc)
        return EXIT_CODE
    if rank == "0":
        log.info("train_summary: steps=%s samples/s=%.1f", summary["steps"], summary.get("samples_per_second") or 0.0)
    return 0
