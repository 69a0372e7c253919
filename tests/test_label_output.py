"""What ``facray label`` writes: the image_id key, the face columns, the formats (CSV, Parquet with
nullable integer decisions, a CelebA-style attribute list facray reads back as a dataset)."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pandas as pd
import pytest

from facray import columns
from facray.attributes import ATTRIBUTES
from facray.data.celeba import read_attribute_file
from facray.data.folder import list_images
from facray.data.synth import write_unlabelled_faces
from facray.labelling.output import OUTPUT_COLUMNS, encode_output, output_table


def test_image_ids_are_relative_to_the_folder_glob_or_list(tmp_path):
    """The key CelebA and FFHQ lists use: the name under the --images root, '/' separated."""
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("imgs/000001.jpg", "imgs/sub/000002.jpg", "outside.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    folder = list_images(tmp_path / "imgs")
    assert folder.image_ids(folder.paths) == ["000001.jpg", "sub/000002.jpg"]
    glob = list_images(f"{tmp_path}/imgs/**/*.jpg")
    assert glob.image_ids(glob.paths) == ["000001.jpg", "sub/000002.jpg"]
    lst = tmp_path / "imgs" / "list.txt"
    lst.write_text(f"sub/000002.jpg\n{tmp_path / 'outside.jpg'}\n")
    listed = list_images(lst)
    assert listed.image_ids(listed.paths) == ["sub/000002.jpg", str(tmp_path / "outside.jpg")]
    single = list_images(tmp_path / "imgs" / "sub" / "000002.jpg")
    assert single.image_ids(single.paths) == ["000002.jpg"]


def _rows(covered=ATTRIBUTES):
    """Three labelled rows, one error row, one labelled row whose image_id has a space."""
    rng = np.random.default_rng(0)
    ids = ["000001.jpg", "000002.jpg", "sub/000003.jpg", "broken.jpg", "with space.jpg"]
    rows = pd.DataFrame({"path": [f"/data/{i}" for i in ids], "image_id": ids, "face_found": True, "n_faces": 1,
                         "face_x": 1.0, "face_y": 2.0, "face_w": 30.0, "face_h": 31.0, "face_score": 0.9,
                         "error": ["", "", "", "/data/broken.jpg: truncated", ""], "model": "m"})
    for a in ATTRIBUTES:
        covers = a in covered
        rows[f"{a}_prob"] = rng.random(5) if covers else np.nan
        rows[a] = (rows[f"{a}_prob"] >= 0.5).astype(float) if covers else np.nan
    rows.loc[3, [f"{a}_prob" for a in ATTRIBUTES] + list(ATTRIBUTES)] = np.nan
    rows.loc[3, ["face_found", "n_faces"]] = (False, -1)
    return rows


def test_celeba_format_is_read_back_as_a_celeba_attribute_list(tmp_path):
    """``--format celeba``: count line, header, image_id and -1/1; rows it cannot hold (an error,
    white space in the id) come back with their reason; facray's CelebA reader reads the file."""
    rows = _rows()
    data, left_out = encode_output(rows, "celeba")
    lines = data.decode().splitlines()
    assert lines[0] == "3" and lines[1].split() == list(ATTRIBUTES)
    assert lines[2].split()[0] == "000001.jpg" and set(lines[2].split()[1:]) <= {"1", "-1"}
    assert left_out.image_id.tolist() == ["broken.jpg", "with space.jpg"]
    assert "truncated" in left_out.error.iloc[0] and "white space" in left_out.error.iloc[1]
    path = tmp_path / "list_attr_celeba.txt"
    path.write_bytes(data)
    table, notes = read_attribute_file(path)
    assert table.image_id.tolist() == ["000001.jpg", "000002.jpg", "sub/000003.jpg"] and not notes
    expected = rows.iloc[:3][list(ATTRIBUTES)].astype(int).to_numpy()
    assert (table[list(ATTRIBUTES)].to_numpy() == expected).all()  # the reader's 1/0 of the file's 1/-1


def test_celeba_format_of_a_partial_model_names_only_its_attributes(tmp_path):
    covered = ("Male", "Smiling", "Eyeglasses")
    data, _ = encode_output(_rows(covered), "celeba")
    assert data.decode().splitlines()[1].split() == ["Eyeglasses", "Male", "Smiling"]  # official order
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    table, notes = read_attribute_file(path)
    assert list(table.columns) == ["image_id", "Eyeglasses", "Male", "Smiling"]
    assert "labels 3 of the 40 attributes; the other 37 are unknown" in notes[0]


def test_parquet_keeps_integer_decisions_beside_an_error_row_and_csv_reads_back(tmp_path):
    """With an error row in the file, Parquet decisions stay integers (nullable Int8: ``astype(int)``
    after ``dropna`` works, no float columns); CSV leaves the error row's cells empty."""
    rows = _rows()
    data, left_out = encode_output(rows, "parquet")
    assert left_out.empty
    (tmp_path / "l.parquet").write_bytes(data)
    back = pd.read_parquet(tmp_path / "l.parquet")
    assert list(back.columns) == OUTPUT_COLUMNS
    assert all(str(back[a].dtype) == "Int8" for a in ATTRIBUTES) and str(back.n_faces.dtype) == "Int16"
    assert back.Male.isna().tolist() == [False, False, False, True, False]
    assert back.loc[3, "n_faces"] is pd.NA  # not looked for: unknown, not -1
    data, _ = encode_output(rows, "csv")
    (tmp_path / "l.csv").write_bytes(data)
    csv = pd.read_csv(tmp_path / "l.csv", keep_default_na=False, na_values=[""])
    assert csv.Male.dropna().astype(int).tolist() == back.Male.dropna().astype(int).tolist()


def test_output_table_fills_columns_an_older_output_lacks():
    old = _rows().drop(columns=["image_id", "n_faces", "face_x", "face_score"])
    table = output_table(old)
    assert list(table.columns) == OUTPUT_COLUMNS and table.n_faces.isna().all() and table.face_x.isna().all()


def _two_faces(folder, large_first: bool):
    """A 256 px face beside a 96 px one (the issue's case), in either order."""
    faces = write_unlabelled_faces(folder / "src", n=2, seed=3, sizes=(256,))
    a, b = cv2.imread(str(faces[0])), cv2.resize(cv2.imread(str(faces[1])), (96, 96))
    canvas = np.full((256, 256 + 96 + 40, 3), 128, np.uint8)
    if large_first:
        canvas[:, :256], canvas[80:176, 296:] = a, b
        large = (0, 256)
    else:
        canvas[80:176, :96], canvas[:, 136:] = b, a
        large = (136, 392)
    return canvas, large


@pytest.mark.parametrize("large_first", [True, False])
def test_face_cropper_counts_the_faces_and_boxes_the_largest(tmp_path, large_first):
    pytest.importorskip("yuface")
    from facray.data import ops
    canvas, (left, right) = _two_faces(tmp_path, large_first)
    out = ops.FaceCropper(32, method="detect", detector="yunet")(
        {columns.PATH: np.array(["x"], dtype=object), columns.IMAGE: [canvas]})
    assert out[columns.N_FACES][0] == 2 and out[columns.FACE_FOUND][0]
    x, w = out["face_x"][0], out["face_w"][0]
    assert left - 20 <= x and x + w <= right + 20 and w > 150  # the 256 px face's box, not the 96 px one
    assert 0.5 <= out[columns.FACE_SCORE][0] <= 1


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_labels_merge_with_a_celeba_list_on_image_id(ray_session, tmp_path):
    """The issue's case: label images of a CelebA-style folder (one truncated, one group photo),
    then merge with the dataset's own list on ``image_id`` as users do: every row matches; the
    celeba format of the same run is that list's layout, -1/1."""
    from facray.labelling.config import LabelConfig
    from facray.labelling.output import errors_path
    from facray.runners.label import label_images
    from facray.testing import smoke_model
    model = smoke_model(tmp_path / "model", crop_size=32)
    folder = tmp_path / "img_align_celeba"
    faces = write_unlabelled_faces(folder, n=3, seed=0, sizes=(128,))
    names = [f"{i:06d}.jpg" for i in range(1, 6)]
    for src, name in zip(faces, names):
        cv2.imwrite(str(folder / name), cv2.imread(str(src)))
        os.remove(src)
    canvas, _ = _two_faces(tmp_path, True)
    cv2.imwrite(str(folder / names[3]), canvas)
    jpeg = (folder / names[0]).read_bytes()
    (folder / names[4]).write_bytes(jpeg[: len(jpeg) // 3])
    official = pd.DataFrame({"image_id": names, "Male": [1, -1, 1, -1, 1]})

    common = dict(images=str(folder), model=str(model), num_actors=1, preprocess_actors=1, batch_size=4)
    summary = label_images(LabelConfig(out=str(tmp_path / "labels.csv"), **common))
    rows = pd.read_csv(tmp_path / "labels.csv", keep_default_na=False, na_values=[""])
    merged = official.merge(rows, on="image_id", suffixes=("_official", ""))
    assert len(merged) == 5 and rows.image_id.tolist() == names
    group = rows.set_index("image_id").loc[names[3]]
    if group.face_found:  # YuNet (installed here) finds both; Haar may not
        assert group.n_faces == 2 and group.face_w > 150 and summary.multi_face == 1
        assert "1 with more than one face" in summary.format()
    assert "truncated" in rows.set_index("image_id").loc[names[4], "error"]

    out = tmp_path / "labels.txt"
    summary = label_images(LabelConfig(out=str(out), format="celeba", **common))
    table, _ = read_attribute_file(out)
    assert table.image_id.tolist() == names[:4]
    assert (table.Male.to_numpy() == rows.Male.iloc[:4].astype(int).to_numpy()).all()
    assert "truncated" in pd.read_csv(errors_path(str(out))).error.iloc[0]
    assert f"(in {errors_path(str(out))})" in summary.format()


def test_face_cropper_all_faces_gives_one_row_per_face_largest_first(tmp_path):
    pytest.importorskip("yuface")
    from facray.data import ops
    canvas, _ = _two_faces(tmp_path, False)
    blank = np.full((64, 64, 3), 128, np.uint8)
    out = ops.FaceCropper(32, method="detect", detector="yunet", faces="all")(
        {columns.PATH: np.array(["group", "blank"], dtype=object), columns.IMAGE: [canvas, blank],
         columns.ERROR: np.array(["", ""], dtype=object)})
    assert out[columns.PATH].tolist() == ["group", "group", "blank"] and out[columns.IMAGE].shape == (3, 32, 32, 3)
    assert out[columns.FACE_INDEX].tolist() == [0, 1, 0] and out[columns.N_FACES].tolist() == [2, 2, 0]
    assert out["face_w"][0] > out["face_w"][1] and out[columns.FACE_FOUND].tolist() == [True, True, False]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_faces_all_labels_each_face_and_resumes_by_image(ray_session, tmp_path):
    """``--faces all``: the group photo gets a row per face (face_index 0 the largest), the others
    one; a re-run reuses every row; changing the mode relabels; with --format celeba it is refused
    before any work."""
    pytest.importorskip("yuface")
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images
    from facray.testing import smoke_model
    model = smoke_model(tmp_path / "model", crop_size=32)
    folder = tmp_path / "imgs"
    write_unlabelled_faces(folder, n=2, seed=0, sizes=(128,))
    canvas, _ = _two_faces(tmp_path, True)
    cv2.imwrite(str(folder / "group.png"), canvas)
    common = dict(images=str(folder), model=str(model), num_actors=1, preprocess_actors=1, batch_size=4)
    out = tmp_path / "faces.parquet"
    summary = label_images(LabelConfig(out=str(out), format="parquet", faces="all", **common))
    rows = pd.read_parquet(out)
    group = rows[rows.image_id == "group.png"]
    assert group.face_index.tolist() == [0, 1] and (group.n_faces == 2).all() and group.path.nunique() == 1
    assert len(rows) == 4 == summary.rows and summary.inputs == 3 and summary.multi_face == 1
    again = label_images(LabelConfig(out=str(out), format="parquet", faces="all", **common))
    assert again.labelled == 0 and again.reused == 3
    pd.testing.assert_frame_equal(pd.read_parquet(out), rows)
    largest = label_images(LabelConfig(out=str(out), format="parquet", **common))
    assert largest.labelled == 3 and len(pd.read_parquet(out)) == 3
    with pytest.raises(ValueError, match="--faces all writes one row per face"):
        label_images(LabelConfig(out=str(tmp_path / "l.txt"), format="celeba", faces="all", **common))


def test_the_summary_says_how_multi_face_images_were_labelled():
    from facray.labelling.plan import LabelSummary
    common = dict(inputs=3, reused=0, labelled=3, faces_found=3, errors=0, seconds=1.0, out="o", model="m",
                  phases={}, stages={}, multi_face=1)
    assert "1 with more than one face: the largest labelled" in LabelSummary(**common).format()
    assert "1 with more than one face: a row for each" in LabelSummary(**common, rows=4, faces="all").format()


def _keyed(rows, faces="largest"):
    return rows.assign(size=10, mtime_ns=5, faces=faces, crop="auto", face_index=0)


def test_an_image_is_reused_only_with_all_its_faces_from_one_source(tmp_path):
    """--faces all: a run killed between two parts may have written some of an image's faces;
    such an image is labelled again, and an image's rows never mix two runs."""
    from facray.labelling.merge import previous_rows
    from facray.labelling.write import write_rows
    from facray.labelling.output import complete_images, parts_dir
    base = _rows().iloc[:1]
    three = pd.concat([_keyed(base, "all").assign(face_index=k, n_faces=3) for k in range(3)], ignore_index=True)
    out = str(tmp_path / "labels.csv")
    write_rows(three, out, "csv")
    part = tmp_path / "labels.csv.parts" / "run-1"
    part.mkdir(parents=True)
    three.iloc[:2].to_parquet(part / "part-0.parquet")  # a newer run got two of the three faces
    done = previous_rows(out, "csv")
    assert done.face_index.tolist() == [0, 1]  # the newest source only, not 0, 1 from it and 2 from the output
    assert not complete_images(done).iloc[0]
    assert parts_dir(out) == str(tmp_path / "labels.csv.parts")
    (part / "part-0.parquet").unlink()
    assert complete_images(previous_rows(out, "csv")).iloc[0]


def test_another_format_under_the_same_name_is_relabelled_never_misread(tmp_path):
    from facray.labelling.merge import previous_rows
    from facray.labelling.write import write_rows
    from facray.labelling.output import errors_path
    rows = _keyed(_rows())
    out = str(tmp_path / "labels.out")
    write_rows(rows, out, "csv")
    assert len(previous_rows(out, "csv")) == 5 and previous_rows(out, "celeba").empty
    write_rows(rows, out, "celeba")
    assert os.path.exists(errors_path(out))
    assert len(previous_rows(out, "celeba")) == 5 and previous_rows(out, "csv").empty  # no KeyError
    write_rows(rows, out, "parquet")
    assert not os.path.exists(errors_path(out)) and previous_rows(out, "csv").empty
