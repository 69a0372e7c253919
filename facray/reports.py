"""``facray evaluate``: the per-attribute report of a training run (``train-binary`` + ``combine``,
or ``train``). Runs on the driver.

Both kinds report per attribute the test accuracy at the stored decision thresholds, the balanced
accuracy (mean of the true-positive and true-negative rates: 0.5 at most where the test split holds
one class, so a perfect score there reads as what it is), precision, recall, the confusion matrix, the majority baseline, and whether the model predicts one class only
on the test split (an attribute stuck at its majority class); the summary counts those.

For a binary ABM run:
Per attribute: test accuracy of the real-photo model, the sketch model and the combined choice
(the modality picked on validation), precision and recall of the combined choice, the majority
baseline (always answer the train split's majority class, scored on the test split) and the
ABM-CNN paper's figures beside them (Table 1 validation accuracy, Table 2 accuracy; reference data
in ``facray/reference/abm_cnn_paper.csv``). Writes ``report.csv``, ``report.md`` and a bar plot in
the style of the paper's Figure 3, and logs all three to MLflow.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from facray import storage
from facray.attributes import ATTRIBUTES, ATTRIBUTE_INDEX
from facray.data.prepared import read_prepared
from facray.models.cam import cam_grid
from facray.models.inputs import to_input
from facray.models.registry import model_spec
from facray.predictors.calibration import reliability_curve
from facray.predictors.networks import load_predictor
from facray.prepared_eval import plot_reliability, raw_and_calibrated
from facray.preflight import check_tracking_store
from facray.run_data import split_settings
from facray.runs import RunFolder
from facray.staged_runs import run_folder
from facray.tracking import resolve_tracking_uri, setup_mlflow
from facray.training.combine import best_lr_records, choose_modalities
from facray.training.configs import EvaluateConfig
from facray.training.binary_jobs import PAPER_TABLE
from facray.training.metrics import confusion_metrics


def majority_baseline(splits: dict) -> pd.Series:
    """Accuracy on ``test_split`` of always answering ``train_split``'s majority class."""
    def labels(split: str) -> np.ndarray:
        return read_prepared(splits["prepared"], (split,), columns=(), variants=("original",))["labels"]
    train, test = labels(splits["train_split"]), labels(splits["test_split"])
    out = {}
    for j, a in enumerate(ATTRIBUTES):
        tr, te = train[:, j], test[:, j]
        tr, te = tr[tr >= 0], te[te >= 0]
        if len(tr) and len(te):
            majority = int(tr.mean() >= 0.5)
            out[a] = float((te == majority).mean())
    return pd.Series(out, name="majority_accuracy")


def build_report(run: RunFolder, splits: dict) -> pd.DataFrame:
    records = best_lr_records(run.job_records())
    table = choose_modalities(records)
    by_key = {(r["attribute"], r["modality"]): r for r in records}
    table["precision"] = [by_key[(a, m)]["test"].get("test_precision") for a, m in zip(table.attribute, table.modality)]
    table["recall"] = [by_key[(a, m)]["test"].get("test_recall") for a, m in zip(table.attribute, table.modality)]
    table["confusion"] = [json.dumps(by_key[(a, m)]["test"].get("confusion")) for a, m in zip(table.attribute, table.modality)]
    table["balanced_accuracy"] = table.confusion.map(balanced_accuracy)
    table = table.merge(majority_baseline(splits), left_on="attribute", right_index=True, how="left")
    paper = pd.read_csv(PAPER_TABLE, comment="#")[["attribute", "real_val_accuracy", "sketch_val_accuracy",
                                                   "table2_accuracy"]]
    paper.columns = ["attribute", "paper_real_val_accuracy", "paper_sketch_val_accuracy", "paper_table2_accuracy"]
    table = table.merge(paper, on="attribute", how="left")
    cols = ["attribute", "real_test_accuracy", "sketch_test_accuracy", "modality", "test_accuracy",
            "balanced_accuracy", "precision", "recall", "majority_accuracy", "paper_real_val_accuracy",
            "paper_sketch_val_accuracy", "paper_table2_accuracy", "real_val_accuracy",
            "sketch_val_accuracy", "confusion"]
    table = table[cols].rename(columns={"test_accuracy": "combined_test_accuracy", "modality": "chosen"})
    for c in ("paper_real_val_accuracy", "paper_sketch_val_accuracy", "paper_table2_accuracy"):
        table[c] = table[c] / 100  # the paper prints percentages
    table["one_class_only"] = table.confusion.map(one_class_only)
    return table


def build_multitask_report(run: RunFolder, splits: dict) -> pd.DataFrame:
    """Per attribute of a ``facray train`` run, from the metrics its last epoch wrote."""
    record = run.metrics()
    table = pd.DataFrame(record["attributes"])
    table["confusion"] = table.confusion.map(json.dumps)
    table["one_class_only"] = table.confusion.map(one_class_only)
    table["test_balanced_accuracy"] = table.confusion.map(balanced_accuracy)
    table = table.merge(majority_baseline(splits), left_on="attribute", right_index=True, how="left")
    cols = ["attribute", "test_accuracy", "test_accuracy_at_0.5", "test_balanced_accuracy", "threshold",
            "test_precision", "test_recall", "test_f1", "test_ece", "test_ece_raw", "temperature",
            "majority_accuracy", "val_accuracy", "one_class_only", "confusion"]
    return table[[c for c in cols if c in table]]  # (runs before 2026-12 have no calibration figures)


def balanced_accuracy(confusion_json: str) -> float:
    """Balanced accuracy of a [[tn, fp], [fn, tp]] confusion
    (:func:`facray.training.metrics.confusion_metrics`: 0.5 at most on a one-class split); NaN
    for an empty one (no labelled test rows: nothing scored)."""
    (tn, fp), (fn, tp) = json.loads(confusion_json)
    return float(confusion_metrics([tp], [fp], [fn], [tn])["balanced_accuracy"][0])


def one_class_only(confusion_json: str) -> bool:
    """True when a [[tn, fp], [fn, tp]] confusion shows only one predicted class (an empty one,
    nothing scored, shows none)."""
    (tn, fp), (fn, tp) = json.loads(confusion_json)
    return tn + fp + fn + tp > 0 and (tp + fp == 0 or tn + fn == 0)


def mean_rows(table: pd.DataFrame) -> pd.DataFrame:
    numeric = [c for c in table.columns if c not in ("attribute", "chosen", "confusion", "one_class_only")]
    rows = [{"attribute": "MEAN (all trained)", **table[numeric].mean().to_dict()}]
    in_paper = table[table.paper_table2_accuracy.notna()] if "paper_table2_accuracy" in table else table.iloc[:0]
    if len(in_paper):
        rows.append({"attribute": f"MEAN (paper's {len(in_paper)})", **in_paper[numeric].mean().to_dict()})
    return pd.DataFrame(rows)


def plot_accuracy(table: pd.DataFrame, bars: dict[str, str], path: Path, title: str,
                  markers: dict[str, tuple[str, str]] | None = None) -> Path:
    """Per-attribute bar plot (the style of the ABM-CNN paper's Figure 3): one bar per entry of
    ``bars`` (label -> accuracy column), the majority baseline as a tick, optional ``markers``
    (label -> (column, marker))."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(table) + 2), 4.5))
    width = 0.8 / len(bars)
    for i, (label, column) in enumerate(bars.items()):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, table[column] * 100, width, label=label)
    ax.scatter(x, table.majority_accuracy * 100, marker="_", s=120, color="k", zorder=3, label="majority")
    for label, (column, marker) in (markers or {}).items():
        if table[column].notna().any():
            ax.scatter(x, table[column] * 100, marker=marker, color="r", zorder=3, label=label)
    ax.set_xticks(x, table.attribute, rotation=75, fontsize=8)
    low = np.nanmin(table[[*bars.values(), "majority_accuracy"]].to_numpy(dtype=float)) * 100
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_run(cfg: EvaluateConfig) -> tuple[pd.DataFrame, Path]:
    """A training run's report (``facray evaluate --run RUN``) in ``RUN/report`` (or ``cfg.out``):
    the table and where it is. A run on object storage is read from its local copy (pulled now),
    and its report pushed back."""
    if storage.is_uri(cfg.out):
        raise ValueError(f"--out {cfg.out}: a local folder (by default the report goes into the run folder, "
                         "on object storage too)")
    run = run_folder(cfg.run)
    run.pull()
    out = Path(cfg.out).resolve() if cfg.out else run.report_dir
    splits = split_settings(run, cfg.prepared)  # checks the data is the version the run trained on
    if cfg.log_mlflow:  # before the report is computed: the store answers, the experiment is usable
        check_tracking_store(resolve_tracking_uri(cfg.tracking_uri, run.location),
                             cfg.experiment or ("facray-multitask" if run.is_multitask else "facray-abm"))
    out.mkdir(parents=True, exist_ok=True)
    multitask = run.is_multitask
    table = (build_multitask_report if multitask else build_report)(run, splits)
    full = pd.concat([table, mean_rows(table)], ignore_index=True)
    full.to_csv(out / "report.csv", index=False)
    shown = full.drop(columns=[c for c in ("confusion", "real_val_accuracy", "sketch_val_accuracy") if c in full])
    stuck = sorted(table.attribute[table.one_class_only])
    summary = (f"{len(stuck)} of {len(table)} attribute(s) predict one class only on the test split"
               + (f": {', '.join(stuck)}" if stuck else ""))
    (out / "report.md").write_text((shown.to_markdown(index=False, floatfmt=".3f") if _has_tabulate()
                                    else shown.round(3).to_string(index=False)) + f"\n\n{summary}\n")
    artifacts = ["report.csv", "report.md", "accuracy_per_attribute.png"]
    if multitask:
        record = run.metrics()
        plot_accuracy(table, {"threshold 0.5": "test_accuracy_at_0.5", "validation thresholds": "test_accuracy"},
                      out / "accuracy_per_attribute.png", f"{record['model']} per attribute")
        write_cam_grid(run, splits, list(table.attribute), out / "cam_grid.png")
        write_reliability(run, splits, out / "reliability.png")
        artifacts += ["cam_grid.png", "reliability.png"]
        if "identity" in record:
            ident = record["identity"]
            plot_cmc(ident["test_cmc"], out / "identity_cmc.png",
                     f"{record['model']}: closed-set identification,\n{ident['classes']} identities")
            artifacts.append("identity_cmc.png")
            with (out / "report.md").open("a") as f:
                f.write(f"\nIdentification ({ident['test_count']} test photos, {ident['classes']} training "
                        f"identities): top-1 {ident['test_top1']:.3f}, top-5 {ident['test_top5']:.3f}\n")
    else:
        plot_accuracy(table, {"real": "real_test_accuracy", "sketch": "sketch_test_accuracy",
                              "combined": "combined_test_accuracy"}, out / "accuracy_per_attribute.png",
                      "ABM-CNN per attribute: real vs sketch vs combined",
                      {"paper (Table 2)": ("paper_table2_accuracy", "*")})
    if cfg.log_mlflow:
        import mlflow
        setup_mlflow(cfg.tracking_uri, run, cfg.experiment or ("facray-multitask" if multitask else "facray-abm"))
        parent = run.mlflow_run_id()
        with mlflow.start_run(run_name="evaluate", tags={"mlflow.parentRunId": parent} if parent else {}):
            means = mean_rows(table).iloc[0]
            keys = ("test_accuracy", "test_accuracy_at_0.5", "test_balanced_accuracy", "test_ece", "test_ece_raw",
                    "majority_accuracy") if multitask else \
                ("real_test_accuracy", "sketch_test_accuracy", "combined_test_accuracy", "majority_accuracy")
            mlflow.log_metrics({f"mean_{k}": float(means[k]) for k in keys if k in means and pd.notna(means[k])})
            mlflow.log_metric("one_class_attributes", len(stuck))
            if multitask and "identity" in record:
                mlflow.log_metrics({"test_identity_top1": record["identity"]["test_top1"],
                                    "test_identity_top5": record["identity"]["test_top5"]})
            for f in artifacts:
                mlflow.log_artifact(str(out / f))
    run.push()
    return full, out


# Attributes whose evidence has a clear place on a face, shown first in the CAM grid.
CAM_ATTRIBUTES = ("Smiling", "Eyeglasses", "Bangs", "Wearing_Hat", "Male", "Bald", "Mustache", "Wearing_Lipstick")


def write_cam_grid(run: RunFolder, splits: dict, trained: list[str], path: Path, images: int = 6,
                   attributes: int = 4) -> None:
    """Class activation maps (Grad-CAM, :mod:`facray.models.cam`) of the run's model on the first
    test crops, for up to ``attributes`` trained attributes: the paper's per-attribute CAMs."""
    import cv2

    predictor = load_predictor(run.model_dir, fold_norms=False)  # CAMs hook into the modules as trained
    crops = read_prepared(splits["prepared"], (splits["test_split"],), ("image",), variants=("original",),
                          limit=images)["image"]
    chosen = [a for a in CAM_ATTRIBUTES if a in trained] or trained
    model = predictor.model
    layer = model.get_submodule(model_spec(predictor.manifest.model).cam_layer)
    x = to_input(crops, predictor.image_size, predictor.device)
    grid = cam_grid(model, layer, crops, x, [(ATTRIBUTE_INDEX[a], a) for a in chosen[:attributes]])
    cv2.imwrite(str(path), grid)


def write_reliability(run: RunFolder, splits: dict, path: Path) -> None:
    """The reliability diagram of the run's model on its test split: raw sigmoid outputs and, for
    a calibrated model, its calibrated probabilities (:mod:`facray.prepared_eval`)."""
    predictor = load_predictor(run.model_dir)
    test = read_prepared(splits["prepared"], (splits["test_split"],), ("image",), variants=("original",))
    raw, probs = raw_and_calibrated(predictor, test)
    curves = {"raw": reliability_curve(raw, test["labels"])}
    if predictor.manifest.calibration is not None:
        curves["calibrated"] = reliability_curve(probs, test["labels"])
    plot_reliability(curves, path, f"{predictor.name}\n{splits['test_split']} split, {len(probs)} images")


def plot_cmc(cmc: list[float], path: Path, title: str) -> None:
    """The cumulative match characteristic: identification rate by rank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ranks = np.arange(1, len(cmc) + 1)
    ax.plot(ranks, cmc, marker="o", ms=3)
    ax.set(xlabel="rank", ylabel="identification rate", ylim=(0, 1), title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # ranks are whole
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False
