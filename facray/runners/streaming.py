"""Stream mode (``--data stream``): Ray Data feeds the Train workers from the prepared Parquet, for
datasets larger than a worker's memory. The Datasets are built on the driver; the batches are
decoded in the workers by the pure :func:`facray.training.splits.stream_batches`.
"""
from __future__ import annotations

from facray import storage
from facray.attributes import ATTRIBUTES
from facray.data.prepared import LANDMARK_FIELDS, ROW_GROUP_ROWS, shard_dir
from facray.training.splits import SplitSpec

# Stream mode's read side, kept small: with Ray Data's defaults (128 MiB blocks, a Parquet read
# batch sized to fill one) a read task held 0.6-1.1 GB at 180 px (bench/RESULTS.md, "Under a
# memory cap"). Reading one row group at a time into blocks of at most 16 MiB (~120 rows at 180
# px with sketches, several training batches) bounds what a read task and the queue between it
# and the Train workers hold, whatever the dataset's size.
STREAM_BLOCK_BYTES = 16 * 2**20


def split_datasets(spec: SplitSpec, columns: tuple[str, ...] = ("image", "sketch")) -> dict:
    """``{"train", "val", "test"}`` Ray Datasets of the usable rows; validation and test keep each
    image's original only. ``columns``: the pixel columns to read (labels always come along)."""
    import ray

    if spec.val_split == "holdout":
        raise ValueError("--val-split holdout needs --data memory (the holdout is chosen by image id "
                         "in memory); give the prepared data a val split for stream mode")
    fs, path = storage.filesystem(shard_dir(spec.prepared))
    ds = ray.data.read_parquet(path, filesystem=fs, batch_size=ROW_GROUP_ROWS)
    ds.context.target_max_block_size = STREAM_BLOCK_BYTES  # this dataset's own (a copy of the driver's)
    keep = [c for c in ("image_id", "split", "variant", "error", *ATTRIBUTES, *LANDMARK_FIELDS, *columns)
            if c in ds.schema().names]
    ds = ds.select_columns(keep)

    def pick(split: str, originals: bool):
        expr = f"split == '{split}' and error == ''" + (" and variant == 'original'" if originals else "")
        return ds.filter(expr=expr)  # an Arrow expression: no Python call per row

    return {"train": pick(spec.train_split, False), "val": pick(spec.val_split, True),
            "test": pick(spec.test_split, True)}
