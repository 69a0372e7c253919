"""``facray combine``: ABM-CNN's sixth phase. Runs on the driver.

Per attribute keep the modality (real photo or sketch) whose model has the better validation
accuracy (ties go to the photo, which needs no sketching at labelling time), write one combined
predictor (:mod:`facray.predictors`), log it to MLflow as a pyfunc model and register it as
``facray-abm-combined`` with the alias ``newest`` on the new version.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from facray import storage
from facray.attributes import ATTRIBUTES
from facray.data.prepared import prepared_crop, read_metadata
from facray.predictors.calibration import calibration_record
from facray.predictors.format import Manifest, set_thresholds
from facray.predictors.networks import load_predictor, write_predictor
from facray.preflight import check_tracking_store
from facray.run_data import split_settings
from facray.runs import RunFolder
from facray.staged_runs import run_folder
from facray.tracking import register_predictor, resolve_tracking_uri, setup_mlflow
from facray.training.configs import CombineConfig
from facray.training.metrics import fit_decisions
from facray.training.splits import SplitSpec, load_validation, training_data



def best_lr_records(records: list[dict]) -> list[dict]:
    """Per (attribute, modality) the job whose validation accuracy is best: an in-stack lr sweep
    (``train-binary --lrs``) trained one per learning rate (ties go to the larger lr, which
    converged sooner). Without a sweep this is ``records`` itself."""
    best: dict[tuple[str, str], dict] = {}
    for r in records:
        k = (r["attribute"], r["modality"])
        score = (r["best"].get("val_accuracy", float("nan")), r.get("lr") or 0.0)
        score = tuple(-1.0 if pd.isna(v) else v for v in score)
        if k not in best or score > best[k][0]:
            best[k] = (score, r)
    return [r for _, r in best.values()]


def choose_modalities(records: list[dict]) -> pd.DataFrame:
    """One row per attribute: the chosen modality (and lr) and both modalities' validation/test
    accuracy."""
    rows = {}
    for r in best_lr_records(records):
        row = rows.setdefault(r["attribute"], {"attribute": r["attribute"]})
        row[f"{r['modality']}_val_accuracy"] = r["best"].get("val_accuracy", float("nan"))
        row[f"{r['modality']}_test_accuracy"] = r["test"].get("test_accuracy", float("nan"))
        row[f"{r['modality']}_dir"] = r["dir"]
        row[f"{r['modality']}_lr"] = r.get("lr")
    table = pd.DataFrame(rows.values())
    for m in ("real", "sketch"):
        if f"{m}_val_accuracy" not in table:
            table[f"{m}_val_accuracy"] = float("nan")
            table[f"{m}_test_accuracy"] = float("nan")
    # (a NaN accuracy: a job with no labelled validation rows, below any scored one; sketch where
    # the attribute has no real job at all)
    no_real = table["real_dir"].isna() if "real_dir" in table else pd.Series(True, index=table.index)
    sketch_better = (table["sketch_val_accuracy"].fillna(-1) > table["real_val_accuracy"].fillna(-1)) | no_real
    table["modality"] = ["sketch" if s else "real" for s in sketch_better]
    table["val_accuracy"] = [r[f"{m}_val_accuracy"] for m, (_, r) in zip(table.modality, table.iterrows())]
    table["test_accuracy"] = [r[f"{m}_test_accuracy"] for m, (_, r) in zip(table.modality, table.iterrows())]
    table["lr"] = [r.get(f"{m}_lr") for m, (_, r) in zip(table.modality, table.iterrows())]
    table["order"] = table.attribute.map(ATTRIBUTES.index)
    return table.sort_values("order").drop(columns="order").reset_index(drop=True)


def combine(cfg: CombineConfig) -> tuple[Path, str | None]:
    """Write the combined predictor; register it when asked. Returns (folder, model URI or None).
    A run on object storage (``--run s3://...``) is combined in its local copy, then pushed back."""
    if storage.is_uri(cfg.out):
        raise ValueError(f"--out {cfg.out}: a local folder (by default the predictor goes into the run folder, "
                         "on object storage too)")
    run = run_folder(cfg.run)
    run.pull()
    if cfg.register:  # before any work: the store answers and the experiment is usable
        check_tracking_store(resolve_tracking_uri(cfg.tracking_uri, run.location), cfg.experiment)
    dest = Path(cfg.out).resolve() if cfg.out else run.combined_dir
    table = choose_modalities(run.job_records())
    for line in run.diverged_jobs():  # no weights: the other modality (if any) is the choice
        print(f"left out (diverged): {line}", flush=True)
    splits = split_settings(run, cfg.prepared)
    prepared_meta = read_metadata(splits["prepared"])
    weights, choices, image_size = {}, [], None
    for _, row in table.iterrows():
        blob = torch.load(RunFolder.job_weights_file(row[f"{row.modality}_dir"]), map_location="cpu",
                          weights_only=True)
        image_size = blob["image_size"]
        weights[f"{row.attribute}__{row.modality}"] = blob["state_dict"]
        choices.append({"attribute": row.attribute, "modality": row.modality, "lr": _num(row.lr), "threshold": 0.5,
                        "val_accuracy": _num(row.val_accuracy), "test_accuracy": _num(row.test_accuracy),
                        "real_val_accuracy": _num(row.real_val_accuracy),
                        "sketch_val_accuracy": _num(row.sketch_val_accuracy)})
    crop = prepared_crop(prepared_meta)
    write_predictor(dest, choices, weights, crop, image_size, prepared_meta["sketch_channels"],
                    extra={"source_run": run.location, "thresholds": "0.5",
                           "training_data": training_data(splits, splits["prepared_version"])})
    temperatures, thresholds = validation_decisions(load_predictor(dest), SplitSpec.of(splits))
    if cfg.thresholds != "validation":
        thresholds = dict.fromkeys(thresholds, 0.5)  # calibration keeps 0.5 where it is
    set_thresholds(dest, thresholds, cfg.thresholds, calibration_record(
        np.array([temperatures.get(a, 1.0) for a in ATTRIBUTES]), list(thresholds), "validation"))
    table["threshold"] = table.attribute.map(thresholds)
    table["temperature"] = table.attribute.map(temperatures)
    table.drop(columns=[c for c in table if c.endswith("_dir") or c in ("real_lr", "sketch_lr")]).to_csv(
        dest / "choices.csv", index=False)
    uri = register_combined(dest, cfg, run) if cfg.register else None
    run.push()
    return dest, uri


def validation_decisions(predictor, splits: SplitSpec) -> tuple[dict[str, float], dict[str, float]]:
    """Per attribute, the temperature and the decision threshold (on calibrated probabilities)
    fitted on the run's validation rows (the same rows early stopping used) for the model combine
    chose (:func:`facray.training.metrics.fit_decisions`)."""
    columns = ("image", "sketch") if predictor.needs_sketch else ("image",)
    val = load_validation(splits, columns)
    probs = np.concatenate([predictor.predict_proba(val["image"][i:i + 256],
                                                    val["sketch"][i:i + 256] if "sketch" in val else None)
                            for i in range(0, len(val["image"]), 256)])
    temperatures, thresholds = fit_decisions(probs, val["labels"])
    return ({a: float(temperatures[ATTRIBUTES.index(a)]) for a in predictor.attributes},
            {a: float(thresholds[ATTRIBUTES.index(a)]) for a in predictor.attributes})


def _num(v) -> float | None:
    return None if pd.isna(v) else float(v)


def register_combined(dest: Path, cfg: CombineConfig, run: RunFolder) -> str:
    """Log ``dest`` in a ``combine`` run under the training parent and register it."""
    import mlflow

    setup_mlflow(cfg.tracking_uri, run, cfg.experiment)
    parent = run.mlflow_run_id()
    tags = {"mlflow.parentRunId": parent} if parent else {}
    with mlflow.start_run(run_name="combine", tags=tags):
        mlflow.log_artifact(str(dest / "choices.csv"))
        manifest = Manifest.read(dest)
        mlflow.log_metric("mean_val_accuracy", float(pd.Series([c["val_accuracy"] for c in manifest.attributes],
                                                                  dtype=float).mean()))
        return register_predictor(dest, cfg.registered_name)
