"""Label images with a facray predictor: the pure per-batch part (no Ray).

:func:`preprocessing_for` builds the decode -> face crop (detector: generated faces come with no
landmark files) -> sketch (only when some attribute's chosen modality is sketch) chain the
predictor expects; :func:`label_batch` turns a preprocessed batch into output rows: ``path``,
``face_found``, ``error``, 40 ``<Attribute>_prob``, 40 ``<Attribute>`` decisions (1/0, empty when
the image failed or the predictor does not cover the attribute) and ``model``.
"""
from __future__ import annotations

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.data import ops

PROB_COLUMNS = [f"{a}_prob" for a in ATTRIBUTES]
OUTPUT_COLUMNS = ["path", "face_found", "error", *PROB_COLUMNS, *ATTRIBUTES, "model"]


def preprocessing_for(predictor, crop_method: str = "detect", detector: str = "auto",
                      max_pixels: int | None = None) -> ops.Chain:
    crop = predictor.crop
    stages = [ops.ImageDecoder(max_pixels),
              ops.FaceCropper(crop["size"], crop.get("margin", 0.35), crop_method, "wild", detector)]
    if predictor.needs_sketch:
        stages.append(ops.Sketcher(predictor.sketch_channels))
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
    decisions = predictor.decide(probs).astype(np.float32)
    decisions[~ok] = np.nan
    decisions[decisions < 0] = np.nan  # attributes the predictor does not cover
    out = {"path": np.asarray(batch[ops.PATH], dtype=object),
           "face_found": np.asarray(batch.get(ops.FACE_FOUND, np.zeros(n, bool)), bool),
           "error": errors}
    for j, a in enumerate(ATTRIBUTES):
        out[f"{a}_prob"] = probs[:, j]
    for j, a in enumerate(ATTRIBUTES):
        out[a] = decisions[:, j]  # float so "empty" survives (NaN -> empty cell in the CSV)
    out["model"] = np.full(n, predictor.name, dtype=object)
    for key in ("size", "mtime_ns"):  # resume keys of the labelling job ride along
        if key in batch:
            out[key] = np.asarray(batch[key])
    return out
