"""Stream mode (``--data stream``): Ray Data feeds the Train workers from the prepared Parquet, for
datasets larger than a worker's memory. The Datasets are built on the driver; the batches are
decoded in the workers by the pure :func:`facray.training.splits.stream_batches`.
"""
from __future__ import annotations

from contextlib import contextmanager

from facray import storage
from facray.attributes import ATTRIBUTES
from facray.data.prepared import LANDMARK_FIELDS, shard_dir
from facray.training.splits import SplitSpec

# Stream mode's read side, kept small: with Ray Data's default 128 MiB target a read task held
# 0.6-1.1 GB at 180 px (bench/RESULTS.md, "Under a memory cap"). Ray sizes each Parquet read batch
# and each block from this target (~120 rows at 180 px with sketches, several training batches),
# so it bounds what a read task and the queue between it and the Train workers hold.
STREAM_BLOCK_BYTES = 16 * 2**20

# Arrow's allocator in stream mode's read tasks. Arrow allocates with mimalloc, which by default
# keeps freed pages for reuse: a plain pyarrow scan of these rows ended holding 416 MB, 115 MB
# with this setting (bench/RESULTS.md, "Stream mode's read memory"). Set as the read tasks' runtime
# environment: mimalloc reads it when the process starts, and Ray keeps such workers apart from
# the others. (Set on the Train workers too it did not change their memory: theirs is not Arrow's.)
# Ray Data fuses no later map step into a read task with another runtime environment: a
# ``map_batches`` added to the stream datasets would run in workers without it. Ray's
# ``RAY_DATA_ISOLATE_READ_WORKERS=1`` replaces these env vars with its own (Ray 2.60).
ARROW_ALLOCATOR_ENV = {"MIMALLOC_PURGE_DELAY": "0"}


@contextmanager
def _target_block_size(nbytes: int):
    """Ray Data's ``target_max_block_size`` while a read is set up. Ray 2.60's Parquet reader takes
    it from the driver's global context when ``read_parquet`` is called (the read batch, the file
    buckets), and the Dataset keeps a copy for its execution (its blocks); the global value is
    restored for whatever else this driver reads."""
    import ray

    context = ray.data.DataContext.get_current()
    previous, context.target_max_block_size = context.target_max_block_size, nbytes
    try:
        yield
    finally:
        context.target_max_block_size = previous


def _read_task_env() -> dict:
    """``read_parquet``'s keyword for the read tasks' runtime environment: ``runtime_env`` where
    this Ray names it (2.60 deprecates ``ray_remote_args``), else ``ray_remote_args`` (older Ray)."""
    import inspect

    import ray

    env = {"env_vars": dict(ARROW_ALLOCATOR_ENV)}
    if "runtime_env" in inspect.signature(ray.data.read_parquet).parameters:
        return {"runtime_env": env}
    return {"ray_remote_args": {"runtime_env": env}}


def stream_data_config(split_train: bool):
    """Ray Train's ``DataConfig`` for the stream datasets: ``train`` split between the workers
    when ``split_train``; execution in order (Ray Train replaces a Dataset's own execution options
    with these). In order, Ray 2.60's Parquet reader (datasource V2) reads a read task's fragments
    one at a time, not all at once each with its own read-ahead; with the allocator setting above
    a read process held 0.72x the memory of Ray's defaults at 1.30x the rows/s on one 2-CPU node
    (bench/RESULTS.md; the two not measured apart). Costs: multi-node ``train`` (``train`` split
    between workers) loses Ray Data's locality hints, a slow read task holds back the blocks after
    it, and each pass reads the rows in the same order before the seeded shuffle buffer
    (``4 * batch_size`` rows), so a stream-mode pass is less shuffled than memory mode's full
    permutation."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split=["train"] if split_train else [], execution_options=options)


def split_datasets(spec: SplitSpec, columns: tuple[str, ...] = ("image", "sketch")) -> dict:
    """``{"train", "val", "test"}`` Ray Datasets of the usable rows; validation and test keep each
    image's original only. ``columns``: the pixel columns to read (labels always come along)."""
    import ray

    if spec.val_split == "holdout":
        raise ValueError("--val-split holdout needs --data memory (the holdout is chosen by image id "
                         "in memory); give the prepared data a val split for stream mode")
    fs, path = storage.filesystem(shard_dir(spec.prepared))
    with _target_block_size(STREAM_BLOCK_BYTES):
        ds = ray.data.read_parquet(path, filesystem=fs, **_read_task_env())
    keep = [c for c in ("image_id", "split", "variant", "error", *ATTRIBUTES, *LANDMARK_FIELDS, *columns)
            if c in ds.schema().names]
    ds = ds.select_columns(keep)

    def pick(split: str, originals: bool):
        expr = f"split == '{split}' and error == ''" + (" and variant == 'original'" if originals else "")
        return ds.filter(expr=expr)  # an Arrow expression: no Python call per row

    return {"train": pick(spec.train_split, False), "val": pick(spec.val_split, True),
            "test": pick(spec.test_split, True)}
