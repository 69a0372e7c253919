"""Known aligned layouts (templates): where an image follows one, its face is cropped by the
template; anything else is detected. Decided per image, on generated faces (no shared data)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import mixed_faces
from facray.data import ops
from facray.data.transforms.detect import FaceDetector
from facray.data.transforms.templates import TEMPLATES, agrees, template_for_shape


def test_a_template_is_chosen_by_aspect_ratio_only_for_known_layouts():
    assert template_for_shape(256, 256).name == template_for_shape(1024, 1024).name == "ffhq"
    assert template_for_shape(178, 218).name == "celeba"
    assert template_for_shape(640, 480) is None and template_for_shape(300, 310) is None
    t = TEMPLATES[0]
    box = t.box_for(256, 256)
    assert agrees(box, box)
    shifted = type(box)(box.cx + 0.11 * box.size, box.cy, box.size)
    assert not agrees(shifted, box)
    assert not agrees(type(box)(box.cx, box.cy, box.size * 1.4), box)


def _crop(images, method, faces="largest"):
    cropper = ops.FaceCropper(64, method=method, detector="yunet", faces=faces)
    return cropper({"path": np.array([f"{i}.png" for i in range(len(images))], dtype=object), "image": images})


def test_a_mixed_batch_is_decided_per_image_and_detect_forces_detection():
    """Same size, same folder, unaligned first: each image gets its own crop_method; --crop detect
    detects every one; where the template is used, its crop frames the face as detection does."""
    pytest.importorskip("yuface")
    images, aligned = mixed_faces()
    out = _crop(images, "auto")
    assert (out["crop_method"][aligned] == "template").all()
    assert (out["crop_method"][~aligned] == "detect").all()
    assert out["face_found"].all() and (out["n_faces"][aligned] == 1).all()
    detected = _crop(images, "detect")
    assert (detected["crop_method"] == "detect").all()
    # Where the template is used, its box is what the row reports, and it frames the face as the
    # detector does (centre within 0.1 box sizes: the agreement detectors are held to).
    detector = FaceDetector("yunet")
    for i in np.flatnonzero(aligned):
        box = TEMPLATES[0].box_for(256, 256)
        assert np.allclose([out["face_x"][i], out["face_w"][i]], [box.cx - box.size / 2, box.size], atol=1e-3)
        found = detector.detect(images[i]).box
        assert np.hypot(found.cx - box.cx, found.cy - box.cy) / found.size < 0.1
    # The landmarks the template implies land inside the crop, eyes left to right (masks need them).
    lms = out["landmarks"][aligned].reshape(-1, 5, 2)
    assert ((lms > 0) & (lms < 64)).all() and (lms[:, 0, 0] < lms[:, 1, 0]).all()


def test_an_image_of_a_known_layout_with_its_face_elsewhere_is_detected():
    """The size and aspect of a StyleGAN image say nothing by themselves: a square photo whose
    face is not where FFHQ puts it is detected, as is a face-less one (centre crop)."""
    pytest.importorskip("yuface")
    images, aligned = mixed_faces(4)
    face = images[int(np.flatnonzero(aligned)[0])]
    # The same face shifted by 36 px, a fifth of its box: still found, no longer on the template.
    moved = cv2.warpAffine(face, np.float32([[1, 0, 30], [0, 1, 20]]), face.shape[1::-1],
                           borderMode=cv2.BORDER_REPLICATE)
    blank = np.full_like(face, 127)
    out = _crop([moved, blank, cv2.resize(face, (300, 200))], "auto")
    assert out["crop_method"].tolist() == ["detect", "centre", "detect"]


def test_faces_all_detects_every_image_at_full_size():
    """--faces all wants every face, and a small one in the background may not show on the
    check's 96 px copy: no template then."""
    pytest.importorskip("yuface")
    images, aligned = mixed_faces(4)
    assert (_crop(images, "auto", faces="all")["crop_method"] == "detect").all()
