"""Image transforms: face crop, pencil sketch, augmentation, weak segmentation masks.

Pure numpy/OpenCV, one image at a time, no Ray: used by the batch ops in :mod:`facray.data.ops`
(which Ray Data actors wrap) and tested alone.

Every crop method goes through one *face box* (centre, size) so that crops from landmarks, from a
bbox file and from the detector frame a face the same way. The detector's box was calibrated
against landmarks on the 300 MTFL sample faces (286 detected): its width is 2.76x the eye
distance and 2.57x the eye-to-mouth distance, and its centre sits 0.086 box-widths above the
midpoint of eyes and mouth; :func:`face_box_from_landmarks` reproduces that box.
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from facray.attributes import ATTRIBUTES

# ---------------------------------------------------------------------------------------------
# Face boxes and crops
# ---------------------------------------------------------------------------------------------

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


@lru_cache(maxsize=4)
def _cascade(path: str) -> cv2.CascadeClassifier:
    c = cv2.CascadeClassifier(path)
    if c.empty():
        raise FileNotFoundError(f"{path}: cannot load the Haar cascade")
    return c


def default_cascade_path() -> str:
    return cv2.data.haarcascades + "haarcascade_frontalface_default.xml"


DETECTORS = ("auto", "yunet", "haar")


@dataclass(frozen=True)
class Detection:
    """The face a detector chose (the largest): its crop box and, when the detector gives them, 5
    landmarks (5, 2) (eyes, nose, mouth corners as CelebA orders them), in source pixels; the
    detector's own box ``xywh`` (x, y of the top-left corner, width, height; source pixels), its
    ``score`` (confidence in [0, 1]; NaN for Haar, which gives none) and how many faces the
    image holds (``n_faces``, counting this one)."""
    box: FaceBox
    landmarks: np.ndarray | None
    xywh: tuple[float, float, float, float] = (np.nan, np.nan, np.nan, np.nan)
    score: float = np.nan
    n_faces: int = 1


def yunet_available() -> bool:
    try:
        import yuface  # noqa: F401
        return True
    except ImportError:
        return False


# libfacedetection's C entry point, which yuface wraps: facedetect_cnn(result, bgr, width, height,
# step). Its result holds an int count, then 16 shorts per face: confidence (0-100), x, y, w, h,
# 5 landmarks (x, y), one unused.
_YUNET_SYMBOL = "_Z14facedetect_cnnPhS_iii"
_YUNET_RESULT_BYTES = 0x9000  # libfacedetection's DETECT_BUFFER_SIZE


@lru_cache(maxsize=None)
def _yunet_entry():
    """yuface's bundled libfacedetection through ctypes, or None (then ``yuface.detect``).

    Why: ``yuface.detect`` allocates a 36 KB result buffer per call and never frees it (measured:
    +37 KB RSS per call whatever the image size, 2023.5.1), which a labelling actor working
    through millions of images cannot afford. Called directly with one buffer per process, the
    same library gives the same detections and RSS stays flat.
    """
    import ctypes
    import yuface
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(yuface.__file__), "libfacedetection.so"))
        entry = lib[_YUNET_SYMBOL]
    except (OSError, AttributeError):
        warnings.warn("yuface: libfacedetection's facedetect_cnn not found; using yuface.detect, which "
                      "leaks about 37 KB per image", stacklevel=2)
        return None
    entry.restype = ctypes.c_void_p
    entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return entry


def yunet_faces(image: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (N, 4) XYWH, landmarks (N, 10), scores (N,) in [0, 1]) of the faces YuNet finds in a
    BGR uint8 image."""
    entry = _yunet_entry()
    if entry is None:
        import yuface
        confidences, boxes, points = yuface.detect(image, min_confidence)
        return boxes, points, np.asarray(confidences, np.float32).reshape(-1) / 100
    image = np.ascontiguousarray(image)
    result = _yunet_result_buffer()
    entry(result.ctypes.data, image.ctypes.data, image.shape[1], image.shape[0], image.strides[0])
    n = int(result[:4].view(np.int32)[0])
    faces = result[4:4 + 32 * n].view(np.int16).reshape(n, 16)
    faces = faces[faces[:, 0] > min_confidence * 100]
    return faces[:, 1:5].copy(), faces[:, 5:15].copy(), faces[:, 0].astype(np.float32) / 100


_thread_local = threading.local()


def _yunet_result_buffer() -> np.ndarray:
    """One result buffer per thread, reused for every image."""
    if not hasattr(_thread_local, "yunet_result"):
        _thread_local.yunet_result = np.zeros(_YUNET_RESULT_BYTES, np.uint8)
    return _thread_local.yunet_result


class FaceDetector:
    """Find the largest face: YuNet (the ``yuface`` wheel, weights built in; or OpenCV's
    ``FaceDetectorYN`` given an ``.onnx`` file), or OpenCV's Haar cascade.

    ``kind``: ``auto`` (YuNet when ``yuface`` is installed, else Haar, with a warning), ``yunet``,
    ``haar``, or a path to a YuNet ``.onnx`` file. :attr:`name` says which one runs. YuNet gives
    5 landmarks per face, so the box comes from them exactly as for a dataset's landmark file
    (crops frame faces alike whatever found them) and AttParseNet masks can be drawn; Haar gives a
    box only, calibrated against landmarks on MTFL (width = 2.76x eye distance).

    Detection runs on a copy downscaled to ``max_side`` pixels (a 1024 px StyleGAN image costs
    what a 320 px one does).
    """

    # Haar defaults measured on real faces (CelebA, CelebA-HQ, in-the-wild, StyleGAN; 2 cores):
    # scale 1.2 / 4 neighbours / faces >= 20% of the short side found 140/150 HQ, 130/150 in the
    # wild, 67/70 StyleGAN in 6-12 ms, vs 142/136/68 in 16-26 ms for OpenCV's usual 1.1 / 5 / 12%.
    def __init__(self, kind: str = "auto", max_side: int = 320, scale_factor: float = 1.2,
                 min_neighbors: int = 4, min_face: float = 0.2, min_confidence: float = 0.5):
        self.max_side, self.scale_factor, self.min_neighbors = max_side, scale_factor, min_neighbors
        self.min_face, self.min_confidence = min_face, min_confidence
        self.yunet_cv = None
        if kind == "auto":
            kind = "yunet" if yunet_available() else "haar"
            if kind == "haar":
                warnings.warn("face detector: yuface is not installed (wheels for CPython 3.10/3.11), "
                              "falling back to the Haar cascade, which misses more faces and gives no "
                              "landmarks", stacklevel=2)
        if kind == "yunet":
            if not yunet_available():
                raise ValueError("detector 'yunet' needs the yuface package (pip install yuface; "
                                 "CPython 3.10/3.11), or pass a YuNet .onnx file as the detector")
            self.name = "yunet"
        elif kind == "haar":
            self.cascade = _cascade(default_cascade_path())
            self.name = "haar"
        elif kind.endswith(".onnx"):
            if not os.path.isfile(kind):
                raise FileNotFoundError(f"{kind}: YuNet model file not found")
            self.yunet_cv = cv2.FaceDetectorYN.create(kind, "", (320, 320), min_confidence)
            self.name = f"yunet-onnx:{os.path.basename(kind)}"
        else:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)} or a YuNet .onnx file, got {kind!r}")

    def __call__(self, image: np.ndarray) -> FaceBox | None:
        found = self.detect(image)
        return None if found is None else found.box

    def detect(self, image: np.ndarray) -> Detection | None:
        """The largest face in ``image`` (BGR), or None."""
        found = self.detect_all(image)
        return found[0] if found else None

    def detect_all(self, image: np.ndarray) -> list[Detection]:
        """Every face in ``image`` (BGR), largest first (by the detector's box area); each
        :class:`Detection` carries ``n_faces`` = how many there are."""
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1 else image
        if self.name == "haar":
            grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
            min_size = max(16, int(self.min_face * min(grey.shape)))
            faces = self.cascade.detectMultiScale(grey, self.scale_factor, self.min_neighbors,
                                                  minSize=(min_size, min_size))
            out = []
            for x, y, fw, fh in sorted((tuple(float(v) for v in f) for f in faces), key=lambda f: -f[2] * f[3]):
                out.append(Detection(FaceBox((x + fw / 2) / scale, (y + fh / 2) / scale, max(fw, fh) / scale), None,
                                     (x / scale, y / scale, fw / scale, fh / scale), np.nan, len(faces)))
            return out
        small = np.ascontiguousarray(small if small.ndim == 3 else cv2.cvtColor(small, cv2.COLOR_GRAY2BGR))
        if self.yunet_cv is not None:
            self.yunet_cv.setInputSize((small.shape[1], small.shape[0]))
            _, faces = self.yunet_cv.detect(small)
            if faces is None or len(faces) == 0:
                return []
            boxes, points, scores = faces[:, 0:4], faces[:, 4:14], faces[:, 14]
        else:
            boxes, points, scores = yunet_faces(small, self.min_confidence)
        out = []
        for k in np.argsort(-(boxes[:, 2].astype(np.float64) * boxes[:, 3]), kind="stable"):
            landmarks = points[k].astype(np.float32).reshape(5, 2) / scale
            out.append(Detection(face_box_from_landmarks(landmarks), landmarks,
                                 tuple(float(v) / scale for v in boxes[k]), float(scores[k]), len(boxes)))
        return out


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


# ---------------------------------------------------------------------------------------------
# Pencil sketch (ABM-CNN's "simplification")
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------

# ABM-CNN: "we convert every image into 9 images by changing its perspectives": the original and
# these 8, each with its own seeded random strength.
OFFLINE_AUGMENTATIONS = ("original", "flip", "rotate_left", "rotate_right", "shift", "zoom",
                         "perspective", "brightness_contrast", "flip_rotate")


def _homography(name: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
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


def apply_augmentation(image: np.ndarray, name: str, rng: np.random.Generator,
                       masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Apply one named augmentation. Masks (C, H, W) follow the same geometry (nearest).

    Returns (image, masks, 3x3 homography applied).
    """
    h, w = image.shape[:2]
    H = _homography(name, (w, h), rng)
    out = image
    if not np.allclose(H, np.eye(3)):
        out = cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if masks is not None:
            mh, mw = masks.shape[1:]
            S = np.diag([mw / w, mh / h, 1.0])
            Hm = S @ H @ np.linalg.inv(S)
            masks = np.stack([cv2.warpPerspective(m, Hm, (mw, mh), flags=cv2.INTER_NEAREST,
                                                  borderMode=cv2.BORDER_CONSTANT) for m in masks])
    if name in ("brightness_contrast", "perspective", "zoom"):
        # Photometric change on top; the pure geometric ones keep the pixels' values.
        alpha, beta = rng.uniform(0.75, 1.25), rng.uniform(-30, 30)
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
        out = out[[1, 0, 2, 4, 3]]
    return out


def random_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Online mode: a random flip, small rotation/shift/zoom and brightness/contrast."""
    h, w = image.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.95, 1.1))
    M[:, 2] += rng.uniform(-0.05, 0.05, 2) * (w, h)
    out = cv2.warpAffine(image, M, (w, h), borderMode=cv2.BORDER_REFLECT101)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return cv2.convertScaleAbs(out, alpha=rng.uniform(0.8, 1.2), beta=rng.uniform(-20, 20))


# ---------------------------------------------------------------------------------------------
# Weak segmentation masks (AttParseNet), estimated from 5 landmarks
# ---------------------------------------------------------------------------------------------

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
