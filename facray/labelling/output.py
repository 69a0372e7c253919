"""The output of ``facray label``: its columns, its formats, the files beside it that a re-run
resumes from (written by :mod:`facray.labelling.write`). The one owner of that format, as
:mod:`facray.data.prepared` is of prepared data.

Columns (:data:`OUTPUT_COLUMNS`): ``path`` (absolute, or the URI), ``image_id`` (the path relative
to the ``--images`` folder, glob folder or list file's folder: the key CelebA's and FFHQ's lists
use), ``face_found``, ``crop_method`` (how the face was found: ``template`` where the image
follows a known aligned layout, ``detect``, ``centre`` when no face was found, ``full``,
``error``), ``n_faces`` (faces the detector found; the largest is labelled unless
``--faces all``), ``face_index`` (0 the largest; with ``--faces all`` one row per face), the
labelled face's box ``face_x, face_y, face_w, face_h`` (source pixels) and ``face_score``
(detector confidence), ``error``, 40 ``<Attribute>_prob``, 40 ``<Attribute>`` decisions (1/0,
empty when the image failed or the predictor does not cover the attribute) and ``model``.

Beside ``OUT``: ``OUT.index.parquet`` (every row whole with its resume keys :data:`KEY_COLUMNS`
and the format, sorted by path: what a re-run reuses rows from, whatever the format; see
:mod:`facray.labelling.merge`), ``OUT.parts/`` (rows of a run not yet merged: an interrupted run's
are reused) and, for ``celeba``, ``OUT.errors.csv`` (rows its list cannot hold).
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pandas as pd

from facray import columns
from facray import storage
from facray.attributes import ATTRIBUTES
from facray.data.errors import OutputError

PROB_COLUMNS = [f"{a}_prob" for a in ATTRIBUTES]
FACE_COLUMNS = [columns.FACE_FOUND, columns.CROP_METHOD, columns.N_FACES, columns.FACE_INDEX, *columns.FACE_BOX, columns.FACE_SCORE]
OUTPUT_COLUMNS = ["path", "image_id", *FACE_COLUMNS, "error", *PROB_COLUMNS, *ATTRIBUTES, "model"]
FORMATS = ("csv", "parquet", "celeba")
# What decides whether a finished row is reused: the input unchanged (size, mtime), the same
# model, the same faces mode (--faces largest | all), the same --crop and --min-confidence.
KEY_COLUMNS = ["path", "size", "mtime_ns", "model", "faces", "crop", "min_confidence"]


def output_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The output columns in order with fixed dtypes whatever the mix of rows (fresh ones, parts
    read back, rows of an older facray without some columns): decisions and ``n_faces`` nullable
    integers (Parquet keeps them so; a CSV writes empty cells), probabilities and boxes floats."""
    table = rows.reindex(columns=OUTPUT_COLUMNS)
    table[list(ATTRIBUTES)] = table[list(ATTRIBUTES)].astype("float64").round().astype("Int8")
    table[columns.N_FACES] = table[columns.N_FACES].astype("float64").astype("Int16")
    table.loc[table[columns.N_FACES] < 0, columns.N_FACES] = pd.NA  # not looked for: unknown
    table[columns.FACE_INDEX] = table[columns.FACE_INDEX].astype("float64").fillna(0).astype("int16")
    floats = [*PROB_COLUMNS, *columns.FACE_BOX, columns.FACE_SCORE]
    table[floats] = table[floats].astype("float64")
    table["face_found"] = table["face_found"].fillna(False).astype(bool)
    table["error"] = table["error"].fillna("").astype(str)
    table[columns.CROP_METHOD] = table[columns.CROP_METHOD].fillna("").astype(str)
    return table


def encode_output(rows: pd.DataFrame, fmt: str) -> tuple[bytes, pd.DataFrame]:
    """The output file's bytes in ``fmt`` (:data:`FORMATS`) and the rows it could not hold (empty
    but for ``celeba``): ``csv`` and ``parquet`` hold every row of :func:`output_table`;
    ``celeba`` is CelebA's ``list_attr_celeba.txt`` layout (a count line, a header naming the
    attributes the model covers, then ``image_id`` and -1/1 per attribute), so facray and other
    CelebA tools read the labels as a dataset. It holds the labelled rows only: rows with an
    error, or an ``image_id`` with white space (the layout splits on it), are returned with their
    reason for the caller to write beside it."""
    table = output_table(rows)
    buf = io.BytesIO()
    if fmt == "parquet":
        table.to_parquet(buf, index=False)
        return buf.getvalue(), table.iloc[:0]
    if fmt == "csv":
        table.to_csv(buf, index=False, float_format="%.6g")
        return buf.getvalue(), table.iloc[:0]
    if fmt != "celeba":
        raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
    ok = table["error"] == ""
    covered = [a for a in ATTRIBUTES if table.loc[ok, a].notna().any()] or list(ATTRIBUTES)
    lines, left_out = celeba_lines(table, covered)
    return ("\n".join([str(len(lines)), " ".join(covered), *lines]) + "\n").encode(), left_out


def celeba_lines(table: pd.DataFrame, covered: list[str]) -> tuple[list[str], pd.DataFrame]:
    """The lines of a CelebA-style list for the rows of ``table`` (:func:`output_table`'s) that it
    can hold, ``image_id`` and -1/1 for each ``covered`` attribute, and the rows it cannot (an
    error, white space in the id, a missing decision) with their reason."""
    if (table[columns.FACE_INDEX] > 0).any():
        raise ValueError("a CelebA-style list holds one row per image: --faces all needs --format csv or parquet")
    table = table.copy()
    ok = table["error"] == ""
    spaced = ok & table["image_id"].astype(str).str.contains(r"\s")
    table.loc[spaced, "error"] = [f"{p}: its image_id has white space, which a CelebA-style list cannot hold "
                                  "(use --format csv or parquet)" for p in table.loc[spaced, "path"]]
    ok &= ~spaced
    # (a row with no error has every decision: label refuses --min-confidence with this format)
    undecided = ok & table[covered].isna().any(axis=1)
    table.loc[undecided, "error"] = [f"{p}: no decision for every attribute" for p in table.loc[undecided, "path"]]
    ok &= ~undecided
    listed = table[ok]
    signed = (2 * listed[covered].astype("int64") - 1).to_numpy()  # 1/0 -> 1/-1
    lines = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(listed["image_id"], signed)]
    return lines, table.loc[~ok, ["path", "image_id", "error"]]


def index_path(out: str) -> str:
    """The resume index beside ``out``."""
    return out + ".index.parquet"


def errors_path(out: str) -> str:
    """Where ``--format celeba`` writes the rows its list cannot hold (errors), with their reason."""
    return out + ".errors.csv"


def parts_dir(out: str) -> str:
    """Where a run's rows land as it goes, before they are merged into ``out``."""
    return out + ".parts"


def read_parquet(location: str) -> pd.DataFrame:
    """A Parquet file (local or URI) into pandas: an index, or a part."""
    fs, path = storage.filesystem(location)
    return pd.read_parquet(path, filesystem=fs)


def read_output(location: str, fmt: str) -> pd.DataFrame:
    """A ``csv`` or ``parquet`` output read back (paths, errors and model names as strings)."""
    if fmt == "parquet":
        return read_parquet(location)
    return pd.read_csv(io.BytesIO(storage.read_bytes(location)), keep_default_na=False, na_values=[""],
                       dtype={"path": str, "error": str, "model": str})


def complete_images(done: pd.DataFrame) -> pd.Series:
    """Per path of ``done`` (rows of :func:`previous_rows`), whether all its rows are there: one
    row, or with ``--faces all`` one per face found (``face_index`` 0 .. n_faces-1; a run killed
    between two parts may have written some of an image's faces only)."""
    if done.empty:
        return pd.Series(dtype=bool)
    n_faces = pd.to_numeric(done["n_faces"], errors="coerce").fillna(1).clip(lower=1)
    per = pd.DataFrame({"path": done["path"], "index": done["face_index"], "n": n_faces})
    per["expected"] = per["n"].where(done["faces"] == "all", 1)
    grouped = per.groupby("path").agg(found=("index", "nunique"), expected=("expected", "max"))
    return grouped["found"] >= grouped["expected"]


def temporary_name(location: str, suffix: str = "") -> Path:
    """The hidden name beside a local ``location`` that a file is written under before it replaces
    ``location`` (``.labels.csv.tmp-<pid><suffix>``): one per process, and a killed writer's are
    found by :data:`TEMPORARY_GLOB`."""
    return Path(location).with_name(f".{Path(location).name}.tmp-{os.getpid()}{suffix}")


TEMPORARY_GLOB = ".{name}.tmp-*"  # every temporary_name of an output called name (glob-escaped)


def cannot_write(location: str, error: OSError) -> OutputError:
    """The one-line error of a failed write: the location and the system's reason (a full disk)."""
    return OutputError(f"{location}: cannot write ({getattr(error, 'strerror', None) or error})")


def _write_whole(location: str, data: bytes) -> None:
    """Write a file readers see whole or not at all: one object on a store; locally a temporary
    name then ``os.replace``, the temporary file removed if the write fails (a full disk). A
    failure is an :class:`OutputError` naming the location and the problem."""
    try:
        if storage.is_uri(location):
            storage.write_bytes(location, data)
            return
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(location)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, location)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise cannot_write(location, e) from None


class PartWriter:
    """Finished rows to durable Parquet parts under ``folder`` as they arrive, so a killed run
    loses at most ``flush_rows`` rows or ``flush_seconds`` of work (a re-run reuses the parts).

    The driver writes them itself from the pipeline's output stream: Ray Data's ``write_parquet``
    held its writes back under its resource budget (the first part of a 79 s run appeared at 74 s).
    Each part is written whole (a temporary name then ``os.replace`` locally, one object on a
    store), so a reader never sees half of one.
    """

    def __init__(self, folder: str, flush_rows: int = 512, flush_seconds: float = 10.0):
        self.folder, self.flush_rows, self.flush_seconds = folder, flush_rows, flush_seconds
        self.pending: list[pd.DataFrame] = []
        self.parts, self.last = 0, time.monotonic()

    def add(self, rows: pd.DataFrame) -> None:
        self.pending.append(rows)
        if sum(map(len, self.pending)) >= self.flush_rows or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            buf = io.BytesIO()
            # Sorted as the output is: a run's parts, delivered in input order, then stream in order.
            rows = pd.concat(self.pending, ignore_index=True)
            rows.sort_values(["path", "face_index"] if "face_index" in rows else ["path"], kind="stable").to_parquet(
                buf, index=False)
            _write_whole(storage.join(self.folder, f"part-{self.parts:06d}.parquet"), buf.getvalue())
            self.parts += 1
            self.pending = []
        self.last = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.flush()  # also on an error or an interrupt: what is finished is kept
