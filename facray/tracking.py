"""MLflow set-up shared by every command. Runs on the driver, and :func:`log_epoch` in the Ray
Train controller (a process of the driver's job): workers never write to MLflow, so a run has
exactly one writer whatever the number of Ray workers (and SQLite never sees concurrent writers).

Default store: SQLite under the output folder (MLflow 3 refuses a bare ``./mlruns`` file store;
SQLite also gives the model registry), artifacts next to it. ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` point elsewhere (an ``http://`` server, Databricks, ...).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import mlflow

import facray
from facray.preflight import check_tracking_store, check_writable
from facray.runs import RunFolder
from facray.staged_runs import run_folder


# The user's MLFLOW_TRACKING_URI, read once at import: mlflow.set_tracking_uri() writes that variable
# too, so reading it later would send the next run in this process to the previous run's store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def resolve_tracking_uri(explicit: str | None, out: str | Path) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else the SQLite store in run folder ``out``."""
    if explicit:
        return explicit
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    return run_folder(out).default_tracking_uri()


def check_training_run(cfg) -> None:
    """Before a training run (``train``, ``train-binary``) starts Ray: its output folder is
    writable, its MLflow store answers and its experiment is usable (the store under ``cfg.out``
    by default, which :func:`facray.training.run_record.claim_run` has created by then)."""
    check_writable(cfg.out)
    check_tracking_store(resolve_tracking_uri(cfg.tracking_uri, cfg.out), cfg.experiment)


def setup_mlflow(tracking_uri: str | None, run: RunFolder, experiment: str) -> str:
    """Point MLflow at the store (``tracking_uri``, else the user's, else ``run``'s own) and the
    experiment (created with a local artifact root if new). Returns the tracking URI in use."""
    uri = resolve_tracking_uri(tracking_uri, run.location)
    check_tracking_store(uri, experiment)  # one line within seconds, not MLflow's retries or traceback
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return uri


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Config values as MLflow params (lists joined; long values cut to MLflow's 6000 chars)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
            out[prefix + k] = text[:6000]
    return out


def log_json(obj, name: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=1, default=str), name)


ALIAS = "newest"  # MLflow reserves "latest" as an alias name; models:/NAME@latest maps to /latest


def register_predictor(dest: Path, registered_name: str) -> str:
    """Inside an active run: log the predictor folder ``dest`` as a pyfunc model (models from
    code, no pickle), register a new version and point the alias ``newest`` at it. Returns
    ``models:/<name>@newest``."""
    # The model's code imports torch and registers itself with MLflow (set_model) when imported:
    # processes that only log metrics (the Ray Train controller) do without both.
    import facray.predictors.pyfunc as model_code  # lazy: see above
    info = mlflow.pyfunc.log_model(name="model", python_model=model_code.__file__,
                                   artifacts={"predictor": str(dest)},
                                   signature=model_code.model_signature(), input_example=model_code.INPUT_EXAMPLE,
                                   # Pinned: a bare name could resolve to someone else's package
                                   # on an index; no dependency inference (offline-safe).
                                   pip_requirements=[f"facray=={facray.__version__}"],
                                   registered_model_name=registered_name)
    mlflow.MlflowClient().set_registered_model_alias(registered_name, ALIAS, info.registered_model_version)
    return f"models:/{registered_name}@{ALIAS}"


def start_training_run(tracking_uri: str | None, run: RunFolder, experiment: str, run_name: str,
                       config: dict, parent_run_id: str | None = None) -> tuple[str, str]:
    """Open an MLflow run for a training run (params + config file), a child of
    ``parent_run_id`` if given, and leave it open for the Train controller to log epochs into.
    A run folder that already has one in this store (an interrupted run, resumed) gets it back,
    so one training run is one MLflow run however often it restarts. Returns (tracking URI,
    MLflow run id)."""
    uri = setup_mlflow(tracking_uri, run, experiment)
    client = mlflow.MlflowClient(uri)
    previous = run.mlflow_run_id()
    if previous:
        try:
            client.get_run(previous)
            return uri, previous
        except mlflow.exceptions.MlflowException:
            pass  # another store (or deleted): a new run
    mlflow_run = client.create_run(mlflow.get_experiment_by_name(experiment).experiment_id, run_name=run_name,
                                   tags={"mlflow.parentRunId": parent_run_id} if parent_run_id else None)
    client.log_batch(mlflow_run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in flat_params(config).items()])
    client.log_artifact(mlflow_run.info.run_id, str(run.config_file))
    return uri, mlflow_run.info.run_id  # left RUNNING: the Train controller logs epochs into it


def end_training_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a training run's MLflow run ended with ``status`` (``FAILED``, ``KILLED``): a run that
    stopped on an error does not stay ``RUNNING``. A re-run that resumes it finishes it."""
    mlflow.MlflowClient(tracking_uri).set_terminated(run_id, status)


def log_epoch(tracking_uri: str, run_id: str, record: dict) -> None:
    """One epoch's numeric metrics at step = epoch (called from the Train controller)."""
    import time
    client = mlflow.MlflowClient(tracking_uri)
    step = int(record.get("epoch", 0))
    metrics = [mlflow.entities.Metric(k, float(v), int(time.time() * 1000), step)
               for k, v in record.items() if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)]
    client.log_batch(run_id, metrics=metrics)


def finish_training_run(tracking_uri: str, run_id: str, run: RunFolder, record: dict,
                        registered_name: str | None) -> str | None:
    """Final metrics and artifacts of a multi-task run; register its model under
    ``registered_name`` (none: not registered). Returns the model URI or None."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        scores = {**{k: float(record[k]) for k in ("mean_test_accuracy", "mean_test_accuracy_at_0.5")},
                  **{f"test_accuracy/{r['attribute']}": float(r["test_accuracy"]) for r in record["attributes"]}}
        mlflow.log_metrics({k: v for k, v in scores.items() if math.isfinite(v)})  # NaN: no labelled test rows
        mlflow.log_dict(record, "metrics.json")  # the run folder's copy is written after this
        return register_predictor(run.model_dir, registered_name) if registered_name else None


def log_binary_jobs(tracking_uri: str, run: RunFolder, mlflow_run_id: str, keys: list[str],
                    settings_hash: str) -> None:
    """A child run per finished job (its params, per-epoch curves, test metrics) under the binary
    run's MLflow run ``mlflow_run_id`` (:func:`start_training_run`), and the per-job table.

    The run folder's MLflow ledger remembers the jobs that have a child: a re-run that finishes
    more jobs adds their children to the same run, never a second copy.
    """
    import pandas as pd
    mlflow.set_tracking_uri(tracking_uri)
    ledger = run.mlflow_ledger()
    if (ledger.get("settings_hash"), ledger.get("tracking_uri"), ledger.get("parent_run_id")) != \
            (settings_hash, tracking_uri, mlflow_run_id):
        ledger = {"settings_hash": settings_hash, "tracking_uri": tracking_uri, "parent_run_id": mlflow_run_id,
                  "jobs": []}
    with mlflow.start_run(run_id=mlflow_run_id):
        rows = []
        for key in keys:
            metrics_file = run.job_metrics_file(run.job_dir(key))
            rec = json.loads(metrics_file.read_text())
            if key not in ledger["jobs"]:
                _log_job_run(key, rec, metrics_file)
                ledger["jobs"].append(key)
                run.write_mlflow_ledger(ledger)
            rows.append({"job": key, "attribute": rec["attribute"], "modality": rec["modality"],
                         "best_epoch": rec["best_epoch"], "val_accuracy": rec["best"].get("val_accuracy"),
                         **{k: v for k, v in rec["test"].items() if k != "confusion"}})
        run.write_mlflow_ledger(ledger)
        table = pd.DataFrame(rows)
        table.to_csv(run.jobs_summary_file, index=False)
        mlflow.log_artifact(str(run.jobs_summary_file))
        if "test_accuracy" in table and table["test_accuracy"].notna().any():  # NaN: no test rows
            mlflow.log_metric("mean_test_accuracy", float(table["test_accuracy"].mean()))


def _log_job_run(key: str, rec: dict, metrics_file: Path) -> None:
    """One child run: the job's params, per-epoch curves and final test metrics."""
    import numpy as np
    with mlflow.start_run(run_name=key, nested=True):
        mlflow.log_params({"attribute": rec["attribute"], "modality": rec["modality"],
                           "max_epochs": len(rec["history"]), "best_epoch": rec["best_epoch"],
                           "stopped": rec["stopped"]})
        for h in rec["history"]:
            mlflow.log_metrics({k: v for k, v in h.items() if k != "epoch" and np.isfinite(v)}, step=h["epoch"])
        mlflow.log_metrics({k: v for k, v in rec["test"].items() if isinstance(v, (int, float)) and np.isfinite(v)})
        mlflow.log_artifact(str(metrics_file))
