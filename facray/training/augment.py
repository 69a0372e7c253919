"""The multi-task trainer's online augmentation, pure torch, on the device the batch is on:
horizontal flips and a small random affine jitter (shift, zoom, rotation), with the weak masks and
the landmark targets moved exactly as their images were.

Why jitter: a few thousand training faces are memorised within a few epochs; crops that never
repeat pixel for pixel keep validation loss falling for longer. It runs after the crop (the face
stays inside the frame at these strengths), with reflection at the border so no black corners
teach the model a cue that unseen photos do not have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facray.attributes import MIRRORED_LANDMARKS



@dataclass(frozen=True)
class Jitter:
    shift: float = 0.0  # largest translation, as a fraction of the image side
    scale: float = 0.0  # zoom drawn from [1 - scale, 1 + scale]
    rotate: float = 0.0  # largest rotation, degrees

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.scale > 0 or self.rotate > 0


def random_affine(n: int, jitter: Jitter, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) ``affine_grid`` matrices (output -> input normalised coordinates), uniform draws."""
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(jitter.rotate)
    zoom = 1 + u[:, 1] * jitter.scale  # > 1 samples a smaller region: zooms in
    shift = u[:, 2:] * jitter.shift * 2  # normalised coordinates span 2 per side
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear", padding: str = "reflection") -> torch.Tensor:
    """Resample (B, C, H, W) ``x`` by ``theta`` (see :func:`random_affine`)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


def flip_targets(masks: torch.Tensor | None, landmarks: torch.Tensor | None, flip: torch.Tensor):
    """Mirror the rows ``flip`` of (B, A, m, m) masks and (B, 10) landmarks in [0, 1] as the images were."""
    if masks is not None:
        masks = torch.where(flip.view(-1, 1, 1, 1), masks.flip(-1), masks)
    if landmarks is not None:
        mirrored = landmarks.view(-1, 5, 2)[:, list(MIRRORED_LANDMARKS)].clone()
        mirrored[..., 0] = 1 - mirrored[..., 0]
        landmarks = torch.where(flip.view(-1, 1), mirrored.view(-1, 10), landmarks)
    return masks, landmarks


def warp_targets(masks: torch.Tensor | None, landmarks: torch.Tensor | None, theta: torch.Tensor):
    """Move (B, A, m, m) masks (nearest neighbour, nothing outside) and (B, 10) landmarks in [0, 1]
    with their images warped by ``theta``. A landmark at input point p lands at A^-1 (p - t)."""
    if masks is not None:
        masks = warp(masks.float(), theta, mode="nearest", padding="zeros")
    if landmarks is not None:
        theta = theta.to(landmarks.device, landmarks.dtype)
        points = landmarks.view(-1, 5, 2) * 2 - 1  # [0, 1] -> normalised [-1, 1]
        inverse = torch.linalg.inv(theta[:, :, :2])
        moved = (points - theta[:, None, :, 2]) @ inverse.transpose(1, 2)
        landmarks = ((moved + 1) / 2).reshape(-1, 10)
    return masks, landmarks


def augment_images(x: torch.Tensor, online_flip: bool, jitter: Jitter, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flip (each row with probability 1/2), then jitter, a (B, C, H, W) batch. Returns (images,
    which rows were flipped (on ``x``'s device), the jitter's matrices or None). The draws come
    from ``generator`` on the CPU, so a run repeats exactly on any device."""
    flip, theta = torch.zeros(len(x), dtype=torch.bool), None
    if online_flip:
        flip = torch.rand(len(x), generator=generator) < 0.5
        # torch.where, not boolean indexing: indexing by a mask waits for the GPU every step.
        x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    if jitter.active:
        theta = random_affine(len(x), jitter, generator)
        x = warp(x, theta)
    return x, flip.to(x.device), theta


def augment_targets(masks: torch.Tensor | None, landmarks: torch.Tensor | None, flip: torch.Tensor,
                    theta: torch.Tensor | None):
    """Masks and landmarks moved as :func:`augment_images` moved their images."""
    masks, landmarks = flip_targets(masks, landmarks, flip)
    return warp_targets(masks, landmarks, theta) if theta is not None else (masks, landmarks)
