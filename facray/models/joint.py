"""The joint attribute-identity network of Taherkhani, Nasrabadi and Dawson ("A Deep Face
Identification Network Enhanced by Facial Attributes Prediction"). Depends only on torch.

- net@1: VGG-19-style trunk of 16 convolutions (3x3, stride 1, padding 1, batch norm, ReLU),
  max-pool after convolutions 2, 4, 8 and 12, global average pooling after the 16th.
- net@2: two branches of a 4096-unit layer (batch norm, ReLU) then the outputs: attributes
  (branch 1, one logit each) and identities (branch 2, softmax). The attribute branch's
  pre-sigmoid outputs for the fused attributes (by default the 10 identity-related ones of
  :data:`facray.attributes.IDENTITY_ATTRIBUTES`) are combined with the pooled features by a
  Kronecker (outer) product, which is what the identity branch sees. The losses (BCE per
  attribute, cross-entropy over identities) are summed by the trainer, so both branches train
  together and identity gradients reach the attribute branch through the fusion.

``forward`` returns ``{"attributes": (B, 40) logits, "identity": (B, num_identities) logits}``;
with ``num_identities=0`` there is no identity branch (an attribute predictor only).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from facray.attributes import ATTRIBUTE_INDEX, ATTRIBUTES, IDENTITY_ATTRIBUTES

PAPER_WIDTHS = (64, 128, 256, 512, 512)  # VGG-19's stages: 2, 2, 4, 4, 4 convolutions
STAGE_DEPTHS = (2, 2, 4, 4, 4)


def kronecker(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Kronecker product of (B, m) and (B, n): (B, m * n), ``a_i * b_j`` at ``i * n + j``."""
    return torch.einsum("bi,bj->bij", a, b).flatten(1)


def vgg_trunk(widths: tuple[int, ...] = PAPER_WIDTHS) -> nn.Sequential:
    layers, c = [], 3
    for stage, (width, depth) in enumerate(zip(widths, STAGE_DEPTHS)):
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        if stage < len(widths) - 1:  # after convolutions 2, 4, 8, 12
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _branch(c_in: int, hidden: int, c_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, c_out))


class JointAttributeIdentityNet(nn.Module):
    """See module docstring."""

    def __init__(self, image_size: int = 112, num_outputs: int = len(ATTRIBUTES), num_identities: int = 0,
                 widths: tuple[int, ...] = PAPER_WIDTHS, hidden: int = 4096, dropout: float = 0.5,
                 fusion: str = "identity"):
        super().__init__()
        if fusion not in ("identity", "all"):
            raise ValueError(f"fusion must be 'identity' (the paper's 10 attributes) or 'all', got {fusion!r}")
        self.features = vgg_trunk(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.attribute_branch = _branch(widths[-1], hidden, num_outputs, dropout)
        fused = [ATTRIBUTE_INDEX[a] for a in IDENTITY_ATTRIBUTES] if fusion == "identity" else list(range(num_outputs))
        self.register_buffer("fused", torch.tensor(fused), persistent=False)
        self.identity_branch = _branch(len(fused) * widths[-1], hidden, num_identities, dropout) \
            if num_identities else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.features(x)
        pooled = self.pool(maps).flatten(1)
        attributes = self.attribute_branch(pooled)
        out = {"attributes": attributes}
        if self.identity_branch is not None:
            out["identity"] = self.identity_branch(kronecker(attributes[:, self.fused], pooled))
        return out
