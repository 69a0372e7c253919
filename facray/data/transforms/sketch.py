"""Pencil sketch: ABM-CNN's "simplification" of a photo."""
from __future__ import annotations

import cv2
import numpy as np

def pencil_sketch(image: np.ndarray, blur_sigma: float | None = None, channels: int = 1) -> np.ndarray:
    """Grey, invert, Gaussian blur, colour-dodge. Deterministic; uint8 (H, W) or (H, W, 3).

    ``blur_sigma`` defaults to 4% of the shorter side (a 21 px kernel at 180 px), so the sketch
    looks the same at every resolution. Where the dodge divides by zero (pure black), the result
    is white, like paper.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    sigma = blur_sigma or 0.04 * min(grey.shape)
    blurred = cv2.GaussianBlur(255 - grey, (0, 0), sigmaX=sigma)
    denom = 255 - blurred.astype(np.float32)
    out = np.where(denom > 0, grey.astype(np.float32) * 256.0 / np.maximum(denom, 1), 255.0)
    sketch = np.clip(out, 0, 255).astype(np.uint8)
    return cv2.cvtColor(sketch, cv2.COLOR_GRAY2BGR) if channels == 3 else sketch
