"""Metadata tables -> Ray Datasets, for ``prepare`` and ``label``. Runs on the driver.

The table comes from the pure readers (:mod:`facray.data.celeba`, :mod:`facray.data.mtfl`,
:mod:`facray.labelling.inputs`); its rows carry paths, not pixels: the actors read and decode the
images, so nothing large passes through the driver or the object store on the way in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import ray


def rows_per_block(rows: int, actors: int, most: int) -> int:
    """Rows per input block: at least four blocks per actor (or small inputs leave actors idle),
    at most ``most`` rows."""
    return max(1, min(most, -(-rows // (4 * max(actors, 1)))))


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


def metadata_dataset(table: pd.DataFrame, rows_per_block: int = 500) -> ray.data.Dataset:
    """A Ray Dataset with one row per table row, in blocks of about ``rows_per_block`` rows."""
    return ray.data.from_pandas(metadata_blocks(table, rows_per_block))
