"""The on-disk format of prepared data, and a pure reader for it (no Ray).

``facray prepare`` writes Parquet shards of flat, portable columns any Parquet reader understands
(pandas, pyarrow, Spark, DuckDB), rather than Ray's tensor extension type:

- ``image_id``, ``path`` (source file), ``split``, ``variant`` (augmentation), ``identity``,
  ``face_found``, ``crop_method``, ``error``, ``error_kind``;
- the 40 attributes as int8 columns named as in :data:`facray.attributes.ATTRIBUTES` (-1 = unknown);
- ``lm_0`` .. ``lm_9``: the 5 landmarks in crop pixels (NaN when unknown);
- ``image`` and ``sketch`` as bytes: ``raw`` (uint8 pixels, C order; the default: training reads
  them with no decode, and Parquet's zstd still shrinks them), ``png`` (lossless, about half the
  disk, ~1 ms/image to decode) or ``jpeg`` (quality 95, lossy, about a tenth of raw: for shipping a
  prepared set to a remote cluster or GPU machine); the format and shapes are in the file's metadata;
- ``masks`` (optional): the 40 AttParseNet masks, bit-packed.

Layout: ``OUT/prepared.json`` names the shard folder of the current version (``OUT/shards-<id>/``)
and is written last, so it is the commit point: a prepare that is interrupted, or runs beside
another, never leaves new shards beside old metadata; readers see the old set or the new one.
This works alike on local disk and on object stores (which cannot rename a folder). ``OUT`` may
be a local path or a URI (:mod:`facray.storage`). Rows are written grouped by ``split``
(:func:`facray.data.pipeline.grouped_by_split`, since 2026-12-02; shards written before mix them),
so a reader that filters on one split skips the other splits' row groups by their Parquet
statistics; no reader relies on it.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from facray import columns as C  # short, and read_prepared takes an argument called columns
from facray import storage
from facray.attributes import ATTRIBUTES
from facray.data import ops

LANDMARK_FIELDS = tuple(f"lm_{i}" for i in range(10))
META_FILE = "prepared.json"
CONFIG_FILE = "config.yaml"  # the resolved PrepareConfig the folder was written with
# Rows per Parquet row group in the shards. A reader holds a whole row group's column chunks while
# it decodes (Ray Data's read tasks in stream mode, pyarrow's ``to_batches`` in memory mode), so
# this bounds their memory: about 33 MB at 180 px with sketches (raw), where one group per Ray
# block (~2,300 rows, ~300 MB) got a stream-mode worker under a 3 GiB cap OOM-killed (bench/RESULTS.md).
ROW_GROUP_ROWS = 256
# Encoded formats: OpenCV extension and parameters. Quality 95: at 128 px the crops differ from raw
# by about 1 grey level on average, far below the camera JPEG's own noise the images came with.
ENCODINGS = {"png": (".png", []), "jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])}
IMAGE_FORMATS = ("raw", *ENCODINGS)


class Serializer:
    """Last batch op before writing: tensors -> flat named columns and bytes."""

    def __init__(self, image_format: str = "raw"):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
        self.image_format = image_format

    def _encode(self, arrays: np.ndarray) -> np.ndarray:
        if self.image_format == "raw":
            return np.array([np.ascontiguousarray(a).tobytes() for a in arrays], dtype=object)
        ext, params = ENCODINGS[self.image_format]
        return np.array([cv2.imencode(ext, a, params)[1].tobytes() for a in arrays], dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = ops.pack_labels(batch)
        out = {k: v for k, v in batch.items()
               if k not in (C.IMAGE, C.SKETCH, C.MASKS, C.LABELS, C.LANDMARKS) and k not in ATTRIBUTES}
        for k in list(out):
            if out[k].dtype == object:
                out[k] = np.array([str(v) for v in out[k]], dtype=object)
        for j, a in enumerate(ATTRIBUTES):
            out[a] = labels[:, j]
        lms = batch.get(C.LANDMARKS, np.full((len(labels), 10), np.nan, np.float32))
        for j, name in enumerate(LANDMARK_FIELDS):
            out[name] = np.asarray(lms[:, j], np.float32)
        out[C.IMAGE] = self._encode(batch[C.IMAGE])
        if C.SKETCH in batch:
            out[C.SKETCH] = self._encode(batch[C.SKETCH])
        if C.MASKS in batch:
            m = batch[C.MASKS]
            out[C.MASKS] = np.array([np.packbits(x.reshape(-1)).tobytes() for x in m], dtype=object)
        return out


def write_metadata(out: str | Path, **meta) -> None:
    """Shapes, formats and the current shard folder (``shards``), next to the shards: the commit
    point of a prepare (see module docstring)."""
    storage.write_text(storage.join(str(out), META_FILE), json.dumps(meta, indent=2, sort_keys=True))


def read_metadata(out: str | Path) -> dict:
    location = storage.join(str(out), META_FILE)
    if not storage.is_file(location):
        raise FileNotFoundError(f"{location}: not a facray prepared folder (run `facray prepare` first)")
    meta = json.loads(storage.read_text(location))
    meta.setdefault("shards", "shards")  # folders written before shard versions
    return meta


def read_prepare_config(out: str | Path) -> str | None:
    """The resolved config text a *finished* prepare of ``out`` was run with (its
    ``prepared.json`` written), or None."""
    meta, config = storage.join(str(out), META_FILE), storage.join(str(out), CONFIG_FILE)
    if storage.is_file(meta) and storage.is_file(config):
        return storage.read_text(config)
    return None


def prepared_crop(meta: dict) -> dict:
    """How the prepared images were cropped, as a predictor's manifest records it so labelling
    crops new images the same way."""
    return {"size": meta["size"], "margin": meta.get("margin", 0.35), "centre": meta.get("centre", "face")}


def shard_dir(out: str | Path, meta: dict | None = None) -> str:
    """The current shard folder (a path or URI) named by ``prepared.json``."""
    meta = meta if meta is not None else read_metadata(out)
    return storage.join(str(out), meta["shards"])


def shard_dataset(out: str | Path, meta: dict | None = None) -> pads.Dataset:
    """The current shards as a pyarrow dataset, on local disk or any URI."""
    fs, path = storage.filesystem(shard_dir(out, meta))
    return pads.dataset(path, format="parquet", filesystem=fs)


def decode_column(values, shape: tuple[int, ...], image_format: str) -> np.ndarray:
    """Bytes column -> (N, *shape) uint8."""
    out = np.empty((len(values), *shape), np.uint8)
    for i, v in enumerate(values):
        if image_format in ENCODINGS:
            img = cv2.imdecode(np.frombuffer(v, np.uint8), cv2.IMREAD_UNCHANGED)
            out[i] = img.reshape(shape)
        else:
            out[i] = np.frombuffer(v, np.uint8).reshape(shape)
    return out


def decode_masks(values, n_masks: int, mask_size: int) -> np.ndarray:
    count = n_masks * mask_size * mask_size
    return np.stack([np.unpackbits(np.frombuffer(v, np.uint8), count=count).reshape(n_masks, mask_size, mask_size)
                     for v in values]) if len(values) else np.zeros((0, n_masks, mask_size, mask_size), np.uint8)


def batch_arrays(batch: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    """A batch of prepared rows (as Ray Data yields them) -> ``image``/``sketch``/``labels`` (and
    ``masks``/``landmarks`` when read) arrays."""
    size = meta["size"]
    out = {C.LABELS: np.stack([np.asarray(batch[a], np.int8) for a in ATTRIBUTES], 1)}
    if C.IMAGE in batch:
        out[C.IMAGE] = decode_column(batch[C.IMAGE], (size, size, 3), meta["image_format"])
    if C.SKETCH in batch:
        shape = (size, size) if meta["sketch_channels"] == 1 else (size, size, 3)
        out[C.SKETCH] = decode_column(batch[C.SKETCH], shape, meta["image_format"])
    if C.MASKS in batch and meta.get("mask_size"):
        out[C.MASKS] = decode_masks(batch[C.MASKS], len(ATTRIBUTES), meta["mask_size"])
    if all(c in batch for c in LANDMARK_FIELDS):
        out[C.LANDMARKS] = np.stack([np.asarray(batch[c], np.float32) for c in LANDMARK_FIELDS], 1)
    return out


def read_prepared(out: str | Path, splits: tuple[str, ...] | None = None,
                  columns: tuple[str, ...] = ("image", "sketch"), include_errors: bool = False,
                  variants: tuple[str, ...] | None = None, limit: int | None = None) -> dict[str, np.ndarray]:
    """Load prepared rows into memory as arrays: ``image`` (N, S, S, 3), ``sketch`` (N, S, S[, 3]),
    ``labels`` (N, 40) int8, ``landmarks`` (N, 10), ``masks`` (N, 40, m, m) if asked, plus the
    scalar columns, sorted by (image id, variant). Rows with an error are left out unless
    ``include_errors``. ``limit``: only the first rows found (a sample, without reading the rest).

    Memory: the pixel columns are read and decoded one record batch at a time into arrays
    allocated once, so the peak is the decoded arrays plus a batch (measured by
    ``bench/data_mode.py``: reading a whole Arrow table and its Python byte strings first peaked
    at 4-5x the arrays).
    """
    meta = read_metadata(out)
    dataset = shard_dataset(out, meta)
    filt = None
    if splits is not None:
        filt = pads.field("split").isin(list(splits))
    if variants is not None:
        f = pads.field("variant").isin(list(variants))
        filt = f if filt is None else filt & f
    if not include_errors:
        f = pads.field("error") == ""
        filt = f if filt is None else filt & f
    scalar = [c for c in ("image_id", "path", "split", "variant", "identity", "face_found",
                          "crop_method", "error", "error_kind") if c in dataset.schema.names]
    small = scalar + list(ATTRIBUTES) + list(LANDMARK_FIELDS)
    pixels = [c for c in ("image", "sketch", "masks") if c in columns and c in dataset.schema.names]
    if limit:
        head: pa.Table = dataset.head(limit, columns=small + pixels, filter=filt)
        table, batches = head.select(small), head.select(["image_id", *pixels]).to_batches()
    else:
        table = dataset.to_table(columns=small, filter=filt)
        # 256 rows a batch: Arrow's default (131,072) would hold gigabytes of pixels at once.
        batches = dataset.to_batches(columns=["image_id", *pixels], filter=filt, batch_size=256,
                                     batch_readahead=2, fragment_readahead=1) if pixels else ()
    # Shards come back in file order; sort so results do not depend on how Ray wrote them. The
    # pixel batches come in that file order too: _read_pixels puts each row at its sorted place.
    order = np.lexsort((table["variant"].to_numpy(zero_copy_only=False),
                        table["image_id"].to_numpy(zero_copy_only=False)))
    table = table.take(order)
    result = {c: table[c].to_numpy(zero_copy_only=False) for c in scalar}
    result[C.LABELS] = np.stack([table[a].to_numpy() for a in ATTRIBUTES], 1).astype(np.int8) \
        if table.num_rows else np.zeros((0, len(ATTRIBUTES)), np.int8)
    result[C.LANDMARKS] = np.stack([table[c].to_numpy() for c in LANDMARK_FIELDS], 1).astype(np.float32) \
        if table.num_rows else np.zeros((0, 10), np.float32)
    if pixels:
        result.update(_read_pixels(batches, pixels, meta, order, result["image_id"]))
    return result


def _read_pixels(batches, pixels: list[str], meta: dict, order: np.ndarray, image_ids) -> dict[str, np.ndarray]:
    """Decode the ``pixels`` columns batch by batch into arrays allocated once, each scanned row
    ``i`` landing at its sorted position (``order[k] = i`` for sorted row ``k``). The scan must
    visit the rows as the first scan did: each batch's image ids are checked against it."""
    n, size = len(order), meta["size"]
    shapes = {C.IMAGE: (size, size, 3), C.SKETCH: (size, size) if meta.get("sketch_channels") == 1 else (size, size, 3),
              C.MASKS: (len(ATTRIBUTES), meta.get("mask_size") or 0, meta.get("mask_size") or 0)}
    arrays = {c: np.empty((n, *shapes[c]), np.uint8) for c in pixels if c != C.MASKS or meta.get("mask_size")}
    position = np.empty(n, np.int64)
    position[order] = np.arange(n)
    done = 0
    for batch in batches:
        k = batch.num_rows
        if not k:
            continue
        rows = position[done:done + k]
        if done + k > n or not np.array_equal(image_ids[rows], batch.column("image_id").to_numpy(zero_copy_only=False)):
            raise RuntimeError("prepared shards changed while being read (the two scans differ): read again")
        for c, target in arrays.items():
            values = batch.column(c).to_pylist()
            target[rows] = decode_masks(values, len(ATTRIBUTES), meta["mask_size"]) if c == C.MASKS else \
                decode_column(values, shapes[c], meta["image_format"])
        done += k
    if done != n:
        raise RuntimeError("prepared shards changed while being read (the two scans differ): read again")
    return arrays
