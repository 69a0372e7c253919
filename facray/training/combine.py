"""``facray combine``: ABM-CNN's sixth phase. Runs on the driver.

Per attribute keep the modality (real photo or sketch) whose model has the better validation
accuracy (ties go to the photo, which needs no sketching at labelling time), write one combined
predictor (:mod:`facray.predictor`), log it to MLflow as a pyfunc model and register it as
``facray-abm-combined`` with the alias ``newest`` on the new version.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from facray.config import option
from facray.data.prepared import read_metadata
from facray.predictor import write_predictor

REGISTERED_NAME = "facray-abm-combined"


@dataclass
class CombineConfig:
    run: str = option("runs/abm", "the train-binary output folder")
    out: str = option("", "predictor folder (default <run>/combined)")
    register: bool = option(True, "log to MLflow and register the model")
    registered_name: str = option(REGISTERED_NAME, "MLflow registered model name")
    thresholds: Literal["validation", "0.5"] = option("validation", "per-attribute decision thresholds chosen "
                                                      "on the validation rows, or 0.5 for all")
    tracking_uri: str | None = option(None, "MLflow URI (default sqlite under run)")
    experiment: str = option("facray-abm", "MLflow experiment")


def read_job_records(run: Path) -> list[dict]:
    records = []
    for f in sorted((run / "jobs").glob("*/metrics.json")):
        rec = json.loads(f.read_text())
        rec["dir"] = str(f.parent)
        records.append(rec)
    if not records:
        raise FileNotFoundError(f"{run / 'jobs'}: no finished jobs (run `facray train-binary` first)")
    return records


def choose_modalities(records: list[dict]) -> pd.DataFrame:
    """One row per attribute: the chosen modality and both modalities' validation/test accuracy."""
    rows = {}
    for r in records:
        row = rows.setdefault(r["attribute"], {"attribute": r["attribute"]})
        row[f"{r['modality']}_val_accuracy"] = r["best"].get("val_accuracy", float("nan"))
        row[f"{r['modality']}_test_accuracy"] = r["test"].get("test_accuracy", float("nan"))
        row[f"{r['modality']}_dir"] = r["dir"]
    table = pd.DataFrame(rows.values())
    for m in ("real", "sketch"):
        if f"{m}_val_accuracy" not in table:
            table[f"{m}_val_accuracy"] = float("nan")
            table[f"{m}_test_accuracy"] = float("nan")
    sketch_better = table["sketch_val_accuracy"].fillna(-1) > table["real_val_accuracy"].fillna(-1)
    table["modality"] = ["sketch" if s else "real" for s in sketch_better]
    table["val_accuracy"] = [r[f"{m}_val_accuracy"] for m, (_, r) in zip(table.modality, table.iterrows())]
    table["test_accuracy"] = [r[f"{m}_test_accuracy"] for m, (_, r) in zip(table.modality, table.iterrows())]
    from facray.attributes import ATTRIBUTES
    table["order"] = table.attribute.map(ATTRIBUTES.index)
    return table.sort_values("order").drop(columns="order").reset_index(drop=True)


def combine(cfg: CombineConfig) -> tuple[Path, str | None]:
    """Write the combined predictor; register it when asked. Returns (folder, model URI or None)."""
    run = Path(cfg.run).resolve()
    dest = Path(cfg.out).resolve() if cfg.out else run / "combined"
    table = choose_modalities(read_job_records(run))
    run_config = _run_config(run)
    prepared_meta = read_metadata(run_config["prepared"])
    weights, choices, image_size = {}, [], None
    for _, row in table.iterrows():
        blob = torch.load(Path(row[f"{row.modality}_dir"]) / "model.pt", map_location="cpu", weights_only=True)
        image_size = blob["image_size"]
        weights[f"{row.attribute}__{row.modality}"] = blob["state_dict"]
        choices.append({"attribute": row.attribute, "modality": row.modality, "threshold": 0.5,
                        "val_accuracy": _num(row.val_accuracy), "test_accuracy": _num(row.test_accuracy),
                        "real_val_accuracy": _num(row.real_val_accuracy),
                        "sketch_val_accuracy": _num(row.sketch_val_accuracy)})
    crop = {"size": prepared_meta["size"], "margin": prepared_meta.get("margin", 0.35)}
    if cfg.thresholds == "validation":
        thresholds = validation_thresholds(choices, weights, crop, image_size, prepared_meta, run_config)
        for c in choices:
            c["threshold"] = thresholds[c["attribute"]]
    write_predictor(dest, choices, weights, crop, image_size, prepared_meta["sketch_channels"],
                    extra={"source_run": str(run), "thresholds": cfg.thresholds})
    table["threshold"] = [c["threshold"] for c in choices]
    table.drop(columns=[c for c in table if c.endswith("_dir")]).to_csv(dest / "choices.csv", index=False)
    uri = register_combined(dest, cfg, run) if cfg.register else None
    return dest, uri


def validation_thresholds(choices: list[dict], weights: dict, crop: dict, image_size: int, prepared_meta: dict,
                          run_config: dict) -> dict[str, float]:
    """Per attribute, the decision threshold that maximises accuracy on the run's validation rows
    (the same rows early stopping used), for the model combine chose."""
    import numpy as np

    from facray.attributes import ATTRIBUTES
    from facray.predictor import build_predictor
    from facray.training.metrics import choose_thresholds
    from facray.training.splits import SplitSpec, load_validation

    manifest = {"format": "facray-abm-combined", "attributes": choices, "image_size": image_size, "crop": crop,
                "sketch_channels": prepared_meta["sketch_channels"], "weights_sha256": "-"}
    predictor = build_predictor(manifest, weights)
    columns = ("image", "sketch") if predictor.needs_sketch else ("image",)
    val = load_validation(SplitSpec.of(run_config), columns)
    probs = np.concatenate([predictor.predict_proba(val["image"][i:i + 256],
                                                    val["sketch"][i:i + 256] if "sketch" in val else None)
                            for i in range(0, len(val["image"]), 256)])
    chosen = choose_thresholds(np.nan_to_num(probs, nan=0.0), val["labels"])
    return {c["attribute"]: float(chosen[ATTRIBUTES.index(c["attribute"])]) for c in choices}


def _num(v) -> float | None:
    return None if pd.isna(v) else float(v)


def _run_config(run: Path) -> dict:
    import yaml
    return yaml.safe_load((run / "config.yaml").read_text())


def register_combined(dest: Path, cfg: CombineConfig, run: Path) -> str:
    """Log ``dest`` in a ``combine`` run under the training parent and register it."""
    import mlflow

    from facray.tracking import register_predictor, setup_mlflow

    setup_mlflow(cfg.tracking_uri, run, cfg.experiment)
    parent = (run / "parent_run_id").read_text().strip() if (run / "parent_run_id").is_file() else None
    tags = {"mlflow.parentRunId": parent} if parent else {}
    with mlflow.start_run(run_name="combine", tags=tags):
        mlflow.log_artifact(str(dest / "choices.csv"))
        manifest = json.loads((dest / "manifest.json").read_text())
        mlflow.log_metric("mean_val_accuracy", float(pd.Series([c["val_accuracy"] for c in manifest["attributes"]],
                                                                  dtype=float).mean()))
        return register_predictor(dest, cfg.registered_name)
