"""Weak segmentation masks (AttParseNet), estimated from 5 landmarks: per region, then per attribute."""
from __future__ import annotations

import cv2
import numpy as np

from facray.attributes import ATTRIBUTES

REGIONS = ("below_chin", "chin", "cheeks", "mouth", "above_mouth", "nose", "eyes", "eyebrows",
           "ears", "top_of_head")
_ALL = REGIONS
# Which base regions each attribute lives in (after Thom & Hand's table, adapted to 5 landmarks).
ATTRIBUTE_REGIONS: dict[str, tuple[str, ...]] = {
    "5_o_Clock_Shadow": ("chin", "cheeks", "above_mouth"), "Arched_Eyebrows": ("eyebrows",),
    "Attractive": _ALL, "Bags_Under_Eyes": ("eyes",), "Bald": ("top_of_head",),
    "Bangs": ("top_of_head", "eyebrows"), "Big_Lips": ("mouth",), "Big_Nose": ("nose",),
    "Black_Hair": ("top_of_head", "ears"), "Blond_Hair": ("top_of_head", "ears"), "Blurry": _ALL,
    "Brown_Hair": ("top_of_head", "ears"), "Bushy_Eyebrows": ("eyebrows",),
    "Chubby": ("cheeks", "chin", "below_chin"), "Double_Chin": ("chin", "below_chin"),
    "Eyeglasses": ("eyes", "nose"), "Goatee": ("chin", "above_mouth"),
    "Gray_Hair": ("top_of_head", "ears"), "Heavy_Makeup": ("eyes", "cheeks", "mouth"),
    "High_Cheekbones": ("cheeks",), "Male": _ALL, "Mouth_Slightly_Open": ("mouth",),
    "Mustache": ("above_mouth",), "Narrow_Eyes": ("eyes",), "No_Beard": ("chin", "cheeks", "above_mouth"),
    "Oval_Face": _ALL, "Pale_Skin": _ALL, "Pointy_Nose": ("nose",),
    "Receding_Hairline": ("top_of_head",), "Rosy_Cheeks": ("cheeks",), "Sideburns": ("ears", "cheeks"),
    "Smiling": ("mouth", "cheeks"), "Straight_Hair": ("top_of_head", "ears"),
    "Wavy_Hair": ("top_of_head", "ears"), "Wearing_Earrings": ("ears",), "Wearing_Hat": ("top_of_head",),
    "Wearing_Lipstick": ("mouth",), "Wearing_Necklace": ("below_chin",),
    "Wearing_Necktie": ("below_chin",), "Young": _ALL,
}
assert set(ATTRIBUTE_REGIONS) == set(ATTRIBUTES)


def region_masks(landmarks: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The 10 base regions as uint8 0/1 masks of ``size`` (width, height), from 5 landmarks given
    in that same pixel frame. Regions are ellipses and quads placed in the face's own frame
    (eye distance as unit, eyes-to-mouth as "up"), so they follow in-plane rotation."""
    w, h = size
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    le, re, nose, lm_, rm = lm
    eyes, mouth = (le + re) / 2, (lm_ + rm) / 2
    d = max(np.linalg.norm(re - le), 1e-3)
    up = (eyes - mouth) / max(np.linalg.norm(eyes - mouth), 1e-3)
    right = np.array([-up[1], up[0]])
    if np.dot(right, re - le) < 0:
        right = -right
    angle = float(np.degrees(np.arctan2(right[1], right[0])))
    mouth_w = max(np.linalg.norm(rm - lm_), 0.5 * d)

    def ellipse(centre, ax, ay):
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (int(round(centre[0])), int(round(centre[1]))),
                    (max(1, int(round(ax))), max(1, int(round(ay)))), angle, 0, 360, 1, -1)
        return m

    def quad(centre, half_w, half_h):
        corners = [centre + sx * half_w * right + sy * half_h * up for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round(np.array(corners)).astype(np.int32)], 1)
        return m

    def union(*ms):
        return np.maximum.reduce(ms)

    chin_c = mouth - 0.55 * d * up
    return {
        "below_chin": quad(mouth - 1.35 * d * up, 0.75 * d, 0.45 * d),
        "chin": ellipse(chin_c, 0.5 * d, 0.3 * d),
        "cheeks": union(*[ellipse((e + m) / 2 + s * 0.3 * d * right, 0.28 * d, 0.38 * d)
                          for e, m, s in ((le, lm_, -1), (re, rm, 1))]),
        "mouth": ellipse(mouth, 0.5 * mouth_w + 0.1 * d, 0.2 * d),
        "above_mouth": quad((nose + mouth) / 2, 0.5 * mouth_w + 0.1 * d, 0.5 * max(np.dot(nose - mouth, up), 0.1 * d)),
        "nose": quad((eyes + nose) / 2, 0.22 * d, 0.5 * max(np.dot(eyes - nose, up), 0.2 * d) + 0.1 * d),
        "eyes": union(ellipse(le, 0.33 * d, 0.17 * d), ellipse(re, 0.33 * d, 0.17 * d)),
        "eyebrows": union(ellipse(le + 0.3 * d * up, 0.38 * d, 0.12 * d),
                          ellipse(re + 0.3 * d * up, 0.38 * d, 0.12 * d)),
        "ears": union(ellipse(eyes - 1.05 * d * right - 0.25 * d * up, 0.16 * d, 0.38 * d),
                      ellipse(eyes + 1.05 * d * right - 0.25 * d * up, 0.16 * d, 0.38 * d)),
        "top_of_head": ellipse(eyes + 0.95 * d * up, 1.2 * d, 0.75 * d),
    }


def attribute_masks(landmarks: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """40 uint8 masks (40, h, w): attribute ``i``'s regions where ``labels[i] == 1``, else zeros."""
    w, h = size
    out = np.zeros((len(ATTRIBUTES), h, w), np.uint8)
    if not np.isfinite(np.asarray(landmarks, np.float64)).all():
        return out
    regions = region_masks(landmarks, size)
    for i, attr in enumerate(ATTRIBUTES):
        if labels[i] == 1:
            out[i] = np.maximum.reduce([regions[r] for r in ATTRIBUTE_REGIONS[attr]])
    return out
