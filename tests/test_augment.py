"""Online augmentation: the multi-task trainer's targets move exactly as the images do; the binary
chain's online variants are prepare's offline ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facray.data.transforms.augment import (OFFLINE_AUGMENTATIONS, PHOTOMETRIC_AUGMENTATIONS, apply_augmentation,
                                            draw_homography, draw_photometric)
from facray.training.augment import (Jitter, VariantDraw, apply_abm_variants, draw_abm_variants, flip_targets,
                                     random_affine, warp, warp_targets)


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


# ---- the binary chain: ABM-CNN's variants online, the same transforms as prepare --augment 9 ----

def _face(size: int = 64) -> np.ndarray:
    """A smooth colour image (no sharp edges, so resampling differences stay small)."""
    import cv2
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


@pytest.mark.parametrize("name", OFFLINE_AUGMENTATIONS)
def test_each_online_variant_gives_the_offline_variants_pixels(name):
    """The same strength drawn, the torch warp + photometric change gives prepare's cv2 pixels,
    borders included (both reflect about the border pixels), to within cv2's 8-bit rounding."""
    image = _face()
    offline, _, _ = apply_augmentation(image, name, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # the same draws, in the same order
    H = draw_homography(name, (64, 64), rng)
    gain, offset = draw_photometric(rng) if name in PHOTOMETRIC_AUGMENTATIONS else (1.0, 0.0)
    draw = VariantDraw(torch.tensor([OFFLINE_AUGMENTATIONS.index(name)]), torch.tensor(np.linalg.inv(H))[None].float(),
                       torch.tensor([gain]), torch.tensor([offset / 255]))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    online = apply_abm_variants(x, draw, photometric=True)[0].permute(1, 2, 0).numpy() * 255
    diff = np.abs(online - offline.astype(np.float64))
    assert diff.max() <= 1.5 and diff.mean() <= 0.5, (name, diff.max(), diff.mean())


def test_online_variants_draw_all_nine_reproducibly_and_sketches_keep_their_values():
    draw = draw_abm_variants(400, 32, torch.Generator().manual_seed(0))
    again = draw_abm_variants(400, 32, torch.Generator().manual_seed(0))
    for a, b in zip(vars(draw).values(), vars(again).values()):
        assert torch.equal(a, b)
    names = [OFFLINE_AUGMENTATIONS[k] for k in draw.variant]
    assert set(names) == set(OFFLINE_AUGMENTATIONS) and max(map(names.count, names)) < 80  # uniform: ~44 each
    identity = torch.isclose(draw.inverse, torch.eye(3)).flatten(1).all(1)
    assert identity.tolist() == [n in ("original", "brightness_contrast") for n in names]
    assert (draw.gain != 1).tolist() == [n in PHOTOMETRIC_AUGMENTATIONS for n in names]
    assert 0.75 <= draw.gain.min() and draw.gain.max() <= 1.25 and draw.offset.abs().max() <= 30 / 255
    x = torch.rand(400, 1, 32, 32)
    sketch = apply_abm_variants(x, draw, photometric=False)
    torch.testing.assert_close(sketch[identity], x[identity], atol=1e-5, rtol=0)  # geometry only


def test_a_shared_sampling_grid_warps_as_the_draw_alone_and_a_wrong_sized_one_is_refused():
    """The binary trainer builds one grid per batch for the photo and its sketch: the same pixels as
    each modality building its own; a grid of another size would be answered at its own size."""
    from facray.training.augment import homography_grid
    draw = draw_abm_variants(16, 24, torch.Generator().manual_seed(1))
    grid = homography_grid(draw.inverse, 24, 24)
    for channels, photometric in ((3, True), (1, False)):
        x = torch.rand(16, channels, 24, 24)
        assert torch.equal(apply_abm_variants(x, draw, photometric, grid=grid), apply_abm_variants(x, draw, photometric))
    with pytest.raises(ValueError, match="does not match"):
        apply_abm_variants(torch.rand(16, 3, 32, 32), draw, True, grid=grid)
