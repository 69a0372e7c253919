"""Benchmark (issue 26, "temperature, or isotonic if it measures better"): calibration methods fitted
per attribute on a predictor's validation rows, scored on its test rows, side by side in one run.

Methods, each fitted on the raw sigmoid outputs of the validation rows the run validated on (its
manifest's ``training_data``: a holdout or a split) and applied to the test split's:

- ``raw``: no calibration;
- ``temperature``: facray's (:func:`facray.predictors.calibration.fit_temperatures`, one T per
  attribute, Guo et al. 2017);
- ``temperature, LR test``: the same T kept only where a likelihood-ratio test on the validation
  rows says it fits them better than T = 1 by more than chance (chi-squared, 1 df, 5%), else 1;
- ``platt``: a slope and a bias on the logit per attribute (Platt 1999; scikit-learn's
  ``LogisticRegression``, almost unregularised);
- ``isotonic``: a monotone step function per attribute (Zadrozny & Elkan 2002; scikit-learn's
  ``IsotonicRegression``, clipped to [1e-4, 1 - 1e-4] so a test row's NLL stays finite).

Scores per method, means over the attributes the predictor covers that have both classes among
the validation rows and among the test rows: ECE (15
bins, what issue 26's target is set in; its noise floor on this many rows printed beside it), the
Brier score and the negative log-likelihood (proper scoring rules, which the true probabilities
minimise in expectation; far less noisy than binned ECE), accuracy at thresholds chosen on the same
validation rows (:func:`facray.training.metrics.choose_thresholds`), and the coverage and accuracy
of the decisions kept at ``--min-confidence``. Then each method minus ``temperature`` on all the
test rows, with a 95% paired bootstrap interval for Brier and log-loss over the test rows (every
method scored on the same resampled rows), given the calibrators as fitted: it leaves out the
noise of the fit on the validation rows.

    python bench/calibration.py --model RUN [--prepared PREP] [--min-confidence 0.9] [--bootstrap 200]
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import replace

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from ensemble import noise_floor  # the ECE a perfectly calibrated model scores on these rows
from facray.data.prepared import read_prepared
from facray.predictors.calibration import (apply_temperatures, expected_calibration_error, fit_temperatures, logit,
                                           selective_accuracy)
from facray.predictors.networks import load_predictor
from facray.prepared_eval import raw_and_calibrated
from facray.training.metrics import attribute_metrics, choose_thresholds
from facray.training.splits import SplitSpec, load_validation

CLIP = 1e-4  # isotonic steps reach 0 and 1; a test row's NLL needs a finite log
CHI2_1DF_95 = 3.841  # the 95% quantile of chi-squared with one degree of freedom


def column_nll(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(A,) mean negative log-likelihood of the labelled rows (-1 unknown) of each column."""
    known, q = y >= 0, np.clip(np.asarray(p, np.float64), CLIP, 1 - CLIP)
    return np.where(known, -np.where(y == 1, np.log(q), np.log1p(-q)), 0).sum(0) / np.maximum(known.sum(0), 1)


def both_classes(y: np.ndarray) -> np.ndarray:
    """(A,) True where the (N, A) labels hold a positive and a negative."""
    return (y == 1).any(0) & (y == 0).any(0)


def fit_methods(val_p: np.ndarray, val_y: np.ndarray, columns: np.ndarray) -> tuple[dict, int]:
    """({method: function (N, A) raw probabilities -> calibrated}, how many of ``columns`` the LR
    test keeps a temperature for), every method fitted on the validation rows given; a column
    without both classes among them is left raw by Platt and isotonic (a bootstrap draw can lose a
    rare class)."""
    temperatures = fit_temperatures(val_p, val_y)
    # A likelihood-ratio test on validation (chi-squared, 1 degree of freedom, 5%): T kept only where
    # it lowers the validation NLL by more than chance would, else 1 (cf. the thresholds' sign test)
    gain = 2 * (val_y >= 0).sum(0) * (column_nll(val_p, val_y) - column_nll(apply_temperatures(val_p, temperatures),
                                                                             val_y))
    tested = np.where(gain > CHI2_1DF_95, temperatures, 1.0)
    platt, isotonic = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a near-separable column warns that the logistic fit did not converge
        for j in columns[both_classes(val_y[:, columns])]:
            known = val_y[:, j] >= 0
            z, y = logit(val_p[known, j])[:, None], val_y[known, j]
            platt[j] = LogisticRegression(C=1e6, max_iter=1000).fit(z, y)
            isotonic[j] = IsotonicRegression(y_min=CLIP, y_max=1 - CLIP, out_of_bounds="clip").fit(val_p[known, j], y)

    def per_column(models, apply):
        def calibrate(p):
            out = p.astype(np.float64).copy()
            for j, m in models.items():
                out[:, j] = apply(m, p[:, j])
            return out
        return calibrate

    return {"raw": lambda p: p.astype(np.float64),
            "temperature": lambda p: apply_temperatures(p, temperatures).astype(np.float64),
            "temperature, LR test": lambda p: apply_temperatures(p, tested).astype(np.float64),
            "platt": per_column(platt, lambda m, p: m.predict_proba(logit(p)[:, None])[:, 1]),
            "isotonic": per_column(isotonic, lambda m, p: m.predict(p))}, int((tested[columns] != 1).sum())


def scores(p: np.ndarray, y: np.ndarray, columns: np.ndarray) -> dict[str, float]:
    """Means over ``columns`` of ECE, Brier and NLL on the labelled rows."""
    p, y = p[:, columns], y[:, columns]
    known = y >= 0
    brier = np.where(known, (p - (y == 1)) ** 2, 0).sum(0) / known.sum(0)
    return {"ece": float(np.nanmean(expected_calibration_error(p, y))), "brier": float(brier.mean()),
            "nll": float(column_nll(p, y).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", help="the prepared data, where it moved since training")
    ap.add_argument("--model", required=True, help="a train run, predictor folder or models:/ URI")
    ap.add_argument("--min-confidence", type=float, default=0.9)
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    predictor = load_predictor(args.model)
    record = predictor.manifest.extra.get("training_data")  # the splits the run trained and validated on
    if record is None:
        raise SystemExit(f"{args.model}: its manifest has no training_data (which rows validated it), as an "
                         "ensemble's has not: give a train, distill or combined run")
    spec = replace(SplitSpec(**{k: record[k] for k in SplitSpec.__dataclass_fields__}),
                   prepared=args.prepared or record["prepared"])
    pixels = ("image", "sketch") if predictor.needs_sketch else ("image",)
    val = load_validation(spec, pixels)
    test = read_prepared(spec.prepared, (spec.test_split,), pixels, variants=("original",))
    (val_p, _), (test_p, _) = raw_and_calibrated(predictor, val), raw_and_calibrated(predictor, test)
    val_y, test_y = val["labels"], test["labels"]
    columns = np.flatnonzero(both_classes(val_y) & both_classes(test_y) & predictor.covered)
    methods, lr_kept = fit_methods(val_p, val_y, columns)
    print(f"{args.model}: {len(val_y)} validation rows ({spec.val_split}), {len(test_y)} test rows "
          f"({spec.test_split}), {len(columns)} attributes with both classes in both; the LR test keeps a "
          f"temperature for {lr_kept} of them")
    print(f"ECE noise floor on the test rows (a perfectly calibrated model with the temperature-scaled "
          f"probabilities): {noise_floor(methods['temperature'](test_p), columns):.4f}")
    calibrated = {m: f(test_p) for m, f in methods.items()}
    thresholds = {m: choose_thresholds(f(val_p), val_y) for m, f in methods.items()}
    print(f"{'method':22s} {'ECE':>7s} {'Brier':>7s} {'NLL':>7s} {'accuracy':>9s} {'kept':>7s} {'acc. kept':>9s}")
    for m, p in calibrated.items():
        s = scores(p, test_y, columns)
        accuracy = np.nanmean(attribute_metrics(p, test_y, thresholds[m])["accuracy"][columns])
        coverage, kept = selective_accuracy(p, test_y, thresholds[m], args.min_confidence)
        print(f"{m:22s} {s['ece']:7.4f} {s['brier']:7.4f} {s['nll']:7.4f} {accuracy:9.2%} "
              f"{np.mean(coverage[columns]):7.1%} {np.nanmean(kept[columns]):9.2%}")
    full = {m: scores(p, test_y, columns) for m, p in calibrated.items()}
    # Each draw resamples the test rows, every method scored on the same ones. The calibrators stay
    # as fitted: the interval is the test set's noise, given this fit (refitting on resampled
    # validation rows was tried: duplicated rows make isotonic and Platt overfit more, and the
    # intervals no longer held the full-set figures).
    rng = np.random.default_rng(0)
    draws = {m: [] for m in calibrated}
    for _ in range(args.bootstrap):
        rows = rng.integers(0, len(test_y), len(test_y))
        for m, p in calibrated.items():
            draws[m].append(scores(p[rows], test_y[rows], columns))
    print(f"minus temperature on all test rows, and a 95% paired bootstrap interval over the test rows given this "
          f"fit ({args.bootstrap} draws; ECE without one: binned ECE is biased upwards on resampled rows)")
    for m in calibrated:
        if m == "temperature":
            continue
        cells = [f"ece {full[m]['ece'] - full['temperature']['ece']:+.4f}"]
        for k in ("brier", "nll"):
            d = np.array([a[k] - b[k] for a, b in zip(draws[m], draws["temperature"])])
            cells.append(f"{k} {full[m][k] - full['temperature'][k]:+.4f} "
                         f"[{np.percentile(d, 2.5):+.4f}, {np.percentile(d, 97.5):+.4f}]")
        print(f"  {m:22s} " + "; ".join(cells))

if __name__ == "__main__":
    main()
