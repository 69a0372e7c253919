"""Which prepared rows train, validate and test a model, shared by every trainer. Pure reader (no
Ray): runs on the driver (counts, checked before Ray starts) and in Train workers (the arrays).

Validation is either a split of the prepared data or ``holdout``: a seeded fraction of the train
images, chosen by a hash of the image id so every augmented variant of an image falls on the same
side (none of an image's variants train while another validates).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterable, Iterator

import numpy as np

from facray.data.prepared import batch_arrays, read_prepared, shard_dataset


@dataclass(frozen=True)
class SplitSpec:
    prepared: str
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    holdout: float = 0.1
    seed: int = 0

    @classmethod
    def of(cls, cfg) -> "SplitSpec":
        """The split fields of any trainer config (a dataclass or a saved config dict). The
        holdout's seed is ``holdout_seed`` where set (runs sharing one validation set, to be
        ensembled), else the run's ``seed``."""
        get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k, None)
        seed = get("holdout_seed") if get("holdout_seed") is not None else get("seed")
        return cls(*(get(k) for k in ("prepared", "train_split", "val_split", "test_split", "holdout")), seed)


def training_data(cfg, prepared_version: str) -> dict:
    """A predictor manifest's ``training_data``: which prepared rows trained it (the split fields of
    a trainer config or its saved settings, and the data's shard version), so ``facray ensemble``
    can refuse a validation set a member trained on (:func:`training_image_ids`)."""
    return {**SplitSpec.of(cfg).__dict__, "prepared_version": prepared_version}


def training_image_ids(record: dict) -> np.ndarray:
    """The image ids a predictor's ``training_data`` record trained on (its train split, less the
    holdout when it validated on one). Raises ``FileNotFoundError`` when the data is gone."""
    return np.unique(training_rows(SplitSpec(**{k: record[k] for k in SplitSpec.__dataclass_fields__}))["image_id"])


def holdout_mask(image_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the images held out for validation (a hash of the id, see module docstring)."""
    h = np.array([zlib.crc32(f"{seed}:{i}".encode()) for i in image_ids], np.uint64)
    return (h % 10_000) < fraction * 10_000


def load_split_arrays(spec: SplitSpec, columns: tuple[str, ...] = ("image",)
                      ) -> dict[str, dict[str, np.ndarray]]:
    """``{"train", "val", "test"}`` -> the arrays of :func:`facray.data.prepared.read_prepared`.
    Validation and test use the original image of each row only, never its augmentations."""
    data = {"train": read_prepared(spec.prepared, (spec.train_split,), columns)}
    if spec.val_split == "holdout":
        held = holdout_mask(data["train"]["image_id"], spec.holdout, spec.seed)
        full = data["train"]
        data["train"] = {k: v[~held] for k, v in full.items()}
        data["val"] = {k: v[held & (full["variant"] == "original")] for k, v in full.items()}
    else:
        data["val"] = read_prepared(spec.prepared, (spec.val_split,), columns, variants=("original",))
    data["test"] = read_prepared(spec.prepared, (spec.test_split,), columns, variants=("original",))
    return data


def load_validation(spec: SplitSpec, columns: tuple[str, ...] = ("image",)) -> dict[str, np.ndarray]:
    """Only the validation rows of :func:`load_split_arrays` (originals, no augmentations)."""
    if spec.val_split != "holdout":
        return read_prepared(spec.prepared, (spec.val_split,), columns, variants=("original",))
    train = read_prepared(spec.prepared, (spec.train_split,), columns, variants=("original",))
    held = holdout_mask(train["image_id"], spec.holdout, spec.seed)
    return {k: v[held] for k, v in train.items()}


def training_rows(spec: SplitSpec) -> dict[str, np.ndarray]:
    """The label and scalar columns (no pixels) of the training rows, originals and variants: the
    train split less its holdout when validation is one. What the driver reads them for."""
    rows = read_prepared(spec.prepared, (spec.train_split,), columns=())
    if spec.val_split != "holdout":
        return rows
    kept = ~holdout_mask(rows["image_id"], spec.holdout, spec.seed)
    return {k: v[kept] for k, v in rows.items()}


def train_labels(spec: SplitSpec) -> np.ndarray:
    """(N, 40) int8 labels of the training rows (originals and variants), read from the label
    columns only: what class balance is computed from on the driver."""
    return training_rows(spec)["labels"]


def train_identities(spec: SplitSpec) -> np.ndarray:
    """The identities of the training rows, sorted, unknown (-1) left out: the classes of an
    identity model (class ``i`` is identity ``train_identities(spec)[i]``)."""
    rows = training_rows(spec)
    ids = np.asarray(rows["identity"], np.int64) if "identity" in rows else np.zeros(0, np.int64)
    return np.unique(ids[ids >= 0])


def identity_indices(identities: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each row's class index in ``classes`` (sorted), -1 for identities not among them."""
    identities = np.asarray(identities, np.int64)
    if not len(classes):
        return np.full(len(identities), -1, np.int64)
    pos = np.clip(np.searchsorted(classes, identities), 0, len(classes) - 1)
    return np.where(classes[pos] == identities, pos, -1)


def check_splits(spec: SplitSpec) -> dict[str, int]:
    """Count usable rows per split on the driver, so a wrong split name fails before Ray starts."""
    t = shard_dataset(spec.prepared).to_table(columns=["split", "variant", "error"]).to_pandas()
    t = t[t.error == ""]
    counts = {"train": int((t.split == spec.train_split).sum()),
              "test": int(((t.split == spec.test_split) & (t.variant == "original")).sum())}
    if spec.val_split == "holdout":  # approximate: the hash split is by image, not by row
        counts["val"] = int(round(counts["train"] * spec.holdout))
        counts["train"] -= counts["val"]
    else:
        counts["val"] = int(((t.split == spec.val_split) & (t.variant == "original")).sum())
    for name in ("train", "val"):
        if counts[name] == 0:
            raise ValueError(f"{spec.prepared}: no rows for the {name} split "
                             f"({getattr(spec, name + '_split')!r}); splits present: "
                             f"{sorted(t.split.unique())} (for data with no val split: --val-split holdout)")
    return counts


# The arrays a training batch carries (``soft``: a teacher's probabilities, facray distill).
BATCH_KEYS = ("image", "sketch", "labels", "soft", "landmarks", "masks", "identity_index")


def array_batches(data: dict[str, np.ndarray], batch_size: int, shuffle: bool = False, seed: int = 0,
                  epoch: int = 0, rank: int = 0, world: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Batches from in-memory arrays. The shuffle depends on (seed, epoch) only, so every mode and
    every worker sees the same order; with ``world`` > 1 each rank gets its share and all ranks
    the same number of batches (DDP needs that): the order is cut to a multiple of ``world`` and
    dealt out."""
    n = len(data["labels"])
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if world > 1:
        order = order[: n - n % world][rank::world]
    keys = [k for k in BATCH_KEYS if k in data]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield {k: data[k][idx] for k in keys}


def epoch_of_passes(pass_batches: Callable[[int], Iterable[dict]], epoch: int, passes: int) -> Iterator[dict]:
    """The batches of an epoch made of ``passes`` passes over the train rows (online augmentation:
    each pass a fresh variant of every image), lazily. ``pass_batches(s)`` gives one pass shuffled
    with seed offset ``s``; pass k of epoch e takes ``e * passes + k``, the shuffle a one-pass run
    gives its epoch ``e * passes + k``, so every pass of every epoch is shuffled differently."""
    return chain.from_iterable(pass_batches(epoch * passes + k) for k in range(passes))


def stream_batches(shard, batch_size: int, meta: dict, shuffle_seed: int | None):
    """Batches of a Train worker's Ray Data shard (``--data stream``; anything with Ray Data's
    ``iter_batches``) as the arrays the trainers take, decoded here (:func:`batch_arrays`);
    shuffled within a ``4 * batch_size`` buffer when ``shuffle_seed`` is given."""
    kw = {"local_shuffle_buffer_size": 4 * batch_size, "local_shuffle_seed": shuffle_seed} \
        if shuffle_seed is not None else {}
    for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy", **kw):
        yield batch_arrays(b, meta)


def stream_sources(shards: dict, batch_size: int, meta: dict, seed: int, progress, passes: int = 1):
    """``(train(epoch), val(), test())`` batch iterators over a Train worker's Ray Data
    ``shards`` (``train``/``val``/``test``, stream mode): training batches shuffled in a buffer,
    seeded per pass; an epoch is ``passes`` passes over the train shard; ``progress(batches,
    epoch, total)`` wraps them (total unknown: None)."""
    def train(epoch: int):
        return epoch_of_passes(lambda s: stream_batches(shards["train"], batch_size, meta, seed * 1000 + s),
                               epoch, passes)

    return (lambda e: progress(train(e), e, None),
            lambda: stream_batches(shards["val"], 256, meta, None),
            lambda: stream_batches(shards["test"], 256, meta, None))
