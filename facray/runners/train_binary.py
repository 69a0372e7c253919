"""``facray train-binary``: the 80 binary ABM-CNN jobs on Ray Train. Runs on the driver; the
training runs in Ray Train workers (:func:`facray.runners.binary_worker.train_jobs_per_worker`),
the math in the pure :mod:`facray.training.binary`.

Modes:
- ``fused`` (default): the jobs are spread round-robin over ``num_workers`` Ray Train workers; each
  worker trains its share in one pass over the data (see :class:`FusedBinaryTrainer`).
- ``separate``: one Ray Train run per job, several at once as Ray Tune trials over the job grid
  (fractional CPU/GPU per trial), for comparison and for clusters with many small GPUs.

Every epoch each worker checkpoints its trainer; ``FailureConfig(max_failures)`` restarts from
the latest checkpoint. Finished jobs land in the run folder's ``jobs/`` (:mod:`facray.runs`)
and are skipped by a re-run. What every run shares (settings hash, class-balance weights) is
computed once here. MLflow is written by the driver after training: a parent run and one child
run per job.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict

import pandas as pd

from facray.config import absolute_paths, config_to_dict
from facray.data.prepared import read_metadata
from facray.runners.binary_worker import train_jobs_per_worker
from facray.runners.runtime import fit_in_thread, init_ray, verbose
from facray.runners.streaming import split_datasets
from facray.runners.train import fit_on_ray
from facray.runs import RunFolder
from facray.tracking import check_training_run, log_binary_jobs
from facray.training.configs import CHECKPOINT_NEUTRAL_KEYS, BinaryConfig
from facray.training.binary_jobs import BinaryJob, make_jobs
from facray.training.metrics import positive_weights, trainable_attributes
from facray.training.run_record import TrainingDiverged, claim_run
from facray.training.splits import SplitSpec, check_splits, train_labels

def _datasets(cfg: BinaryConfig):
    """Ray Datasets for stream mode (every worker gets the whole dataset: jobs differ, data not)."""
    if cfg.data != "stream":
        return None, None
    from ray.train import DataConfig
    columns = tuple(c for c, m in (("image", "real"), ("sketch", "sketch")) if m in cfg.modalities)
    return split_datasets(SplitSpec.of(cfg), columns), DataConfig(datasets_to_split=[])


def _run_trainer(cfg: BinaryConfig, shared: dict, assignments: list[list[dict]], name: str, callbacks=None):
    """One Ray Train run of ``assignments`` (a job list per worker); ``shared``: what
    :func:`train_binary_models` computed once for every run (settings hash, class-balance weights)."""
    total_epochs = max((j["max_epochs"] for a in assignments for j in a), default=0)
    datasets, data_config = _datasets(cfg)
    loop_config = {"cfg": config_to_dict(cfg), "assignments": assignments, "total_epochs": total_epochs,
                   "verbose": verbose(), **shared}
    return fit_on_ray(train_jobs_per_worker, loop_config, cfg, name, len(assignments), tuple(callbacks or ()),
                      datasets, data_config)


def _collect(result_checkpoint, out: str) -> list[str]:
    """Copy the job outputs of a finished run's checkpoint into the run folder."""
    with result_checkpoint.as_directory() as d:
        return RunFolder(out).take_jobs_from(RunFolder(d))


def _separate_trial(config: dict) -> None:
    """A Tune trial: one Ray Train run for one job; metrics flow to Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback
    cfg = BinaryConfig(**config["cfg"])
    job = config["job"]
    result = _run_trainer(cfg, config["shared"], [[job]], run_name(f"job-{job['attribute']}__{job['modality']}", cfg,
                                                 [BinaryJob(**job)]),
                          callbacks=[TuneReportCallback()])
    _collect(result.checkpoint, cfg.out)


def run_name(prefix: str, cfg: BinaryConfig, jobs: list[BinaryJob]) -> str:
    """A name fixed by the jobs and the training config: re-running an interrupted command finds
    the same Ray Train run folder and resumes from its latest checkpoint (Train V2 restores it)."""
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in CHECKPOINT_NEUTRAL_KEYS}
    text = json.dumps([settings, sorted(j.key for j in jobs)], sort_keys=True, default=str)
    return f"{prefix}-{zlib.crc32(text.encode()):08x}"


def run_fused(cfg: BinaryConfig, shared: dict, jobs: list[BinaryJob], callbacks: tuple = ()) -> None:
    n = max(1, min(cfg.num_workers, len(jobs)))
    # Round-robin keeps each worker's mix of real/sketch and long/short jobs alike.
    assignments = [[asdict(j) for j in jobs[r::n]] for r in range(n)]
    result = _run_trainer(cfg, shared, assignments, run_name("fused", cfg, jobs), list(callbacks))
    _collect(result.checkpoint, cfg.out)


def run_separate(cfg: BinaryConfig, shared: dict, jobs: list[BinaryJob]) -> None:
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(_separate_trial, {"CPU": 0.01}),
        param_space={"cfg": config_to_dict(cfg), "shared": shared,
                     "job": tune.grid_search([asdict(j) for j in jobs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent),
        run_config=tune.RunConfig(name=f"separate-{int(time.time())}",
                                  storage_path=str(RunFolder(cfg.out).ray_results_dir), verbose=0))
    grid = fit_in_thread(tuner)  # Ctrl-C reaches facray's one handler (see facray.runners.runtime)
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} separate job(s) failed: {errors[:3]}")


def train_binary_models(cfg: BinaryConfig, callbacks: tuple = (), parent_run_id: str | None = None
                        ) -> pd.DataFrame:
    """Run the jobs not already finished under ``cfg.out``; log them; return the per-job table.
    ``callbacks`` (fused mode): more Ray Train callbacks (a sweep trial passes Tune's);
    ``parent_run_id``: the MLflow run this one is a child of (a sweep's).

    ``cfg.out`` must be a run of the same settings (or new, or ``cfg.overwrite``): see
    :mod:`facray.training.run_record`.
    """

    cfg = absolute_paths(cfg)
    jobs = make_jobs(cfg.attributes, cfg.modalities, cfg.epochs, cfg.paper_epochs, cfg.lrs)
    if "sketch" in cfg.modalities and not read_metadata(cfg.prepared).get("sketch_channels"):
        raise ValueError(f"{cfg.prepared} was prepared without sketches (--sketch-channels 0): train with "
                         "--modalities real, or prepare again with sketches")
    counts = check_splits(SplitSpec.of(cfg))
    # From the training labels, once (stream-mode workers never hold them all).
    labels = train_labels(SplitSpec.of(cfg))
    trainable = trainable_attributes(labels, list(dict.fromkeys(j.attribute for j in jobs)), cfg.prepared)
    jobs = [j for j in jobs if j.attribute in trainable]
    run, digest = claim_run(cfg)
    if parent_run_id is None:  # a sweep checks its store once, not in every trial
        check_training_run(cfg)
    done = run.finished_job_keys(digest)
    todo = [j for j in jobs if j.key not in done]
    print(f"{len(jobs)} jobs: {len(done & {j.key for j in jobs})} already finished, {len(todo)} to run "
          f"({cfg.mode} mode, {cfg.num_workers} worker(s)); rows: " +
          ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    if todo:
        pos_weights = positive_weights(labels, cfg.max_pos_weight).tolist() if cfg.class_balance else None
        shared = {"settings_hash": digest, "positive_weights": pos_weights}
        init_ray()
        if cfg.mode == "fused":
            run_fused(cfg, shared, todo, callbacks)
        else:
            run_separate(cfg, shared, todo)
    parent = log_binary_jobs(cfg.tracking_uri, run, cfg.experiment, f"train-binary-{cfg.mode}",
                             config_to_dict(cfg), [j.key for j in jobs], digest, parent_run_id)
    run.set_mlflow_run_id(parent)
    diverged = run.diverged_jobs([j.key for j in jobs])
    if diverged:  # the others are kept (and combine uses them); the command still fails
        raise TrainingDiverged(f"{len(diverged)} of {len(jobs)} job(s) diverged, no weights kept for them "
                               f"(combine leaves them out): " + "; ".join(diverged[:3])
                               + ("; ..." if len(diverged) > 3 else ""))
    return pd.read_csv(run.jobs_summary_file)
