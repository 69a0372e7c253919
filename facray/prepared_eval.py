"""``facray evaluate --model M --prepared DIR [--split test]``: score any predictor (a ``train`` or
``distill`` run, a combined ABM predictor, an ensemble) on a split of prepared data: the crops its
models were trained on, no face detection, so predictors are compared on exactly the same pixels.

Per attribute: accuracy and balanced accuracy (mean of the true-positive and true-negative
rates) at the predictor's thresholds, precision, recall, the expected calibration error of its
probabilities and of the raw sigmoid outputs behind them (:mod:`facray.predictors.calibration`),
and with ``--min-confidence P`` (default 0.9) the coverage and accuracy of the decisions whose
class has probability >= P (what ``facray label --min-confidence P`` keeps). Writes
``report.csv``, ``report.md`` and ``reliability.png`` (the reliability diagram over every
attribute, raw and calibrated) into ``--out``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from facray.attributes import ATTRIBUTES
from facray.data.prepared import prepared_crop, read_metadata, read_prepared
from facray.predictors.calibration import (apply_temperatures, expected_calibration_error, reliability_curve,
                                           selective_accuracy)
from facray.predictors.format import Manifest
from facray.training.metrics import attribute_metrics

PREDICT_ROWS = 256  # crops per predict_proba call


def predict_arrays(predictor, data: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 40) probabilities of ``predictor`` over prepared arrays (``image``, and ``sketch`` when
    the predictor reads sketches), in chunks of :data:`PREDICT_ROWS`."""
    if len(data["image"]) == 0:
        return np.zeros((0, len(ATTRIBUTES)), np.float32)
    sketches = data.get("sketch") if predictor.needs_sketch else None
    return np.concatenate([predictor.predict_proba(data["image"][i:i + PREDICT_ROWS],
                                                   None if sketches is None else sketches[i:i + PREDICT_ROWS])
                           for i in range(0, len(data["image"]), PREDICT_ROWS)])


def raw_and_calibrated(predictor, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(raw, reported) (N, 40) probabilities of ``predictor`` over prepared arrays, from one pass:
    its outputs before its temperatures, and after them exactly as ``predict_proba`` reports them
    (the same for a predictor without calibration)."""
    predictor.calibrated = False
    try:
        raw = predict_arrays(predictor, data)
    finally:
        predictor.calibrated = True
    return raw, raw if predictor.temperatures is None else apply_temperatures(raw, predictor.temperatures)


def score_probabilities(probs: np.ndarray, raw: np.ndarray, labels: np.ndarray, thresholds: np.ndarray,
                        min_confidence: float = 0.9) -> pd.DataFrame:
    """One row per attribute that has thresholds and labelled rows: accuracy, balanced accuracy,
    precision, recall, ``ece`` (of the reported ``probs``) and ``ece_raw`` (of the ``raw`` outputs
    before calibration), ``coverage_at_<P>`` and ``accuracy_at_<P>``
    (:func:`facray.predictors.calibration.selective_accuracy`), the majority baseline of these
    rows, counts, and ``one_class_only`` (every row decided the same way)."""
    covered = ~np.isnan(thresholds)
    m = attribute_metrics(np.nan_to_num(probs, nan=0.0), labels, np.where(covered, thresholds, 0.5))
    ece, ece_raw = expected_calibration_error(probs, labels), expected_calibration_error(raw, labels)
    coverage, kept_accuracy = selective_accuracy(probs, labels, np.where(covered, thresholds, 0.5), min_confidence)
    rows = []
    for j, a in enumerate(ATTRIBUTES):
        if not covered[j] or not m["count"][j]:
            continue
        positives = int(m["tp"][j] + m["fn"][j])
        rows.append({"attribute": a, "accuracy": float(m["accuracy"][j]),
                     "balanced_accuracy": float(m["balanced_accuracy"][j]), "precision": float(m["precision"][j]),
                     "recall": float(m["recall"][j]), "ece": float(ece[j]), "ece_raw": float(ece_raw[j]),
                     f"coverage_at_{min_confidence:g}": float(coverage[j]),
                     f"accuracy_at_{min_confidence:g}": float(kept_accuracy[j]),
                     "majority_accuracy": max(positives, int(m["count"][j]) - positives) / int(m["count"][j]),
                     "scored": int(m["count"][j]), "positives": positives,
                     "one_class_only": bool(m["tp"][j] + m["fp"][j] == 0 or m["tn"][j] + m["fn"][j] == 0)})
    return pd.DataFrame(rows)


def summary_row(table: pd.DataFrame, probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray,
                min_confidence: float) -> dict:
    """The MEAN row: means over attributes, except the coverage and accuracy at ``min_confidence``,
    which pool every decision (the share of all cells kept, the accuracy of all kept cells)."""
    numeric = table.drop(columns=["attribute", "one_class_only", "scored", "positives"]).mean()
    covered = ~np.isnan(thresholds)
    coverage, accuracy = selective_accuracy(probs[:, covered].reshape(-1, 1), labels[:, covered].reshape(-1, 1),
                                            np.repeat(thresholds[covered][None], len(probs), 0).reshape(-1, 1),
                                            min_confidence)
    return {"attribute": "MEAN", **numeric.to_dict(), f"coverage_at_{min_confidence:g}": float(coverage[0]),
            f"accuracy_at_{min_confidence:g}": float(accuracy[0])}


def plot_reliability(curves: dict[str, dict], path: Path, title: str) -> Path:
    """A reliability diagram: per curve (label -> :func:`reliability_curve`) the share of positives
    against the mean probability per bin, the diagonal being perfect calibration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
    for label, c in curves.items():
        used = c["count"] > 0
        ax.plot(c["mean_probability"][used], c["positive_share"][used], marker="o", ms=3, label=label)
    ax.set(xlabel="predicted probability", ylabel="share of positives", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def check_inputs(manifest: Manifest, prepared: str, name: str,
                 remedy: str = "it must see the crops it was trained on (prepare the data alike)") -> None:
    """Raise ``ValueError`` unless ``prepared`` holds crops the predictor of ``manifest`` (called
    ``name`` in the message) reads: its margin and centring (else the message ends with
    ``remedy``), and sketches when it needs them. What ``evaluate --prepared`` and ``distill``
    check before any image is read."""
    meta = read_metadata(prepared)
    crop = prepared_crop(meta)
    for key in ("margin", "centre"):
        if manifest.crop.get(key) != crop.get(key):
            raise ValueError(f"{name} crops faces with {key} {manifest.crop.get(key)!r}, {prepared} with "
                             f"{crop.get(key)!r}: {remedy}")
    if manifest.needs_sketch and not meta.get("sketch_channels"):
        raise ValueError(f"{name} decides some attributes on sketches; {prepared} has none "
                         "(prepare with --sketch-channels)")


def evaluate_on_prepared(predictor, prepared: str, split: str, out: Path, min_confidence: float = 0.9
                         ) -> tuple[pd.DataFrame, str]:
    """Score ``predictor`` on the original rows of ``split`` in ``prepared`` (see the module
    docstring); writes the report into ``out``. Returns the table (with its MEAN row) and a
    one-line summary. Raises ``ValueError`` when the split has no rows or the predictor needs
    sketches the data lacks."""
    check_inputs(predictor.manifest, prepared, predictor.name,
                 "score it on data prepared alike, or with --dataset (its own crop)")
    columns = ("image", "sketch") if predictor.needs_sketch else ("image",)
    data = read_prepared(prepared, (split,), columns, variants=("original",))
    if not len(data["labels"]):
        splits = sorted(set(read_prepared(prepared, None, columns=())["split"]))
        raise ValueError(f"{prepared}: no rows in split {split!r} (its splits: {', '.join(splits)})")
    raw, probs = raw_and_calibrated(predictor, data)
    labels, thresholds = data["labels"], predictor.thresholds
    calibrated = predictor.manifest.calibration is not None
    table = score_probabilities(probs, raw, labels, thresholds, min_confidence)
    if table.empty:
        raise ValueError(f"{prepared} split {split}: none of the predictor's attributes is labelled there")
    full = pd.concat([table, pd.DataFrame([summary_row(table, probs, labels, thresholds, min_confidence)])],
                     ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    full.to_csv(out / "report.csv", index=False)
    curves = {"calibrated": reliability_curve(probs, labels)} if calibrated else {}
    plot_reliability({"raw": reliability_curve(raw, labels), **curves}, out / "reliability.png",
                     f"{predictor.name}\n{split} split, {len(labels)} images")
    mean = full.iloc[-1]
    line = (f"{predictor.name} on {len(labels)} {split} image(s) of {prepared}: accuracy {mean.accuracy:.4f}, "
            f"balanced accuracy {mean.balanced_accuracy:.4f}, ECE {mean.ece:.4f} (raw {mean.ece_raw:.4f}); "
            f"decisions with confidence >= {min_confidence:g}: {mean[f'coverage_at_{min_confidence:g}']:.1%} kept, "
            f"{mean[f'accuracy_at_{min_confidence:g}']:.4f} accurate; "
            f"{int(table.one_class_only.sum())} attribute(s) predict one class only")
    (out / "report.md").write_text(full.round(4).to_string(index=False) + f"\n\n{line}\n")
    return full, line
