"""Writing ``facray label``'s output, streamed: the merged rows (:func:`facray.labelling.merge.merged_rows`)
into a new index, then the output rendered from that index chunk by chunk, then both put in place.

Readers see the old output or the new one, never half of either: everything is written under
temporary names (locally beside ``OUT``; for a URI, in the local temporary folder) and put in place
at the end, the old index first out of the way and the new one last in (a failure between never
pairs new keys with old rows). On an object store an upload that fails part way is deleted: no
output is left rather than half of one (the run's rows stay in its parts). The CSV and CelebA bytes
are those :func:`facray.labelling.output.encode_output` gives for all the rows at once, the Parquet
table the same (tested), written a chunk at a time.
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from facray import columns, storage
from facray.attributes import ATTRIBUTES
from facray.labelling import merge
from facray.labelling.merge import INDEX_EXTRA, INDEX_SCHEMA, Source, merged_rows, normalise
from facray.labelling.output import (OUTPUT_COLUMNS, PROB_COLUMNS, TEMPORARY_GLOB, cannot_write, celeba_lines,
                                     errors_path, index_path, output_table, temporary_name)


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
    crop_methods: Counter = field(default_factory=Counter)  # rows per crop_method
    decided: int = 0  # cells with a decision, of the rows without an error
    decidable: int = 0  # cells with a probability (attributes the model covers), of those rows
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
        self.crop_methods.update(table[columns.CROP_METHOD].value_counts().to_dict())
        ok = (table["error"] == "").to_numpy()
        self.decidable += int(table.loc[ok, PROB_COLUMNS].notna().to_numpy().sum())
        self.decided += int(table.loc[ok, list(ATTRIBUTES)].notna().to_numpy().sum())
        if len(table):
            self._last_path = table["path"].iat[-1]


def _temporary(location: str, suffix: str) -> str:
    """A local temporary file beside ``location`` (or, for a URI, in the temporary folder)."""
    if storage.is_uri(location):
        fd, path = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        return path
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return str(temporary_name(location, suffix))


def _remove_stale_temporaries(location: str) -> None:
    """Temporary files a killed run left beside a local ``location`` (the caller holds the
    output's lock, so no other run is writing them)."""
    if storage.is_uri(location):
        return
    for stale in Path(location).parent.glob(TEMPORARY_GLOB.format(name=glob.escape(Path(location).name))):
        stale.unlink(missing_ok=True)


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
    try:
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    except BaseException:
        # Closing the stream completes the upload even after an error (apache/arrow#40502): what
        # it wrote is cut short, so it goes.
        try:
            fs.delete_file(path)
        except OSError:
            pass
        raise
    os.unlink(local)


def _covered(index: str) -> list[str]:
    """The attributes a rendered CelebA list names: those with a decision on some row with no
    error (all of them if none has), read column by column from the new index."""
    seen = np.zeros(len(ATTRIBUTES), bool)
    for batch in pq.ParquetFile(index).iter_batches(merge.CHUNK_ROWS, columns=["error", *ATTRIBUTES]):
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
        for batch in parquet.iter_batches(merge.CHUNK_ROWS, columns=OUTPUT_COLUMNS):
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


def write_output(sources: list[Source], inputs: pd.DataFrame, chosen: np.ndarray, out: str, fmt: str) -> Written:
    """Write ``out`` in ``fmt`` with every row of each of ``inputs`` (sorted by path; their
    ``image_id``) from the source ``chosen`` for it (its id, per input), and the index beside it;
    see the module docstring for how. A failure to write is an
    :class:`~facray.data.errors.OutputError` naming the location."""
    _remove_stale_temporaries(out)
    index_tmp, out_tmp, errors_tmp = (_temporary(out, s) for s in (".index", "", ".errors"))
    try:
        try:
            writer = None
            image_ids = inputs["image_id"]
            for rows in merged_rows(sources, inputs["path"].to_numpy(object), chosen):
                rows = rows.assign(image_id=image_ids.take(rows.pop("_input").to_numpy()).to_numpy())
                if writer is None:
                    writer = pq.ParquetWriter(index_tmp, INDEX_SCHEMA)
                writer.write_table(_index_table(rows, fmt))
            if writer is None:
                writer = pq.ParquetWriter(index_tmp, INDEX_SCHEMA)
            writer.close()
            written, left_out = _render(index_tmp, fmt, out_tmp, errors_tmp)
        except OSError as e:
            raise cannot_write(out, e) from None
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
                raise cannot_write(location, e) from None
        return written
    finally:
        for tmp in (index_tmp, out_tmp, errors_tmp, out_tmp + ".body"):
            Path(tmp).unlink(missing_ok=True)


def write_rows(rows: pd.DataFrame, out: str, fmt: str) -> Written:
    """Write a table of rows (with ``image_id`` and the resume keys) as the output: what
    :func:`write_output` does for one in-memory source."""
    rows = normalise(rows.copy()).sort_values(["path", "face_index"], kind="stable")
    inputs = rows.drop_duplicates("path")[["path", "image_id"]].reset_index(drop=True)
    return write_output([Source(0, frame=rows)], inputs, np.zeros(len(inputs), np.int64), out, fmt)
