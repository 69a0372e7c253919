"""``facray prepare``'s pure half: its config, the metadata table, the chain of ops each actor
runs (:mod:`facray.data.ops`), the summary, and the commit of a new shard version. The Ray Data
pipeline that runs them is :mod:`facray.runners.prepare`.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from facray import storage
from facray.config import config_text, option
from facray.data import ops
from facray.data.celeba import abm_split, read_celeba
from facray.data.folder import read_image_folder
from facray.data.mtfl import read_mtfl
from facray.data.prepared import CONFIG_FILE, Serializer, read_metadata, write_metadata
from facray.data.transforms.detect import FaceDetector


@dataclass
class PrepareConfig:
    # --smoke-test: 40 generated faces (facray.testing), small crops, 3 variants, masks: seconds.
    SMOKE: ClassVar[dict] = {"dataset": "celeba", "size": 64, "augment": 3, "masks": True}

    dataset: Literal["celeba", "mtfl", "folder"] = option("celeba", "celeba | mtfl | folder")
    root: str = option("", "dataset folder (folder: also a glob or .txt list)", path=True)
    out: str = option("prepared", "output folder", path=True)
    size: int = option(180, "crop side in pixels (ABM-CNN: 180)")
    margin: float = option(0.35, "crop margin around the face box, per side")
    crop: Literal["auto", "landmarks", "bbox", "aligned", "template", "detect", "full"] = option(
        "auto", "auto (landmarks, bbox, CelebA aligned geometry, a checked known layout, else detect) | landmarks | bbox | "
                "aligned | template | detect | full")
    centre: Literal["face", "nose"] = option("face", "crop centre: face | nose (the KTH paper's nose-centred "
                                                     "crops; needs landmarks: a landmark file or YuNet)")
    augment: int = option(9, "variants per train image (ABM-CNN: 9; 1 = none written: train-binary then draws "
                             "the 9 variants online)")
    masks: bool = option(False, "also write AttParseNet weak masks")
    mask_size: int = option(48, "side of the weak masks")
    sketch_channels: Literal[0, 1, 3] = option(1, "pencil sketch channels: 1 or 3; 0 = none (multi-task models "
                                                      "read no sketches; the ABM sketch modality needs them)")
    split: Literal["official", "abm", "identity"] = option(
        "official", "official (the dataset's own files) | abm (70/15/15 seeded, CelebA or MTFL) | identity "
                    "(each person's photos 70/15/15: closed-set identification, CelebA)")
    seed: int = option(0, "seed of the ABM split and the augmentations")
    limit: int = option(0, "use only the first N images (0 = all)")
    skip_missing: bool = option(False, "go on without missing images (counted)")
    image_format: Literal["raw", "png", "jpeg"] = option(
        "raw", "raw (no decode at train time) | png (lossless, ~1/2 the disk) | jpeg (quality 95, ~1/10: "
               "to ship to a remote cluster)")
    num_actors: int = option(2, "preprocessing actors")
    cpus_per_actor: float = option(0.5, "CPUs reserved per actor (fractions "
                                                               "leave room for reads on small machines)")
    batch_size: int = option(128, "images per batch")
    rows_per_block: int = option(512, "metadata rows per input block")
    detector: str = option("auto", "face detector: auto (YuNet if yuface is installed, else Haar) | yunet | "
                                   "haar | a YuNet .onnx file")
    min_face: float = option(0.2, "smallest face the detector looks for, as a fraction of the short "
                                  "side (0.05 finds faces in full-body photos, ~2x slower)")
    max_pixels: int = option(50_000_000, "refuse larger images (decompression bombs)")


def read_table(cfg: PrepareConfig) -> pd.DataFrame:
    """The metadata table for ``cfg.dataset`` (pure readers), cut to ``cfg.limit``."""
    if cfg.dataset == "celeba":
        table = read_celeba(cfg.root, split=cfg.split, seed=cfg.seed, skip_missing=cfg.skip_missing)
    elif cfg.dataset == "mtfl":
        table = read_mtfl(cfg.root, skip_missing=cfg.skip_missing)
        if cfg.split == "abm":  # e.g. mtfl_train, which has no test file: a seeded 70/15/15 of its rows
            parts = abm_split(len(table), cfg.seed)
            table["split"] = np.array(["train", "val", "test"], dtype=object)[parts]
    elif cfg.dataset == "folder":
        table = read_image_folder(cfg.root)
    else:
        raise ValueError(f"dataset must be celeba, mtfl or folder, got {cfg.dataset!r}")
    if cfg.limit:
        attrs = table.attrs
        table = table.iloc[:cfg.limit].reset_index(drop=True)
        table.attrs = attrs
    return table


def grouped_by_split(table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s rows grouped by ``split`` in the order Parquet statistics compare them (as
    strings: test, train, val), each split keeping the table's own order (a stable sort); attrs
    kept. A table without a ``split`` column comes back as is. ``prepare`` writes its rows in this
    order, so each row group holds one split but at a seam and a reader that filters on one split
    (stream mode's passes) skips the others' row groups by their min/max statistics. Generated
    data and ``--split abm``/``identity`` mix the splits in every row group otherwise; CelebA's
    official partition is already in split order."""
    if "split" not in table:
        return table
    grouped = table.iloc[table["split"].astype(str).argsort(kind="stable")].reset_index(drop=True)
    grouped.attrs = table.attrs
    return grouped


def preprocessing_chain(cfg: PrepareConfig, image_kind: str, serialize: bool = True) -> ops.Chain:
    """The stages in order; the same chain (minus augmentation) serves the labelling job."""
    stages = [ops.ImageDecoder(cfg.max_pixels),
              ops.FaceCropper(cfg.size, cfg.margin, cfg.crop, image_kind, cfg.detector, cfg.min_face, cfg.centre)]
    if cfg.masks:
        stages.append(ops.MaskDrawer(cfg.mask_size))
    stages.append(ops.Augmenter(cfg.augment, cfg.seed))
    if cfg.sketch_channels:
        stages.append(ops.Sketcher(cfg.sketch_channels))
    if serialize:
        stages.append(Serializer(cfg.image_format))
    return ops.Chain(*stages)


@dataclass
class PrepareSummary:
    rows_in: int
    rows_out: dict[str, int]
    faces_found: int
    crop_methods: dict[str, int]
    errors: dict[str, int]
    seconds: float
    out: str
    detector: str

    def format(self) -> str:
        lines = [f"prepared {self.rows_in} images in {self.seconds:.1f}s -> {self.out}",
                 f"  face detector: {self.detector}",
                 "  rows out per split: " + ", ".join(f"{k} {v}" for k, v in self.rows_out.items()),
                 f"  faces found: {self.faces_found}/{self.rows_in - sum(self.errors.values())} decoded images",
                 "  crop methods: " + ", ".join(f"{k} {v}" for k, v in self.crop_methods.items())]
        lines.append("  errors: " + (", ".join(f"{k} {v}" for k, v in self.errors.items()) or "none"))
        return "\n".join(lines)


def summarise(out: str, shards: str, rows_in: int, seconds: float, detector: str) -> PrepareSummary:
    """Count what was written (reading only the small columns) and write ``errors.csv``."""
    cols = ["image_id", "path", "split", "variant", "face_found", "crop_method", "error", "error_kind"]
    fs, path = storage.filesystem(shards)
    frame = pads.dataset(path, format="parquet", filesystem=fs).to_table(columns=cols).to_pandas()
    originals = frame[frame.variant == "original"]
    errors = originals[originals.error != ""].sort_values("path")
    storage.write_text(storage.join(out, "errors.csv"), errors[["path", "error_kind", "error"]].to_csv(index=False))
    summary = PrepareSummary(
        rows_in=rows_in,
        rows_out=dict(sorted(Counter(frame.split).items())),
        faces_found=int(originals.face_found.sum()),
        crop_methods=dict(Counter(originals.crop_method)),
        errors=dict(Counter(errors.error_kind)),
        seconds=seconds, out=out, detector=detector)
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary.__dict__, indent=2))
    return summary


def detector_name(cfg: PrepareConfig) -> str:
    """The detector that runs, said up front and in the output (``auto`` falls back to Haar
    without yuface); ``none`` for crops that need none."""
    return FaceDetector(cfg.detector).name if cfg.crop in ("auto", "template", "detect") else "none"


def new_shards_name() -> str:
    """A fresh shard folder name: ``shards-<time>-<random>``, never one a reader may be using."""
    return f"shards-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def previous_shards(out: str) -> str | None:
    """The shard folder ``out`` holds now, if any."""
    try:
        return read_metadata(out)["shards"]
    except FileNotFoundError:
        return None


def commit(cfg: PrepareConfig, out: str, shards: str, previous: str | None, image_kind: str,
           detector: str) -> None:
    """Make the written ``shards`` the current version of ``out``: the resolved config, then
    ``prepared.json`` (the commit point, see :mod:`facray.data.prepared`), and only then the
    previous version's removal."""
    storage.write_text(storage.join(out, CONFIG_FILE), config_text(cfg))
    write_metadata(out, shards=shards, size=cfg.size, margin=cfg.margin, centre=cfg.centre,
                   image_format=cfg.image_format, sketch_channels=cfg.sketch_channels,
                   mask_size=cfg.mask_size if cfg.masks else None, augment=cfg.augment,
                   dataset=cfg.dataset, root=str(cfg.root), image_kind=image_kind, detector=detector)
    if previous and previous != shards:
        storage.delete_dir(storage.join(out, previous))
