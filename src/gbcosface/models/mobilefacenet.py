"""MobileFaceNet (Chen et al., 2018), the small baseline backbone, in the official release's layout.

Why this layout: the official GB-CosFace release ships a MobileFaceNet whose state dict uses the
module names below, so its checkpoints must load with `strict=True` and give identical outputs.
The network follows the paper's table (widths at width=64):

    conv1      conv3x3 s2 (3 -> 64) + BN + PReLU                           112 -> 56
    conv2_dw   depthwise conv3x3 (64) + BN + PReLU
    bottlenecks (expansion t, channels c, repeats n, stride s of the first):
               (2, 64, 5, 2)  (4, 128, 1, 2)  (2, 128, 6, 1)  (4, 128, 1, 2)  (2, 128, 2, 1)   56 -> 7
    conv_6_sep conv1x1 (128 -> 512) + BN + PReLU
    conv_6_dw  global depthwise conv 7x7 (512) + BN (linear)
    linear     Linear(512 -> D, no bias);  bn  BatchNorm1d(D)               the embedding

The bottlenecks are named as the release groups them: a block that changes stride or width is a
"transition" (conv_23, conv_34, conv_45), the stride-1 blocks that follow are a residual group
(conv_3.model.K, conv_4.model.K, conv_5.model.K); the third setting has no transition (its input
already has 128 channels). A bottleneck is `conv` (1x1 expand + BN + PReLU) -> `conv_dw` (depthwise
3x3, carries the stride, + BN + PReLU) -> `project` (1x1 + BN, linear), plus the input when the
stride is 1 and the width is kept. Every unit is conv / bn (/ prelu).

Knobs: `width` scales every trunk channel by width/64; `layers` (5 numbers) overrides the repeats n,
where the 2nd and 4th (the single transitions) must stay 1. The stem already has stride 2, so
`stem_stride` must stay 1. Initialisation is PyTorch's default, as in the release (no init code).
The embedding BN is trained (the release does), and the embedding layer computes in float32 under
any autocast. With D = 128 this has ~1.0M parameters, as the paper states (0.99M).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._common import conv_out_size, float32_embedding, trunk_autocast

# (expansion t, output channels c at width 64, repeats n, stride s)
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
# Release names of each setting's (transition, residual group); None where the release has none.
_GROUP_NAMES: tuple[tuple[str | None, str | None], ...] = (
    ("conv_23", "conv_3"),
    ("conv_34", None),
    (None, "conv_4"),
    ("conv_45", None),
    (None, "conv_5"),
)


class ConvUnit(nn.Module):
    """conv (no bias) -> bn (-> prelu): the unit every MobileFaceNet layer is built from."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, padding: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if padding is None else padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class Bottleneck(nn.Module):
    """Inverted residual: expand (`conv`), depthwise (`conv_dw`, stride), linear `project`."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = ConvUnit(cin, hidden, 1)
        self.conv_dw = ConvUnit(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = ConvUnit(hidden, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class ResidualGroup(nn.Module):
    """Stride-1, width-keeping bottlenecks under `model` (the release's name)."""

    def __init__(self, blocks: list[Bottleneck]) -> None:
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet; see the module docstring for the layer table and names."""

    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.0,
        width: int = 64,
        layers: Sequence[int] | None = None,
        stem_stride: int = 1,
        fp16: bool = False,
        input_size: int = 112,
        train_embedding_scale: bool = True,
    ) -> None:
        super().__init__()
        repeats = [n for _, _, n, _ in MOBILEFACENET_SETTING] if layers is None else [int(n) for n in layers]
        if len(repeats) != len(MOBILEFACENET_SETTING) or any(n < 1 for n in repeats):
            raise ValueError(f"mobilefacenet: layers must be 5 positive repeat counts, got {list(repeats)}")
        if repeats[1] != 1 or repeats[3] != 1:
            raise ValueError(f"mobilefacenet: the 2nd and 4th repeat counts are single transitions and must be 1, "
                             f"got {list(repeats)}")
        if stem_stride != 1:
            raise ValueError("mobilefacenet: the stem already has stride 2; stem_stride must be 1")
        if width < 1 or embedding_size < 1:
            raise ValueError(f"mobilefacenet: width and embedding_size must be positive, got {width}, {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"mobilefacenet: dropout must be in [0, 1), got {dropout}")
        self.fp16 = fp16
        self.train_embedding_scale = bool(train_embedding_scale)

        def ch(c: int) -> int:
            return max(1, c * width // 64)

        stem = ch(64)
        self.conv1 = ConvUnit(3, stem, 3, stride=2)
        self.conv2_dw = ConvUnit(stem, stem, 3, groups=stem)
        size = conv_out_size(input_size, 3, 2, 1)
        self.group_names: list[str] = []
        cin = stem
        for (t, c, _, s), n, (first, rest) in zip(MOBILEFACENET_SETTING, repeats, _GROUP_NAMES, strict=True):
            cout = ch(c)
            blocks = []
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(Bottleneck(cin, cout, stride, t))
                size = conv_out_size(size, 3, stride, 1)
                cin = cout
            if first is not None:
                self._add(first, blocks.pop(0))
            if blocks:
                if rest is None or any(not b.residual for b in blocks):
                    raise ValueError(f"mobilefacenet: width {width} gives a block layout the release cannot name")
                self._add(rest, ResidualGroup(blocks))
        top = ch(512)
        self.conv_6_sep = ConvUnit(cin, top, 1)
        self.spatial_size = size
        # Global depthwise conv: one size x size filter per channel (a learned weighted pooling).
        self.conv_6_dw = ConvUnit(top, top, size, groups=top, act=False, padding=0)
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(top, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)
        self.bn.weight.requires_grad_(self.train_embedding_scale)

    def _add(self, name: str, module: nn.Module) -> None:
        setattr(self, name, module)
        self.group_names.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with trunk_autocast(self.fp16, x.device):
            x = self.conv2_dw(self.conv1(x))
            for name in self.group_names:
                x = getattr(self, name)(x)
            x = self.conv_6_dw(self.conv_6_sep(x))
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        return float32_embedding(self.linear, self.bn, x)


_LEGACY_UNIT = {"0": "conv", "1": "bn", "2": "prelu"}
_LEGACY_BLOCK_PART = {"0": "conv", "1": "conv_dw", "2": "project"}


def is_legacy_mobilefacenet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True for this project's pre-release-layout MobileFaceNet keys (`blocks.N...`, `gdc`, `fc`)."""
    return any(k.startswith("blocks.") for k in state) and "gdc.0.weight" in state


def legacy_mobilefacenet_state(state: Mapping[str, torch.Tensor], model: MobileFaceNet) -> dict[str, torch.Tensor]:
    """Rename the earlier layout (ConvBN as Sequential, one flat `blocks` list) to the release's names.

    Why: backbones exported before the rename still load, strictly, into today's module.
    """
    block_names = []
    for name in model.group_names:
        module = getattr(model, name)
        if isinstance(module, ResidualGroup):
            block_names += [f"{name}.model.{k}" for k in range(len(module.model))]
        else:
            block_names.append(name)
    top = {"conv1": "conv1", "conv2_dw": "conv2_dw", "conv_sep": "conv_6_sep", "gdc": "conv_6_dw"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.layers\.(\d)\.(\d)\.(.+)", key)
        if m and int(m.group(1)) < len(block_names):
            block, part, unit, rest = m.groups()
            key = f"{block_names[int(block)]}.{_LEGACY_BLOCK_PART[part]}.{_LEGACY_UNIT[unit]}.{rest}"
        elif (m := re.fullmatch(r"(conv1|conv2_dw|conv_sep|gdc)\.(\d)\.(.+)", key)) and m.group(2) in _LEGACY_UNIT:
            key = f"{top[m.group(1)]}.{_LEGACY_UNIT[m.group(2)]}.{m.group(3)}"
        elif key.startswith("fc."):
            key = "linear." + key[3:]
        elif key.startswith("features."):
            key = "bn." + key[len("features."):]
        out[key] = value
    return out
