"""Online augmentation, on the device the batch is on (torch; numpy draws the binary chain's
strengths on the CPU, with ``prepare``'s own code).

- The multi-task trainer's: horizontal flips and a small random affine jitter (shift, zoom,
  rotation), with the weak masks and the landmark targets moved exactly as their images were.
- The binary trainer's: ABM-CNN's 9 variants (:func:`draw_abm_variants`), the transforms of
  ``prepare --augment 9`` drawn afresh per image and step, so the prepared data stays 1x.

Why jitter: a few thousand training faces are memorised within a few epochs; crops that never
repeat pixel for pixel keep validation loss falling for longer. It runs after the crop (the face
stays inside the frame at these strengths), with reflection at the border so no black corners
teach the model a cue that unseen photos do not have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from facray.attributes import MIRRORED_LANDMARKS
from facray.data.transforms.augment import (OFFLINE_AUGMENTATIONS, PHOTOMETRIC_AUGMENTATIONS, draw_homography,
                                            draw_photometric)


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


# ---- the binary chain: ABM-CNN's variants online ----

# Passes over the 1x rows per epoch with the variants drawn online: as many as the 9x data holds
# rows per image, so an epoch trains on as many images as an epoch of ``prepare --augment 9``.
PASSES_PER_EPOCH = len(OFFLINE_AUGMENTATIONS)


@dataclass(frozen=True)
class VariantDraw:
    """One batch's draw of ABM-CNN variants (CPU tensors)."""
    variant: torch.Tensor  # (B,) index into OFFLINE_AUGMENTATIONS
    inverse: torch.Tensor  # (B, 3, 3) homography, output pixel -> input pixel
    gain: torch.Tensor  # (B,) contrast gain, 1 where the variant is geometric only
    offset: torch.Tensor  # (B,) brightness offset in [0, 1] units (offline: 0-255)


def draw_abm_variants(n: int, size: int, generator: torch.Generator) -> VariantDraw:
    """ABM-CNN's augmentation for ``n`` images of side ``size`` px: each image gets one of the 9
    variants of :data:`~facray.data.transforms.augment.OFFLINE_AUGMENTATIONS` (the original
    included), uniformly, with its own strength, drawn by the very code and ranges of ``prepare
    --augment 9`` (:func:`~facray.data.transforms.augment.draw_homography`,
    :func:`~facray.data.transforms.augment.draw_photometric`). Over :data:`PASSES_PER_EPOCH` passes
    an image is seen as often as the 9x data holds it, each time a fresh variant and strength.
    Seeded from ``generator`` (CPU), so a run repeats on any device and resumes exactly."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    variant = rng.integers(len(OFFLINE_AUGMENTATIONS), size=n)
    inverse, gain, offset = np.empty((n, 3, 3)), np.ones(n), np.zeros(n)
    for i, k in enumerate(variant):
        name = OFFLINE_AUGMENTATIONS[k]
        inverse[i] = np.linalg.inv(draw_homography(name, (size, size), rng))
        if name in PHOTOMETRIC_AUGMENTATIONS:
            gain[i], offset[i] = draw_photometric(rng)
    return VariantDraw(torch.from_numpy(variant),
                       *(torch.from_numpy(a).float() for a in (inverse, gain, offset / 255)))


def homography_grid(inverse: torch.Tensor, height: int, width: int, device: torch.device | str = "cpu"
                    ) -> torch.Tensor:
    """(B, H, W, 2) float32 ``grid_sample`` grid (``align_corners=True``) for (B, 3, 3) homographies
    ``inverse``: output pixel p reads input point ``inverse @ p`` (pixel coordinates, centres at
    integers: ``cv2.warpPerspective``'s convention). Built once per batch and shared by every
    image stack of that size (the photo and its sketch)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3).float()  # (1, HW, 3)
    source = points @ inverse.to(device, torch.float32).transpose(1, 2)  # (B, HW, 3)
    source = source[..., :2] / source[..., 2:]
    # align_corners=True: -1 and 1 are the border pixels' centres, so reflection mirrors about them
    last = torch.tensor([width - 1, height - 1], device=device, dtype=torch.float32)
    return (2 * source / last - 1).view(-1, height, width, 2)


def warp_homography(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample (B, C, H, W) ``x`` along a :func:`homography_grid`, bilinear. Outside the image it
    reflects about the border pixels' centres: OpenCV's BORDER_REFLECT_101, as ``prepare``."""
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=True)


def apply_abm_variants(x: torch.Tensor, draw: VariantDraw, photometric: bool, grid: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """(B, C, S, S) float in [0, 1] -> the same, each image as its drawn variant. ``photometric``
    False for pencil sketches: ``prepare`` sketches the augmented photo, and a colour-dodge sketch
    (grey / blurred grey) cancels the contrast gain, so the sketch takes the geometry only (the
    part of the brightness offset such a sketch keeps is not reproduced). ``grid``: the draw's
    :func:`homography_grid` at this size and device, when the caller already built it."""
    if grid is None:
        grid = homography_grid(draw.inverse, x.shape[-2], x.shape[-1], x.device)
    elif grid.shape[1:3] != x.shape[-2:]:  # grid_sample would answer at the grid's size, silently
        raise ValueError(f"sampling grid {tuple(grid.shape[1:3])} does not match the images {tuple(x.shape[-2:])}")
    x = warp_homography(x, grid)
    if photometric:
        gain, offset = (t.to(x.device, x.dtype).view(-1, 1, 1, 1) for t in (draw.gain, draw.offset))
        x = (x * gain + offset).abs().clamp(max=1)  # cv2.convertScaleAbs, in [0, 1]
    return x
