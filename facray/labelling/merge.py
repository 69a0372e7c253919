"""How a ``facray label`` run's rows become its output, streamed: the driver never holds all rows.

Rows live in *sources*, each sorted by (``path``, ``face_index``): the index of the last output
(``OUT.index.parquet``: every row whole, whatever the format), the parts of runs not yet merged
(``OUT.parts/run-*/``: the Ray pipeline delivers rows in input order, which is path order), and
the rows of inputs that never reached the pipeline (names Arrow cannot hold). Deciding what to
reuse needs only their keys (:func:`previous_rows`). Writing merges the sources chunk by chunk
(:func:`merged_rows`, each path from the one source chosen for it), which
:mod:`facray.labelling.write` writes, so driver memory is set by :data:`CHUNK_ROWS`, not by the
number of rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from facray import columns, storage
from facray.attributes import ATTRIBUTES
from facray.labelling.output import KEY_COLUMNS, OUTPUT_COLUMNS, PROB_COLUMNS, index_path, parts_dir, read_output

# Rows per chunk read, merged and written: about 25 MB of pandas for the output's 95 columns.
CHUNK_ROWS = 20_000
# What the index adds to the output's columns: the resume keys the output does not show, and the
# format the output was written in (another format under the same name is never misread).
INDEX_EXTRA = ["size", "mtime_ns", "faces", "crop", "min_confidence", "format"]
INDEX_COLUMNS = [*OUTPUT_COLUMNS, *INDEX_EXTRA]
# What deciding what to reuse reads of every earlier row.
RESUME_COLUMNS = [*KEY_COLUMNS, columns.FACE_INDEX, columns.N_FACES]

_STRINGS = ("path", "image_id", columns.CROP_METHOD, "error", "model", "faces", "crop", "format")
INDEX_SCHEMA = pa.schema(
    [(c, pa.string()) if c in _STRINGS
     else (c, pa.bool_()) if c == columns.FACE_FOUND
     else (c, pa.int16()) if c in (columns.N_FACES, columns.FACE_INDEX)
     else (c, pa.int8()) if c in ATTRIBUTES
     else (c, pa.int64()) if c in ("size", "mtime_ns")
     else (c, pa.float64()) for c in INDEX_COLUMNS])


def _open(location: str):
    fs, path = storage.filesystem(location)
    return fs.open_input_file(path)


def normalise(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older facray: no faces mode (it labelled the largest face only, one row each),
    no crop mode (it always detected), no abstention (it decided every cell)."""
    rows = rows.copy() if any(c not in rows for c in ("faces", "crop", "face_index", "min_confidence")) else rows
    rows["min_confidence"] = rows["min_confidence"].fillna(0.0) if "min_confidence" in rows else 0.0
    rows["faces"] = rows["faces"].fillna("largest") if "faces" in rows else "largest"
    rows["crop"] = rows["crop"].fillna("detect") if "crop" in rows else "detect"
    rows["face_index"] = rows["face_index"].fillna(0).astype("int64") if "face_index" in rows else 0
    return rows


def _in_order(rows: pd.DataFrame) -> bool:
    """Whether ``rows`` are sorted by (path, face_index)."""
    p, f = rows["path"].to_numpy(object), rows["face_index"].to_numpy()
    return bool(np.all((p[1:] > p[:-1]) | ((p[1:] == p[:-1]) & (f[1:] >= f[:-1])))) if len(p) > 1 else True


@dataclass
class Source:
    """Rows of one index or run, sorted by (path, face_index): Parquet ``files`` read in order, or
    a ``frame`` held in memory (an older facray's output, unsorted parts of an older facray, the
    rows of inputs that never reached the pipeline)."""
    id: int
    files: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = None

    def chunks(self, wanted: list[str] | None = None) -> Iterator[pd.DataFrame]:
        if self.frame is not None:
            frame = self.frame if wanted is None else self.frame[[c for c in wanted if c in self.frame]]
            for i in range(0, len(frame), CHUNK_ROWS):
                yield normalise(frame.iloc[i:i + CHUNK_ROWS])
            return
        for location in self.files:
            with _open(location) as f:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                read = None if wanted is None else [c for c in wanted if c in names]
                for batch in parquet.iter_batches(CHUNK_ROWS, columns=read):
                    yield normalise(batch.to_pandas())

    def keys(self) -> pd.DataFrame:
        """:data:`RESUME_COLUMNS` of every row, with ``_source``. A source whose rows turn out not
        to be in order (the parts of an older facray) is read into memory and sorted first, so
        every source streams in order."""
        found = [k for k in self.chunks(RESUME_COLUMNS)]
        keys = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=RESUME_COLUMNS)
        if self.frame is None and not _in_order(keys):
            self.frame = pd.concat(list(self.chunks()), ignore_index=True).sort_values(
                ["path", "face_index"], kind="stable")
            self.files = []
            return self.keys()
        return keys.reindex(columns=RESUME_COLUMNS).assign(_source=self.id)


def _readable(location: str) -> bool:
    try:
        with _open(location) as f:
            pq.ParquetFile(f)
        return True
    except Exception as e:  # noqa: BLE001 - a damaged part: its images are labelled again
        print(f"{location}: unreadable part, its images are labelled again ({e})", flush=True)
        return False


def _legacy_output(out: str, fmt: str, keys_location: str) -> pd.DataFrame:
    """The rows of an output an older facray wrote (its index holds keys only): output and keys
    joined, in memory (outputs were written whole then, so they fit)."""
    with _open(keys_location) as f:
        keys = pd.read_parquet(f)
    rows = read_output(out, fmt).drop(columns=["model"])
    if "face_index" not in rows:
        rows["face_index"] = 0
    if "face_index" not in keys:  # one row per image then
        keys = keys.assign(face_index=0, faces="largest")
    return rows.merge(keys, on=["path", "face_index"], how="inner").sort_values(["path", "face_index"], kind="stable")


def earlier_sources(out: str, fmt: str) -> list[Source]:
    """Where earlier rows are: the last output's index (when it was written in ``fmt``: another
    format under the same name is labelled again, never misread), then the parts of runs not
    merged yet, oldest first. Unreadable parts are left out (their images are labelled again)."""
    sources = []
    index = index_path(out)
    if storage.is_file(out) and storage.is_file(index):
        with _open(index) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            first = parquet.read_row_group(0, columns=["format"]).column(0) \
                if "format" in names and parquet.metadata.num_row_groups else None
        # An index of an older facray has no format: it was csv or parquet, as asked now.
        written_as = (str(first[0]) if first is not None and len(first) else "") if "format" in names \
            else (fmt if fmt != "celeba" else "")
        if written_as == fmt:
            if PROB_COLUMNS[0] in names:  # whole rows (every index since streamed output; celeba's always)
                sources.append(Source(0, [index]))
            else:
                sources.append(Source(0, frame=_legacy_output(out, fmt, index)))
    runs: dict[str, list[str]] = {}
    for part in storage.list_files(parts_dir(out), (".parquet",)):
        runs.setdefault(part.rsplit("/", 1)[0], []).append(part)
    for run in sorted(runs):
        files = [p for p in sorted(runs[run]) if _readable(p)]
        if files:
            sources.append(Source(len(sources), files))
    return sources


def previous_rows(out: str, fmt: str, sources: list[Source] | None = None) -> pd.DataFrame:
    """The keys (:data:`RESUME_COLUMNS`) of rows already labelled, with ``_source`` (the
    :class:`Source` they come from): of each image only the rows of the newest source that has it
    (never face 0 of one run beside face 2 of another)."""
    sources = earlier_sources(out, fmt) if sources is None else sources
    if not sources:
        return pd.DataFrame(columns=[*RESUME_COLUMNS, "_source"])
    rows = pd.concat([source.keys() for source in sources], ignore_index=True)
    rows = rows[rows["_source"] == rows.groupby("path")["_source"].transform("max")]
    # (pyarrow's release_unused() would hand the chunks' memory back, but once in five 1M-input
    # runs here the keys read after it were wrong: pyarrow 25's bundled mimalloc; not used.)
    return rows.drop_duplicates(subset=["path", "face_index"], keep="last").reset_index(drop=True)


def positions(sorted_paths: np.ndarray, paths) -> np.ndarray:
    """Where each of ``paths`` is in ``sorted_paths`` (an object array in sorted order, the inputs'),
    -1 where it is not: a binary search, so no hash table of a million paths is built."""
    paths = np.asarray(paths, dtype=object)
    if not len(sorted_paths):
        return np.full(len(paths), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_paths, paths), len(sorted_paths) - 1)
    return np.where(sorted_paths[pos] == paths, pos, -1)


def merged_rows(sources: list[Source], sorted_paths: np.ndarray, chosen: np.ndarray) -> Iterator[pd.DataFrame]:
    """Every row of each input (``sorted_paths``, sorted) from the source ``chosen`` for it (its
    id, per input), in (path, face_index) order, in chunks of about :data:`CHUNK_ROWS`, each with
    ``_input`` (the input's position). A k-way merge of sorted streams: each round emits every
    buffered row up to the smallest last path any buffer holds."""
    def refill(source: Source, stream) -> pd.DataFrame | None:
        for chunk in stream:
            pos = positions(sorted_paths, chunk["path"])
            keep = (pos >= 0) & (chosen[np.maximum(pos, 0)] == source.id)
            chunk = chunk[keep].assign(_input=pos[keep]).drop_duplicates(["path", "face_index"], keep="last")
            if len(chunk):
                return chunk
        return None

    buffers = {}
    for source in sources:
        stream = source.chunks()
        first = refill(source, stream)
        if first is not None:
            buffers[source.id] = (first, source, stream)
    while buffers:
        frontier = min(buf["path"].iat[-1] for buf, _, _ in buffers.values())
        taken = []
        for sid in list(buffers):
            buf, source, stream = buffers[sid]
            upto = (buf["path"] <= frontier).to_numpy()
            if upto.all():
                taken.append(buf)
                more = refill(source, stream)
                if more is None:
                    del buffers[sid]
                else:
                    buffers[sid] = (more, source, stream)
            elif upto.any():
                taken.append(buf[upto])
                buffers[sid] = (buf[~upto], source, stream)
        yield pd.concat(taken, ignore_index=True).sort_values(["path", "face_index"], kind="stable")
