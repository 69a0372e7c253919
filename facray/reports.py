"""``facray evaluate``: the per-attribute report of a train-binary run. Runs on the driver.

Per attribute: test accuracy of the real-photo model, the sketch model and the combined choice
(the modality picked on validation), precision and recall of the combined choice, the majority
baseline (always answer the train split's majority class, scored on the test split) and the
ABM-CNN paper's figures beside them (Table 1 validation accuracy, Table 2 accuracy; reference data
in ``facray/reference/abm_cnn_paper.csv``). Writes ``report.csv``, ``report.md`` and a bar plot in
the style of the paper's Figure 3, and logs all three to MLflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from facray.attributes import ATTRIBUTES
from facray.config import option
from facray.training.combine import choose_modalities, read_job_records
from facray.training.ray_binary import PAPER_TABLE


@dataclass
class EvaluateConfig:
    run: str = option("runs/abm", "the train-binary output folder")
    out: str = option("", "report folder (default <run>/report)")
    log_mlflow: bool = option(True, "log the report to MLflow")
    tracking_uri: str | None = option(None, "MLflow URI (default sqlite under run)")
    experiment: str = option("facray-abm", "MLflow experiment")


def majority_baseline(prepared: str, train_split: str, test_split: str) -> pd.Series:
    """Accuracy on ``test_split`` of always answering ``train_split``'s majority class."""
    from facray.data.prepared import read_prepared
    train = read_prepared(prepared, (train_split,), columns=(), variants=("original",))["labels"]
    test = read_prepared(prepared, (test_split,), columns=(), variants=("original",))["labels"]
    out = {}
    for j, a in enumerate(ATTRIBUTES):
        tr, te = train[:, j], test[:, j]
        tr, te = tr[tr >= 0], te[te >= 0]
        if len(tr) and len(te):
            majority = int(tr.mean() >= 0.5)
            out[a] = float((te == majority).mean())
    return pd.Series(out, name="majority_accuracy")


def build_report(run: Path) -> pd.DataFrame:
    records = read_job_records(run)
    table = choose_modalities(records)
    by_key = {(r["attribute"], r["modality"]): r for r in records}
    table["precision"] = [by_key[(a, m)]["test"].get("test_precision") for a, m in zip(table.attribute, table.modality)]
    table["recall"] = [by_key[(a, m)]["test"].get("test_recall") for a, m in zip(table.attribute, table.modality)]
    table["confusion"] = [json.dumps(by_key[(a, m)]["test"].get("confusion")) for a, m in zip(table.attribute, table.modality)]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    table = table.merge(majority_baseline(cfg["prepared"], cfg["train_split"], cfg["test_split"]),
                        left_on="attribute", right_index=True, how="left")
    paper = pd.read_csv(PAPER_TABLE, comment="#")[["attribute", "real_val_accuracy", "sketch_val_accuracy",
                                                   "table2_accuracy"]]
    paper.columns = ["attribute", "paper_real_val_accuracy", "paper_sketch_val_accuracy", "paper_table2_accuracy"]
    table = table.merge(paper, on="attribute", how="left")
    cols = ["attribute", "real_test_accuracy", "sketch_test_accuracy", "modality", "test_accuracy",
            "precision", "recall", "majority_accuracy", "paper_real_val_accuracy",
            "paper_sketch_val_accuracy", "paper_table2_accuracy", "real_val_accuracy",
            "sketch_val_accuracy", "confusion"]
    table = table[cols].rename(columns={"test_accuracy": "combined_test_accuracy", "modality": "chosen"})
    for c in ("paper_real_val_accuracy", "paper_sketch_val_accuracy", "paper_table2_accuracy"):
        table[c] = table[c] / 100  # the paper prints percentages
    return table


def mean_rows(table: pd.DataFrame) -> pd.DataFrame:
    numeric = [c for c in table.columns if c not in ("attribute", "chosen", "confusion")]
    rows = [{"attribute": "MEAN (all trained)", **table[numeric].mean().to_dict()}]
    in_paper = table[table.paper_table2_accuracy.notna()]
    if len(in_paper):
        rows.append({"attribute": f"MEAN (paper's {len(in_paper)})", **in_paper[numeric].mean().to_dict()})
    return pd.DataFrame(rows)


def plot_report(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(table) + 2), 4.5))
    w = 0.27
    ax.bar(x - w, table.real_test_accuracy * 100, w, label="real")
    ax.bar(x, table.sketch_test_accuracy * 100, w, label="sketch")
    ax.bar(x + w, table.combined_test_accuracy * 100, w, label="combined")
    ax.scatter(x, table.majority_accuracy * 100, marker="_", s=120, color="k", zorder=3, label="majority")
    if table.paper_table2_accuracy.notna().any():
        ax.scatter(x, table.paper_table2_accuracy * 100, marker="*", color="r", zorder=3, label="paper (Table 2)")
    ax.set_xticks(x, table.attribute, rotation=75, fontsize=8)
    low = np.nanmin(table[["real_test_accuracy", "sketch_test_accuracy", "majority_accuracy"]].to_numpy()) * 100
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ABM-CNN per attribute: real vs sketch vs combined")
    ax.legend(fontsize=8, ncol=5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_run(cfg: EvaluateConfig) -> tuple[pd.DataFrame, Path]:
    run = Path(cfg.run).resolve()
    out = Path(cfg.out).resolve() if cfg.out else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = build_report(run)
    full = pd.concat([table, mean_rows(table)], ignore_index=True)
    full.to_csv(out / "report.csv", index=False)
    shown = full.drop(columns=["confusion", "real_val_accuracy", "sketch_val_accuracy"])
    (out / "report.md").write_text(shown.to_markdown(index=False, floatfmt=".3f") if _has_tabulate()
                                   else shown.round(3).to_string(index=False))
    plot_report(table, out / "accuracy_per_attribute.png")
    if cfg.log_mlflow:
        import mlflow
        from facray.tracking import setup_mlflow
        setup_mlflow(cfg.tracking_uri, run, cfg.experiment)
        parent = (run / "parent_run_id").read_text().strip() if (run / "parent_run_id").is_file() else None
        with mlflow.start_run(run_name="evaluate", tags={"mlflow.parentRunId": parent} if parent else {}):
            means = mean_rows(table).iloc[0]
            mlflow.log_metrics({f"mean_{k}": float(means[k]) for k in
                                ("real_test_accuracy", "sketch_test_accuracy", "combined_test_accuracy",
                                 "majority_accuracy") if pd.notna(means[k])})
            for f in ("report.csv", "report.md", "accuracy_per_attribute.png"):
                mlflow.log_artifact(str(out / f))
    return full, out


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False
