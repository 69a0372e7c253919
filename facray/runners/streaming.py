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


@contextmanager
def _stream_read_context():
    """Ray Data's settings for the stream datasets while their read is set up: the block target
    :data:`STREAM_BLOCK_BYTES`, and no "Starting execution of Dataset ..." lines (two per
    execution: with online augmentation 9 passes per epoch, each printed by every Train worker;
    Ray Data's one "execution finished" line per execution remains).
    Ray 2.60's Parquet reader takes the block target from the driver's global context when
    ``read_parquet`` is called (the read batch, the file buckets), and each Dataset keeps a copy of
    the context for its execution (its blocks, the logging); the global values are restored for
    whatever else this driver reads."""
    import ray

    context = ray.data.DataContext.get_current()
    previous = context.target_max_block_size, context.print_on_execution_start
    context.target_max_block_size, context.print_on_execution_start = STREAM_BLOCK_BYTES, False
    try:
        yield
    finally:
        context.target_max_block_size, context.print_on_execution_start = previous


def stream_data_config(split_train: bool):
    """Ray Train's ``DataConfig`` for the stream datasets: ``train`` split between the workers
    when ``split_train``; execution in order (Ray Train replaces a Dataset's own execution options
    with these). In order, Ray 2.60's Parquet reader (datasource V2) reads a read task's fragments
    one at a time, not all at once each with its own read-ahead. On 20,000 faces at 180 px
    (bench/stream_read.py, one 2-CPU node) the largest read process held 0.88x Ray's defaults with
    this alone, 0.62x with the job's allocator setting alone
    (``MIMALLOC_PURGE_DELAY``, :data:`facray.runners.runtime.ALLOCATOR_ENV`), 0.49x with both, at 1.6-2.0x the rows/s.
    Costs: multi-node ``train`` (``train`` split between workers) loses Ray Data's locality hints,
    a slow read task holds back the blocks after it, and a pass is shuffled by file order and a
    ``4 * batch_size``-row buffer only (see :func:`split_datasets`), less than memory mode's full
    permutation."""
    import warnings

    from ray.train import DataConfig

    with warnings.catch_warnings():
        # Ray 2.60's own default_ingest_options passes the deprecated exclude_resources on, and
        # the warning about it would reach the user's console from a call that is Ray Train's.
        warnings.filterwarnings("ignore", message=".*exclude_resources.*")
        options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split=["train"] if split_train else [], execution_options=options)


def split_datasets(spec: SplitSpec, columns: tuple[str, ...] = ("image", "sketch"),
                   shuffle_seed: int | None = None) -> dict:
    """``{"train", "val", "test"}`` Ray Datasets of the usable rows; validation and test keep each
    image's original only. ``columns``: the pixel columns to read (labels always come along).

    ``shuffle_seed``: ``train`` reads its Parquet files in a seeded random order, a new one for
    each execution (each pass of an epoch) where Ray Data's ``FileShuffleConfig`` can reseed per
    execution (``reseed_after_execution``: Ray 2.60 has it), one order for every pass on a Ray
    without it. A Train worker counts its executions from 0 when it starts, so a run resumed from
    a checkpoint repeats the first passes' orders. Validation and test are read in file order."""
    import ray

    if spec.val_split == "holdout":
        raise ValueError("--val-split holdout needs --data memory (the holdout is chosen by image id "
                         "in memory); give the prepared data a val split for stream mode")
    fs, path = storage.filesystem(shard_dir(spec.prepared))

    def read(shuffle):
        with _stream_read_context():
            return ray.data.read_parquet(path, filesystem=fs, shuffle=shuffle)

    def pick(ds, split: str, originals: bool):
        expr = f"split == '{split}' and error == ''" + (" and variant == 'original'" if originals else "")
        return ds.filter(expr=expr)  # an Arrow expression: no Python call per row

    in_order = read(None)
    keep = [c for c in ("image_id", "split", "variant", "error", *ATTRIBUTES, *LANDMARK_FIELDS, *columns)
            if c in in_order.schema().names]  # once: the shuffled read has the same files
    in_order = in_order.select_columns(keep)
    train = read(_file_shuffle(shuffle_seed)).select_columns(keep) if shuffle_seed is not None else in_order
    return {"train": pick(train, spec.train_split, False), "val": pick(in_order, spec.val_split, True),
            "test": pick(in_order, spec.test_split, True)}


def _file_shuffle(seed: int):
    """Ray Data's seeded file order, reseeded per execution where this Ray can (the
    ``reseed_after_execution`` field of ``FileShuffleConfig``; without it, one order for every
    execution)."""
    import inspect

    import ray

    config = ray.data.FileShuffleConfig
    reseed = "reseed_after_execution" in inspect.signature(config).parameters
    return config(seed=seed, **({"reseed_after_execution": True} if reseed else {}))
