"""Face detectors: YuNet (libfacedetection through yuface, called with ctypes) or OpenCV's Haar
cascade, behind one :class:`FaceDetector`; boxes come back as :class:`~facray.data.transforms.face.FaceBox`."""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from facray.data.transforms.face import FaceBox, face_box_from_landmarks

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
