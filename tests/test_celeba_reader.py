"""The CelebA reader on generated data in every layout, and every bad-input case."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from facray.attributes import ATTRIBUTES
from facray.data.celeba import LANDMARK_COLUMNS, abm_split, labels_matrix, read_celeba
from facray.data.errors import DatasetError


def _attr_lines(root):
    return (root / "list_attr_celeba.txt").read_bytes().decode().split("\r\n")


def _write_attr_lines(root, lines, newline="\r\n"):
    (root / "list_attr_celeba.txt").write_bytes(newline.join(lines).encode())


def test_official_layout_reads_labels_partition_identity_landmarks(synth_root):
    table = read_celeba(synth_root)
    assert len(table) == 120
    assert list(table.columns[2:42]) == list(ATTRIBUTES)
    assert set(np.unique(table[list(ATTRIBUTES)].to_numpy())) <= {0, 1}
    # Labels equal the raw rows of the file (1 -> 1, -1 -> 0).
    raw = {ln.split()[0]: ln.split()[1:] for ln in _attr_lines(synth_root)[2:] if ln.strip()}
    row = table.iloc[7]
    assert [int(v == "1") for v in raw[row.image_id]] == row[list(ATTRIBUTES)].astype(int).tolist()
    assert table["split"].isin(["train", "val", "test"]).all()
    assert (table["identity"] > 0).all()
    assert table[list(LANDMARK_COLUMNS)].notna().all().all()
    assert table.attrs["image_kind"] == "aligned"
    assert table["path"].map(lambda p: p.endswith(".jpg")).all()


def test_lf_and_crlf_give_the_same_table(synth_copy, synth_root):
    lines = _attr_lines(synth_copy)
    _write_attr_lines(synth_copy, [ln.rstrip() + "   " for ln in lines], newline="\n")  # LF + trailing spaces
    a = read_celeba(synth_root)
    b = read_celeba(synth_copy)
    pd.testing.assert_frame_equal(a.drop(columns="path"), b.drop(columns="path"))


def test_count_line_mismatch_warns_and_trusts_rows(synth_copy):
    lines = _attr_lines(synth_copy)
    lines[0] = "202599"
    _write_attr_lines(synth_copy, lines)
    with pytest.warns(UserWarning, match="202599.*120 rows"):
        table = read_celeba(synth_copy)
    assert len(table) == 120


def test_kaggle_csv_layout_matches_official(synth_copy, synth_root):
    official = read_celeba(synth_root)
    for f in ("list_attr_celeba.txt", "list_eval_partition.txt", "list_landmarks_align_celeba.txt",
              "list_bbox_celeba.txt"):
        (synth_copy / f).unlink()
    attrs = official[["image_id", *ATTRIBUTES]].copy()
    attrs[list(ATTRIBUTES)] = attrs[list(ATTRIBUTES)] * 2 - 1
    attrs.to_csv(synth_copy / "list_attr_celeba.csv", index=False)
    official[["image_id", "partition"]].to_csv(synth_copy / "list_eval_partition.csv", index=False)
    official[["image_id", *LANDMARK_COLUMNS]].astype({c: int for c in LANDMARK_COLUMNS}).to_csv(
        synth_copy / "list_landmarks_align_celeba.csv", index=False)
    # The Kaggle archive nests the image folder in a folder of the same name.
    nested = synth_copy / "img_align_celeba" / "img_align_celeba"
    nested.mkdir()
    for p in (synth_copy / "img_align_celeba").glob("*.jpg"):
        p.rename(nested / p.name)
    table = read_celeba(synth_copy)
    assert table.attrs["layout"] == "csv"
    pd.testing.assert_frame_equal(table[list(ATTRIBUTES)], official[list(ATTRIBUTES)])
    assert (table["split"] == official["split"]).all()
    np.testing.assert_allclose(table[list(LANDMARK_COLUMNS)], official[list(LANDMARK_COLUMNS)])
    assert table["path"].iloc[0].startswith(str(nested))


def test_celebahq_square_images_in_the_same_layout(tmp_path):
    from facray.data.synth import write_synthetic_celeba
    root = write_synthetic_celeba(tmp_path / "hq", n=12, seed=3, size=(256, 256))
    import cv2
    table = read_celeba(root)
    assert cv2.imread(table.path[0]).shape == (256, 256, 3)
    assert len(table) == 12


def test_in_the_wild_folder_uses_wild_landmarks(synth_copy):
    (synth_copy / "img_align_celeba").rename(synth_copy / "img_celeba")
    (synth_copy / "list_landmarks_align_celeba.txt").rename(synth_copy / "list_landmarks_celeba.txt")
    table = read_celeba(synth_copy)
    assert table.attrs["image_kind"] == "wild"
    assert table[list(LANDMARK_COLUMNS)].notna().all().all()


def test_abm_split_is_70_15_15_seeded_and_exhaustive():
    s = abm_split(1000, seed=4)
    assert np.bincount(s).tolist() == [700, 150, 150]
    assert (abm_split(1000, seed=4) == s).all() and not (abm_split(1000, seed=5) == s).all()
    assert np.bincount(abm_split(7, seed=0), minlength=3).sum() == 7


def test_abm_split_on_the_table(synth_root):
    table = read_celeba(synth_root, split="abm", seed=2)
    assert table["split"].value_counts().to_dict() == {"train": 84, "val": 18, "test": 18}


def test_labels_matrix_marks_absent_attributes_unknown(synth_root):
    table = read_celeba(synth_root).drop(columns=["Young"])
    m = labels_matrix(table)
    assert m.shape == (120, 40) and (m[:, -1] == -1).all() and set(np.unique(m[:, 0])) <= {0, 1}


# ---- bad input: each error names the file and line and says what is wrong --------------------

def test_row_with_wrong_number_of_fields(synth_copy):
    lines = _attr_lines(synth_copy)
    lines[5] = " ".join(lines[5].split()[:-1])
    _write_attr_lines(synth_copy, lines)
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt:6: 000004.jpg: expected 40 attribute values, got 39"):
        read_celeba(synth_copy)


def test_value_other_than_minus_one_or_one(synth_copy):
    lines = _attr_lines(synth_copy)
    parts = lines[3].split()
    parts[3] = "0"
    lines[3] = " ".join(parts)
    _write_attr_lines(synth_copy, lines)
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt:4: 000002.jpg: Attractive is '0', expected -1 or 1"):
        read_celeba(synth_copy)


def test_duplicate_names(synth_copy):
    lines = _attr_lines(synth_copy)
    lines.insert(10, lines[2])
    _write_attr_lines(synth_copy, lines)
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt:11: duplicate image '000001.jpg' \(first at line 3\)"):
        read_celeba(synth_copy)


def test_label_row_whose_image_is_missing_and_skip_missing(synth_copy):
    (synth_copy / "img_align_celeba" / "000010.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt:12: image '000010.jpg' is listed but .* does not exist"):
        read_celeba(synth_copy)
    with pytest.warns(UserWarning, match="skipped 1 label row"):
        table = read_celeba(synth_copy, skip_missing=True)
    assert len(table) == 119 and table.attrs["skipped"]["missing_image"] == 1
    assert "000010.jpg" not in set(table.image_id)


def test_image_with_no_label_row(synth_copy):
    shutil.copy(synth_copy / "img_align_celeba" / "000001.jpg", synth_copy / "img_align_celeba" / "extra.jpg")
    with pytest.raises(DatasetError, match=r"extra.jpg: image has no row in list_attr_celeba.txt"):
        read_celeba(synth_copy)
    with pytest.warns(UserWarning, match="ignored 1 image"):
        table = read_celeba(synth_copy, skip_missing=True)
    assert table.attrs["skipped"]["unlabelled_image"] == 1 and len(table) == 120


def test_unreadable_list_file(synth_copy):
    (synth_copy / "list_attr_celeba.txt").write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt: cannot read list file"):
        read_celeba(synth_copy)


def test_malformed_partition_row(synth_copy):
    p = synth_copy / "list_eval_partition.txt"
    lines = p.read_text().splitlines()
    lines[4] = "000005.jpg zero"
    p.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:5: non-numeric"):
        read_celeba(synth_copy)


def test_missing_attribute_file_and_image_folder(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(DatasetError, match="no attribute file"):
        read_celeba(tmp_path)
    with pytest.raises(DatasetError, match="no image folder"):
        read_celeba(tmp_path / "img_align_celeba")


def test_official_split_without_partition_file_says_what_to_do(synth_copy):
    (synth_copy / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match="split='abm'"):
        read_celeba(synth_copy)
    assert len(read_celeba(synth_copy, split="abm")) == 120


def test_utf8_bom_in_list_files_is_accepted(synth_copy, synth_root):
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        f = synth_copy / name
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    pd.testing.assert_frame_equal(read_celeba(synth_copy).drop(columns="path"),
                                  read_celeba(synth_root).drop(columns="path"))


def test_partition_value_out_of_range_names_file_and_line(synth_copy):
    f = synth_copy / "list_eval_partition.txt"
    lines = f.read_text().splitlines()
    name = lines[4].split()[0]
    lines[4] = f"{name} 7"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"list_eval_partition.txt:5: {name}: partition is '7', expected one of 0, 1, 2"):
        read_celeba(synth_copy)


@pytest.mark.parametrize("folder", ["img_align_celeba_png", "img_align_celeba"])
def test_png_edition_matches_list_names_by_stem(synth_copy, synth_root, folder):
    """CelebA's official PNG edition: the list files name 000001.jpg, the folder holds 000001.png
    (as extracted, and with the folder renamed to img_align_celeba)."""
    import cv2
    jpegs = synth_copy / "img_align_celeba"
    pngs = synth_copy / "png_tmp"
    pngs.mkdir()
    for f in sorted(jpegs.iterdir()):
        cv2.imwrite(str(pngs / (f.stem + ".png")), cv2.imread(str(f)))
    shutil.rmtree(jpegs)
    pngs.rename(synth_copy / folder)
    (synth_copy / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    with pytest.warns(UserWarning, match=r"matched their list name by stem \(e.g. 000001.jpg -> 000001.png"):
        table = read_celeba(synth_copy)
    reference = read_celeba(synth_root)
    assert len(table) == len(reference) and list(table.image_id) == list(reference.image_id)
    assert all(p.endswith(".png") for p in table.path)
    assert table.attrs["skipped"]["not an image"] == 1  # the .DS_Store, counted, not an error


def test_a_list_name_outside_the_image_folder_is_refused(synth_copy):
    lines = _attr_lines(synth_copy)
    lines[2] = "../../secret.jpg " + lines[2].split(" ", 1)[1]
    _write_attr_lines(synth_copy, lines)
    for skip in (False, True):
        with pytest.raises(DatasetError, match=r"list_attr_celeba.txt:3: image '../../secret.jpg' is outside"):
            read_celeba(synth_copy, skip_missing=skip)


def test_a_kaggle_csv_with_a_subset_of_the_attributes_is_read(tmp_path):
    """The issue's case: ``image_id,Male,Smiling,Eyeglasses`` (no 37 missing-column errors); the
    other attributes are left out of the table, so they read as unknown."""
    from facray.data.celeba import labels_matrix, read_attribute_file
    from facray.attributes import ATTRIBUTE_INDEX
    path = tmp_path / "list_attr_celeba.csv"
    path.write_text("image_id,Male,Smiling,Eyeglasses\n000001.jpg,1,-1,-1\n000002.jpg,-1,1,1\n")
    table, notes = read_attribute_file(path)
    assert list(table.columns) == ["image_id", "Eyeglasses", "Male", "Smiling"]
    assert table.Male.tolist() == [1, 0] and table.Eyeglasses.tolist() == [0, 1]
    labels = labels_matrix(table)
    assert labels[:, ATTRIBUTE_INDEX["Bald"]].tolist() == [-1, -1] and labels[1, ATTRIBUTE_INDEX["Smiling"]] == 1
    assert "labels 3 of the 40 attributes" in notes[0]
