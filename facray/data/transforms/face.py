"""Face boxes and square crops: every crop method goes through one *face box* (centre, size), so
that crops from landmarks, from a bbox file and from the detector frame a face the same way.

The detector's box was calibrated against landmarks on the 300 MTFL sample faces (286 detected):
its width is 2.76x the eye distance and 2.57x the eye-to-mouth distance, and its centre sits 0.086
box-widths above the midpoint of eyes and mouth; :func:`face_box_from_landmarks` reproduces that box.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The mean landmarks of CelebA's aligned 178x218 crops: used when an aligned image comes with no
# landmark file (e.g. a sample of img_align_celeba without list_landmarks_align_celeba.txt).
ALIGNED_CELEBA_LANDMARKS = np.array(
    [[69.0, 111.0], [108.0, 111.0], [88.0, 135.0], [72.0, 152.0], [106.0, 152.0]], np.float32)
ALIGNED_CELEBA_SIZE = (178, 218)


@dataclass(frozen=True)
class FaceBox:
    """A square face region: centre (x, y) and side, in pixels of the source image."""
    cx: float
    cy: float
    size: float


def face_box_from_landmarks(landmarks: np.ndarray) -> FaceBox:
    """The detector-equivalent face box from 5 landmarks (eyes, nose, mouth corners; (5, 2))."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    eyes, mouth = lm[:2].mean(0), lm[3:].mean(0)
    eye_dist = np.linalg.norm(lm[1] - lm[0])
    eye_mouth = np.linalg.norm(mouth - eyes)
    size = 1.33 * (eye_dist + eye_mouth)
    up = eyes - mouth
    up = up / (np.linalg.norm(up) + 1e-6)
    centre = (eyes + mouth) / 2 + 0.086 * size * up
    return FaceBox(float(centre[0]), float(centre[1]), float(size))


def face_box_from_bbox(x: float, y: float, w: float, h: float) -> FaceBox:
    """Face box from a CelebA-style bbox (x_1, y_1, width, height)."""
    return FaceBox(x + w / 2, y + h / 2, float(max(w, h)))


def crop_square(image: np.ndarray, box: FaceBox, out_size: int, margin: float = 0.35,
                lift: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Crop a square of side ``box.size * (1 + 2 * margin)`` around the face and resize it.

    ``lift`` moves the centre up by that fraction of the face size so hair and hats (a quarter of
    the attributes) stay in the picture. Out-of-image parts are filled by replicating the border.
    Returns the crop and the 2x3 affine mapping source pixels to crop pixels (to move landmarks).
    """
    side = box.size * (1 + 2 * margin)
    scale = out_size / side
    cx, cy = box.cx, box.cy - lift * box.size
    M = np.array([[scale, 0, out_size / 2 - scale * cx], [0, scale, out_size / 2 - scale * cy]], np.float64)
    if scale >= 1:
        crop = cv2.warpAffine(image, M, (out_size, out_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        return crop, M
    # Downscaling: warpAffine has no area filter (it aliases), so cut the padded region, shrink it
    # with INTER_AREA, then place it with a sub-pixel translation.
    x0, y0 = int(np.floor(cx - side / 2)) - 1, int(np.floor(cy - side / 2)) - 1
    s = int(np.ceil(side)) + 3
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    src = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
    region = src[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
    small = cv2.resize(region, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    T = np.array([[1, 0, out_size / 2 - scale * (cx - x0)], [0, 1, out_size / 2 - scale * (cy - y0)]])
    crop = cv2.warpAffine(small, T, (out_size, out_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, M


def centre_square(image: np.ndarray, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The fallback when no face is found: the largest centred square, resized."""
    h, w = image.shape[:2]
    return crop_square(image, FaceBox(w / 2, h / 2, min(h, w)), out_size, margin=0.0, lift=0.0)


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine (or 3x3 homography) to (N, 2) points."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if M.shape == (2, 3):
        return (pts @ M[:, :2].T + M[:, 2]).astype(np.float32)
    h = np.hstack([pts, np.ones((len(pts), 1))]) @ M.T
    return (h[:, :2] / h[:, 2:3]).astype(np.float32)
