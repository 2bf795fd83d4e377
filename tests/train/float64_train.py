"""`gbcosface train` with float64 as torch's default dtype, for the exactness tests of two code paths.

Why: two code paths that are mathematically equal (a sharded and a replicated head, reductions in
another order) differ by rounding, and training amplifies that difference step after step, by a
factor that depends on the model and on the CPU's kernels. In float32 the result is 1e-5..1e-4 apart
after a dozen steps and passes or fails with the machine; in float64 the same amplification leaves it
near 1e-13, so a tolerance of 1e-9 separates "equal up to rounding" from a real bug (O(1e-3) or more)
on any machine. Every module of the training stack computes in at least float32 and keeps float64
(the backbone, heads and losses are built in the default dtype; prepare_batch follows it).

Usage: torchrun ... tests/train/float64_train.py train --config FILE [overrides] (see conftest.run_train).
"""

import sys

import torch

torch.set_default_dtype(torch.float64)

from gbcosface.cli import main  # noqa: E402  (after the default dtype is set)

sys.exit(main())
