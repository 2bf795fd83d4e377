"""MobileFaceNet (Chen et al., 2018), the small baseline backbone, producing a D-dim embedding.

Why this version: the paper's table is the reference every MobileFaceNet number quotes, so the
network follows it (widths at width=64):

    conv3x3 s2 (3 -> 64) ............................. ConvBNPReLU        112 -> 56
    depthwise conv3x3 s1 (64) ........................ ConvBNPReLU
    bottlenecks (expansion t, channels c, repeats n, stride s of the first):
        (2, 64, 5, 2)  (4, 128, 1, 2)  (2, 128, 6, 1)  (4, 128, 1, 2)  (2, 128, 2, 1)   56 -> 7
    conv1x1 (128 -> 512) ............................. ConvBNPReLU
    global depthwise conv 7x7 (512), linear .......... Conv + BN
    Linear(512 -> D, no bias) + BatchNorm1d(D) ....... the embedding (insightface's choice; the paper
                                                       uses a linear 1x1 conv to 128, equivalent here)

A bottleneck is 1x1 expand (ConvBNPReLU) -> depthwise 3x3 (ConvBNPReLU, carries the stride) ->
1x1 project (Conv + BN, linear), with a residual connection when the stride is 1 and the channel
count is kept. `width` scales every trunk channel by width/64; `layers` (5 numbers) overrides the
repeats n. The stem already has stride 2, so `stem_stride` must stay 1.
With D = 128 this has ~1.0M parameters, as the paper states (0.99M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import conv_out_size, trunk_autocast

# (expansion t, output channels c at width 64, repeats n, stride s)
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBN(nn.Sequential):
    """Conv (no bias) + BN, optionally + PReLU: the unit every MobileFaceNet layer is built from."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True, padding: int | None = None
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2 if padding is None else padding,
                      groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: expand, depthwise (stride), linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.layers = nn.Sequential(
            ConvBN(cin, hidden, 1),
            ConvBN(hidden, hidden, 3, stride=stride, groups=hidden),
            ConvBN(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet; see the module docstring for the layer table."""

    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.0,
        width: int = 64,
        layers: Sequence[int] | None = None,
        stem_stride: int = 1,
        fp16: bool = False,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        repeats = [n for _, _, n, _ in MOBILEFACENET_SETTING] if layers is None else [int(n) for n in layers]
        if len(repeats) != len(MOBILEFACENET_SETTING) or any(n < 1 for n in repeats):
            raise ValueError(f"mobilefacenet: layers must be 5 positive repeat counts, got {list(repeats)}")
        if stem_stride != 1:
            raise ValueError("mobilefacenet: the stem already has stride 2; stem_stride must be 1")
        if width < 1 or embedding_size < 1:
            raise ValueError(f"mobilefacenet: width and embedding_size must be positive, got {width}, {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"mobilefacenet: dropout must be in [0, 1), got {dropout}")
        self.fp16 = fp16

        def ch(c: int) -> int:
            return max(1, c * width // 64)

        stem = ch(64)
        self.conv1 = ConvBN(3, stem, 3, stride=2)
        self.conv2_dw = ConvBN(stem, stem, 3, groups=stem)
        size = conv_out_size(input_size, 3, 2, 1)
        blocks: list[nn.Module] = []
        cin = stem
        for (t, c, _, s), n in zip(MOBILEFACENET_SETTING, repeats, strict=True):
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(Bottleneck(cin, ch(c), stride, t))
                size = conv_out_size(size, 3, stride, 1)
                cin = ch(c)
        self.blocks = nn.Sequential(*blocks)
        top = ch(512)
        self.conv_sep = ConvBN(cin, top, 1)
        self.spatial_size = size
        # Global depthwise conv: one size x size filter per channel (a learned weighted pooling).
        self.gdc = ConvBN(top, top, size, groups=top, act=False, padding=0)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(top, embedding_size, bias=False)
        self.features = nn.BatchNorm1d(embedding_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with trunk_autocast(self.fp16, x.device):
            x = self.conv2_dw(self.conv1(x))
            x = self.conv_sep(self.blocks(x))
            x = self.gdc(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)
