"""Batch operations on ``dict[str, np.ndarray]`` batches: what Ray Data actors and tasks wrap.

Pure numpy/OpenCV, no Ray: each op is tested on plain dicts, and the pipeline modules wrap them in
``map_batches``. Column names are the constants below.
"""
from __future__ import annotations

import numpy as np

PATH = "path"
IMAGE_BYTES = "image_bytes"
ERROR = "error"


def attach_image_bytes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the raw bytes of each ``path`` (empty bytes + an ``error`` message when unreadable)."""
    data, errors = [], []
    prior = batch.get(ERROR)
    for i, path in enumerate(batch[PATH]):
        err = "" if prior is None else str(prior[i])
        blob = b""
        if not err:
            try:
                with open(path, "rb") as f:
                    blob = f.read()
            except OSError as e:
                err = f"{path}: cannot read file ({e.strerror or e})"
        data.append(blob)
        errors.append(err)
    out = dict(batch)
    out[IMAGE_BYTES] = np.array(data, dtype=object)
    out[ERROR] = np.array(errors, dtype=object)
    return out
