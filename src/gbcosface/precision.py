"""Where mixed precision stops: one helper that turns autocast off for a block of code.

Why the modules call it themselves: the paper-level maths (the embedding layer, the cosine head and
the margin losses) must run in float32 under any bf16/fp16 autocast a trainer, a sharded classifier
or a user puts around them, so each module disables autocast for its own float32 part instead of
trusting the caller. See docs/reproducing.md ("Precision").
"""

from __future__ import annotations

import contextlib

import torch


def fp32_region(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast disabled for `device`'s type (a no-op where autocast is not supported)."""
    device_type = torch.device(device).type
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()
