"""List unlabelled images: a folder (recursive), a glob, or a text file of paths. Pure Python.

Every file that looks like an image by its extension is listed, readable or not: decode errors are
found later and reported as error rows, so no input goes missing.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pandas as pd

from facray.data.errors import DatasetError

# Everything the decoder reads (OpenCV, with Pillow reading the header of each for its size).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_utf8_name(path: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python holds them as lone surrogates, which
    Arrow, CSV writers and terminals refuse)."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable_name(path: str) -> str:
    """``path`` with non-UTF-8 bytes written as ``\\xNN`` escapes, for output rows and messages."""
    return path if is_utf8_name(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


def list_images(source: str | Path) -> list[str]:
    """Absolute paths, sorted, for a folder (recursive), a glob pattern or a ``.txt`` list."""
    text = str(source)
    p = Path(text).expanduser()
    if p.is_dir():
        paths = [os.path.join(d, f) for d, _, files in os.walk(p) for f in files
                 if f.lower().endswith(IMAGE_SUFFIXES)]
    elif p.is_file() and p.suffix.lower() in (".txt", ".lst"):
        lines = p.read_text(encoding="utf-8-sig").splitlines()
        paths = []
        for i, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                q = Path(line).expanduser()
                paths.append(str(q if q.is_absolute() else p.parent / q))
    elif p.is_file():
        paths = [str(p)]
    elif any(ch in text for ch in "*?["):
        paths = [q for q in glob.glob(os.path.expanduser(text), recursive=True)
                 if q.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(q)]
    else:
        raise DatasetError(f"{source}: no such folder, file or glob match")
    # abspath, not resolve: a folder of symlinks keeps its own names (one row per link).
    return sorted(os.path.abspath(q) for q in paths)


def list_uri_images(uri: str) -> list[str]:
    """Image files under a pyarrow-readable URI (s3://bucket/prefix, gs://..., file:///...)."""
    from facray import storage
    return storage.list_files(uri, IMAGE_SUFFIXES)


def read_image_folder(source: str | Path, split: str = "unlabelled") -> pd.DataFrame:
    """A metadata table (``image_id``, ``path``, ``split``) for unlabelled images."""
    paths = list_images(source)
    if not paths:
        raise DatasetError(f"{source}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    root = Path(source).expanduser()
    base = root if root.is_dir() else Path(os.path.commonpath(paths)).parent if len(paths) > 1 else Path(paths[0]).parent
    ids = [os.path.relpath(q, os.path.abspath(base)) for q in paths]
    table = pd.DataFrame({"image_id": ids, "path": paths, "split": split})
    table["identity"] = np.int64(-1)
    table.attrs.update(image_kind="wild", root=str(base), warnings=[], skipped={})
    return table
