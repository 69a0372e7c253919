"""Batch operations on ``dict[str, np.ndarray]`` batches: what Ray Data actors and tasks wrap.

Pure numpy/OpenCV, no Ray: each op is tested on plain dicts, and the pipeline modules wrap them in
``map_batches``. Column names are :mod:`facray.columns`'.
"""
from __future__ import annotations

import time

import numpy as np

from facray import columns
from facray.attributes import ATTRIBUTES
from facray.data.celeba import label_matrix
from facray.data.cropper import CROP_CENTRES, CROP_METHODS, FACES, FaceCropper  # noqa: F401 - ops, with the rest
from facray.data.imageio import ImageError, MAX_PIXELS, decode_image, read_image
from facray.data.transforms.augment import OFFLINE_AUGMENTATIONS, augment_landmarks, augment_offline
from facray.data.transforms.masks import attribute_masks
from facray.data.transforms.sketch import pencil_sketch


def _column(batch: dict[str, np.ndarray], name: str, default, n: int) -> np.ndarray:
    return batch[name] if name in batch else np.full(n, default, dtype=object if isinstance(default, str) else None)


def pack_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The (N, 40) int8 label matrix from per-attribute columns (-1 where a column is absent)."""
    n = len(batch[columns.PATH])
    if columns.LABELS in batch:
        return np.asarray(batch[columns.LABELS], np.int8).reshape(n, len(ATTRIBUTES))
    return label_matrix(n, batch)


class ImageDecoder:
    """Read (if needed) and decode each row's image; failures become ``error``/``error_kind``."""
    stage = "decode"

    def __init__(self, max_pixels: int | None = None):
        self.max_pixels = max_pixels or MAX_PIXELS

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[columns.PATH])
        images = np.empty(n, dtype=object)
        errors = np.array([str(e) for e in _column(batch, columns.ERROR, "", n)], dtype=object)
        kinds = np.array([str(e) for e in _column(batch, columns.ERROR_KIND, "", n)], dtype=object)
        blobs = batch.get(columns.IMAGE_BYTES)
        for i, path in enumerate(batch[columns.PATH]):
            if errors[i]:
                kinds[i] = kinds[i] or "unreadable"
                continue
            try:
                images[i] = (decode_image(blobs[i], str(path), self.max_pixels) if blobs is not None
                             else read_image(str(path), max_pixels=self.max_pixels))
            except ImageError as e:
                errors[i], kinds[i] = str(e), e.kind
        out = {k: v for k, v in batch.items() if k != columns.IMAGE_BYTES}
        out.update({columns.IMAGE: images, columns.ERROR: errors, columns.ERROR_KIND: kinds})
        return out


class MaskDrawer:
    """Add AttParseNet's 40 weak masks (N, 40, mask_size, mask_size), drawn from the crop-frame
    landmarks and the labels; rows without landmarks get empty masks."""

    def __init__(self, mask_size: int = 48):
        self.mask_size = mask_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = pack_labels(batch)
        k = self.mask_size / batch[columns.IMAGE].shape[1]  # crop pixels -> mask pixels
        size = (self.mask_size, self.mask_size)
        masks = np.zeros((len(labels), labels.shape[1], *size), np.uint8)
        for i, (lm, lab) in enumerate(zip(batch[columns.LANDMARKS], labels)):
            masks[i] = attribute_masks(lm.reshape(5, 2) * k, lab, size)
        return {**batch, columns.MASKS: masks}


def stable_seed(key: str, seed: int) -> int:
    """A per-image seed from its id: the same on every worker and in every order."""
    import zlib
    return (zlib.crc32(str(key).encode()) << 16) ^ (seed & 0xFFFF)


class Augmenter:
    """ABM-CNN's offline augmentation: each *train* row becomes ``count`` rows (``variant`` names
    the change); other splits pass through as ``original``. Masks follow the geometry."""

    def __init__(self, count: int = 9, seed: int = 0, splits: tuple[str, ...] = ("train",)):
        self.count, self.seed, self.splits = count, seed, splits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[columns.PATH])
        ids = batch.get(columns.IMAGE_ID, batch[columns.PATH])
        has_masks, has_lm = columns.MASKS in batch, columns.LANDMARKS in batch
        rows, images, masks, landmarks, variants = [], [], [], [], []
        for i in range(n):
            ok = not batch[columns.ERROR][i] if columns.ERROR in batch else True
            lm = batch[columns.LANDMARKS][i] if has_lm else None
            if self.count > 1 and ok and str(batch[columns.SPLIT][i]) in self.splits:
                for name, img, m, H in augment_offline(batch[columns.IMAGE][i], stable_seed(ids[i], self.seed),
                                                       self.count, batch[columns.MASKS][i] if has_masks else None):
                    rows.append(i)
                    images.append(img)
                    masks.append(m)
                    landmarks.append(None if lm is None else augment_landmarks(lm.reshape(5, 2), H).reshape(-1))
                    variants.append(name)
            else:
                rows.append(i)
                images.append(batch[columns.IMAGE][i])
                masks.append(batch[columns.MASKS][i] if has_masks else None)
                landmarks.append(lm)
                variants.append(OFFLINE_AUGMENTATIONS[0])
        index = np.asarray(rows, np.int64)
        out = {k: v[index] for k, v in batch.items() if k not in (columns.IMAGE, columns.MASKS, columns.LANDMARKS)}
        out[columns.IMAGE] = np.stack(images) if images else batch[columns.IMAGE][:0]
        if has_masks:
            out[columns.MASKS] = np.stack(masks) if masks else batch[columns.MASKS][:0]
        if has_lm:
            out[columns.LANDMARKS] = np.stack(landmarks).astype(np.float32) if landmarks else batch[columns.LANDMARKS][:0]
        out[columns.VARIANT] = np.array(variants, dtype=object)
        return out


class Sketcher:
    """Add the pencil sketch of each (cropped, augmented) image: (N, S, S) or (N, S, S, 3)."""
    stage = "sketch"

    def __init__(self, channels: int = 1):
        self.channels = channels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch[columns.IMAGE]
        shape = images.shape[:3] + ((3,) if self.channels == 3 else ())
        sketches = np.zeros(shape, np.uint8)
        for i, img in enumerate(images):
            sketches[i] = pencil_sketch(img, channels=self.channels)
        return {**batch, columns.SKETCH: sketches}


class Chain:
    """Run ops in sequence on one batch: Ray Data runs one actor per chain, so the stages share a
    process and a batch never crosses the object store between them (per-batch overhead was the
    bottleneck of an unfused chain on 2 CPUs).

    :attr:`seconds` adds up the time of each stage (an op's ``stage`` name; an op may split its
    own time further in ``sub_seconds``, as the cropper does for face detection), so a run can say
    where its time went (``facray label`` prints it). :meth:`take_seconds` returns and resets it.
    """

    def __init__(self, *ops):
        self.ops = ops
        self.seconds: dict[str, float] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for op in self.ops:
            start = time.perf_counter()
            batch = op(batch)
            elapsed = time.perf_counter() - start
            for sub, secs in getattr(op, "sub_seconds", {}).items():
                self.seconds[sub] = self.seconds.get(sub, 0.0) + secs
                elapsed -= secs
                op.sub_seconds[sub] = 0.0
            stage = getattr(op, "stage", type(op).__name__)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
        return batch

    def take_seconds(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


class InSlices:
    """Run ``chain`` on slices of ``rows`` rows and join the results, so that what the chain
    holds per row only for a moment (a decoded full-size image before its crop) is alive for one
    slice at a time, not for the whole batch. The chain's stage timings pass through; slicing and
    joining count to its last stage."""

    def __init__(self, chain: Chain, rows: int):
        self.chain, self.rows = chain, max(1, rows)
        self.stage = getattr(chain.ops[-1], "stage", type(chain.ops[-1]).__name__)

    @property
    def sub_seconds(self) -> dict[str, float]:
        return self.chain.seconds  # the enclosing Chain reads and resets these

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[columns.PATH])
        if n <= self.rows:
            return self.chain(batch)
        parts = [self.chain({k: v[i:i + self.rows] for k, v in batch.items()}) for i in range(0, n, self.rows)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
