"""Calibrated probabilities, without torch: per-attribute temperature scaling fitted on validation,
the expected calibration error, reliability curves and abstention.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the
calibrated probability of attribute ``a`` is ``sigmoid(logit(p) / T_a)``, one ``T_a > 0`` per
attribute, chosen to minimise the negative log-likelihood of the validation labels. It is monotonic
and keeps 0.5 where it is, so every decision at a threshold stays the same decision (a threshold
``t`` becomes ``sigmoid(logit(t) / T_a)``): calibration changes what a probability *says*, never
what the predictor decides.

A predictor's manifest stores the fitted temperatures as ``calibration``
(:func:`calibration_record`); every predictor applies them in ``predict_proba``
(:meth:`facray.predictors.thresholds.Thresholded.calibrate`), so ``facray label``'s ``<Attribute>_prob`` columns, its thresholds and
``--min-confidence`` all speak of calibrated probabilities. A predictor without the record (written
before 2026-12) reports its raw sigmoid outputs.
"""
from __future__ import annotations

import numpy as np

from facray.attributes import ATTRIBUTES

ECE_BINS = 15  # equal-width probability bins of the calibration error (Guo et al. 2017 use 15)
_EPS = 1e-7    # probabilities are clipped to [eps, 1 - eps] before the logit (float32 sigmoid saturates)
# The temperature search interval: T from 1/20 (sharpen 20x) to 20 (flatten 20x).
_LOG_A_RANGE = (np.log(1 / 20), np.log(20))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(z, np.float64)))  # no overflow warning for large |z|


def _nll(z: np.ndarray, y: np.ndarray, known: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood per column of labels ``y`` under ``sigmoid(a * z)`` (a: (A,))."""
    s = a * z
    # -log sigmoid(s) for y = 1, -log(1 - sigmoid(s)) = -log sigmoid(-s) for y = 0: logaddexp(0, -/+s).
    loss = np.logaddexp(0.0, np.where(y == 1, -s, s))
    return (loss * known).sum(0) / np.maximum(known.sum(0), 1)


def fit_temperatures(probs: np.ndarray, labels: np.ndarray, min_rows: int = 20) -> np.ndarray:
    """(N, A) probabilities and (N, A) labels (1, 0; -1 unknown) -> (A,) temperatures minimising
    each column's validation NLL (see the module docstring). A column with fewer than ``min_rows``
    labelled rows, one class only, or no finite probability keeps ``T = 1``.

    The NLL of ``sigmoid(z / T)`` is convex in ``1 / T``, so a golden-section search on ``log(1/T)``
    over [1/20, 20] finds the optimum (to 1e-6 in log space, 60 steps for every column at once)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    known = (labels >= 0) & np.isfinite(probs)
    z = np.where(known, logit(np.where(known, probs, 0.5)), 0.0)
    y = np.where(known, labels, 0)
    usable = (known.sum(0) >= min_rows) & ((y == 1) & known).any(0) & ((y == 0) & known).any(0)
    lo, hi = np.full(probs.shape[1], _LOG_A_RANGE[0]), np.full(probs.shape[1], _LOG_A_RANGE[1])
    ratio = (np.sqrt(5) - 1) / 2
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = _nll(z, y, known, np.exp(c)), _nll(z, y, known, np.exp(d))
    for _ in range(60):
        left = fc < fd  # the minimum lies in [lo, d], else in [c, hi]
        hi, lo = np.where(left, d, hi), np.where(left, lo, c)
        kept, f_kept = np.where(left, c, d), np.where(left, fc, fd)  # the interior point that survives
        new = np.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
        f_new = _nll(z, y, known, np.exp(new))  # one new evaluation per step
        c, fc = np.where(left, new, kept), np.where(left, f_new, f_kept)
        d, fd = np.where(left, kept, new), np.where(left, f_kept, f_new)
    temperatures = 1.0 / np.exp((lo + hi) / 2)
    return np.where(usable, temperatures, 1.0)


def apply_temperatures(probs: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` per column; NaN stays NaN. Returns float32 like the predictors."""
    probs = np.asarray(probs)
    out = sigmoid(logit(probs) / np.asarray(temperatures, np.float64)).astype(np.float32)
    out[np.isnan(probs)] = np.nan
    return out


def calibration_record(temperatures: np.ndarray, attributes: list[str], fitted_on: str) -> dict:
    """The manifest's ``calibration`` entry: ``{"method": "temperature", "temperature": {attribute:
    T}, "fitted_on": ...}`` for ``attributes`` (names of the official order's columns)."""
    return {"method": "temperature", "fitted_on": fitted_on,
            "temperature": {a: float(temperatures[ATTRIBUTES.index(a)]) for a in attributes}}


def temperatures_of(record: dict | None) -> np.ndarray | None:
    """(40,) temperatures from a manifest's ``calibration`` entry (1 for attributes it does not
    name); None when there is none. Raises ``ValueError`` for a method this facray does not know or a
    temperature that is not a positive finite number."""
    if not record:
        return None
    if record.get("method") != "temperature":
        raise ValueError(f"calibration method {record.get('method')!r} is not known (expected 'temperature')")
    out = np.ones(len(ATTRIBUTES))
    for a, t in record.get("temperature", {}).items():
        if a not in ATTRIBUTES or not (isinstance(t, (int, float)) and np.isfinite(t) and t > 0):
            raise ValueError(f"calibration temperature {a}={t!r}: expected a known attribute and T > 0")
        out[ATTRIBUTES.index(a)] = t
    return out


def calibrated_thresholds(thresholds: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Thresholds on raw probabilities -> the same decisions on calibrated ones."""
    return apply_temperatures(np.asarray(thresholds, np.float64), temperatures).astype(np.float64)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """(A,) expected calibration error per column: the probabilities of the positive class fall
    into ``bins`` equal-width bins of [0, 1]; ECE = sum over bins of (rows in bin / rows) x |share
    of positives - mean probability| (Naeini et al. 2015; Guo et al. 2017, for the binary case).
    Only labelled rows (label >= 0, finite probability) count; NaN for a column without any. 0 is
    perfect; a model that says 0.9 where 70% are positive scores 0.2 on those rows."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    out = np.full(probs.shape[1], np.nan)
    for j in range(probs.shape[1]):
        known = (labels[:, j] >= 0) & np.isfinite(probs[:, j])
        if not known.any():
            continue
        p, y = probs[known, j], labels[known, j] == 1
        which = np.minimum((p * bins).astype(int), bins - 1)
        count = np.bincount(which, minlength=bins)
        gap = np.abs(np.bincount(which, y, bins) - np.bincount(which, p, bins))  # per bin: |sum y - sum p|
        out[j] = gap.sum() / count.sum()
    return out


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Pooled over every labelled cell of (N, A) ``probs``/``labels``: per equal-width bin the mean
    probability, the share of positives and the number of cells (a reliability diagram's points)."""
    probs, labels = np.asarray(probs, np.float64).ravel(), np.asarray(labels).ravel()
    known = (labels >= 0) & np.isfinite(probs)
    p, y = probs[known], labels[known] == 1
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        return {"mean_probability": np.bincount(which, p, bins) / count,
                "positive_share": np.bincount(which, y, bins) / count, "count": count}


def confidence(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The probability of the decided class: ``p`` where ``p >= threshold`` decides 1, else ``1 - p``."""
    probs = np.asarray(probs)
    return np.where(probs >= thresholds, probs, 1 - probs)


def selective_accuracy(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, min_confidence: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per column: (coverage, accuracy on the kept decisions) when a decision is kept only where
    its class's probability is at least ``min_confidence`` (``facray label --min-confidence``).
    Coverage is the share of labelled rows kept; accuracy NaN where none is kept."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    known = (labels >= 0) & np.isfinite(probs)
    kept = known & (confidence(probs, thresholds) >= min_confidence)
    right = kept & ((probs >= thresholds) == (labels == 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return kept.sum(0) / np.maximum(known.sum(0), 1), np.where(kept.sum(0) > 0, right.sum(0) / kept.sum(0),
                                                                    np.nan)
