"""Stream mode (``--data stream``): Ray Data feeds the Train workers from the prepared Parquet, for
datasets larger than a worker's memory. The Datasets are built on the driver; the batches are
decoded in the workers by the pure :func:`facray.training.splits.stream_batches`.
"""
from __future__ import annotations

from facray import storage
from facray.attributes import ATTRIBUTES
from facray.data.prepared import LANDMARK_FIELDS, shard_dir
from facray.training.splits import SplitSpec


def split_datasets(spec: SplitSpec, columns: tuple[str, ...] = ("image", "sketch")) -> dict:
    """``{"train", "val", "test"}`` Ray Datasets of the usable rows; validation and test keep each
    image's original only. ``columns``: the pixel columns to read (labels always come along)."""
    import ray

    if spec.val_split == "holdout":
        raise ValueError("--val-split holdout needs --data memory (the holdout is chosen by image id "
                         "in memory); give the prepared data a val split for stream mode")
    fs, path = storage.filesystem(shard_dir(spec.prepared))
    ds = ray.data.read_parquet(path, filesystem=fs)
    keep = [c for c in ("image_id", "split", "variant", "error", *ATTRIBUTES, *LANDMARK_FIELDS, *columns)
            if c in ds.schema().names]
    ds = ds.select_columns(keep)

    def pick(split: str, originals: bool):
        expr = f"split == '{split}' and error == ''" + (" and variant == 'original'" if originals else "")
        return ds.filter(expr=expr)  # an Arrow expression: no Python call per row

    return {"train": pick(spec.train_split, False), "val": pick(spec.val_split, True),
            "test": pick(spec.test_split, True)}
