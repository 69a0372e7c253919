"""Offline augmentation: ABM-CNN's 9 perspectives per training image (the original, a flip,
rotations, shifts and zooms), applied to the image, its landmarks and its masks alike."""
from __future__ import annotations

import cv2
import numpy as np

from facray.attributes import MIRRORED_LANDMARKS
from facray.data.transforms.face import transform_points

# ABM-CNN: "we convert every image into 9 images by changing its perspectives": the original and
# these 8, each with its own seeded random strength.
OFFLINE_AUGMENTATIONS = ("original", "flip", "rotate_left", "rotate_right", "shift", "zoom",
                         "perspective", "brightness_contrast", "flip_rotate")
# The variants that also change brightness and contrast, on top of their geometry.
PHOTOMETRIC_AUGMENTATIONS = ("brightness_contrast", "perspective", "zoom")


def draw_homography(name: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The 3x3 homography of variant ``name`` for a (width, height) image, in pixel coordinates
    (input -> output, as ``cv2.warpPerspective`` takes it), its strength drawn from ``rng``.
    Shared with the binary trainer's online augmentation (:mod:`facray.training.augment`)."""
    w, h = size
    c = (w / 2, h / 2)

    def affine(angle=0.0, scale=1.0, tx=0.0, ty=0.0, flip=False):
        A = np.eye(3)
        if flip:
            A = np.array([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]], np.float64)
        R = np.vstack([cv2.getRotationMatrix2D(c, angle, scale), [0, 0, 1]])
        R[0, 2] += tx
        R[1, 2] += ty
        return R @ A

    if name in ("original", "brightness_contrast"):
        return np.eye(3)
    if name == "flip":
        return affine(flip=True)
    if name == "rotate_left":
        return affine(angle=rng.uniform(5, 15))
    if name == "rotate_right":
        return affine(angle=-rng.uniform(5, 15))
    if name == "shift":
        return affine(tx=rng.uniform(-0.08, 0.08) * w, ty=rng.uniform(-0.08, 0.08) * h)
    if name == "zoom":
        return affine(scale=rng.uniform(1.08, 1.2))
    if name == "flip_rotate":
        return affine(angle=rng.choice([-1, 1]) * rng.uniform(5, 12), flip=True)
    if name == "perspective":
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = src + rng.uniform(-0.07, 0.07, (4, 2)).astype(np.float32) * (w, h)
        return cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    raise ValueError(f"unknown augmentation {name!r}; expected one of {OFFLINE_AUGMENTATIONS}")


def draw_photometric(rng: np.random.Generator) -> tuple[float, float]:
    """(gain, offset) of a brightness/contrast change: ``|gain * pixel + offset|`` saturated to
    0-255 (``cv2.convertScaleAbs``), offset in 0-255 units."""
    return rng.uniform(0.75, 1.25), rng.uniform(-30, 30)


def apply_augmentation(image: np.ndarray, name: str, rng: np.random.Generator,
                       masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Apply one named augmentation. Masks (C, H, W) follow the same geometry (nearest).

    Returns (image, masks, 3x3 homography applied).
    """
    h, w = image.shape[:2]
    H = draw_homography(name, (w, h), rng)
    out = image
    if not np.allclose(H, np.eye(3)):
        out = cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if masks is not None:
            mh, mw = masks.shape[1:]
            S = np.diag([mw / w, mh / h, 1.0])
            Hm = S @ H @ np.linalg.inv(S)
            masks = np.stack([cv2.warpPerspective(m, Hm, (mw, mh), flags=cv2.INTER_NEAREST,
                                                  borderMode=cv2.BORDER_CONSTANT) for m in masks])
    if name in PHOTOMETRIC_AUGMENTATIONS:
        # Photometric change on top; the pure geometric ones keep the pixels' values.
        alpha, beta = draw_photometric(rng)
        out = cv2.convertScaleAbs(out, alpha=alpha, beta=beta)
    return out, masks, H


def augment_offline(image: np.ndarray, seed: int, count: int = 9, masks: np.ndarray | None = None
                    ) -> list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]]:
    """ABM-CNN's offline augmentation: the first ``count`` of :data:`OFFLINE_AUGMENTATIONS`.

    ``seed`` should identify the image (e.g. a hash of its id plus the run seed) so each image's
    variants are reproducible whatever order or worker processes it. Returns
    (name, image, masks, 3x3 homography) per variant.
    """
    if not 1 <= count <= len(OFFLINE_AUGMENTATIONS):
        raise ValueError(f"augment count must be 1..{len(OFFLINE_AUGMENTATIONS)}, got {count}")
    out = []
    for k, name in enumerate(OFFLINE_AUGMENTATIONS[:count]):
        rng = np.random.default_rng([seed, k])
        img, m, H = apply_augmentation(image, name, rng, masks)
        out.append((name, img, m, H))
    return out


def augment_landmarks(landmarks: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Move 5 landmarks (5, 2) through homography ``H``; a mirror swaps left and right points so
    index 0 stays the eye on the image's left, as in CelebA."""
    out = transform_points(landmarks, H)
    if np.linalg.det(H[:2, :2]) < 0:
        out = out[list(MIRRORED_LANDMARKS)]
    return out
