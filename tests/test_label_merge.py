"""The streamed output of ``facray label`` (facray.labelling.merge): the same bytes as writing all
rows at once, in chunks of a few rows, from several sources; resume at scale with no row lost or
doubled. No Ray: the sources are written here as the pipeline writes them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facray.attributes import ATTRIBUTES
from facray.labelling import merge
from facray.labelling.merge import Source, earlier_sources, previous_rows
from facray.labelling.write import write_output, write_rows
from facray.labelling.output import PROB_COLUMNS, PartWriter, encode_output, errors_path, index_path, parts_dir
from facray.labelling.plan import choose_sources, reusable


def fake_rows(paths, seed=0, faces="largest", crop="auto", model="m") -> pd.DataFrame:
    """Rows as the pipeline gives them: every fifth one an error, the rest with probabilities and
    decisions; the resume keys set."""
    rng = np.random.default_rng(seed)
    n = len(paths)
    error = np.where(np.arange(n) % 5 == 3, [f"{p}: truncated" for p in paths], "")
    rows = pd.DataFrame({"path": paths, "face_found": error == "", "crop_method": np.where(error == "", "template", "error"),
                         "n_faces": np.where(error == "", 1, -1), "face_index": 0, "face_x": 1.5, "face_y": 2.0,
                         "face_w": 30.0, "face_h": 30.0, "face_score": rng.random(n), "error": error, "model": model,
                         "size": 100, "mtime_ns": 7, "faces": faces, "crop": crop})
    probs = rng.random((n, len(ATTRIBUTES)))
    probs[error != ""] = np.nan
    for j, a in enumerate(ATTRIBUTES):
        rows[f"{a}_prob"] = probs[:, j]
        rows[a] = np.where(np.isnan(probs[:, j]), np.nan, (probs[:, j] >= 0.5).astype(float))
    return rows


def image_ids(paths):
    return pd.Series([p.rsplit("/", 1)[-1] for p in paths], index=list(paths))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "celeba"])
def test_streamed_output_equals_the_all_at_once_output_row_for_row(tmp_path, monkeypatch, fmt):
    """An earlier output (its index) and two runs' parts, each image from one of them, merged in
    chunks of 7 rows: the output file is the bytes (Parquet: the table) that encoding all the
    rows at once gives, the rows the list cannot hold go to the errors file, and the summary counts
    what was written."""
    monkeypatch.setattr(merge, "CHUNK_ROWS", 7)
    out = str(tmp_path / f"labels.{fmt}")
    paths = [f"/data/{i:04d}.png" for i in range(60)]
    old = fake_rows(paths[::2], seed=1).assign(image_id=lambda r: r.path.str[6:])
    write_rows(old, out, fmt)  # the earlier output: every other image
    runs = [fake_rows(paths[1::4], seed=10), fake_rows(paths[3::4], seed=11)]  # two runs since, interleaved
    for k, run in enumerate(runs):
        with PartWriter(f"{parts_dir(out)}/run-{k}", flush_rows=5) as writer:
            for i in range(0, len(run), 5):
                writer.add(run.iloc[i:i + 5])
    sources = earlier_sources(out, fmt)
    assert [len(s.files) for s in sources] == [1, 3, 3]
    done = previous_rows(out, fmt, sources)
    inputs = pd.DataFrame({"path": paths, "image_id": image_ids(paths).to_numpy(), "size": 100, "mtime_ns": 7})
    reused = reusable(inputs, done, "m", "largest", "auto")
    assert reused.all()
    chosen = choose_sources(inputs, done, reused, done.iloc[:0])
    written = write_output(sources, inputs, chosen, out, fmt)

    everything = pd.concat([old, *runs])
    everything = everything.sort_values("path").assign(image_id=lambda r: r.path.str[6:])
    expected, left_out = encode_output(everything, fmt)
    if fmt == "parquet":
        got = pd.read_parquet(out)
        pd.testing.assert_frame_equal(got, pd.read_parquet(__import__("io").BytesIO(expected)))
    else:
        assert open(out, "rb").read() == expected
    if fmt == "celeba":
        pd.testing.assert_frame_equal(pd.read_csv(errors_path(out), keep_default_na=False), left_out.reset_index(drop=True))
    assert (written.rows, written.images, written.errors) == (60, 60, 12)
    assert written.faces_found == 48 and list(written.first_rows.path) == paths[:5]


def test_parts_out_of_order_are_sorted_and_faces_of_an_image_stay_together(tmp_path, monkeypatch):
    """Parts an older facray wrote in arrival order, and an image with three faces split across
    two chunks: the output is in (path, face_index) order all the same."""
    monkeypatch.setattr(merge, "CHUNK_ROWS", 2)
    out = str(tmp_path / "labels.csv")
    rows = fake_rows([f"/d/{c}.png" for c in "edcba"], faces="all")
    three = pd.concat([rows.iloc[[2]].assign(face_index=k, n_faces=3) for k in range(3)])
    run = tmp_path / "labels.csv.parts" / "run-1"
    run.mkdir(parents=True)
    rows.iloc[:2].to_parquet(run / "part-0.parquet")  # e, d: no sorting by an older writer
    pd.concat([three, rows.iloc[3:]]).to_parquet(run / "part-1.parquet")
    sources = earlier_sources(out, "csv")
    done = previous_rows(out, "csv", sources)
    assert sources[0].frame is not None  # read and sorted in memory
    paths = sorted(rows.path)
    inputs = pd.DataFrame({"path": paths, "image_id": paths, "size": 100, "mtime_ns": 7})
    reused = reusable(inputs, done, "m", "all", "auto")
    write_output(sources, inputs, choose_sources(inputs, done, reused, done.iloc[:0]), out, "csv")
    back = pd.read_csv(out, keep_default_na=False)
    assert list(zip(back.path, back.face_index)) == [("/d/a.png", 0), ("/d/b.png", 0), ("/d/c.png", 0), ("/d/c.png", 1),
                                                    ("/d/c.png", 2), ("/d/d.png", 0), ("/d/e.png", 0)]


def test_resume_after_a_kill_at_half_of_100000_rows_loses_and_doubles_nothing(tmp_path):
    """100,000 inputs; a first run killed at 50% left its parts (the last one cut off mid-write);
    the re-run reuses every finished row, labels the rest and writes each input exactly once; a
    third run reuses all of them from the index."""
    n = 100_000
    paths = [f"/gen/{i:06d}.png" for i in range(n)]
    inputs = pd.DataFrame({"path": paths, "image_id": image_ids(paths).to_numpy(), "size": 100, "mtime_ns": 7})
    out = str(tmp_path / "labels.csv")
    killed = f"{parts_dir(out)}/run-1"
    with PartWriter(killed, flush_rows=4096) as writer:
        for i in range(0, n // 2, 1024):
            writer.add(fake_rows(paths[i:min(i + 1024, n // 2)], seed=i))
    (tmp_path / "labels.csv.parts" / "run-1" / "part-999999.parquet").write_bytes(b"PAR1 cut off by the kill")
    sources = earlier_sources(out, "csv")
    done = previous_rows(out, "csv", sources)
    reused = reusable(inputs, done, "m", "largest", "auto")
    assert reused.sum() == n // 2 and reused[: n // 2].all()
    rest = f"{parts_dir(out)}/run-2"
    with PartWriter(rest, flush_rows=4096) as writer:
        todo = inputs.path[~reused].tolist()
        for i in range(0, len(todo), 1024):
            writer.add(fake_rows(todo[i:i + 1024], seed=n + i))
    new = [Source(len(sources), merge.storage.list_files(rest, (".parquet",)))]
    chosen = choose_sources(inputs, done, reused, pd.concat([s.keys() for s in new]))
    written = write_output(sources + new, inputs, chosen, out, "csv")
    back = pd.read_csv(out, usecols=["path", "image_id", "error"], keep_default_na=False)
    assert written.rows == n and back.path.tolist() == paths and back.image_id.is_unique
    assert (back.error != "").sum() == written.errors > 0
    again = previous_rows(out, "csv")
    assert len(again) == n and reusable(inputs, again, "m", "largest", "auto").all()
    assert not reusable(inputs, again, "m", "largest", "auto", min_confidence=0.9).any()  # other abstentions
    assert pd.read_parquet(index_path(out), columns=["format"]).format.eq("csv").all()


def test_positions_finds_each_path_by_binary_search_or_minus_one():
    sorted_paths = np.array(["/a/1.png", "/a/2.png", "/b/é.png"], dtype=object)
    assert merge.positions(sorted_paths, ["/b/é.png", "/a/0.png", "/a/1.png", "/z.png"]).tolist() == [2, -1, 0, -1]
    assert merge.positions(sorted_paths[:0], ["/a/1.png"]).tolist() == [-1]


def test_a_file_a_list_names_twice_is_one_input(tmp_path):
    import cv2
    from facray.labelling.inputs import list_inputs
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "list.txt").write_text(f"a.png\n{tmp_path / 'a.png'}\na.png\n")
    assert list_inputs(str(tmp_path / "list.txt")).path.tolist() == [str(tmp_path / "a.png")]


def test_an_output_written_by_an_older_facray_is_reused_and_rewritten(tmp_path):
    """Before streamed output, a CSV's index held keys only (path, size, mtime, model, faces,
    face_index); its rows are read from the CSV, reused, and written again with a whole-row index."""
    out = str(tmp_path / "labels.csv")
    paths = [f"/d/{i}.png" for i in range(6)]
    rows = fake_rows(paths, crop="detect").assign(image_id=lambda r: r.path.str[3:])
    data, _ = encode_output(rows, "csv")
    (tmp_path / "labels.csv").write_bytes(data)
    rows[["path", "size", "mtime_ns", "model", "faces", "face_index"]].assign(format="csv").to_parquet(index_path(out))
    sources = earlier_sources(out, "csv")
    assert sources[0].frame is not None  # read whole: it was written whole
    done = previous_rows(out, "csv", sources)
    inputs = pd.DataFrame({"path": paths, "image_id": [p[3:] for p in paths], "size": 100, "mtime_ns": 7})
    assert not reusable(inputs, done, "m", "largest", "auto").any()  # it detected; auto is another crop
    reused = reusable(inputs, done, "m", "largest", "detect")
    assert reused.all()
    write_output(sources, inputs, choose_sources(inputs, done, reused, done.iloc[:0]), out, "csv")
    assert open(out, "rb").read() == data
    assert PROB_COLUMNS[0] in pd.read_parquet(index_path(out)).columns


def test_the_progress_line_gives_images_rate_and_eta_past_a_day():
    from facray.runners.label import Progress
    progress = Progress(1_000_000, every=1e9)
    progress.start -= 100.0
    progress.update(1000)
    assert progress.line(progress.start + 100.0) == "  1000/1000000 images (0%), 10.0 img/s, ETA 27h45m"


def test_a_killed_writer_s_temporary_files_are_removed_by_the_next_write(tmp_path):
    out = tmp_path / "labels.csv"
    stale = tmp_path / ".labels.csv.tmp-99999.index"
    stale.write_bytes(b"half an index")
    other = tmp_path / ".other.csv.tmp-99999"
    other.write_bytes(b"not ours")
    write_rows(fake_rows(["/d/a.png"]).assign(image_id="a.png"), str(out), "csv")
    assert not stale.exists() and other.exists() and out.exists()
