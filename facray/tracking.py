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
