"""``facray prepare`` on Ray Data: decode, crop, mask, augment and sketch images; write Parquet.

Runs on the driver; the stages run in a pool of Ray actors (one fused :class:`~facray.data.ops.Chain`
per actor, so the detector loads once per actor and batches never cross the object store between
stages). The config, the chain and the commit are :mod:`facray.data.pipeline`'s.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import ray

from facray import storage
from facray.config import absolute_paths
from facray.data.pipeline import (PrepareConfig, PrepareSummary, commit, detector_name, grouped_by_split, new_shards_name,
                                  preprocessing_chain, previous_shards, read_table, summarise)
from facray.data.prepared import ROW_GROUP_ROWS
from facray.preflight import check_writable
from facray.runners.datasets import metadata_dataset, rows_per_block
from facray.runners.runtime import init_ray


class PreprocessActor:
    """A Ray Data actor: builds the chain once (detector, cascades) and runs it per batch."""

    def __init__(self, cfg: PrepareConfig, image_kind: str):
        import cv2
        cv2.setNumThreads(1)  # one core per actor; OpenCV's own threads would oversubscribe
        self.chain = preprocessing_chain(cfg, image_kind)

    def __call__(self, batch):
        return self.chain(batch)


def build_prepare_dataset(cfg: PrepareConfig, table: pd.DataFrame) -> ray.data.Dataset:
    """The lazy Ray Dataset of prepared rows for ``table`` (:func:`facray.data.pipeline.read_table`):
    metadata blocks -> a pool of ``cfg.num_actors`` :class:`PreprocessActor`. Nothing runs until it
    is consumed (written, counted, iterated). The rows go in :func:`grouped_by_split`, so the
    shards' row groups each hold one split but at a seam."""
    block = rows_per_block(len(table), cfg.num_actors, most=cfg.rows_per_block)
    return metadata_dataset(grouped_by_split(table), block).map_batches(
        PreprocessActor, fn_constructor_args=(cfg, table.attrs.get("image_kind", "wild")), batch_format="numpy",
        batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors))


def write_shards(ds: ray.data.Dataset, shard_path: str, filesystem=None) -> None:
    """Write prepared rows as Parquet shards in row groups of :data:`ROW_GROUP_ROWS` (what a
    reader holds at once)."""
    ds.write_parquet(shard_path, filesystem=filesystem, row_group_size=ROW_GROUP_ROWS)


def prepare(cfg: PrepareConfig) -> PrepareSummary:
    """Run the preprocessing pipeline on Ray Data and write ``cfg.out`` (a path or URI).

    The shards go to a new ``shards-<id>`` folder; ``prepared.json``, written last, switches
    readers to it, and only then is the previous version deleted (see :mod:`facray.data.prepared`).
    """
    cfg = absolute_paths(cfg)
    start = time.perf_counter()
    table = read_table(cfg)
    out = cfg.out if storage.is_uri(cfg.out) else str(Path(cfg.out).resolve())
    check_writable(out)  # before Ray starts: a full disk or an unreachable store fails here
    previous, shards, detector = previous_shards(out), new_shards_name(), detector_name(cfg)
    init_ray()
    fs, shard_path = storage.filesystem(storage.join(out, shards))
    write_shards(build_prepare_dataset(cfg, table), shard_path, fs)
    summary = summarise(out, storage.join(out, shards), len(table), time.perf_counter() - start, detector)
    commit(cfg, out, shards, previous, table.attrs.get("image_kind", "wild"), detector)
    return summary
