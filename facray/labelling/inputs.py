"""The inputs of ``facray label``: every image of a folder, glob, ``.txt`` list or URI, with what
decides whether an earlier result can be reused (size, modification time)."""
from __future__ import annotations

import os

import pandas as pd

from facray import storage
from facray.data.errors import DatasetError
from facray.data.folder import is_utf8_name, list_source, printable_names


def list_inputs(images: str) -> pd.DataFrame:
    """``path``, ``size``, ``mtime_ns`` (-1 when unknown) and ``error`` of every input image, by
    the one listing rule (:mod:`facray.data.folder`); what it skipped, and why, is
    ``attrs["skipped_text"]`` (:meth:`facray.data.folder.Listing.format_skipped`).

    A local file whose name is not UTF-8 is listed under a distinct escaped name with an error:
    Arrow and CSV cannot hold the name, and one such file must not sink the job. A file a list
    names twice is one input (one row).
    """
    is_uri = storage.is_uri(images)
    listing = list_source(images)
    paths = list(dict.fromkeys(listing.paths))
    if not paths:
        raise DatasetError(f"{images}: no images found ({listing.format_skipped() or 'nothing there'})")
    sizes, mtimes = [], []
    if is_uri:
        fs, _ = storage.filesystem(images)
        for info in fs.get_file_info([storage.path_inside(p) for p in paths]):
            sizes.append(info.size if info.size is not None else -1)
            mtimes.append(info.mtime_ns if info.mtime_ns is not None else -1)
    else:
        for p in paths:
            try:
                st = os.stat(p)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
            except OSError:
                sizes.append(-1)
                mtimes.append(-1)
    names = printable_names(paths)
    errors = ["" if is_utf8_name(p) else f"{n}: file name is not valid UTF-8; rename the file to label it"
              for p, n in zip(paths, names)]
    table = pd.DataFrame({"path": names, "image_id": listing.image_ids(names), "size": sizes, "mtime_ns": mtimes,
                          "error": errors})
    table.attrs["skipped_text"] = listing.format_skipped()
    return table
