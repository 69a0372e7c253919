"""Label images with a facray predictor: the pure per-batch part (no Ray).

:func:`preprocessing_for` builds the decode -> face crop (detector: generated faces come with no
landmark files) -> sketch (only when some attribute's chosen modality is sketch) chain a
predictor's manifest asks for; :func:`label_batch` turns a preprocessed batch into output rows.

The output's schema is this module's (:data:`OUTPUT_COLUMNS`, :func:`output_table`, the formats of
:func:`encode_output`): ``path`` (absolute, or the URI), ``image_id`` (the path relative to the
``--images`` folder, glob folder or list file's folder: the key CelebA's and FFHQ's lists use),
``face_found``, ``n_faces`` (faces the detector found; the largest is labelled unless ``--faces all``),
``face_index`` (0 the largest; with ``--faces all`` one row per face), the labelled face's
box ``face_x, face_y, face_w, face_h`` (source pixels) and ``face_score`` (detector confidence),
``error``, 40 ``<Attribute>_prob``, 40 ``<Attribute>`` decisions (1/0, empty when the image failed
or the predictor does not cover the attribute) and ``model``.
:class:`BatchLabeller` does both for one process and times every stage (``seconds_<stage>``
columns, which the output file leaves out and ``facray label`` sums into its report).
"""
from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd

from facray.attributes import ATTRIBUTES
from facray.data import ops
from facray.predictors.format import Manifest

PROB_COLUMNS = [f"{a}_prob" for a in ATTRIBUTES]
FACE_COLUMNS = [ops.FACE_FOUND, ops.N_FACES, ops.FACE_INDEX, *ops.FACE_BOX, ops.FACE_SCORE]
OUTPUT_COLUMNS = ["path", "image_id", *FACE_COLUMNS, "error", *PROB_COLUMNS, *ATTRIBUTES, "model"]
FORMATS = ("csv", "parquet", "celeba")
STAGE_PREFIX = "seconds_"  # per-row share of a batch's time in one stage
STAGES = ("decode", "detect", "crop", "sketch", "predict")


# Rows decoded at once: a batch of 64 generated faces at 1024 px is 200 MB of decoded pixels in
# each actor, its 64 px crops 0.8 MB; in slices of 8 only 25 MB of full-size images are alive.
DECODE_SLICE = 8


def preprocessing_for(manifest: Manifest, crop_method: str = "detect", detector: str = "auto",
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
    n = len(batch[ops.PATH])
    errors = np.asarray(batch.get(ops.ERROR, np.full(n, "", dtype=object)), dtype=object)
    ok = errors == ""
    probs = np.full((n, len(ATTRIBUTES)), np.nan, np.float32)
    if ok.any():
        sketches = batch[ops.SKETCH][ok] if ops.SKETCH in batch else None
        probs[ok] = predictor.predict_proba(batch[ops.IMAGE][ok], sketches)
        # A row with no error always has every probability its model covers (uncovered attributes
        # stay empty): a non-finite one becomes an error, never an empty row with 0 decisions.
        covered = predictor.decide(np.zeros((1, len(ATTRIBUTES)), np.float32))[0] >= 0
        broken = ok & ~np.isfinite(probs[:, covered]).all(1)
        if broken.any():
            errors = errors.copy()
            errors[broken] = [f"{p}: the model gave non-finite probabilities (broken weights)"
                              for p in np.asarray(batch[ops.PATH], dtype=object)[broken]]
            probs[broken] = np.nan
            ok = errors == ""
    decisions = predictor.decide(probs).astype(np.float32)
    decisions[~ok] = np.nan
    decisions[decisions < 0] = np.nan  # attributes the predictor does not cover
    out = {"path": np.asarray(batch[ops.PATH], dtype=object),
           "face_found": np.asarray(batch.get(ops.FACE_FOUND, np.zeros(n, bool)), bool),
           ops.N_FACES: np.asarray(batch.get(ops.N_FACES, np.full(n, -1)), np.int16),
           ops.FACE_INDEX: np.asarray(batch.get(ops.FACE_INDEX, np.zeros(n)), np.int16),
           **{c: np.asarray(batch.get(c, np.full(n, np.nan)), np.float32) for c in (*ops.FACE_BOX, ops.FACE_SCORE)},
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


def output_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The output columns in order with fixed dtypes whatever the mix of rows (fresh ones, parts
    read back, rows of an older facray without some columns): decisions and ``n_faces`` nullable
    integers (Parquet keeps them so; a CSV writes empty cells), probabilities and boxes floats."""
    table = rows.reindex(columns=OUTPUT_COLUMNS)
    table[list(ATTRIBUTES)] = table[list(ATTRIBUTES)].astype("float64").round().astype("Int8")
    table[ops.N_FACES] = table[ops.N_FACES].astype("float64").astype("Int16")
    table.loc[table[ops.N_FACES] < 0, ops.N_FACES] = pd.NA  # not looked for: unknown
    table[ops.FACE_INDEX] = table[ops.FACE_INDEX].astype("float64").fillna(0).astype("int16")
    floats = [*PROB_COLUMNS, *ops.FACE_BOX, ops.FACE_SCORE]
    table[floats] = table[floats].astype("float64")
    table["face_found"] = table["face_found"].fillna(False).astype(bool)
    table["error"] = table["error"].fillna("").astype(str)
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
    if (table[ops.FACE_INDEX] > 0).any():
        raise ValueError("a CelebA-style list holds one row per image: --faces all needs --format csv or parquet")
    ok = table["error"] == ""
    covered = [a for a in ATTRIBUTES if table.loc[ok, a].notna().any()] or list(ATTRIBUTES)
    spaced = ok & table["image_id"].astype(str).str.contains(r"\s")
    table.loc[spaced, "error"] = [f"{p}: its image_id has white space, which a CelebA-style list cannot hold "
                                  "(use --format csv or parquet)" for p in table.loc[spaced, "path"]]
    ok &= ~spaced
    undecided = ok & table[covered].isna().any(axis=1)  # (cannot happen for a row with no error)
    table.loc[undecided, "error"] = [f"{p}: no decision for every attribute" for p in table.loc[undecided, "path"]]
    ok &= ~undecided
    listed = table[ok]
    signed = (2 * listed[covered].astype("int64") - 1).to_numpy()  # 1/0 -> 1/-1
    lines = [str(len(listed)), " ".join(covered)]
    lines += [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(listed["image_id"], signed)]
    return ("\n".join(lines) + "\n").encode(), table.loc[~ok, ["path", "image_id", "error"]]


def add_stage_seconds(batch: dict[str, np.ndarray], seconds: dict[str, float]) -> dict[str, np.ndarray]:
    """Spread each stage's time for this batch over its rows (summing a column gives the total)."""
    n = len(batch[ops.PATH])
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
        out.pop(ops.IMAGE_BYTES, None)
        return add_stage_seconds(out, self.chain.take_seconds())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.chain is not None:
            batch = self.preprocess(batch)
        start = time.perf_counter()
        rows = label_batch(batch, self.predictor)
        return add_stage_seconds(rows, {"predict": time.perf_counter() - start})
