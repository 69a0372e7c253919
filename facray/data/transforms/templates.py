"""Known aligned-face geometries (*templates*) and the check that an image follows one.

Generated faces (StyleGAN on FFHQ's alignment) and aligned CelebA put every face at the same
place: where an image follows a template, the face box is known without a full-size detection.
Whether it does is decided from the image, never trusted from its size or folder: the detector
runs on a small copy (:data:`CHECK_SIDE` pixels; about 1.2 ms on one core against 8-18 ms at the
usual 320 px, measured on ``stylegan_sample`` and ``celebahq_dev``) and its one face must sit
within :data:`CENTRE_TOLERANCE` box sizes of the template's box and have its size within
:data:`SIZE_TOLERANCE` (as a log ratio). Only then is the image cropped by the template; anything
else (another aspect ratio, no face, several faces, a face elsewhere) goes to full detection. So a
folder that mixes aligned and unaligned images is decided image by image.

The landmarks are (5, 2) in CelebA's order (left eye, right eye, nose, left and right mouth
corner), as fractions of the image's width and height.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facray.data.transforms.face import ALIGNED_CELEBA_LANDMARKS, ALIGNED_CELEBA_SIZE, FaceBox, face_box_from_landmarks

# Side of the copy the check detects on. Aligned faces fill about two thirds of the image, so they
# are about 64 px there; YuNet found all 370 faces of stylegan_sample, celebahq_dev and celeba_sample
# (first 150 each) at 96 px, with the box centre within 0.05 box sizes of the full-size detection
# for 95% of them (bench/label.py, session 2026-12-01).
CHECK_SIDE = 96
# How far the check's face may sit from the template's. The full-size detections of aligned faces
# spread around their median by at most 0.05 (StyleGAN), 0.06 (CelebA-HQ) and 0.12 (aligned
# CelebA) box sizes at the centre, and by |log size ratio| <= 0.19 (one CelebA-HQ outlier aside);
# 0.1 box sizes is also the agreement the detectors are held to (issue 25).
CENTRE_TOLERANCE = 0.1
SIZE_TOLERANCE = 0.25
ASPECT_TOLERANCE = 0.02  # relative difference of width / height


@dataclass(frozen=True)
class FaceTemplate:
    """An aligned layout: the 5 landmarks as fractions of the image's (width, height), for images
    of aspect ratio ``aspect`` (width / height)."""
    name: str
    aspect: float
    landmarks: np.ndarray

    def landmarks_for(self, width: int, height: int) -> np.ndarray:
        """The landmarks (5, 2) in pixels of a ``width`` x ``height`` image."""
        return (self.landmarks * np.array([width, height], np.float32)).astype(np.float32)

    def box_for(self, width: int, height: int) -> FaceBox:
        """The face box the landmarks imply (as for a landmark file or the detector's landmarks)."""
        return face_box_from_landmarks(self.landmarks_for(width, height))


TEMPLATES = (
    # StyleGAN/FFHQ alignment (also close to CelebA-HQ's): the median of YuNet's landmarks on the 60
    # StyleGAN3 faces of stylegan_sample, made left-right symmetric. The eyes are 0.246 of the side
    # apart, as FFHQ's alignment script places them (the crop is 4x the eye distance wide).
    FaceTemplate("ffhq", 1.0, np.array([[0.376, 0.463], [0.622, 0.463], [0.500, 0.607],
                                        [0.389, 0.725], [0.611, 0.725]], np.float32)),
    # CelebA's aligned and cropped 178x218 images: the mean landmarks of list_landmarks_align_celeba.
    FaceTemplate("celeba", ALIGNED_CELEBA_SIZE[0] / ALIGNED_CELEBA_SIZE[1],
                 ALIGNED_CELEBA_LANDMARKS / np.array(ALIGNED_CELEBA_SIZE, np.float32)),
)


def template_for_shape(width: int, height: int) -> FaceTemplate | None:
    """The template for an image of this aspect ratio, or None (no aligned layout has it)."""
    aspect = width / max(height, 1)
    for t in TEMPLATES:
        if abs(aspect / t.aspect - 1) <= ASPECT_TOLERANCE:
            return t
    return None


def agrees(found: FaceBox, expected: FaceBox) -> bool:
    """Whether a detected face box lies within the tolerances of the template's box."""
    centre = np.hypot(found.cx - expected.cx, found.cy - expected.cy) / expected.size
    return bool(centre <= CENTRE_TOLERANCE and abs(np.log(found.size / expected.size)) <= SIZE_TOLERANCE)
