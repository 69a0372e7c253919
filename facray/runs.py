"""A training run's folder: its layout, readers and writers, in one place (as
:mod:`facray.data.prepared` owns prepared data). Pure Python; no training code and no torch, so
the ``label`` driver uses it too.

Layout of ``RUN/`` (``facray train-binary`` + ``combine``, or ``facray train``)::

    run.json              settings that decide the weights, and their hash (the run's identity)
    config.yaml           the full resolved config (settings + operational keys), for people
    mlflow_run_id         the MLflow run later steps (combine, evaluate) log under: a binary run's parent
                          run, a multi-task run's own (``parent_run_id`` before 2026-12, still read)
    mlflow_logged.json    binary runs: the MLflow parent and the jobs it has a child run for
    mlflow.db, mlartifacts/   the default MLflow store
    ray_results/          Ray Train / Tune storage (checkpoints; a re-run resumes from them)
    jobs/<attr>__<modality>/{model.pt, metrics.json}    binary: one folder per finished job
    jobs_summary.csv      binary: one row per job
    combined/             binary: the combined predictor (``facray combine``)
    model/, metrics.json  multi-task: the predictor and the run's metrics
    report/               ``facray evaluate``

A sweep (``facray sweep``) is a run folder too: ``run.json`` holds the sweep's settings, and::

    tune/                 the Tune experiment (``Tuner.restore`` resumes it)
    trials/<trial>/       one run folder per trial
    sweep_results.csv, sweep_metric.png   one row per trial; the metric over the grid
    sweep_summary.json    the best trial, its metric, the registered model

A worker's checkpoint uses the same layout for what it carries (``jobs/``, ``model/``,
``metrics.json``), so ``RunFolder(checkpoint_dir)`` reads it.

The prepared data a run trained on is found through :func:`facray.run_data.trained_on`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from facray import storage
from facray.predictors.format import MANIFEST


class RunFolderError(ValueError):
    """A run folder is missing, incomplete, or does not match what is asked of it."""


# What the workers write into a run folder themselves: failure notes (failure.txt, and
# failure-<Ray Train run>.txt: :meth:`RunFolder.write_failure`) and --fail-at-epoch's marker.
FAILURE_NOTES = "failure*.txt"
INJECTED_FAILURE = ".injected_failure"
# What --overwrite removes: every trained output, never the MLflow store (its history stays).
TRAINED_OUTPUTS = ("jobs", "ray_results", "combined", "model", "metrics.json", "report", "mlflow_run_id", "parent_run_id",
                    "mlflow_logged.json", "jobs_summary.csv", INJECTED_FAILURE, "failure.txt", "run.json", "tune", "trials",
                    "sweep_results.csv", "sweep_metric.png", "sweep_summary.json")


class RunFolder:
    """A run folder at ``root`` on a filesystem every node reaches (local disk on one machine, NFS
    on a cluster); for one on object storage see :func:`facray.staged_runs.run_folder`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    @property
    def location(self) -> str:
        """Where the run is, as the user names it (a path here; a URI for a run on object storage)."""
        return str(self.root)

    def pull(self) -> None:
        """Bring a local copy up to date (nothing to do: this folder is where the run is)."""

    def push(self) -> None:
        """Send a local copy back (nothing to do: this folder is where the run is)."""

    def send_jobs_from(self, checkpoint: "RunFolder") -> list[str]:
        """A ``train-binary --mode separate`` trial's finished jobs (its last checkpoint), to where
        the driver reads them: here, this folder; returns their keys."""
        return self.take_jobs_from(checkpoint)

    def fetch_jobs(self, keys: list[str]) -> None:
        """The jobs trials sent (:meth:`send_jobs_from`), into this folder (nothing to do here)."""

    def ray_storage(self, name: str = "ray_results") -> tuple[str, object]:
        """(``storage_path``, ``storage_filesystem``) for Ray Train's or Tune's ``RunConfig``:
        ``<run>/<name>``, which every node must reach."""
        return str(self.root / name), None

    # ---- layout ---------------------------------------------------------------------------------
    record_file = property(lambda self: self.root / "run.json")
    config_file = property(lambda self: self.root / "config.yaml")
    mlflow_run_file = property(lambda self: self.root / "mlflow_run_id")
    _old_mlflow_run_file = property(lambda self: self.root / "parent_run_id")  # its name before 2026-12
    mlflow_ledger_file = property(lambda self: self.root / "mlflow_logged.json")
    mlflow_db = property(lambda self: self.root / "mlflow.db")
    ray_results_dir = property(lambda self: self.root / "ray_results")
    jobs_dir = property(lambda self: self.root / "jobs")
    jobs_summary_file = property(lambda self: self.root / "jobs_summary.csv")
    combined_dir = property(lambda self: self.root / "combined")
    model_dir = property(lambda self: self.root / "model")
    metrics_file = property(lambda self: self.root / "metrics.json")
    report_dir = property(lambda self: self.root / "report")
    failure_marker = property(lambda self: self.root / INJECTED_FAILURE)
    failure_file = property(lambda self: self.root / "failure.txt")  # why the last attempt failed for good
    tune_dir = property(lambda self: self.root / "tune")
    trials_dir = property(lambda self: self.root / "trials")
    sweep_results_file = property(lambda self: self.root / "sweep_results.csv")
    sweep_plot_file = property(lambda self: self.root / "sweep_metric.png")
    sweep_summary_file = property(lambda self: self.root / "sweep_summary.json")

    def trial(self, name: str) -> "RunFolder":
        return RunFolder(self.trials_dir / name)

    def job_dir(self, key: str) -> Path:
        return self.jobs_dir / key

    @staticmethod
    def job_weights_file(job_dir: Path) -> Path:
        return Path(job_dir) / "model.pt"

    @staticmethod
    def job_metrics_file(job_dir: Path) -> Path:
        return Path(job_dir) / "metrics.json"

    # ---- identity: run.json and config.yaml -----------------------------------------------------
    def claim(self, settings: dict, digest: str, overwrite: bool = False) -> None:
        """Record ``settings`` (hash ``digest``) as this run's, after checking any run already here.

        Raises RunFolderError naming the differing keys when the folder holds a run trained with
        other settings (``overwrite`` removes its trained outputs instead).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.record_file.is_file() and not overwrite:
            diff = differing_keys(json.loads(self.record_file.read_text())["settings"], settings)
            if diff:
                raise RunFolderError(
                    f"{self.location} holds a run trained with other settings ({self.record_file.name}):\n  "
                    + "\n  ".join(diff) + "\nuse another --out, or --overwrite to discard that run and start afresh")
        elif overwrite:
            for name in TRAINED_OUTPUTS:
                target = self.root / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            for stale in self.root.glob(FAILURE_NOTES):
                stale.unlink()
        self.record_file.write_text(json.dumps({"settings_hash": digest, "settings": settings}, indent=1,
                                               default=str))

    def settings(self) -> dict:
        """The settings the run was trained with (``run.json``)."""
        if not self.record_file.is_file():
            raise RunFolderError(f"{self.location}: no {self.record_file.name}; not a run folder written by "
                                 "`facray train-binary` or `facray train`")
        return json.loads(self.record_file.read_text())["settings"]

    def settings_hash(self) -> str:
        return json.loads(self.record_file.read_text())["settings_hash"]

    def write_config(self, text: str) -> None:
        self.config_file.write_text(text)

    # ---- deterministic failures reported by workers ----------------------------------------------
    def write_failure(self, message: str, train_run: str = "") -> None:
        """A worker's one-line reason for a failure that a retry would repeat (a diverged loss, a
        missing file): it ends normally instead of raising into Ray Train's retries, and the driver
        reads this. ``train_run``: the Ray Train run's name, so runs side by side (``train-binary
        --mode separate``) keep theirs apart."""
        storage.write_text(self._failure_note(train_run), message)

    def failure(self, train_run: str = "") -> str | None:
        note = self._failure_note(train_run)
        return storage.read_text(note).strip() if storage.is_file(note) else None

    def clear_failure(self, train_run: str = "") -> None:
        storage.delete_file(self._failure_note(train_run))

    def _failure_note(self, train_run: str) -> str:
        """Where every node reaches it: the worker writing it may be on any node."""
        name = f"failure-{train_run}.txt" if train_run else self.failure_file.name
        return storage.join(self.location, name)

    # ---- MLflow bookkeeping ---------------------------------------------------------------------
    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    def mlflow_run_id(self) -> str | None:
        """The MLflow run that ``combine`` and ``evaluate`` log under (None before training logged one)."""
        for f in (self.mlflow_run_file, self._old_mlflow_run_file):
            if f.is_file():
                return f.read_text().strip()
        return None

    def set_mlflow_run_id(self, run_id: str) -> None:
        self.mlflow_run_file.write_text(run_id)
        self._old_mlflow_run_file.unlink(missing_ok=True)

    def mlflow_ledger(self) -> dict:
        return json.loads(self.mlflow_ledger_file.read_text()) if self.mlflow_ledger_file.is_file() else {}

    def write_mlflow_ledger(self, ledger: dict) -> None:
        self.mlflow_ledger_file.write_text(json.dumps(ledger, indent=1))

    # ---- binary runs: jobs ----------------------------------------------------------------------
    def job_records(self) -> list[dict]:
        """Every finished job's ``metrics.json`` with its folder as ``dir``, sorted by key (a
        diverged job is not finished: it has no weights, see :meth:`diverged_jobs`)."""
        records = []
        for f in sorted(self.jobs_dir.glob("*/metrics.json")):
            rec = json.loads(f.read_text())
            rec["dir"] = str(f.parent)
            if rec.get("status", "finished") == "finished":
                records.append(rec)
        if not records:
            diverged = self.diverged_jobs()
            left = f" ({len(diverged)} diverged)" if diverged else ""
            raise RunFolderError(f"{self.jobs_dir}: no finished jobs{left} (run `facray train-binary` first)")
        return records

    def diverged_jobs(self, keys: list[str] | None = None) -> list[str]:
        """``key: reason`` of each job (of ``keys``; default all) whose training diverged."""
        out = []
        for f in sorted(self.jobs_dir.glob("*/metrics.json")):
            if keys is not None and f.parent.name not in keys:
                continue
            rec = json.loads(f.read_text())
            if rec.get("status") == "diverged":
                out.append(f"{f.parent.name}: {rec.get('diverged', 'diverged')}")
        return out

    def finished_job_keys(self, settings_hash: str) -> set[str]:
        """Jobs finished under these settings (a job trained with other settings is not done)."""
        done = set()
        for f in self.jobs_dir.glob("*/metrics.json"):
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if rec.get("settings_hash") != settings_hash:
                continue
            # A diverged job is done too: trained again with the same settings it would diverge again.
            if rec.get("status") == "diverged" or (rec.get("status") == "finished"
                                                    and self.job_weights_file(f.parent).is_file()):
                done.add(f.parent.name)
        return done

    def take_jobs_from(self, other: "RunFolder") -> list[str]:
        """Copy ``other``'s job folders (a finished checkpoint) into this run; returns their keys."""
        keys = []
        for job_dir in sorted(other.jobs_dir.glob("*")):
            _replace_tree(job_dir, self.job_dir(job_dir.name))
            keys.append(job_dir.name)
        return keys

    # ---- multi-task runs ------------------------------------------------------------------------
    @property
    def is_multitask(self) -> bool:
        return self.metrics_file.is_file() and _is_predictor(self.model_dir)

    def metrics(self) -> dict:
        if not self.metrics_file.is_file():
            raise RunFolderError(f"{self.metrics_file}: missing (the run has not finished)")
        return json.loads(self.metrics_file.read_text())

    def write_metrics(self, record: dict) -> None:
        """Written once, last, and atomically: ``metrics.json`` (with ``model/``) is what says a
        multi-task run finished, so a run killed before this point is never taken for finished."""
        write_json_atomically(self.metrics_file, record)

    def take_model_from(self, other: "RunFolder") -> dict:
        """Copy ``other``'s predictor (the final checkpoint) into this run; returns its metrics,
        which the caller completes and writes with :meth:`write_metrics` once all else is done."""
        record = other.metrics()
        _replace_tree(other.model_dir, self.model_dir)
        return record

    def predictor_dir(self) -> Path:
        """Where this run's predictor is: ``model/`` (multi-task) or ``combined/`` (binary)."""
        for d in (self.model_dir, self.combined_dir):
            if _is_predictor(d):
                return d
        raise RunFolderError(f"{self.location}: no predictor yet (run `facray combine` on a binary run)")


def write_json_atomically(path: Path, record: dict) -> None:
    """A kill mid-write leaves the old file or none, never half a JSON file that reads as finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def differing_keys(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs (or exists on one side only)."""
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _is_predictor(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def _replace_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
