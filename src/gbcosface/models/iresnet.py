"""Improved ResNet (IResNet) backbones for 112x112 faces, in insightface's state-dict layout.

Why this exact layout: the official GB-CosFace `backbone_paper.pth` and insightface's released
iresnet checkpoints must load with `strict=True`, so module names (conv1, bn1, prelu,
layer1..layer4 of blocks bn1/conv1/bn2/prelu/conv2/bn3/downsample.0/.1, bn2, dropout, fc, features),
parameter shapes and buffers follow that layout exactly. Architecture (docs/models.md, "IResNet"):

    stem:  conv3x3(3 -> w, stride 1, no bias) -> BN -> PReLU
    stage k (k = 1..4, channels w, 2w, 4w, 8w): the first block has stride 2 and a
           downsample (conv1x1 stride 2, no bias -> BN); the others keep the size
    block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (downsampled) input
    head:  BN2d -> flatten -> dropout -> Linear(8w * S * S -> D) -> BatchNorm1d(D) whose weight is
           fixed at 1 (not trained), as in insightface and the official release; with
           `train_embedding_scale=True` it is trained (MagFace's iresnet does, and a fixed scale pins
           the batch mean of |x|^2 to D + |beta|^2, see docs/reproducing.md)

The head (Linear + BatchNorm1d) always computes in float32 with autocast disabled, so under a bf16 or
fp16 autocast only the trunk runs in low precision and the embedding leaves as float32.

S is the spatial size after the trunk: 7 at 112 px with the stride-1 stem (112 -> 56 -> 28 -> 14 -> 7),
4 with the optional stride-2 stem used by the fast CPU demo (112 -> 56 -> 28 -> 14 -> 7 -> 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import conv_out_size, float32_embedding, trunk_autocast

# Blocks per stage of the published depths.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}

BN_EPS = 1e-5


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style block of IResNet: BN, conv, BN, PReLU, conv (carries the stride), BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet with configurable stage width, depth and stem stride (see the module docstring)."""

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        width: int = 64,
        stem_stride: int = 1,
        fp16: bool = False,
        input_size: int = 112,
        train_embedding_scale: bool = False,
    ) -> None:
        super().__init__()
        layers = [int(n) for n in layers]
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"iresnet: layers must be 4 positive block counts, got {layers}")
        if width < 1 or embedding_size < 1:
            raise ValueError(f"iresnet: width and embedding_size must be positive, got {width}, {embedding_size}")
        if stem_stride not in (1, 2):
            raise ValueError(f"iresnet: stem_stride must be 1 or 2, got {stem_stride}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"iresnet: dropout must be in [0, 1), got {dropout}")
        self.fp16 = fp16
        self.train_embedding_scale = bool(train_embedding_scale)

        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.prelu = nn.PReLU(width)
        size = conv_out_size(input_size, 3, stem_stride, 1)
        cin = width
        for k, blocks in enumerate(layers):
            cout = width * 2**k
            stage = [IBasicBlock(cin, cout, stride=2)] + [IBasicBlock(cout, cout) for _ in range(blocks - 1)]
            setattr(self, f"layer{k + 1}", nn.Sequential(*stage))
            size = conv_out_size(size, 3, 2, 1)
            cin = cout
        if size < 1:
            raise ValueError(f"iresnet: input size {input_size} is too small for this network")
        self.spatial_size = size
        self.bn2 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * size * size, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # insightface's initialisation: conv N(0, 0.1), BN weight 1 / bias 0; Linear and PReLU keep
        # PyTorch defaults. The embedding BN's scale is fixed at 1 (a plain standardisation + shift)
        # unless train_embedding_scale is set.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.features.weight.requires_grad_(self.train_embedding_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with trunk_autocast(self.fp16, x.device):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        return float32_embedding(self.fc, self.features, x)
