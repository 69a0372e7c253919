"""``facray train-binary``: the 80 binary ABM-CNN jobs on Ray Train. Runs on the driver; the
training runs in Ray Train workers (:func:`train_jobs_per_worker`), the math in the pure
:mod:`facray.training.binary`.

Modes:
- ``fused`` (default): the jobs are spread round-robin over ``num_workers`` Ray Train workers; each
  worker trains its share in one pass over the data (see :class:`FusedBinaryTrainer`).
- ``separate``: one Ray Train run per job, several at once as Ray Tune trials over the job grid
  (fractional CPU/GPU per trial), for comparison and for clusters with many small GPUs.

Every epoch each worker checkpoints its trainer (``rank<r>.pt``; Ray merges the workers' files);
``FailureConfig(max_failures)`` restarts from the latest checkpoint. Finished jobs land in
``<out>/jobs/<attribute>__<modality>/`` (weights + metrics) and are skipped by a re-run.
MLflow is written by the driver after training: a parent run and one child run per job.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from facray.attributes import MODALITIES
from facray.config import config_to_dict, option, save_config
from facray.training.binary import FusedBinaryTrainer, TrainerConfig
from facray.training.jobs import BinaryJob, finished_jobs, make_jobs, write_job_output
from facray.training.run_record import (RunOptions, claim_run, inject_failure_once, run_settings,
                                        settings_hash)
from facray.training.metrics import positive_weights
from facray.training.splits import SplitSpec, array_batches, check_splits, load_split_arrays, train_labels
from facray.training.streaming import split_datasets, stream_batches

@dataclass
class TrainBinaryConfig(RunOptions):
    prepared: str = option("prepared", "folder written by `facray prepare`")
    out: str = option("runs/abm", "output folder (jobs, checkpoints, MLflow store)")
    attributes: str = option("all", "comma list, or all / identity / abm / rendered")
    modalities: tuple[str, ...] = option(MODALITIES, "real,sketch")
    epochs: int = option(20, "epoch budget per job (paper: 15 or 20)")
    paper_epochs: bool = option(False, "use Table 1's per-attribute epochs where reported")
    batch_size: int = option(32, "images per step (paper: 32)")
    lr: float = option(1e-3, "Adam learning rate")
    image_size: int = option(0, "model input side; 0 = the prepared crop size")
    dropout: float = option(0.5, "dropout before the dense layers")
    patience: int = option(3, "early stopping patience on validation loss")
    seed: int = option(0, "seed of weights, shuffling and dropout")
    mode: Literal["fused", "separate"] = option("fused", "fused | separate")
    num_workers: int = option(1, "Ray Train workers (fused: jobs spread over them)")
    gpus_per_worker: float = option(0.0, "GPUs per worker (fractions allowed)")
    cpus_per_worker: float = option(1.0, "CPUs per worker (use < 1 on small machines)")
    max_concurrent: int = option(2, "separate mode: runs at once")
    stack: Literal["auto", "grouped", "loop"] = option("auto", "auto (grouped on GPU, loop on CPU) | grouped | loop")
    data: Literal["memory", "stream"] = option("memory", "memory (each worker loads the prepared shards) | "
                                                       "stream (Ray Data feeds the workers)")
    online_flip: bool = option(False, "random horizontal flips while training")
    class_balance: bool = option(False, "weight positives by negatives/positives per attribute (rare attributes)")
    max_pos_weight: float = option(10.0, "cap of the class-balance weight")
    experiment: str = option("facray-abm", "MLflow experiment")


def trainer_config(cfg: TrainBinaryConfig, prepared_meta: dict, pos_weights: list[float] | None) -> TrainerConfig:
    return TrainerConfig(batch_size=cfg.batch_size, lr=cfg.lr, dropout=cfg.dropout, patience=cfg.patience,
                         image_size=cfg.image_size or prepared_meta["size"],
                         sketch_channels=prepared_meta["sketch_channels"], seed=cfg.seed, stack=cfg.stack,
                         online_flip=cfg.online_flip,
                         positive_weights=tuple(pos_weights) if pos_weights is not None else None)


def train_jobs_per_worker(config: dict) -> None:
    """Ray Train worker loop: train this rank's share of the jobs, checkpoint every epoch."""
    import torch
    import ray.train
    import ray.train.torch
    from facray.data.prepared import read_metadata

    cfg = TrainBinaryConfig(**config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    jobs = [BinaryJob(**j) for j in config["assignments"][rank]]
    total_epochs = config["total_epochs"]
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    meta = read_metadata(cfg.prepared)
    digest = settings_hash(run_settings(cfg, meta["shards"]))
    tcfg = trainer_config(cfg, meta, config.get("positive_weights"))
    device = ray.train.torch.get_device()
    trainer = FusedBinaryTrainer(jobs, tcfg, device)
    resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = Path(d) / f"rank{rank}.pt"
            if state.is_file():
                # Tensors, dicts and lists only: a checkpoint on shared storage can never run code.
                trainer.load_state_dict(torch.load(state, map_location=device, weights_only=True))
                resumed_from = trainer.epoch

    if cfg.data == "stream":
        shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val", "test")}
        train_batches = lambda e: stream_batches(shards["train"], cfg.batch_size, meta, cfg.seed * 1000 + e)  # noqa: E731
        val_batches = lambda: stream_batches(shards["val"], 256, meta, None)  # noqa: E731
        test_batches = lambda: stream_batches(shards["test"], 256, meta, None)  # noqa: E731
    else:
        columns = tuple(c for c, m in (("image", "real"), ("sketch", "sketch")) if m in cfg.modalities)
        data = load_split_arrays(SplitSpec.of(cfg), columns)
        train_batches = lambda e: array_batches(data["train"], cfg.batch_size, True, cfg.seed, e)  # noqa: E731
        val_batches = lambda: array_batches(data["val"], 256)  # noqa: E731
        test_batches = lambda: array_batches(data["test"], 256)  # noqa: E731

    for epoch in range(trainer.epoch, total_epochs):
        inject_failure_once(cfg.out, cfg.fail_at_epoch, epoch + 1)
        start = time.perf_counter()
        records = trainer.fit_epoch(train_batches(epoch), val_batches()) if trainer.running else {}
        trainer.epoch = epoch + 1  # workers whose jobs all stopped still count epochs (same reports)
        # Every worker must report as often as the others: stop early only when all are done.
        last = epoch + 1 == total_epochs or not _any_worker_running(len(trainer.running), device)
        metrics = {"epoch": epoch + 1, "running": len(trainer.running), "epoch_seconds": time.perf_counter() - start,
                   "resumed_from_epoch": resumed_from}
        if records:
            metrics["mean_val_accuracy"] = float(np.mean([r["val_accuracy"] for r in records.values()]))
        print(f"[rank {rank}] epoch {epoch + 1}/{total_epochs}: {len(records)} job(s) trained, "
              f"{metrics['running']} still running, mean val accuracy "
              f"{metrics.get('mean_val_accuracy', float('nan')):.4f}, {metrics['epoch_seconds']:.0f}s", flush=True)
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), Path(d) / f"rank{rank}.pt")
            if last:
                test = trainer.evaluate_best(test_batches())
                for key in trainer.states:
                    write_job_output(Path(d) / "jobs", trainer, key, test.get(key),
                                     extra={"resumed_from_epoch": resumed_from, "settings_hash": digest})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        if last:
            break


def _any_worker_running(n_running: int, device) -> bool:
    """Whether any worker still has a job running (an all-reduce over Ray Train's process group)."""
    import torch
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return n_running > 0
    count = torch.tensor([n_running], device=device)
    dist.all_reduce(count)
    return int(count.item()) > 0


def _scaling(cfg: TrainBinaryConfig, num_workers: int):
    from ray.train import ScalingConfig
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.gpus_per_worker:
        resources["GPU"] = cfg.gpus_per_worker
    return ScalingConfig(num_workers=num_workers, use_gpu=cfg.gpus_per_worker > 0, resources_per_worker=resources)


def _datasets(cfg: TrainBinaryConfig):
    """Ray Datasets for stream mode (every worker gets the whole dataset: jobs differ, data not)."""
    if cfg.data != "stream":
        return None, None
    from ray.train import DataConfig
    columns = tuple(c for c, m in (("image", "real"), ("sketch", "sketch")) if m in cfg.modalities)
    return split_datasets(SplitSpec.of(cfg), columns), DataConfig(datasets_to_split=[])


def _run_trainer(cfg: TrainBinaryConfig, assignments: list[list[dict]], name: str, callbacks=None):
    import ray.train
    from ray.train.torch import TorchTrainer
    total_epochs = max((j["max_epochs"] for a in assignments for j in a), default=0)
    datasets, data_config = _datasets(cfg)
    kwargs = {"datasets": datasets, "dataset_config": data_config} if datasets else {}
    # Class balance from the training labels, computed once here (stream-mode workers never hold them).
    pos_weights = positive_weights(train_labels(SplitSpec.of(cfg)), cfg.max_pos_weight).tolist() \
        if cfg.class_balance else None
    trainer = TorchTrainer(
        train_jobs_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "assignments": assignments, "total_epochs": total_epochs,
                           "positive_weights": pos_weights},
        scaling_config=_scaling(cfg, len(assignments)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(Path(cfg.out).resolve() / "ray_results"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or []),
        **kwargs)
    return trainer.fit()


def _collect(result_checkpoint, out: Path) -> list[str]:
    """Copy the job outputs of a finished run's checkpoint into ``<out>/jobs``."""
    keys = []
    with result_checkpoint.as_directory() as d:
        for job_dir in sorted((Path(d) / "jobs").glob("*")):
            dst = out / "jobs" / job_dir.name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(job_dir, dst)
            keys.append(job_dir.name)
    return keys


def _separate_trial(config: dict) -> None:
    """A Tune trial: one Ray Train run for one job; metrics flow to Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback
    cfg = TrainBinaryConfig(**config["cfg"])
    job = config["job"]
    result = _run_trainer(cfg, [[job]], run_name(f"job-{job['attribute']}__{job['modality']}", cfg,
                                                 [BinaryJob(**job)]),
                          callbacks=[TuneReportCallback()])
    _collect(result.checkpoint, Path(cfg.out))


def run_name(prefix: str, cfg: TrainBinaryConfig, jobs: list[BinaryJob]) -> str:
    """A name fixed by the jobs and the training config: re-running an interrupted command finds
    the same Ray Train run folder and resumes from its latest checkpoint (Train V2 restores it)."""
    settings = {k: v for k, v in config_to_dict(cfg).items()
                if k not in ("out", "tracking_uri", "experiment", "fail_at_epoch", "max_failures")}
    text = json.dumps([settings, sorted(j.key for j in jobs)], sort_keys=True, default=str)
    return f"{prefix}-{zlib.crc32(text.encode()):08x}"


def run_fused(cfg: TrainBinaryConfig, jobs: list[BinaryJob]) -> None:
    n = max(1, min(cfg.num_workers, len(jobs)))
    # Round-robin keeps each worker's mix of real/sketch and long/short jobs alike.
    assignments = [[asdict(j) for j in jobs[r::n]] for r in range(n)]
    result = _run_trainer(cfg, assignments, run_name("fused", cfg, jobs))
    _collect(result.checkpoint, Path(cfg.out))


def run_separate(cfg: TrainBinaryConfig, jobs: list[BinaryJob]) -> None:
    from ray import tune
    tuner = tune.Tuner(
        tune.with_resources(_separate_trial, {"CPU": 0.01}),
        param_space={"cfg": config_to_dict(cfg), "job": tune.grid_search([asdict(j) for j in jobs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent),
        run_config=tune.RunConfig(name=f"separate-{int(time.time())}",
                                  storage_path=str(Path(cfg.out).resolve() / "ray_results"),
                                  verbose=0))
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} separate job(s) failed: {errors[:3]}")


def train_binary_models(cfg: TrainBinaryConfig) -> pd.DataFrame:
    """Run the jobs not already finished under ``cfg.out``; log them; return the per-job table.

    ``cfg.out`` must be a run of the same settings (or new, or ``cfg.overwrite``): see
    :mod:`facray.training.run_record`.
    """
    from facray.data.prepared import read_metadata
    from facray.runtime import init_ray
    from facray.tracking import log_binary_jobs

    out = Path(cfg.out).resolve()
    jobs = make_jobs(cfg.attributes, cfg.modalities, cfg.epochs, cfg.paper_epochs)
    counts = check_splits(SplitSpec.of(cfg))
    digest = claim_run(out, run_settings(cfg, read_metadata(cfg.prepared)["shards"]), cfg.overwrite)
    save_config(cfg, out / "config.yaml")
    done = finished_jobs(out, digest)
    todo = [j for j in jobs if j.key not in done]
    print(f"{len(jobs)} jobs: {len(done & {j.key for j in jobs})} already finished, {len(todo)} to run "
          f"({cfg.mode} mode, {cfg.num_workers} worker(s)); rows: " +
          ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    if todo:
        init_ray()
        (run_fused if cfg.mode == "fused" else run_separate)(cfg, todo)
    parent = log_binary_jobs(cfg.tracking_uri, out, cfg.experiment, f"train-binary-{cfg.mode}",
                             config_to_dict(cfg), [j.key for j in jobs], digest)
    (out / "parent_run_id").write_text(parent)
    return pd.read_csv(out / "jobs_summary.csv")
