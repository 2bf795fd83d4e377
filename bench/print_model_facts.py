"""Print the model facts quoted in the docs: parameter counts, MACs at 112x112, loss values.

Why: the closing note and docs/losses.md quote these figures; this script is how they were made.
MACs are counted from conv/linear layer shapes on the meta device (no arithmetic is run), so even
iresnet200 takes a moment. Loss values use a fixed seeded (B=8, C=10) input; the GB losses are
shown on their first training-mode call (the boundary initialises from that batch).

    OMP_NUM_THREADS=1 .venv/bin/python bench/print_model_facts.py
"""

from __future__ import annotations

import platform

import torch
from torch import nn

from gbcosface.losses import LOSSES, get_loss
from gbcosface.models import BACKBONE_NAMES, get_backbone


def macs_at_112(model: nn.Module) -> int:
    """Multiply-accumulates of convolutions and linear layers for one 112x112 image."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.empty(1, 3, 112, 112, device="meta"))
    return total


def main() -> None:
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}; torch {torch.__version__}")
    print(f"\n{'backbone':<34}  parameters   trainable   GMACs@112")
    configs = [(name, name, {}) for name in BACKBONE_NAMES]
    configs += [("mobilefacenet 128-d", "mobilefacenet", {"embedding_size": 128}),
                ("demo: iresnet18 w16 1111 s2 128-d", "iresnet18",
                 {"embedding_size": 128, "width": 16, "layers": [1, 1, 1, 1], "stem_stride": 2})]
    for label, name, kw in configs:
        with torch.device("meta"):
            model = get_backbone(name, **kw)
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{label:<34} {params:>11,} {trainable:>11,} {macs_at_112(model) / 1e9:>11.2f}")

    gen = torch.Generator().manual_seed(0)
    cos = torch.rand(8, 10, generator=gen) * 1.4 - 0.7
    labels = torch.randint(0, 10, (8,), generator=gen)
    cos[torch.arange(8), labels] = 0.3 + 0.5 * torch.rand(8, generator=gen)
    norms = torch.rand(8, generator=gen) * 100 + 10
    print("\nloss values, fixed input: seed 0, B=8, C=10, positives in [0.3, 0.8], norms in [10, 110]")
    for name in LOSSES:
        loss = get_loss(name).train()
        out = loss(cos, labels, norms)
        print(f"{name:<11} " + "  ".join(f"{k}={v.item():.6f}" for k, v in out.items()))
    gb0 = get_loss("gb_cosface", alpha=0.0).train()(cos, labels)["loss"].item()
    cf = get_loss("cosface", s=32.0, m=0.32)(cos, labels)["loss"].item()
    print(f"\nidentity check: gb_cosface(alpha=0) = {gb0:.9f}, cosface(s=32, m=2*0.16) = {cf:.9f}")


if __name__ == "__main__":
    main()
