"""The Ray Train worker loop of ``facray train-binary`` (:func:`train_jobs_per_worker`): this
rank's share of the binary jobs in one pass over the data (the math is the pure
:class:`facray.training.binary.FusedBinaryTrainer`), a checkpoint every epoch (``rank<r>.pt``; Ray
merges the workers' files), resumed after a failure; at the end every job's best weights and
test metrics, in the run folder's layout, in the last checkpoint. The driver is
:mod:`facray.runners.train_binary`.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from facray.data.prepared import read_metadata
from facray.runners.ranks import set_up_on_every_rank
from facray.runners.runtime import quiet_train_worker
from facray.runners.streaming import stream_batches
from facray.runners.train import saved_state
from facray.runs import RunFolder
from facray.training.binary import FusedBinaryTrainer, TrainerConfig
from facray.training.configs import BinaryConfig
from facray.training.binary_jobs import BinaryJob, write_job_output
from facray.training.progress import with_progress
from facray.training.run_record import inject_failure_once
from facray.training.splits import SplitSpec, array_batches, load_split_arrays


def train_jobs_per_worker(config: dict) -> None:
    """Ray Train worker loop: train this rank's share of the jobs, checkpoint every epoch."""
    import torch
    import ray.train
    import ray.train.torch

    cfg = BinaryConfig(**config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    jobs = [BinaryJob(**j) for j in config["assignments"][rank]]
    total_epochs = config["total_epochs"]
    quiet_train_worker(config.get("verbose", False))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = ray.train.torch.get_device()

    def setup():
        meta = read_metadata(cfg.prepared)
        trainer = FusedBinaryTrainer(jobs, TrainerConfig.of(cfg, meta, config.get("positive_weights")), device)
        return trainer, _batch_sources(cfg, meta, rank, total_epochs)

    ready = set_up_on_every_rank(cfg.out, setup)
    if ready is None:  # a failure a retry would repeat: the driver reports it
        return
    trainer, (train_batches, val_batches, test_batches) = ready
    resumed_from = 0
    state = saved_state(f"rank{rank}.pt", device)
    if state is not None:
        trainer.load_state_dict(state)
        resumed_from = trainer.epoch

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
                for key in trainer.states:  # the checkpoint carries them in the run folder's layout
                    write_job_output(RunFolder(d).job_dir(key), trainer, key, test.get(key),
                                     extra={"resumed_from_epoch": resumed_from,
                                            "settings_hash": config["settings_hash"]})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        if last:
            break


def _batch_sources(cfg: BinaryConfig, meta: dict, rank: int, epochs: int):
    """(train(epoch), val(), test()) batch iterators: from memory (every worker loads the arrays:
    jobs differ between workers, data not) or from the Ray Data datasets (``--data stream``).
    Rank 0's training batches print progress lines (:func:`facray.training.progress.with_progress`)."""
    import ray.train

    def progress(batches, epoch: int, total: int | None):
        return with_progress(batches, epoch + 1, epochs, total) if rank == 0 else batches

    if cfg.data == "stream":
        shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val", "test")}
        return (lambda e: progress(stream_batches(shards["train"], cfg.batch_size, meta, cfg.seed * 1000 + e), e,
                                   None),
                lambda: stream_batches(shards["val"], 256, meta, None),
                lambda: stream_batches(shards["test"], 256, meta, None))
    columns = tuple(c for c, m in (("image", "real"), ("sketch", "sketch")) if m in cfg.modalities)
    data = load_split_arrays(SplitSpec.of(cfg), columns)
    total = -(-len(data["train"]["labels"]) // cfg.batch_size)
    return (lambda e: progress(array_batches(data["train"], cfg.batch_size, True, cfg.seed, e), e, total),
            lambda: array_batches(data["val"], 256),
            lambda: array_batches(data["test"], 256))


def _any_worker_running(n_running: int, device) -> bool:
    """Whether any worker still has a job running (an all-reduce over Ray Train's process group)."""
    import torch
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return n_running > 0
    count = torch.tensor([n_running], device=device)
    dist.all_reduce(count)
    return int(count.item()) > 0
