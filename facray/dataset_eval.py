"""``facray evaluate --model M --dataset DIR``: score a model on a dataset it did not train on.

The images of ``DIR`` (any layout facray reads: CelebA's lists or CSV, a CelebA-style list naming
a subset of the attributes, MTFL) go through ``facray label`` exactly as a user's would (face
detection, the model's crop; :func:`facray.runners.label.label_images`), then every attribute the
dataset labels *and* the model covers is scored against the dataset's labels
(:func:`score_labels`): accuracy, balanced accuracy, precision, recall, the majority baseline (always
answering this data's most common class) and the counts. Rows whose image failed are left out of
the scores and counted. Writes ``labels.csv``, ``report.csv`` and ``report.md`` into ``--out``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from facray.attributes import ATTRIBUTES
from facray.data.celeba import labels_matrix
from facray.data.check import read_dataset
from facray.labelling.config import LabelConfig
from facray.predictors.locate import locate_predictor
from facray.predictors.thresholds import PredictorInfo
from facray.runners.label import label_images
from facray.training.metrics import confusion_metrics

REPORT_COLUMNS = ["attribute", "accuracy", "balanced_accuracy", "precision", "recall", "majority_accuracy",
                  "scored", "positives"]


def score_labels(truth: np.ndarray, decisions: np.ndarray) -> pd.DataFrame:
    """One row per attribute with known labels in ``truth`` and decisions in ``decisions`` (both
    (N, 40) in the official order; ``truth`` 1/0 and -1 unknown; ``decisions`` 1/0 and NaN where
    the model gave none): the :data:`REPORT_COLUMNS`. Attributes scored on no row are left out."""
    rows = []
    for j, a in enumerate(ATTRIBUTES):
        known = (truth[:, j] >= 0) & ~np.isnan(decisions[:, j])
        if not known.any():
            continue
        y, p = truth[known, j] == 1, decisions[known, j] == 1
        m = confusion_metrics([(p & y).sum()], [(p & ~y).sum()], [(~p & y).sum()], [(~p & ~y).sum()])
        rows.append({"attribute": a, **{k: float(m[k][0]) for k in ("accuracy", "balanced_accuracy", "precision",
                                                                     "recall")},
                     "majority_accuracy": float(max(y.mean(), 1 - y.mean())), "scored": int(known.sum()),
                     "positives": int(y.sum())})
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def evaluate_on_dataset(cfg) -> tuple[pd.DataFrame, Path, str]:
    """Label ``cfg.dataset`` (its ``cfg.split`` rows, or all) with ``cfg.model`` and score it (see
    the module docstring). Returns the per-attribute table (plus a mean row), the report folder
    and a one-line summary. Raises ``ValueError`` when the dataset and the model share no
    attribute, before any image is labelled."""

    table, layout = read_dataset(cfg.dataset, skip_missing=cfg.skip_missing)
    split = cfg.split or "all"
    if split != "all":
        if split not in set(table["split"]):
            raise ValueError(f"{cfg.dataset}: no {split!r} rows (splits: {sorted(set(table['split']))}); "
                             "--split all scores every image")
        table = table[table["split"] == split].reset_index(drop=True)
    truth = labels_matrix(table)
    labelled = [a for j, a in enumerate(ATTRIBUTES) if (truth[:, j] >= 0).any()]
    if not cfg.model.startswith(("models:/", "runs:/")):
        covered = PredictorInfo(locate_predictor(cfg.model)[1]).attributes
        shared = [a for a in labelled if a in covered]
        if not shared:
            raise ValueError(f"{cfg.dataset} labels {', '.join(labelled[:6]) or 'no attribute'}"
                             f"{' ...' if len(labelled) > 6 else ''}; {cfg.model} predicts none of them: nothing to score")
    model_dir = Path(cfg.model)
    out = Path(cfg.out).resolve() if cfg.out else (
        model_dir / f"eval-{Path(cfg.dataset).name}" if model_dir.is_dir() else Path(f"eval-{Path(cfg.dataset).name}"))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "images.txt"
    listing.write_text("\n".join(table["path"]) + "\n")
    summary = label_images(LabelConfig(images=str(listing), model=cfg.model, out=str(out / "labels.csv"),
                                       tracking_uri=cfg.tracking_uri))
    rows = pd.read_csv(out / "labels.csv", keep_default_na=False, na_values=[""]).set_index("path")
    rows = rows.loc[[os.path.abspath(p) for p in table["path"]]]  # as `label` names its inputs
    ok = (rows["error"].fillna("") == "").to_numpy()
    decisions = rows[list(ATTRIBUTES)].to_numpy(dtype=float)
    decisions[~ok] = np.nan
    report = score_labels(truth, decisions)
    if report.empty:
        raise ValueError(f"{cfg.dataset}: no image was both labelled in the dataset and labelled by {cfg.model}")
    mean = {"attribute": "MEAN", **report.drop(columns=["attribute", "scored", "positives"]).mean().to_dict()}
    full = pd.concat([report, pd.DataFrame([mean])], ignore_index=True)
    full[["scored", "positives"]] = full[["scored", "positives"]].astype("Int64")  # (empty on the mean row)
    full.to_csv(out / "report.csv", index=False)
    faces = int(rows["face_found"].astype(str).str.lower().isin(["true", "1"]).sum())
    line = (f"{len(table)} image(s) of {cfg.dataset} [{layout}, split {split}]: faces found {faces}, errors "
            f"{int((~ok).sum())}; {len(report)} attribute(s) scored ({summary.model})")
    (out / "report.md").write_text(full.round(3).to_string(index=False) + f"\n\n{line}\n")
    return full, out, line
