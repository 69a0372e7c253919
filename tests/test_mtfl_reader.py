"""MTFL's quirks: backslashes, leading spaces, CRLF, 1/2 codes, x-then-y landmark order."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from facray.data.errors import DatasetError
from facray.data.mtfl import read_mtfl

ROWS = [
    " lfw_5590\\Aaron_0001.jpg 10.5 30.0 20.0 12.0 28.0 40.0 41.0 50.0 60.0 61.0 1 1 2 3",
    "net_7876\\1022_0_0.jpg 11 31 21 13 29 42 43 52 62 63 2 2 1 5",
]


def _make(tmp_path, rows=ROWS, name="training.txt"):
    for sub in ("lfw_5590", "net_7876"):
        (tmp_path / sub).mkdir(exist_ok=True)
    for f in ("lfw_5590/Aaron_0001.jpg", "net_7876/1022_0_0.jpg"):
        cv2.imwrite(str(tmp_path / f), np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / name).write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return tmp_path


def test_reads_codes_paths_and_landmarks(tmp_path):
    table = read_mtfl(_make(tmp_path))
    assert len(table) == 2
    assert table.image_id.tolist() == ["lfw_5590/Aaron_0001.jpg", "net_7876/1022_0_0.jpg"]
    assert table.Male.tolist() == [1, 0] and table.Smiling.tolist() == [1, 0]
    assert table.Eyeglasses.tolist() == [0, 1] and table.pose.tolist() == [3, 5]
    # x1..x5 then y1..y5 become (x, y) pairs per point.
    assert (table.lefteye_x[0], table.lefteye_y[0]) == (10.5, 40.0)
    assert (table.rightmouth_x[0], table.rightmouth_y[0]) == (28.0, 61.0)
    assert (table.split == "train").all()
    assert all(p.startswith(str(tmp_path)) for p in table.path)


def test_testing_file_is_the_test_split(tmp_path):
    _make(tmp_path, name="testing.txt")
    assert (read_mtfl(tmp_path).split == "test").all()


def test_bad_codes_and_field_counts_name_the_line(tmp_path):
    _make(tmp_path, rows=[ROWS[0], ROWS[1].replace(" 2 2 1 5", " 3 2 1 5"), "x.jpg 1 2 3"])
    with pytest.raises(DatasetError) as e:
        read_mtfl(tmp_path)
    assert "training.txt:2: codes gender=3" in str(e.value)
    assert "training.txt:3: expected 15 fields" in str(e.value)


def test_missing_image(tmp_path):
    _make(tmp_path)
    (tmp_path / "net_7876/1022_0_0.jpg").unlink()
    with pytest.raises(DatasetError, match="training.txt:2: .*1022_0_0.jpg does not exist"):
        read_mtfl(tmp_path)
    assert len(read_mtfl(tmp_path, skip_missing=True)) == 1


def test_abm_split_gives_mtfl_train_a_seeded_validation_and_test_split(tmp_path):
    """mtfl_train has no testing.txt: --split abm cuts its rows 70/15/15, the same for a seed."""
    from facray.data.pipeline import PrepareConfig, read_table
    root = _make(tmp_path, rows=ROWS * 10)
    cfg = PrepareConfig(dataset="mtfl", root=str(root), split="abm", seed=3)
    splits = read_table(cfg).split
    assert splits.value_counts().to_dict() == {"train": 14, "val": 3, "test": 3}
    assert splits.tolist() == read_table(cfg).split.tolist()
    assert (read_table(PrepareConfig(dataset="mtfl", root=str(root))).split == "train").all()


def test_a_name_outside_the_dataset_folder_is_refused_with_file_and_line(tmp_path):
    """MTFL's Windows separators: ``..\\outside\\x.jpg`` must not reach a file beside the root."""
    root = tmp_path / "mtfl"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    cv2.imwrite(str(tmp_path / "outside" / "secret_outside_root.jpg"), np.full((64, 64, 3), 9, np.uint8))
    escape = "..\\outside\\secret_outside_root.jpg 1 2 3 4 5 6 7 8 9 10 1 1 1 3"
    _make(root, rows=[ROWS[0], escape])
    for skip in (False, True):
        with pytest.raises(DatasetError, match=r"training.txt:2: image '..\\\\outside\\\\secret_outside_root.jpg' "
                                               r"is outside the dataset folder"):
            read_mtfl(root, skip_missing=skip)
