"""Online augmentation of the multi-task trainer: the targets move exactly as the images do."""
from __future__ import annotations

import numpy as np
import torch

from facray.training.augment import Jitter, flip_targets, random_affine, warp, warp_targets


def _dots(size: int, points: np.ndarray) -> torch.Tensor:
    """(B, 1, S, S) images, each black with one bright 3x3 dot per landmark position."""
    x = torch.zeros(len(points), 1, size, size)
    for b, row in enumerate(points):
        for px, py in row.reshape(5, 2):
            x[b, 0, int(py) - 1:int(py) + 2, int(px) - 1:int(px) + 2] = 1
    return x


def test_zero_jitter_is_the_identity():
    theta = random_affine(4, Jitter(), torch.Generator().manual_seed(0))
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(warp(x, theta), x, atol=1e-5, rtol=0)
    assert not Jitter().active and Jitter(rotate=5).active


def test_landmarks_and_masks_follow_the_warped_image():
    size, gen = 64, torch.Generator().manual_seed(3)
    rng = np.random.default_rng(0)
    points = rng.uniform(20, 44, (6, 10)).astype(np.float32)
    images = _dots(size, points)
    theta = random_affine(6, Jitter(shift=0.08, scale=0.12, rotate=15), gen)
    warped = warp(images, theta, padding="zeros")
    # Landmarks in the trainer's [0, 1] units, at pixel centres.
    _, moved = warp_targets(None, torch.as_tensor((points + 0.5) / size), theta)
    moved = moved.numpy().reshape(6, 5, 2) * size - 0.5
    for b in range(6):
        for px, py in moved[b]:
            y, x = int(round(py)), int(round(px))
            patch = warped[b, 0, y - 1:y + 2, x - 1:x + 2]
            assert patch.max() > 0.5, (b, px, py)  # the dot is where its landmark went
    # Masks use the same matrices: a mask equal to the image stays equal to the warped image's
    # support (nearest neighbour, so only up to the interpolation's halo).
    masks = (images > 0).to(torch.uint8)
    moved_masks, _ = warp_targets(masks, None, theta)
    assert moved_masks.shape == masks.shape
    assert set(torch.unique(moved_masks).tolist()) <= {0.0, 1.0}
    overlap = (moved_masks * (warped > 0.5)).sum() / (warped > 0.5).sum()
    assert overlap > 0.9


def test_flip_then_jitter_keeps_left_and_right_landmarks_apart():
    """The trainer flips first, then jitters; the flipped left eye is the image's right eye."""
    lm = torch.tensor([[0.3, 0.4, 0.7, 0.4, 0.5, 0.6, 0.35, 0.8, 0.65, 0.8]])
    _, flipped = flip_targets(None, lm, torch.tensor([True]))
    assert torch.allclose(flipped[0, :2], torch.tensor([0.3, 0.4]))  # new left eye = old right eye mirrored
    theta = random_affine(1, Jitter(shift=0.1), torch.Generator().manual_seed(1))
    _, both = warp_targets(None, flipped, theta)
    shift = (both - flipped).view(5, 2)
    assert torch.allclose(shift, shift[:1].expand(5, 2), atol=1e-6)  # a pure shift moves every point alike
