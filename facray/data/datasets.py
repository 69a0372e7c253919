"""Ray Datasets of images with their metadata. Runs on the driver; the work runs in Ray tasks.

The metadata table comes from the pure readers (:mod:`facray.data.celeba`, :mod:`facray.data.mtfl`);
this module only turns it into a Ray Dataset and adds the image bytes, so decoding happens in the
pipeline's actors, not here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import ray

from facray.data.ops import IMAGE_BYTES, attach_image_bytes


def metadata_blocks(table: pd.DataFrame, rows_per_block: int = 500) -> list[pd.DataFrame]:
    """Split the table into plain frames (categoricals as strings) so Ray reads them in parallel."""
    frame = pd.DataFrame(table).copy()
    frame.attrs = {}
    for c in frame.columns:
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].astype(str)
    n_blocks = max(1, int(np.ceil(len(frame) / rows_per_block)))
    bounds = np.linspace(0, len(frame), n_blocks + 1).astype(int)
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:])]


def build_image_dataset(table: pd.DataFrame, rows_per_block: int = 500,
                        read_bytes: bool = True) -> ray.data.Dataset:
    """A Ray Dataset with one row per table row plus ``image_bytes`` (and ``error`` if unreadable).

    Reading bytes is I/O, done in tasks with a small CPU share so decode actors keep the CPUs.
    """
    ds = ray.data.from_pandas(metadata_blocks(table, rows_per_block))
    if read_bytes:
        ds = ds.map_batches(attach_image_bytes, batch_format="numpy", num_cpus=0.25,
                            batch_size=None)
    return ds


__all__ = ["IMAGE_BYTES", "build_image_dataset", "metadata_blocks"]
