"""MLflow set-up shared by every command. Runs on the driver only: workers never write to MLflow,
so a run has exactly one writer whatever the number of Ray workers (and SQLite never sees
concurrent writers).

Default store: SQLite under the output folder (MLflow 3 refuses a bare ``./mlruns`` file store;
SQLite also gives the model registry), artifacts next to it. ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` point elsewhere (an ``http://`` server, Databricks, ...).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow


def resolve_tracking_uri(explicit: str | None, out: str | Path) -> str:
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def setup_mlflow(tracking_uri: str | None, out: str | Path, experiment: str) -> str:
    """Point MLflow at the store and experiment (created with a local artifact root if new).
    Returns the tracking URI in use."""
    uri = resolve_tracking_uri(tracking_uri, out)
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
    import facray
    import facray.predictor_mlflow as model_code
    info = mlflow.pyfunc.log_model(name="model", python_model=model_code.__file__,
                                   artifacts={"predictor": str(dest)},
                                   # Pinned: a bare name could resolve to someone else's package
                                   # on an index; no dependency inference (offline-safe).
                                   pip_requirements=[f"facray=={facray.__version__}"],
                                   registered_model_name=registered_name)
    mlflow.MlflowClient().set_registered_model_alias(registered_name, ALIAS, info.registered_model_version)
    return f"models:/{registered_name}@{ALIAS}"


def start_training_run(tracking_uri: str | None, out: Path, experiment: str, run_name: str,
                       config: dict, config_file: Path) -> tuple[str, str]:
    """Open a run for a training job (params + config file) and leave it open for the Train
    controller to log epochs into. Returns (tracking URI, run id)."""
    uri = setup_mlflow(tracking_uri, out, experiment)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(mlflow.get_experiment_by_name(experiment).experiment_id, run_name=run_name)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in flat_params(config).items()])
    client.log_artifact(run.info.run_id, str(config_file))
    return uri, run.info.run_id  # left RUNNING: the Train controller logs epochs into it


def log_epoch(tracking_uri: str, run_id: str, record: dict) -> None:
    """One epoch's numeric metrics at step = epoch (called from the Train controller)."""
    import math
    import time
    client = mlflow.MlflowClient(tracking_uri)
    step = int(record.get("epoch", 0))
    metrics = [mlflow.entities.Metric(k, float(v), int(time.time() * 1000), step)
               for k, v in record.items() if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)]
    client.log_batch(run_id, metrics=metrics)


def finish_training_run(tracking_uri: str, run_id: str, out: Path, record: dict, registered_name: str) -> str:
    """Final metrics and artifacts of a multi-task run; register its model. Returns the model URI."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: float(record[k]) for k in ("mean_test_accuracy", "mean_test_accuracy_at_0.5")})
        mlflow.log_metrics({f"test_accuracy/{r['attribute']}": float(r["test_accuracy"]) for r in record["attributes"]})
        mlflow.log_artifact(str(out / "metrics.json"))
        return register_predictor(out / "model", registered_name)
