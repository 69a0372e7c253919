"""Multi-task attribute networks: one shared trunk, one logit per attribute. Depends only on torch
and torchvision.

- ``abm-trunk``: ABM-CNN's convolutional trunk (16/32/64, ReLU, max-pool) with one dense layer and
  40 outputs: the fused binary models' multi-task counterpart.
- ``resnet18`` / ``resnet50``: torchvision ResNets, the classifier replaced by a 40-way linear head.
- ``vgg19-transfer`` (seed 004): VGG19's convolutional base (frozen by default), flatten, two dense
  512-unit layers with dropout, 40 outputs; optional bbox (4) and landmark (10) regression heads.
- ``inception-v3`` (seed 001): torchvision's Inception v3 at 299 px, auxiliary head off, 40 outputs.

Every model maps (B, 3, S, S) floats in [0, 1] to a dict ``{"attributes": (B, 40) logits}`` (plus
``"bbox"`` / ``"landmarks"`` when those heads exist); ImageNet normalisation happens inside the
model, so callers feed the same [0, 1] pixels whatever the backbone. Pretrained weights: a
torchvision ``weights=`` name (needs internet the first time) or a local state-dict file, loaded
with ``weights_only=True``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from facray.attributes import ATTRIBUTES
from facray.models.abm import CONV_CHANNELS, feature_side

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """[0, 1] pixels -> ImageNet-normalised (what torchvision's pretrained backbones expect)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class AbmTrunk(nn.Module):
    """ABM-CNN's trunk shared by all attributes: conv 16/32/64 (+ BN option), dense, 40 logits."""

    def __init__(self, image_size: int = 128, num_outputs: int = len(ATTRIBUTES), hidden: int = 256,
                 dropout: float = 0.5, channels: tuple[int, ...] = CONV_CHANNELS, batch_norm: bool = True):
        super().__init__()
        layers, c = [], 3
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*layers)
        side = image_size
        for _ in channels:
            side //= 2
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * side * side, hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_outputs))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"attributes": self.head(self.features(x))}


class TorchvisionClassifier(nn.Module):
    """A torchvision backbone whose last layer is replaced by ``num_outputs`` logits.
    ``train_base=False`` freezes everything but that layer (the KTH paper's bottleneck retraining)."""

    def __init__(self, backbone: nn.Module, num_outputs: int = len(ATTRIBUTES), train_base: bool = True):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        if hasattr(backbone, "fc"):  # ResNet, Inception
            backbone.fc = nn.Linear(backbone.fc.in_features, num_outputs)
        else:
            raise ValueError(f"{type(backbone).__name__}: no 'fc' layer to replace")
        self.train_base = train_base
        if not train_base:
            for name, p in backbone.named_parameters():
                p.requires_grad_(name.startswith("fc."))

    def train(self, mode: bool = True) -> "TorchvisionClassifier":
        super().train(mode)
        if not self.train_base:  # a frozen base keeps its batch-norm statistics (and no dropout)
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.backbone(self.normalize(x))
        if isinstance(out, tuple):  # Inception's (logits, aux) in training mode
            out = out[0]
        return {"attributes": out}


class VGGTransfer(nn.Module):
    """Seed 004's transfer model: VGG19 conv base (frozen unless ``train_base``), Flatten, dense
    512 + ReLU + dropout twice, 40 outputs; optional bbox / landmark regression heads (MSE)."""

    def __init__(self, features: nn.Module, feature_channels: int, image_size: int,
                 num_outputs: int = len(ATTRIBUTES), hidden: int = 512, dropout: float = 0.5,
                 train_base: bool = False, bbox_head: bool = False, landmark_head: bool = False):
        super().__init__()
        self.normalize = Normalize()
        self.features = features
        for p in self.features.parameters():
            p.requires_grad_(train_base)
        side = image_size // 32  # five 2x2 max-pools
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(feature_channels * side * side, hidden),
                                   nn.ReLU(inplace=True), nn.Dropout(dropout),
                                   nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({"attributes": nn.Linear(hidden, num_outputs)})
        if bbox_head:
            self.heads["bbox"] = nn.Linear(hidden, 4)
        if landmark_head:
            self.heads["landmarks"] = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(self.normalize(x)))
        return {name: head(h) for name, head in self.heads.items()}


def vgg_features(config: list, batch_norm: bool = False) -> nn.Sequential:
    """torchvision's VGG feature builder (``cfgs['E']`` is VGG19)."""
    return torchvision.models.vgg.make_layers(config, batch_norm=batch_norm)


__all__ = ["AbmTrunk", "TorchvisionClassifier", "VGGTransfer", "Normalize", "vgg_features",
           "feature_side"]
