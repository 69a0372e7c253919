"""The multi-task trainer's losses, pure torch: the masked BCE over known labels and AttParseNet's
mask MSE (the target transforms of online augmentation are in :mod:`facray.training.augment`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss over labelled entries, per-attribute loss sums). ``labels``: int (B, A), -1 unknown."""
    known = labels >= 0
    target = labels.clamp(min=0).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none") * known
    return per.sum() / known.sum().clamp(min=1), per.sum(0).detach()


def soft_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE against soft (B, A) targets in [0, 1], a teacher's probabilities (knowledge
    distillation, Hinton et al. 2015, with a sigmoid per attribute); NaN targets (attributes the
    teacher does not cover, or that are not trained) are left out. ``pos_weight``: class balance
    (the positive part of each target weighted), as :func:`masked_bce`."""
    known = torch.isfinite(targets)
    per = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.5).to(logits.dtype), pos_weight=pos_weight,
                                             reduction="none")
    return (per * known).sum() / known.sum().clamp(min=1)


def mask_mse(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """MSE of (B, A, h, w) localisation maps against (B, A, m, m) 0/1 masks resized by nearest
    neighbour (the paper's downsampling) to the maps' side."""
    target = F.interpolate(masks.float(), size=maps.shape[-2:], mode="nearest")
    return F.mse_loss(maps, target)
