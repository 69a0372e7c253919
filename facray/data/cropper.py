"""The face-crop batch op (:class:`FaceCropper`): one face box per image from a landmark file, a
bbox file, a known aligned layout or the detector, then a square crop. Pure numpy/OpenCV, no Ray;
:mod:`facray.data.ops` exports it beside the other batch ops."""
from __future__ import annotations

import time

import numpy as np

from facray import columns
from facray.data.celeba import BBOX_COLUMNS, LANDMARK_COLUMNS
from facray.data.transforms.detect import Detection, FaceDetector
from facray.data.transforms.face import (ALIGNED_CELEBA_LANDMARKS, ALIGNED_CELEBA_SIZE, FaceBox, centre_square,
                                         crop_square, face_box_from_bbox, face_box_from_landmarks,
                                         transform_points)
from facray.data.transforms.templates import CHECK_SIDE, agrees, template_for_shape

FACES = ("largest", "all")
CROP_METHODS = ("auto", "landmarks", "bbox", "aligned", "template", "detect", "full")
CROP_CENTRES = ("face", "nose")


class FaceCropper:
    """Crop each decoded image to a ``size`` square around the face.

    ``method``: ``auto`` (landmarks, else bbox for in-the-wild images, else CelebA's fixed aligned
    geometry for 178x218 aligned images, else a known aligned layout where the image is checked to
    follow it, else the detector), or one of them forced; ``template`` checks each image against
    the known layouts (:mod:`facray.data.transforms.templates`: a detection on a 96 px copy) and
    detects at full size where it does not follow one; ``full`` resizes the whole image. No face found: centre crop with ``face_found=False``; never dropped.
    Rows with an error get a black crop and keep their error.

    ``centre``: ``face`` (the face box, lifted a little so hair and hats stay in) or ``nose`` (the
    KTH paper's crops: centred on the nose landmark, same side). Nose centring needs landmarks
    (a landmark file or the detector's); faces found without them stay face-centred, and the
    ``crop_method`` column says which (``landmarks+nose`` when nose-centred).
    """
    stage = "crop"

    def __init__(self, size: int = 180, margin: float = 0.35, method: str = "auto",
                 image_kind: str = "wild", detector: str = "auto", min_face: float = 0.2, centre: str = "face",
                 faces: str = "largest"):
        if method not in CROP_METHODS:
            raise ValueError(f"crop method must be one of {CROP_METHODS}, got {method!r}")
        if centre not in CROP_CENTRES:
            raise ValueError(f"crop centre must be one of {CROP_CENTRES}, got {centre!r}")
        self.size, self.margin, self.method, self.image_kind = size, margin, method, image_kind
        if faces not in FACES:
            raise ValueError(f"faces must be one of {FACES}, got {faces!r}")
        self.centre, self.faces = centre, faces
        self.detector = FaceDetector(detector, min_face=min_face) if method in ("auto", "template", "detect") else None
        # The template check: the same detector on a small copy (a tenth of a full detection's time).
        self.checker = FaceDetector(self.detector.name if self.detector.name in ("yunet", "haar") else detector,
                                    max_side=CHECK_SIDE, min_face=min_face) \
            if method in ("auto", "template") else None
        self.sub_seconds = {"detect": 0.0}  # of this op's time, how much the detector took

    def _box(self, image, landmarks, bbox):
        """(face box or None, method, the 5 landmarks it implies in source pixels or None, the
        :class:`facray.data.transforms.detect.Detection` when the detector ran, else None)."""
        m = self.method
        if m in ("auto", "landmarks") and np.isfinite(landmarks).all():
            lm = landmarks.reshape(5, 2)
            return face_box_from_landmarks(lm), "landmarks", lm, None
        if (m == "bbox" or (m == "auto" and self.image_kind == "wild")) and bbox is not None \
                and np.isfinite(bbox).all() and bbox[2] > 0:
            return face_box_from_bbox(*bbox), "bbox", None, None
        h, w = image.shape[:2]
        if m == "aligned" or (m == "auto" and self.image_kind == "aligned" and (w, h) == ALIGNED_CELEBA_SIZE):
            lm = ALIGNED_CELEBA_LANDMARKS * (w / ALIGNED_CELEBA_SIZE[0], h / ALIGNED_CELEBA_SIZE[1])
            return face_box_from_landmarks(lm), "aligned", lm, None
        if m in ("auto", "template", "detect"):
            start = time.perf_counter()
            templated = self._template(image) if m != "detect" else None
            if templated is not None:
                self.sub_seconds["detect"] += time.perf_counter() - start
                return [templated] if self.faces == "all" else templated
            found = self.detector.detect_all(image) if self.faces == "all" else [self.detector.detect(image)]
            self.sub_seconds["detect"] += time.perf_counter() - start
            if not found or found[0] is None:
                return None, "centre", None, None
            # The detector's landmarks stand in for a landmark file (masks, nose-centred crops).
            if self.faces == "all":
                return [(f.box, "detect", f.landmarks, f) for f in found]
            return found[0].box, "detect", found[0].landmarks, found[0]
        return None, "full", None, None

    def _template(self, image):
        """The image's face by a known aligned layout, as :meth:`_box` gives it, if the check finds
        exactly one face and it sits where the layout puts it; else None (detect at full size)."""
        h, w = image.shape[:2]
        template = template_for_shape(w, h)
        # --faces all wants every face: the small copy may not show a small one in the background.
        if template is None or self.faces == "all":
            return None
        found = self.checker.detect_all(image)
        if len(found) != 1 or not agrees(found[0].box, template.box_for(w, h)):
            return None
        lm = template.landmarks_for(w, h)
        box = face_box_from_landmarks(lm)
        # The face box is the one the crop came from (as for a landmark file); the score is the check's.
        square = (box.cx - box.size / 2, box.cy - box.size / 2, box.size, box.size)
        return box, "template", lm, Detection(box, lm, square, found[0].score, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[columns.PATH])
        lms = np.stack([np.asarray(batch[c], np.float64) for c in LANDMARK_COLUMNS], 1) \
            if all(c in batch for c in LANDMARK_COLUMNS) else np.full((n, 10), np.nan)
        bbs = np.stack([np.asarray(batch[c], np.float64) for c in BBOX_COLUMNS], 1) \
            if all(c in batch for c in BBOX_COLUMNS) else None
        # One output row per input row; with faces="all", one per face found (an image with none
        # keeps its one row). ``source[r]``: the input row of output row r.
        choices, source, face_index = [], [], []
        for i, image in enumerate(batch[columns.IMAGE]):
            choice = None if image is None else self._box(image, lms[i], None if bbs is None else bbs[i])
            for k, c in enumerate(choice if isinstance(choice, list) else [choice]):
                choices.append(c)
                source.append(i)
                face_index.append(k)
        n = len(source)
        crops = np.zeros((n, self.size, self.size, 3), np.uint8)
        found = np.zeros(n, bool)
        methods = np.full(n, "error", dtype=object)
        out_lm = np.full((n, 10), np.nan, np.float32)
        n_faces = np.full(n, -1, np.int16)
        face_box = np.full((n, 4), np.nan, np.float32)
        face_score = np.full(n, np.nan, np.float32)
        for i, (choice, src) in enumerate(zip(choices, source)):
            if choice is None:
                continue
            image = batch[columns.IMAGE][src]
            box, methods[i], lm, detection = choice
            if detection is not None:
                n_faces[i], face_box[i], face_score[i] = detection.n_faces, detection.xywh, detection.score
            elif methods[i] == "centre":  # the detector ran and found none
                n_faces[i] = 0
            elif box is not None:  # from a landmark or bbox file: the crop box stands for the face
                face_box[i] = (box.cx - box.size / 2, box.cy - box.size / 2, box.size, box.size)
            if box is None:
                crops[i], M = centre_square(image, self.size)
            elif self.centre == "nose" and lm is not None:
                nose = FaceBox(float(lm[2, 0]), float(lm[2, 1]), box.size)
                crops[i], M = crop_square(image, nose, self.size, self.margin, lift=0.0)
                found[i], methods[i] = True, f"{methods[i]}+nose"
            else:
                crops[i], M = crop_square(image, box, self.size, self.margin)
                found[i] = True
            if lm is not None:
                out_lm[i] = transform_points(lm, M).reshape(-1)
        rows = np.asarray(source, np.int64)
        out = {k: _take(v, rows) for k, v in batch.items()
               if k not in LANDMARK_COLUMNS and k not in BBOX_COLUMNS and k != columns.IMAGE}
        out.update({columns.IMAGE: crops, columns.FACE_FOUND: found, columns.CROP_METHOD: methods, columns.LANDMARKS: out_lm, columns.N_FACES: n_faces,
                    columns.FACE_INDEX: np.asarray(face_index, np.int16), columns.FACE_SCORE: face_score,
                    **{c: face_box[:, j] for j, c in enumerate(columns.FACE_BOX)}})
        return out


def _take(values, rows: np.ndarray):
    """``values`` (an array or a list) at ``rows``."""
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[r] for r in rows]
