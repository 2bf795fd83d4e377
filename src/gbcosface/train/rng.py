"""Seeding and RNG state capture in a form that loads with `torch.load(weights_only=True)`.

Why plain containers: a checkpoint must not hold pickled objects (a pickle can run code), so the
numpy state (a tuple with an ndarray) and Python's `random` state (nested tuples) are turned into
tensors, lists and ints here, and turned back on restore.
What uses randomness in training: dropout (torch RNG of the device), any model initialisation, and
anything a user adds. Flips are seeded by (seed, step) in `prepare_batch`, and the data order by
(seed, epoch) in the sampler, so neither depends on these states.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def enable_determinism() -> None:
    """Deterministic kernels; fails loudly where an op has no deterministic implementation.

    CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts for deterministic CUDA matmuls.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def capture(device: torch.device) -> dict[str, Any]:
    """This process's RNG states: torch CPU, the device's CUDA generator, numpy, python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of `capture`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
