"""The multi-task trainer's losses and target transforms, pure torch: the masked BCE over known
labels, AttParseNet's mask MSE, and the flip that keeps masks and landmarks with a flipped image."""
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


# CelebA's 5 landmarks as (x, y) pairs: left eye, right eye, nose, left mouth, right mouth. A
# horizontal flip mirrors x and swaps left with right.
_MIRRORED_LANDMARKS = [1, 0, 2, 4, 3]


def flip_targets(masks: torch.Tensor | None, landmarks: torch.Tensor | None, flip: torch.Tensor):
    """Mirror the rows ``flip`` of (B, A, m, m) masks and (B, 10) landmarks in [0, 1] as the images were."""
    if masks is not None:
        masks = torch.where(flip.view(-1, 1, 1, 1), masks.flip(-1), masks)
    if landmarks is not None:
        mirrored = landmarks.view(-1, 5, 2)[:, _MIRRORED_LANDMARKS].clone()
        mirrored[..., 0] = 1 - mirrored[..., 0]
        landmarks = torch.where(flip.view(-1, 1), mirrored.view(-1, 10), landmarks)
    return masks, landmarks


def mask_mse(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """MSE of (B, A, h, w) localisation maps against (B, A, m, m) 0/1 masks resized by nearest
    neighbour (the paper's downsampling) to the maps' side."""
    target = F.interpolate(masks.float(), size=maps.shape[-2:], mode="nearest")
    return F.mse_loss(maps, target)
