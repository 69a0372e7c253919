"""The KTH paper's own CNNs for MTFL gender and smile ("Prediction of Attributes", section 2 of
``PAPERS.md``). Depend only on torch.

- :class:`CascadeCNN`: four convolutions with DeepID2+'s characteristics (128 feature maps each,
  each followed by a 2x2 max-pool), one inception layer (between the third and the fourth), one
  fully connected output layer.
- :class:`TCDCN`: TCDCN's trunk (Zhang et al. 2014: unpadded convolutions of 20 5x5, 48 3x3,
  64 3x3 and 80 2x2 filters, a max-pool after each of the first three), a 256-unit fully
  connected layer, then the outputs.

Both take facray's square crops (the paper's are 150 px, nose-centred: ``prepare --centre nose``)
and return ``{"attributes": (B, A) logits}``; which attributes train is the trainer's choice
(``facray train --attributes Male`` for one model per attribute, ``Male,Smiling`` for one model
with two).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from facray.attributes import ATTRIBUTES


def conv_bn_relu(c_in: int, c_out: int, kernel: int, padding: int | None = None) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2 if padding is None else padding, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    """GoogLeNet's inception layer: 1x1, 1x1 -> 3x3, 1x1 -> 5x5 and pool -> 1x1, concatenated.
    The branches split ``channels`` as GoogLeNet's first block does (1/4, 1/2, 1/8, 1/8)."""

    def __init__(self, c_in: int, channels: int):
        super().__init__()
        c1, c3, c5, cp = channels // 4, channels // 2, channels // 8, channels - channels // 4 - channels // 2 - channels // 8
        self.branch1 = nn.Sequential(*conv_bn_relu(c_in, c1, 1))
        self.branch3 = nn.Sequential(*conv_bn_relu(c_in, max(c3 * 3 // 4, 1), 1), *conv_bn_relu(max(c3 * 3 // 4, 1), c3, 3))
        self.branch5 = nn.Sequential(*conv_bn_relu(c_in, max(c5 // 2, 1), 1), *conv_bn_relu(max(c5 // 2, 1), c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), *conv_bn_relu(c_in, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class CascadeCNN(nn.Module):
    """See module docstring. ``width``: feature maps per layer (paper: 128)."""

    def __init__(self, image_size: int = 64, num_outputs: int = len(ATTRIBUTES), width: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(3, width, 3), nn.MaxPool2d(2),
            *conv_bn_relu(width, width, 3), nn.MaxPool2d(2),
            *conv_bn_relu(width, width, 3), nn.MaxPool2d(2),
            Inception(width, width),
            *conv_bn_relu(width, width, 3), nn.MaxPool2d(2))
        side = image_size // 16
        if side < 1:
            raise ValueError(f"CascadeCNN needs inputs of at least 16 px, got {image_size}")
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * side * side, num_outputs))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"attributes": self.classifier(self.features(x))}


class TCDCN(nn.Module):
    """See module docstring. ``widths``: the four convolutions' filters (TCDCN: 20, 48, 64, 80)."""

    KERNELS = (5, 3, 3, 2)

    def __init__(self, image_size: int = 64, num_outputs: int = len(ATTRIBUTES),
                 widths: tuple[int, int, int, int] = (20, 48, 64, 80), hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        layers, c = [], 3
        for i, (w, k) in enumerate(zip(widths, self.KERNELS)):
            layers += conv_bn_relu(c, w, k, padding=0) + ([nn.MaxPool2d(2)] if i < 3 else [])
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size
        for i, k in enumerate(self.KERNELS):
            side = (side - k + 1) // (2 if i < 3 else 1)
        if side < 1:
            raise ValueError(f"TCDCN needs inputs of at least 32 px, got {image_size}")
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * side * side, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(hidden, num_outputs))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"attributes": self.classifier(self.features(x))}
