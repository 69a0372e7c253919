"""Benchmark: members, their ensemble and a distilled student, side by side in one run.

For every predictor given (``--models``, in order; the first is the baseline of the ratios):

- on a split of prepared data (``--prepared``, ``--split``; the crops the models trained on, as
  ``facray evaluate --model M --prepared DIR`` scores them): mean accuracy and balanced accuracy
  at its thresholds, mean ECE calibrated and raw, the attributes stuck at one class (and how many of
  them have < 10 positives there), the coverage and accuracy of decisions at ``--min-confidence``;
- the ECE a *perfectly calibrated* model with these probabilities would score on a test set of
  this size (labels drawn from its own probabilities, 20 draws): the noise floor of the figure;
- with ``--n N``, the labelling speed of ``facray label`` on N generated faces
  (``../shared/data/stylegan_sample`` repeated, as ``bench/label.py``), each run as users run it,
  and the milliseconds per image of its predict stage (on a small CPU the decode and crop stages
  bound the whole run; the predict stage is what an ensemble multiplies and a student saves).

    python bench/ensemble.py --prepared PREP --split val --models RUN_A RUN_B ENSEMBLE STUDENT --n 600
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label import make_inputs  # noqa: E402 - the bench's own input builder

from facray.data.prepared import read_prepared  # noqa: E402
from facray.predictors.calibration import expected_calibration_error  # noqa: E402
from facray.predictors.networks import load_predictor  # noqa: E402
from facray.prepared_eval import evaluate_on_prepared, predict_arrays  # noqa: E402
from facray.training.metrics import MIN_CLASS_EXAMPLES  # noqa: E402


def noise_floor(probs: np.ndarray, covered: np.ndarray, draws: int = 20, seed: int = 0) -> float:
    """Mean ECE of these probabilities against labels drawn from them: what perfect calibration
    scores on this many rows (the binned estimate is biased upwards on small sets)."""
    rng = np.random.default_rng(seed)
    p = probs[:, covered]
    return float(np.mean([np.nanmean(expected_calibration_error(p, (rng.random(p.shape) < p).astype(np.int8)))
                          for _ in range(draws)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--models", nargs="+", required=True, help="run, ensemble or predictor folders, models:/ URIs")
    ap.add_argument("--min-confidence", type=float, default=0.9)
    ap.add_argument("--n", type=int, default=0, help="also time facray label on N generated faces")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "facray-bench-ensemble"))
    args = ap.parse_args()
    work = Path(args.work)
    data = read_prepared(args.prepared, (args.split,), ("image",), variants=("original",))
    print(f"{len(data['labels'])} {args.split} images of {args.prepared}; decisions kept at confidence >= "
          f"{args.min_confidence:g}")
    rows = []
    for i, model in enumerate(args.models):
        predictor = load_predictor(model)
        table, _ = evaluate_on_prepared(predictor, args.prepared, args.split, work / f"eval-{i}", args.min_confidence)
        per, mean = table.iloc[:-1], table.iloc[-1]
        stuck = per[per.one_class_only]
        rare = int((np.minimum(stuck.positives, stuck.scored - stuck.positives) < MIN_CLASS_EXAMPLES).sum())
        floor = noise_floor(predict_arrays(predictor, data), predictor.covered)
        rows.append({"model": Path(model).name, "accuracy": mean.accuracy, "balanced": mean.balanced_accuracy,
                     "ece": mean.ece, "ece_raw": mean.ece_raw, "ece_floor": floor,
                     "kept": mean[f"coverage_at_{args.min_confidence:g}"],
                     "kept_accuracy": mean[f"accuracy_at_{args.min_confidence:g}"],
                     "one_class": f"{len(stuck)} ({rare} rare)"})
        if args.n:
            rows[-1]["img_per_s"], rows[-1]["predict_ms"] = label_speed(model, work, args.n, i)
    import pandas as pd
    table = pd.DataFrame(rows)
    if args.n:
        table["speed_ratio"] = table.img_per_s / table.img_per_s.iloc[0]
        table["predict_ratio"] = table.predict_ms / table.predict_ms.iloc[0]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def label_speed(model: str, work: Path, n: int, i: int) -> tuple[float, float]:
    """One ``facray label`` run on ``n`` faces: (img/s, start-up included; milliseconds per image
    in the predict stage, the part a model's size decides, summed over the predict actors)."""
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images
    folder = work / f"faces-{n}"
    if not folder.is_dir():
        make_inputs(folder, n)
    start = time.perf_counter()
    summary = label_images(LabelConfig(images=str(folder), model=model, out=str(work / f"labels-{i}.csv"),
                                       overwrite=True))
    seconds = time.perf_counter() - start
    predict_ms = 1000 * summary.stages.get("predict", float("nan")) / n
    print(f"  {Path(model).name}: facray label {n / seconds:.1f} img/s (steady "
          f"{n / summary.phases.get('pipeline', seconds):.1f}); predict {predict_ms:.1f} ms/img", flush=True)
    return n / seconds, predict_ms


if __name__ == "__main__":
    main()
