"""Label one batch with a facray predictor (no Ray): :func:`preprocessing_for` builds the decode ->
face crop (detector: generated faces come with no landmark files) -> sketch (only when some
attribute's chosen modality is sketch) chain a predictor's manifest asks for; :func:`label_batch`
turns a preprocessed batch into output rows (:data:`facray.labelling.output.OUTPUT_COLUMNS`, less
``image_id``, which needs the input folder). :class:`BatchLabeller` does both for one process and
times every stage (``seconds_<stage>`` columns, which the output file leaves out and ``facray
label`` sums into its report).
"""
from __future__ import annotations

import time

import numpy as np

from facray import columns
from facray.attributes import ATTRIBUTES
from facray.data import ops
from facray.predictors.format import Manifest

STAGE_PREFIX = "seconds_"  # per-row share of a batch's time in one stage
STAGES = ("decode", "detect", "crop", "sketch", "predict")


# Rows decoded at once: a batch of 64 generated faces at 1024 px is 200 MB of decoded pixels in
# each actor, its 64 px crops 0.8 MB; in slices of 8 only 25 MB of full-size images are alive.
DECODE_SLICE = 8


def preprocessing_for(manifest: Manifest, crop_method: str = "auto", detector: str = "auto",
                      max_pixels: int | None = None, faces: str = "largest") -> ops.Chain:
    """The decode -> crop -> sketch chain a predictor expects, from its manifest alone: no torch
    and no weights, so the CPU actors that feed GPU predict actors stay light. ``faces``:
    ``largest`` (one row per image) or ``all`` (one row per face found, ``face_index`` 0 the
    largest; an image with none keeps one row)."""
    crop = manifest.crop
    stages = [ops.InSlices(ops.Chain(
        ops.ImageDecoder(max_pixels),
        ops.FaceCropper(crop["size"], crop.get("margin", 0.35), crop_method, "wild", detector,
                        centre=crop.get("centre", "face"), faces=faces)), DECODE_SLICE)]
    if manifest.needs_sketch:
        stages.append(ops.Sketcher(manifest.sketch_channels or 1))
    return ops.Chain(*stages)


def label_batch(batch: dict[str, np.ndarray], predictor) -> dict[str, np.ndarray]:
    """Probabilities and decisions for a preprocessed batch; error rows keep their error and get
    empty predictions."""
    n = len(batch[columns.PATH])
    errors = np.asarray(batch.get(columns.ERROR, np.full(n, "", dtype=object)), dtype=object)
    ok = errors == ""
    probs = np.full((n, len(ATTRIBUTES)), np.nan, np.float32)
    if ok.any():
        sketches = batch[columns.SKETCH][ok] if columns.SKETCH in batch else None
        probs[ok] = predictor.predict_proba(batch[columns.IMAGE][ok], sketches)
        # A row with no error always has every probability its model covers (uncovered attributes
        # stay empty): a non-finite one becomes an error, never an empty row with 0 decisions.
        broken = ok & ~np.isfinite(probs[:, predictor.covered]).all(1)
        if broken.any():
            errors = errors.copy()
            errors[broken] = [f"{p}: the model gave non-finite probabilities (broken weights)"
                              for p in np.asarray(batch[columns.PATH], dtype=object)[broken]]
            probs[broken] = np.nan
            ok = errors == ""
    decisions = predictor.decide(probs).astype(np.float32)
    decisions[~ok] = np.nan
    decisions[decisions < 0] = np.nan  # attributes the predictor does not cover, or abstentions
    out = {"path": np.asarray(batch[columns.PATH], dtype=object),
           "face_found": np.asarray(batch.get(columns.FACE_FOUND, np.zeros(n, bool)), bool),
           columns.CROP_METHOD: np.asarray(batch.get(columns.CROP_METHOD, np.where(ok, "", "error")), dtype=object),
           columns.N_FACES: np.asarray(batch.get(columns.N_FACES, np.full(n, -1)), np.int16),
           columns.FACE_INDEX: np.asarray(batch.get(columns.FACE_INDEX, np.zeros(n)), np.int16),
           **{c: np.asarray(batch.get(c, np.full(n, np.nan)), np.float32) for c in (*columns.FACE_BOX, columns.FACE_SCORE)},
           "error": errors}
    for j, a in enumerate(ATTRIBUTES):
        out[f"{a}_prob"] = probs[:, j]
    for j, a in enumerate(ATTRIBUTES):
        out[a] = decisions[:, j]  # float so "empty" survives (NaN -> empty cell in the CSV)
    out["model"] = np.full(n, predictor.name, dtype=object)
    for key in batch:  # the resume keys and earlier stages' timings ride along
        if key in ("size", "mtime_ns") or key.startswith(STAGE_PREFIX):
            out[key] = np.asarray(batch[key])
    return out


def add_stage_seconds(batch: dict[str, np.ndarray], seconds: dict[str, float]) -> dict[str, np.ndarray]:
    """Spread each stage's time for this batch over its rows (summing a column gives the total)."""
    n = len(batch[columns.PATH])
    for stage, secs in seconds.items():
        column = STAGE_PREFIX + stage
        batch[column] = np.asarray(batch.get(column, np.zeros(n)), np.float64) + secs / max(n, 1)
    return batch


def stage_seconds(rows) -> dict[str, float]:
    """Total seconds per stage over a table of labelled rows (pandas), in pipeline order."""
    found = {c[len(STAGE_PREFIX):]: float(rows[c].sum()) for c in rows.columns if c.startswith(STAGE_PREFIX)}
    return dict(sorted(found.items(), key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES)))


def format_stage_seconds(stages: dict[str, float]) -> str:
    """``decode 1.2s (10%), ...``: each stage's seconds and share of all of them."""
    busy = sum(stages.values()) or 1.0
    return ", ".join(f"{k} {v:.1f}s ({100 * v / busy:.0f}%)" for k, v in stages.items())


class BatchLabeller:
    """Preprocess (unless ``chain`` is None: done upstream) and label batches (unless
    ``predictor`` is None: done downstream) in one process, timing each stage. What the labelling
    actors run and what the benchmark's plain loop times."""

    def __init__(self, predictor, chain: ops.Chain | None):
        self.predictor, self.chain = predictor, chain

    def preprocess(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.chain(batch)
        out.pop(columns.IMAGE_BYTES, None)
        return add_stage_seconds(out, self.chain.take_seconds())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.chain is not None:
            batch = self.preprocess(batch)
        start = time.perf_counter()
        rows = label_batch(batch, self.predictor)
        return add_stage_seconds(rows, {"predict": time.perf_counter() - start})
