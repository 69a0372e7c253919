"""The batch ops on plain dicts (what Ray Data actors run), without Ray."""
from __future__ import annotations

import numpy as np
import pytest

from facray import columns
from facray.attributes import ATTRIBUTES
from facray.data import ops
from facray.data.celeba import read_celeba
from facray.data.pipeline import PrepareConfig, preprocessing_chain
from facray.data.prepared import LANDMARK_FIELDS


def _batch(table):
    return {c: table[c].astype(str).to_numpy(dtype=object) if table[c].dtype == object or c == "split"
            else table[c].to_numpy() for c in table.columns}


def test_chain_crops_augments_train_only_and_keeps_error_rows(synth_copy):
    (synth_copy / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    table = read_celeba(synth_copy).iloc[:12]
    cfg = PrepareConfig(size=64, augment=3, masks=True, mask_size=16)
    out = preprocessing_chain(cfg, "aligned")(_batch(table))
    n_train = int((table.split == "train").sum())
    assert len(out["image"]) == 3 * n_train + (12 - n_train) - 2  # the broken train row is not augmented
    assert set(np.unique(out["variant"][out["split"] != "train"])) == {"original"}
    bad = out["path"] == table.path.iloc[1]
    assert bad.sum() == 1 and out["error_kind"][bad][0] == "not_an_image"
    assert "000002.jpg: not an image" in out["error"][bad][0]
    assert out["crop_method"][bad][0] == "error" and not out["face_found"][bad][0]
    good = ~bad
    assert (out["crop_method"][good] == "landmarks").all() and out["face_found"][good].all()
    assert len(out["image"][0]) == 64 * 64 * 3  # raw bytes of a 64x64x3 crop
    for a in ATTRIBUTES[:3]:
        assert set(np.unique(out[a])) <= {0, 1}
    assert all(f in out for f in LANDMARK_FIELDS) and len(out["masks"][0]) == 40 * 16 * 16 // 8


def test_pack_labels_marks_missing_attributes():
    batch = {"path": np.array(["a", "b"], dtype=object), "Male": np.array([1, 0])}
    labels = ops.pack_labels(batch)
    assert labels.shape == (2, 40) and labels[0, ATTRIBUTES.index("Male")] == 1
    assert (np.delete(labels, ATTRIBUTES.index("Male"), axis=1) == -1).all()


def test_unreadable_path_becomes_an_error_row(tmp_path):
    batch = {"path": np.array([str(tmp_path / "gone.jpg")], dtype=object)}
    out = ops.ImageDecoder()(batch)
    assert out["image"][0] is None and out["error_kind"][0] == "unreadable"
    assert "gone.jpg: cannot read file" in out["error"][0]


def test_stable_seed_depends_on_id_not_order():
    assert ops.stable_seed("000001.jpg", 0) == ops.stable_seed("000001.jpg", 0)
    assert ops.stable_seed("000001.jpg", 0) != ops.stable_seed("000002.jpg", 0)
    assert ops.stable_seed("000001.jpg", 0) != ops.stable_seed("000001.jpg", 1)


def test_detected_landmarks_stand_in_for_a_landmark_file(synth_copy):
    """No landmark file: YuNet's landmarks go to the crop's landmark columns and draw the masks."""
    import pytest
    pytest.importorskip("yuface")
    (synth_copy / "list_landmarks_align_celeba.txt").unlink()
    table = read_celeba(synth_copy).iloc[:8]
    assert table[["lefteye_x"]].isna().all().all()
    cfg = PrepareConfig(size=64, augment=1, masks=True, mask_size=16, crop="detect", detector="yunet")
    out = preprocessing_chain(cfg, "aligned", serialize=False)(_batch(table))
    found = out["face_found"]
    assert found.sum() >= 3 and (out["crop_method"][found] == "detect").all()  # cartoon faces: not all found
    lms = out["landmarks"][found].reshape(-1, 5, 2)
    assert np.isfinite(lms).all() and ((lms > 0) & (lms < 64)).all()
    assert (lms[:, 0, 0] < lms[:, 1, 0]).all()  # left eye left of right eye, as CelebA orders them
    assert out["masks"][found].any(axis=(1, 2, 3)).all()  # every found face has masks drawn


def test_nose_centred_crops_put_the_nose_landmark_in_the_middle(synth_copy):
    """The KTH paper's crops: centred on the nose, the face's scale kept; face crops are not."""
    table = read_celeba(synth_copy).iloc[:8]
    nose = {}
    for centre in ("face", "nose"):
        cfg = PrepareConfig(size=64, augment=1, centre=centre)
        out = preprocessing_chain(cfg, "aligned", serialize=False)(_batch(table))
        assert out["face_found"].all()
        nose[centre] = out["landmarks"].reshape(-1, 5, 2)[:, 2]
        eyes = out["landmarks"].reshape(-1, 5, 2)[:, :2]
        if centre == "nose":
            assert (out["crop_method"] == "landmarks+nose").all()
            eye_distance = np.linalg.norm(eyes[:, 1] - eyes[:, 0], axis=1)
    np.testing.assert_allclose(nose["nose"], 32.0, atol=0.01)
    assert np.abs(nose["face"] - 32.0).max() > 1.0  # face crops centre the lifted face box instead
    assert (eye_distance > 10).all()  # same margin: the face keeps its size in the crop
    import pytest
    with pytest.raises(ValueError, match="crop centre must be one of"):
        ops.FaceCropper(centre="chin")


def test_serializer_round_trips_every_image_format():
    """raw and png give back the exact pixels; jpeg (quality 95) stays within a few grey levels on a
    smooth face-like image and keeps the shapes (a one-channel sketch stays one channel); an
    unknown format is refused where it is named."""
    from facray.data.prepared import IMAGE_FORMATS, Serializer, decode_column
    yy, xx = np.mgrid[0:32, 0:32]
    image = np.dstack([(xx * 8) % 256, (yy * 8) % 256, ((xx + yy) * 4) % 256]).astype(np.uint8)
    images = np.stack([image, image[::-1]])
    sketches = images[..., 0].copy()
    batch = {columns.IMAGE: images, columns.SKETCH: sketches, columns.PATH: np.array(["a", "b"], dtype=object)}
    for fmt in IMAGE_FORMATS:
        row = Serializer(fmt)(dict(batch))
        got = decode_column(row[columns.IMAGE], images.shape[1:], fmt)
        got_sketch = decode_column(row[columns.SKETCH], sketches.shape[1:], fmt)
        if fmt == "jpeg":
            assert np.abs(got.astype(int) - images).mean() < 3
            assert np.abs(got_sketch.astype(int) - sketches).mean() < 3
        else:
            np.testing.assert_array_equal(got, images)
            np.testing.assert_array_equal(got_sketch, sketches)
    with pytest.raises(ValueError, match="jpeg.*got 'webp'"):
        Serializer("webp")


def test_no_sketch_stage_when_sketch_channels_is_zero(synth_copy):
    """``--sketch-channels 0``: multi-task models read no sketches, so none are drawn or stored."""
    table = read_celeba(synth_copy).iloc[:4]
    cfg = PrepareConfig(size=32, augment=1, sketch_channels=0)
    chain = preprocessing_chain(cfg, "aligned", serialize=False)
    assert not any(isinstance(s, ops.Sketcher) for s in chain.ops)
    out = chain(_batch(table))
    assert columns.SKETCH not in out and out[columns.IMAGE].shape == (4, 32, 32, 3)
    assert "sketch" not in preprocessing_chain(cfg, "aligned")(_batch(table))  # nor a sketch column


def test_decoding_in_slices_gives_the_whole_batch_result_and_timings(tmp_path):
    """Labelling decodes and crops 8 rows at a time (full-size images of one slice alive, not of
    the batch): rows, errors, crops and the stage names are those of the whole-batch chain."""
    from facray.data.synth import write_unlabelled_faces
    paths = [str(p) for p in write_unlabelled_faces(tmp_path / "faces", n=6, seed=4, sizes=(160, 96))]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    batch = {"path": np.array(sorted(paths + [str(tmp_path / "broken.png")]), dtype=object)}

    def decode_and_crop():
        return ops.Chain(ops.ImageDecoder(), ops.FaceCropper(32, method="detect"))

    whole = decode_and_crop()
    sliced = ops.Chain(ops.InSlices(decode_and_crop(), rows=3))
    expected, got = whole(batch), sliced(batch)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert got["error_kind"].tolist().count("not_an_image") == 1
    assert set(sliced.take_seconds()) == set(whole.take_seconds()) == {"decode", "detect", "crop"}
    assert sliced.ops[0].chain.seconds == {"decode": 0.0, "detect": 0.0, "crop": 0.0}  # taken, not kept
