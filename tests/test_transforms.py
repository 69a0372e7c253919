"""Pure transforms, no Ray: crop, sketch, augmentation, weak masks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from facray.attributes import ATTRIBUTES
from facray.data.celeba import LANDMARK_COLUMNS, read_celeba
from facray.data.transforms.augment import OFFLINE_AUGMENTATIONS, augment_landmarks, augment_offline
from facray.data.transforms.detect import FaceDetector
from facray.data.transforms.face import centre_square, crop_square, face_box_from_landmarks, transform_points
from facray.data.transforms.masks import ATTRIBUTE_REGIONS, REGIONS, attribute_masks, region_masks
from facray.data.transforms.sketch import pencil_sketch

LANDMARKS = np.array([[60, 70], [100, 70], [80, 95], [64, 118], [96, 118]], np.float32)


@pytest.mark.parametrize("size", [64, 180])
def test_crop_contains_landmarks_and_has_requested_size(synth_root, size):
    table = read_celeba(synth_root)
    for _, row in table.iloc[:10].iterrows():
        img = cv2.imread(row.path)
        lm = row[list(LANDMARK_COLUMNS)].to_numpy(float).reshape(5, 2)
        crop, M = crop_square(img, face_box_from_landmarks(lm), size)
        assert crop.shape == (size, size, 3)
        inside = transform_points(lm, M)
        assert ((inside > 0.1 * size) & (inside < 0.9 * size)).all()


def test_crop_maps_a_marked_pixel_where_the_affine_says():
    img = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(img, (150, 120), 3, (255, 255, 255), -1)
    lm = LANDMARKS + (100, 60)
    crop, M = crop_square(img, face_box_from_landmarks(lm), 96)
    x, y = transform_points(np.array([[150, 120]]), M)[0]
    assert crop[int(round(y)), int(round(x))].max() > 100


def test_crop_near_the_border_pads_instead_of_failing():
    img = np.full((100, 100, 3), 200, np.uint8)
    crop, _ = crop_square(img, face_box_from_landmarks(LANDMARKS - 60), 64)
    assert crop.shape == (64, 64, 3)


def test_no_face_falls_back_to_centre_crop():
    blank = np.full((240, 320, 3), 127, np.uint8)
    assert FaceDetector()(blank) is None
    crop, M = centre_square(blank, 50)
    assert crop.shape == (50, 50, 3)
    assert np.allclose(transform_points(np.array([[160, 120]]), M), [[25, 25]], atol=0.6)


def test_detector_finds_a_generated_face_near_its_landmarks(synth_root):
    table = read_celeba(synth_root)
    det, hits = FaceDetector(), 0
    for _, row in table.iloc[:20].iterrows():
        box = det(cv2.imread(row.path))
        if box is not None:
            hits += 1
            lm = row[list(LANDMARK_COLUMNS)].to_numpy(float).reshape(5, 2)
            ref = face_box_from_landmarks(lm)
            assert abs(box.cx - ref.cx) < 0.35 * ref.size and abs(box.cy - ref.cy) < 0.35 * ref.size
    assert hits >= 5


def test_sketch_of_flat_images_is_white_and_deterministic():
    for value in (0, 90, 255):
        s = pencil_sketch(np.full((64, 64, 3), value, np.uint8))
        assert s.shape == (64, 64) and (s == 255).all()
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert (pencil_sketch(img) == pencil_sketch(img)).all()
    three = pencil_sketch(img, channels=3)
    assert three.shape == (64, 64, 3) and (three[..., 0] == pencil_sketch(img)).all()


def test_sketch_draws_dark_lines_at_edges():
    img = np.full((64, 64, 3), 230, np.uint8)
    cv2.line(img, (0, 32), (63, 32), (20, 20, 20), 2)
    s = pencil_sketch(img)
    assert s[32].mean() < 100 and s[5].mean() > 250


def test_nine_offline_augmentations_are_deterministic_and_distinct():
    img = np.random.default_rng(1).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    a = augment_offline(img, seed=42)
    b = augment_offline(img, seed=42)
    c = augment_offline(img, seed=43)
    assert [n for n, *_ in a] == list(OFFLINE_AUGMENTATIONS) and len(a) == 9
    assert (a[0][1] == img).all()
    assert all((x[1] == y[1]).all() for x, y in zip(a, b))
    assert any((x[1] != y[1]).any() for x, y in zip(a[2:], c[2:]))
    assert len({x[1].tobytes() for x in a}) == 9
    assert (a[1][1] == img[:, ::-1]).all()  # "flip" is an exact mirror


def test_augmentation_moves_masks_and_landmarks_with_the_image():
    img = np.zeros((96, 96, 3), np.uint8)
    cv2.circle(img, (30, 40), 4, (255, 255, 255), -1)
    masks = np.zeros((1, 48, 48), np.uint8)
    masks[0, 18:22, 13:17] = 1  # the same spot at half resolution
    for name, out, m, H in augment_offline(img, 7, masks=masks):
        x, y = transform_points(np.array([[30, 40]]), H)[0]
        if 3 < x < 92 and 3 < y < 92:
            assert out[int(round(y)), int(round(x))].max() > 60, name
            assert m[0, int(y / 2) - 2:int(y / 2) + 3, int(x / 2) - 2:int(x / 2) + 3].any(), name
    flipped = augment_landmarks(LANDMARKS, np.array([[-1, 0, 159], [0, 1, 0], [0, 0, 1.0]]))
    assert flipped[0, 0] < flipped[1, 0] and flipped[3, 0] < flipped[4, 0]


def test_region_masks_light_the_expected_places():
    regions = region_masks(LANDMARKS, (160, 200))
    assert set(regions) == set(REGIONS)
    at = lambda r, x, y: regions[r][int(y), int(x)] == 1  # noqa: E731
    assert at("eyes", 60, 70) and at("eyes", 100, 70) and not at("eyes", 80, 118)
    assert at("mouth", 80, 118) and not at("mouth", 60, 70)
    assert at("nose", 80, 88) and at("top_of_head", 80, 30) and at("chin", 80, 140)
    assert at("below_chin", 80, 180) and at("eyebrows", 60, 58) and at("above_mouth", 80, 107)
    assert at("ears", 35, 75) and at("ears", 125, 75) and at("cheeks", 55, 100)
    assert not regions["top_of_head"][150:].any() and not regions["below_chin"][:100].any()


def test_attribute_masks_follow_labels_and_the_region_table():
    labels = np.zeros(40, np.int8)
    labels[ATTRIBUTES.index("Eyeglasses")] = 1
    labels[ATTRIBUTES.index("Mustache")] = 1
    masks = attribute_masks(LANDMARKS, labels, (160, 200))
    assert masks.shape == (40, 200, 160)
    lit = {ATTRIBUTES[i] for i in range(40) if masks[i].any()}
    assert lit == {"Eyeglasses", "Mustache"}
    regions = region_masks(LANDMARKS, (160, 200))
    assert (masks[ATTRIBUTES.index("Eyeglasses")] == np.maximum(regions["eyes"], regions["nose"])).all()
    assert ATTRIBUTE_REGIONS["Wearing_Necktie"] == ("below_chin",)
    assert not attribute_masks(np.full((5, 2), np.nan), np.ones(40), (16, 16)).any()


def test_yunet_gives_landmarks_near_the_generated_truth(synth_root):
    pytest.importorskip("yuface")
    table = read_celeba(synth_root)
    det, close = FaceDetector("yunet"), 0
    assert det.name == "yunet"
    for _, row in table.iloc[:20].iterrows():
        found = det.detect(cv2.imread(row.path))
        if found is not None:
            truth = row[list(LANDMARK_COLUMNS)].to_numpy(float).reshape(5, 2)
            eye_dist = np.linalg.norm(truth[1] - truth[0])
            assert found.landmarks.shape == (5, 2)
            close += np.linalg.norm(found.landmarks - truth, axis=1).mean() < 0.35 * eye_dist
    assert close >= 15


def test_yunet_through_its_c_library_finds_what_yuface_finds_and_does_not_leak(synth_root):
    yuface = pytest.importorskip("yuface")
    from facray.data.transforms.detect import _yunet_entry, yunet_faces
    assert _yunet_entry() is not None  # the bundled library's entry point was found
    table = read_celeba(synth_root)
    images = [cv2.imread(p) for p in table.path[:10]]
    for image in images:
        confidences, boxes, points = yuface.detect(image, 0.5)
        ours_boxes, ours_points, ours_scores = yunet_faces(image, 0.5)
        assert np.array_equal(ours_boxes, boxes) and np.array_equal(ours_points, points)
        assert np.allclose(ours_scores, np.asarray(confidences).reshape(-1) / 100)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    before = rss()
    for _ in range(300):
        for image in images:
            yunet_faces(image, 0.5)
    assert rss() - before < 30e6  # yuface.detect itself grows by ~37 KB a call: 110 MB here


def test_auto_detector_falls_back_to_haar_and_says_so(monkeypatch):
    import facray.data.transforms.detect as detect
    monkeypatch.setattr(detect, "yunet_available", lambda: False)
    with pytest.warns(UserWarning, match="falling back to the Haar cascade"):
        det = FaceDetector("auto")
    assert det.name == "haar"
    with pytest.raises(ValueError, match="needs the yuface package"):
        FaceDetector("yunet")
    with pytest.raises(ValueError, match="detector must be one of auto, yunet, haar"):
        FaceDetector("mtcnn")
