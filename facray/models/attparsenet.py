"""AttParseNet (Thom & Hand, "Improving Facial Attribute Recognition with Attribute Localization
Data"). Depends only on torch.

Six unpadded convolutions (7x7, then 3x3) with 75, 200, 300, 512, 512 and 40 filters and one 2x2
max-pool after the first; the 40 final maps are the attribute localisation maps (trained with MSE
against weak segmentation masks, :mod:`facray.training.multitask`), and the flattened maps feed
one linear layer that gives the 40 logits. Masks are needed in training only: prediction uses the
logits. The paper's 218x178 input gives 96x76 maps; facray's square crops of side S give maps of
side ``(S - 6) // 2 - 10`` (51 at 128 px).

Departure from the paper, on purpose: batch norm after each hidden convolution (the paper trains
for 32 epochs on 160,000 images; with a few thousand images the plain stack trains far slower).
``batch_norm=False`` gives the paper's plain layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from facray.attributes import ATTRIBUTES

PAPER_WIDTHS = (75, 200, 300, 512, 512)


def map_side(image_size: int) -> int:
    """Side of the localisation maps for a square input: 7x7 conv, pool 2, five 3x3 convs."""
    side = (image_size - 6) // 2 - 10
    if side < 1:
        raise ValueError(f"AttParseNet needs inputs of at least 28 px, got {image_size}")
    return side


class AttParseNet(nn.Module):
    """See module docstring. ``forward`` returns ``{"attributes": (B, A) logits, "masks": (B, A, m, m)}``."""

    def __init__(self, image_size: int = 128, num_outputs: int = len(ATTRIBUTES),
                 widths: tuple[int, ...] = PAPER_WIDTHS, batch_norm: bool = True):
        super().__init__()
        layers, c = [], 3
        for i, out in enumerate((*widths, num_outputs)):
            last = i == len(widths)
            layers.append(nn.Conv2d(c, out, 7 if i == 0 else 3, bias=last or not batch_norm))
            if not last:
                layers += [nn.BatchNorm2d(out)] if batch_norm else []
                layers.append(nn.ReLU(inplace=True))
            if i == 0:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*layers)
        self.map_side = map_side(image_size)
        self.classifier = nn.Linear(num_outputs * self.map_side ** 2, num_outputs)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.features(x)
        return {"attributes": self.classifier(maps.flatten(1)), "masks": maps}
