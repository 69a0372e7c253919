"""How a ``facray label`` run's rows become its output, streamed: the driver never holds all rows.

Rows live in *sources*, each sorted by (``path``, ``face_index``): the index of the last output
(``OUT.index.parquet``: every row whole, whatever the format), the parts of runs not yet merged
(``OUT.parts/run-*/``: the Ray pipeline delivers rows in input order, which is path order), and
the rows of inputs that never reached the pipeline (names Arrow cannot hold). Deciding what to
reuse needs only their keys (:func:`previous_rows`). Writing merges the sources chunk by chunk
(:func:`merged_rows`, each path from the one source chosen for it) into a new index, then renders
the output from that index chunk by chunk (:func:`write_output`), so driver memory is set by
:data:`CHUNK_ROWS`, not by the number of rows.

Readers see the old output or the new one, never half of either, as before: everything is written
under temporary names (locally beside ``OUT``; for a URI, in the local temporary folder) and put in
place at the end, the old index first out of the way and the new one last in (a failure between
never pairs new keys with old rows).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from facray import columns, storage
from facray.attributes import ATTRIBUTES
from facray.data.errors import OutputError
from facray.labelling.output import (KEY_COLUMNS, OUTPUT_COLUMNS, PROB_COLUMNS, celeba_lines, errors_path,
                                     index_path, output_table, parts_dir, read_output)

# Rows per chunk read, merged and written: about 25 MB of pandas for the output's 95 columns.
CHUNK_ROWS = 20_000
# What the index adds to the output's columns: the resume keys the output does not show, and the
# format the output was written in (another format under the same name is never misread).
INDEX_EXTRA = ["size", "mtime_ns", "faces", "crop", "format"]
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


def _normalise(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older facray: no faces mode (it labelled the largest face only, one row each),
    no crop mode (it always detected)."""
    rows = rows.copy() if any(c not in rows for c in ("faces", "crop", "face_index")) else rows
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
                yield _normalise(frame.iloc[i:i + CHUNK_ROWS])
            return
        for location in self.files:
            with _open(location) as f:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                read = None if wanted is None else [c for c in wanted if c in names]
                for batch in parquet.iter_batches(CHUNK_ROWS, columns=read):
                    yield _normalise(batch.to_pandas())

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
    except Exception:  # noqa: BLE001 - a part cut off mid-write: its images are labelled again
        return False


def _legacy_output(out: str, fmt: str, keys_location: str) -> pd.DataFrame:
    """The rows of an output an older facray wrote (its index holds keys only): output and keys
    joined, in memory (outputs were written whole then, so they fit)."""
    keys = pd.read_parquet(_open(keys_location))
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
    return rows.drop_duplicates(subset=["path", "face_index"], keep="last").reset_index(drop=True)


def merged_rows(sources: list[Source], chosen: pd.Series) -> Iterator[pd.DataFrame]:
    """The rows of every path of ``chosen`` (path -> source id) from its source, in (path,
    face_index) order, in chunks of about :data:`CHUNK_ROWS`. A k-way merge of sorted streams: each
    round emits every buffered row up to the smallest last path any buffer holds."""
    def refill(source: Source, stream) -> pd.DataFrame | None:
        for chunk in stream:
            keep = chosen.reindex(chunk["path"]).to_numpy() == source.id
            chunk = chunk[keep].drop_duplicates(["path", "face_index"], keep="last")
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


def _index_table(rows: pd.DataFrame, fmt: str) -> pa.Table:
    table = output_table(rows)
    for c in INDEX_EXTRA[:-1]:
        table[c] = rows[c].to_numpy()
    table["format"] = fmt
    return pa.Table.from_pandas(table, schema=INDEX_SCHEMA, preserve_index=False)


@dataclass
class Written:
    """What was written, counted as it streamed by (per image: its first row)."""
    rows: int = 0
    images: int = 0
    faces_found: int = 0
    errors: int = 0
    multi_face: int = 0
    first_rows: pd.DataFrame | None = None
    _last_path: object = None

    def add(self, table: pd.DataFrame) -> None:
        if self.first_rows is None or len(self.first_rows) < 5:
            head = table.head(5)
            self.first_rows = head if self.first_rows is None else pd.concat([self.first_rows, head]).head(5)
        first = ~table["path"].duplicated().to_numpy() & (table["path"].to_numpy(object) != self._last_path)
        per_image = table[first]
        self.rows += len(table)
        self.images += len(per_image)
        self.faces_found += int(per_image["face_found"].astype(bool).sum())
        self.errors += int((per_image["error"] != "").sum())
        self.multi_face += int((pd.to_numeric(per_image[columns.N_FACES], errors="coerce") > 1).sum())
        if len(table):
            self._last_path = table["path"].iat[-1]


def _temporary(location: str, suffix: str) -> str:
    """A local temporary file beside ``location`` (or, for a URI, in the temporary folder)."""
    if storage.is_uri(location):
        fd, path = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        return path
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return str(Path(location).with_name(f".{Path(location).name}.tmp-{os.getpid()}{suffix}"))


def _publish(local: str, location: str) -> None:
    """Put a finished local file at ``location``: ``os.replace`` locally; one object written as a
    stream on a store (atomic there: the object appears when the upload completes)."""
    if not storage.is_uri(location):
        os.replace(local, location)
        return
    fs, path = storage.filesystem(location)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
    os.unlink(local)


def _covered(index: str) -> list[str]:
    """The attributes a rendered CelebA list names: those with a decision on some row with no
    error (all of them if none has), read column by column from the new index."""
    seen = np.zeros(len(ATTRIBUTES), bool)
    for batch in pq.ParquetFile(index).iter_batches(CHUNK_ROWS, columns=["error", *ATTRIBUTES]):
        frame = batch.to_pandas()
        ok = (frame["error"].fillna("") == "").to_numpy()
        seen |= frame.loc[ok, list(ATTRIBUTES)].notna().any().to_numpy()
    return [a for a, s in zip(ATTRIBUTES, seen) if s] or list(ATTRIBUTES)


def _render(index: str, fmt: str, out_tmp: str, errors_tmp: str) -> tuple[Written, bool]:
    """Render the output from the new index, chunk by chunk, into ``out_tmp`` (and, for celeba,
    the rows its list cannot hold into ``errors_tmp``); returns the counts and whether any row went
    to ``errors_tmp``. The bytes are :func:`facray.labelling.output.encode_output`'s for the same
    rows (tested), written a chunk at a time."""
    written = Written()
    parquet = pq.ParquetFile(index)
    covered = _covered(index) if fmt == "celeba" else None
    body = out_tmp + ".body" if fmt == "celeba" else out_tmp
    writer, listed, left_out = None, 0, False
    with open(body, "wb") as f, open(errors_tmp, "wb") if fmt == "celeba" else open(os.devnull, "wb") as errors:
        for batch in parquet.iter_batches(CHUNK_ROWS, columns=OUTPUT_COLUMNS):
            table = output_table(batch.to_pandas())
            written.add(table)
            if fmt == "csv":
                f.write(table.to_csv(index=False, header=written.rows == len(table), float_format="%.6g").encode())
            elif fmt == "parquet":
                arrow = pa.Table.from_pandas(table, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(f, arrow.schema)
                writer.write_table(arrow.cast(writer.schema))
            else:
                lines, rejected = celeba_lines(table, covered)
                listed += len(lines)
                if lines:
                    f.write(("\n".join(lines) + "\n").encode())
                if len(rejected):
                    errors.write(rejected.to_csv(index=False, header=not left_out).encode())
                    left_out = True
        if fmt == "parquet":
            if writer is None:  # no rows: an empty table with the columns
                writer = pq.ParquetWriter(f, pa.Table.from_pandas(output_table(pd.DataFrame()), preserve_index=False).schema)
            writer.close()
        if fmt == "csv" and written.rows == 0:
            f.write(output_table(pd.DataFrame()).to_csv(index=False).encode())
    if fmt == "celeba":
        with open(out_tmp, "wb") as f, open(body, "rb") as src:
            f.write(f"{listed}\n{' '.join(covered)}\n".encode())
            shutil.copyfileobj(src, f, 16 << 20)
        os.unlink(body)
    return written, left_out


def write_output(sources: list[Source], chosen: pd.Series, image_ids: pd.Series, out: str, fmt: str) -> Written:
    """Write ``out`` in ``fmt`` from the rows ``chosen`` names (path -> source id), each with its
    ``image_id`` (path -> id), and the index beside it; see the module docstring for how. A
    failure to write is an :class:`~facray.data.errors.OutputError` naming the location."""
    index_tmp, out_tmp, errors_tmp = (_temporary(out, s) for s in (".index", "", ".errors"))
    try:
        try:
            writer = None
            for rows in merged_rows(sources, chosen):
                rows = rows.assign(image_id=image_ids.reindex(rows["path"]).to_numpy())
                if writer is None:
                    writer = pq.ParquetWriter(index_tmp, INDEX_SCHEMA)
                writer.write_table(_index_table(rows, fmt))
            if writer is None:
                writer = pq.ParquetWriter(index_tmp, INDEX_SCHEMA)
            writer.close()
            written, left_out = _render(index_tmp, fmt, out_tmp, errors_tmp)
        except OSError as e:
            raise OutputError(f"{out}: cannot write ({getattr(e, 'strerror', None) or e})") from None
        # The old index goes first out of the way and the new one last in: a failure between the
        # writes (a full disk) never pairs new keys with old rows.
        for location, local in ((index_path(out), None), (errors_path(out), errors_tmp if left_out else None),
                                (out, out_tmp), (index_path(out), index_tmp)):
            try:
                if local is None:
                    storage.delete_file(location)
                else:
                    _publish(local, location)
            except OSError as e:
                raise OutputError(f"{location}: cannot write ({getattr(e, 'strerror', None) or e})") from None
        return written
    finally:
        for tmp in (index_tmp, out_tmp, errors_tmp, out_tmp + ".body"):
            Path(tmp).unlink(missing_ok=True)


def write_rows(rows: pd.DataFrame, out: str, fmt: str) -> Written:
    """Write a table of rows (with ``image_id`` and the resume keys) as the output: what
    :func:`write_output` does for one in-memory source."""
    rows = _normalise(rows).sort_values(["path", "face_index"], kind="stable")
    source = Source(0, frame=rows)
    chosen = pd.Series(0, index=pd.unique(rows["path"]))
    return write_output([source], chosen, pd.Series(rows["image_id"].to_numpy(), index=rows["path"]).groupby(level=0).first(),
                        out, fmt)
