"""``facray prepare`` end to end on Ray Data with generated data and every bad-input case."""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from facray.attributes import ATTRIBUTES
from facray.cli import main
from facray.data.pipeline import grouped_by_split
from facray.data.prepared import read_metadata, read_prepared

JOBS = Path(__file__).resolve().parents[1] / "jobs"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _write_bad_images(folder):
    """The preprocessing issue's list of bad inputs, written over images of the dataset."""
    good = cv2.imread(str(folder / "000001.jpg"))
    jpeg = cv2.imencode(".jpg", good)[1].tobytes()
    bad = {
        "000002.jpg": b"",                                      # zero bytes
        "000003.jpg": jpeg[: len(jpeg) // 2],                   # truncated JPEG
        "000004.jpg": b"just some text\n",                      # text named .jpg
        "000005.jpg": cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),  # tiny
    }
    png = bytearray(cv2.imencode(".png", good)[1].tobytes())
    png[16:24] = (9000).to_bytes(4, "big") * 2                  # enormous (81 MP header)
    bad["000006.jpg"] = bytes(png)
    ok_but_odd = {
        "000007.jpg": cv2.imencode(".png", cv2.cvtColor(good, cv2.COLOR_BGR2GRAY))[1].tobytes(),  # grayscale
        "000008.jpg": cv2.imencode(".png", np.dstack([good, np.full(good.shape[:2], 255, np.uint8)]))[1].tobytes(),
        "000009.jpg": cv2.imencode(".png", good.astype(np.uint16) * 257)[1].tobytes(),  # 16-bit
    }
    try:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(good[..., ::-1]).convert("CMYK").save(buf, "JPEG")
        ok_but_odd["000010.jpg"] = buf.getvalue()
    except ImportError:
        pass
    for name, data in {**bad, **ok_but_odd}.items():
        (folder / name).write_bytes(data)
    return bad, ok_but_odd


def test_prepare_writes_every_row_with_splits_columns_and_errors(ray_session, synth_copy, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr("facray.runners.prepare.ROW_GROUP_ROWS", 8)  # readers hold one row group at a time
    bad, odd = _write_bad_images(synth_copy / "img_align_celeba")
    out = tmp_path / "prepared"
    assert main(["prepare", "--root", str(synth_copy), "--out", str(out), "--size", "48",
                 "--augment", "3", "--masks", "--mask-size", "12", "--limit", "40",
                 "--num-actors", "2", "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "prepared 40 images" in printed and "errors: " in printed

    rows = read_prepared(out, include_errors=True, columns=("image", "sketch", "masks"))
    originals = rows["variant"] == "original"
    assert originals.sum() == 40 and len(set(rows["image_id"])) == 40  # every input is there once
    n_train_ok = (originals & (rows["split"] == "train") & (rows["error"] == "")).sum()
    assert n_train_ok > 10 and len(rows["image_id"]) == 40 + 2 * n_train_ok  # 3 variants per good train image
    assert rows["image"].shape[1:] == (48, 48, 3) and rows["sketch"].shape[1:] == (48, 48)
    assert rows["masks"].shape[1:] == (40, 12, 12) and rows["labels"].shape[1] == len(ATTRIBUTES)

    errors = pd.read_csv(out / "errors.csv")
    assert sorted(errors.path.map(lambda p: p.rsplit("/", 1)[1])) == sorted(bad)
    assert set(errors.error_kind) == {"empty", "truncated", "not_an_image", "too_small", "too_large"}
    assert all(p.rsplit("/", 1)[1] in m for p, m in zip(errors.path, errors.error))
    odd_rows = np.isin(rows["image_id"], list(odd)) & originals
    assert odd_rows.sum() == len(odd) and (rows["error"][odd_rows] == "").all()
    summary = read_metadata(out)
    assert summary["size"] == 48 and summary["mask_size"] == 12
    groups = [pq.ParquetFile(f).metadata for f in sorted((out / summary["shards"]).glob("*.parquet"))]
    assert max(m.row_group(i).num_rows for m in groups for i in range(m.num_row_groups)) <= 8
    assert sum(m.num_rows for m in groups) == len(rows["image_id"]) and max(m.num_row_groups for m in groups) > 1
    # Rows go in grouped by split (the order itself: test_grouped_by_split_...). A row group mixes
    # splits only near one of the two seams; pyarrow's threaded writer may reorder a file's batches,
    # so the bound is loose. Written in dataset order, 6 of 14 row groups here held 2-3 splits.
    files = [pq.ParquetFile(f) for f in sorted((out / summary["shards"]).glob("*.parquet"))]
    per_group = [set(f.read_row_group(i, columns=["split"]).column(0).to_pylist())
                 for f in files for i in range(f.num_row_groups)]
    assert len(set().union(*per_group)) == 3 and sum(len(g) > 1 for g in per_group) <= len(per_group) // 3, per_group
    clean = read_prepared(out, splits=("train",))
    assert (clean["error"] == "").all() and (clean["split"] == "train").all()


def test_grouped_by_split_keeps_each_splits_order_in_parquets_string_order():
    """prepare's row order (no Ray): grouped as Parquet's min/max statistics compare the split
    names (a categorical column too), each split in the table's own order, attrs kept."""
    table = pd.DataFrame({"image_id": [f"{i:02d}.jpg" for i in range(9)],
                          "split": ["val", "train", "test", "train", "val", "test", "train", "train", "val"]})
    table.attrs = {"image_kind": "aligned"}
    grouped = grouped_by_split(table)
    assert list(grouped.split) == ["test"] * 2 + ["train"] * 4 + ["val"] * 3
    assert list(grouped.image_id) == ["02.jpg", "05.jpg", "01.jpg", "03.jpg", "06.jpg", "07.jpg", "00.jpg", "04.jpg", "08.jpg"]
    assert grouped.attrs == {"image_kind": "aligned"} and list(grouped.index) == list(range(9))
    categorical = table.assign(split=pd.Categorical(table.split, categories=["train", "val", "test"]))
    assert list(grouped_by_split(categorical).image_id) == list(grouped.image_id)
    assert grouped_by_split(table.drop(columns="split")).equals(table.drop(columns="split"))


def test_prepare_smoke_test_job(ray_session, tmp_path, capsys):
    import runpy
    import sys
    argv = sys.argv
    sys.argv = ["jobs/prepare.py", "--smoke-test", "--out", str(tmp_path / "smoke")]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(JOBS / "prepare.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert e.value.code == 0
    assert "prepared 40 images" in capsys.readouterr().out
    assert read_prepared(tmp_path / "smoke")["image"].shape[1:] == (64, 64, 3)


def test_prepare_again_switches_versions_at_once_and_removes_the_old(ray_session, synth_root, tmp_path):
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    from facray.data.prepared import shard_dir
    out = tmp_path / "versions"
    cfg = PrepareConfig(root=str(synth_root), out=str(out), size=32, augment=1, limit=20, num_actors=1, batch_size=8)
    prepare(cfg)
    first = read_metadata(out)
    assert first["shards"].startswith("shards-") and Path(shard_dir(out)).is_dir()
    # A prepare that died before its commit point leaves a stray folder and changes nothing.
    (out / "shards-interrupted").mkdir()
    (out / "shards-interrupted" / "part.parquet").write_bytes(b"half")
    assert read_metadata(out)["shards"] == first["shards"] and len(read_prepared(out)["image"]) > 0
    prepare(replace(cfg, size=40))
    second = read_metadata(out)
    assert second["shards"] != first["shards"] and second["size"] == 40
    assert not (out / first["shards"]).exists()  # the old version is gone once the new one is live
    assert read_prepared(out)["image"].shape[1:] == (40, 40, 3)


def test_read_prepared_decodes_batch_by_batch_into_the_sorted_rows(prepared_small, tmp_path):
    """The batch-by-batch reader gives each row its own pixels, sorted by (image id, variant),
    whatever order the shards hold them in (here: rewritten in reverse, in two files); a limited
    read is a prefix of the same rows' data."""
    import shutil

    import numpy as np
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from facray.data.prepared import decode_column, shard_dataset, shard_dir
    reversed_copy = tmp_path / "reversed"
    shutil.copytree(prepared_small, reversed_copy)
    whole = shard_dataset(reversed_copy).to_table()
    whole = whole.take(np.arange(whole.num_rows)[::-1])
    shards = Path(shard_dir(reversed_copy))
    for f in shards.glob("*.parquet"):
        f.unlink()
    half = whole.num_rows // 2
    pq.write_table(whole.slice(0, half), shards / "a.parquet")
    pq.write_table(whole.slice(half), shards / "b.parquet")
    prepared_small = reversed_copy
    rows = read_prepared(prepared_small, columns=("image", "sketch"))
    keys = list(zip(rows["image_id"], rows["variant"]))
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    table = shard_dataset(prepared_small).to_table(columns=["image_id", "variant", "image", "sketch"],
                                                   filter=pads.field("error") == "")
    meta, size = read_metadata(prepared_small), read_metadata(prepared_small)["size"]
    where = {k: i for i, k in enumerate(zip(table["image_id"].to_pylist(), table["variant"].to_pylist()))}
    direct = [where[k] for k in keys]
    images = decode_column(table["image"].take(direct).to_pylist(), (size, size, 3), meta["image_format"])
    sketches = decode_column(table["sketch"].take(direct).to_pylist(), (size, size), meta["image_format"])
    assert np.array_equal(rows["image"], images) and np.array_equal(rows["sketch"], sketches)
    everything = read_prepared(prepared_small, columns=("image",), limit=10 ** 6)  # the limited path, all rows
    assert np.array_equal(everything["image"], rows["image"])
    sample = read_prepared(prepared_small, columns=("image",), limit=5)
    assert len(sample["image"]) == 5
    for i, k in enumerate(zip(sample["image_id"], sample["variant"])):
        assert np.array_equal(sample["image"][i], rows["image"][keys.index(k)])
