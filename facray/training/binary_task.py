"""``facray train-binary`` as a :class:`~facray.training.task.Task`: the 80 binary ABM-CNN jobs
(attribute x modality), spread round-robin over the Ray Train workers; each worker trains its
share in one pass over the data (the pure :class:`~facray.training.binary.FusedBinaryTrainer`),
checkpoints ``rank<r>.pt`` every epoch (Ray merges the workers' files) and at the end writes every
job's best weights and test metrics, in the run folder's layout, into the last checkpoint.
Finished jobs are skipped by a re-run. MLflow: the run's epochs arrive live (every worker's jobs
counted); after training, one child run per job with its curves and test metrics.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from facray.config import config_to_dict
from facray.data.prepared import read_metadata
from facray.runs import RunFolder
from facray.tracking import log_binary_jobs
from facray.training.augment import PASSES_PER_EPOCH
from facray.training.binary import FusedBinaryTrainer, TrainerConfig
from facray.training.binary_jobs import BinaryJob, make_jobs, write_job_output
from facray.training.configs import CHECKPOINT_NEUTRAL_KEYS, BinaryConfig
from facray.training.metrics import positive_weights, trainable_attributes, unvalidated_attributes
from facray.training.progress import with_progress
from facray.training.run_record import LATER_CONFIG_KEYS, TrainingDiverged, claim_run, later_keys_dropped
from facray.training.splits import (SplitSpec, array_batches, check_splits, epoch_of_passes, load_split_arrays,
                                    load_validation, stream_sources, train_labels)
from facray.training.task import Plan, WrapModel


def train_run_name(prefix: str, cfg: BinaryConfig, jobs: list[BinaryJob]) -> str:
    """A Ray Train run name fixed by the jobs and the training config: re-running an interrupted
    command finds the same Ray Train run folder and resumes from its latest checkpoint."""
    settings = {k: v for k, v in later_keys_dropped(config_to_dict(cfg), LATER_CONFIG_KEYS).items()
                if k not in CHECKPOINT_NEUTRAL_KEYS}
    # Memory or stream changes nothing a checkpoint holds, and --data auto may choose otherwise on a
    # re-run: named as under the old default (memory), so runs named before auto keep their names.
    settings["data"] = "memory"
    text = json.dumps([settings, sorted(j.key for j in jobs)], sort_keys=True, default=str)
    return f"{prefix}-{zlib.crc32(text.encode()):08x}"


def assign(jobs: list[dict], num_workers: int) -> list[list[dict]]:
    """Job dicts per worker, round-robin: each worker's mix of real/sketch and long/short jobs alike."""
    n = max(1, min(num_workers, len(jobs)))
    return [jobs[r::n] for r in range(n)]


class BinaryTask:
    name = "binary"
    config_class = BinaryConfig
    split_train_stream = False  # every worker reads the whole dataset: jobs differ, data not

    def resolve(self, cfg: BinaryConfig) -> BinaryConfig:
        """``cfg`` with ``--online-augment auto`` decided from the prepared data (on / off), once, on
        the driver: the settings hash, the Ray Train run's name, MLflow and the workers all see the
        decision, so the same command on 1x and on 9x data are two runs, not one resumed."""
        if cfg.online_augment != "auto":  # decided already (train() resolves before plan): no read
            return cfg
        online = cfg.augments_online(read_metadata(cfg.prepared))
        return replace(cfg, online_augment="on" if online else "off")

    def plan(self, cfg: BinaryConfig) -> Plan:
        """The jobs not already finished under ``cfg.out`` (checked against its settings, see
        :mod:`facray.training.run_record`), after every check that can fail before Ray starts."""
        cfg = self.resolve(cfg)
        jobs = make_jobs(cfg.attributes, cfg.modalities, cfg.epochs, cfg.paper_epochs, cfg.lrs)
        if "sketch" in cfg.modalities and not read_metadata(cfg.prepared).get("sketch_channels"):
            raise ValueError(f"{cfg.prepared} was prepared without sketches (--sketch-channels 0): train with "
                             "--modalities real, or prepare again with sketches")
        spec = SplitSpec.of(cfg)
        counts = check_splits(spec)
        labels = train_labels(spec)  # once, here: stream-mode workers never hold them all
        trainable = trainable_attributes(labels, list(dict.fromkeys(j.attribute for j in jobs)), cfg.prepared)
        unvalidated_attributes(load_validation(spec, columns=())["labels"], trainable, cfg.prepared, cfg.val_split,
                               also="; its jobs train every epoch and keep the last (no early stopping)")
        jobs = [j for j in jobs if j.attribute in trainable]
        run, digest = claim_run(cfg)
        done = run.finished_job_keys(digest)
        todo = [j for j in jobs if j.key not in done]
        pos_weights = positive_weights(labels, cfg.max_pos_weight).tolist() if cfg.class_balance else None
        summary = (f"{len(jobs)} jobs: {len(done & {j.key for j in jobs})} already finished, {len(todo)} to run "
                   f"({cfg.mode} mode, {cfg.num_workers} worker(s)); online augmentation: "
                   + (f"{PASSES_PER_EPOCH} passes per epoch, each image a fresh ABM-CNN variant"
                      if cfg.online_augment == "on" else "off") + "; rows: "
                   + ", ".join(f"{k} {v}" for k, v in counts.items()))
        plan = Plan(run, digest, assign([asdict(j) for j in todo], cfg.num_workers) if todo else [],
                    {"settings_hash": digest, "positive_weights": pos_weights, "all_jobs": [j.key for j in jobs]},
                    "", summary, rows=counts)
        plan.train_run = self.train_run_name(cfg, plan)
        return plan

    def train_run_name(self, cfg: BinaryConfig, plan: Plan) -> str:
        return train_run_name("fused", cfg, [BinaryJob(**j) for share in plan.ranks for j in share])

    def memory_only(self, cfg: BinaryConfig) -> str:
        return "--val-split holdout needs --data memory" if cfg.val_split == "holdout" else ""

    def mlflow_run_name(self, cfg: BinaryConfig) -> str:
        return f"train-binary-{cfg.mode}"

    @staticmethod
    def stream_columns(cfg: BinaryConfig) -> tuple[str, ...]:
        return tuple(c for c, m in (("image", "real"), ("sketch", "sketch")) if m in cfg.modalities)

    def setup(self, cfg: BinaryConfig, plan: Plan, rank: int, world: int, device: torch.device,
              shards: dict | None) -> "BinaryRank":
        return BinaryRank(cfg, plan, rank, device, shards)

    def collect(self, checkpoint: RunFolder, run: RunFolder) -> list[str]:
        return run.take_jobs_from(checkpoint)

    def finish(self, cfg: BinaryConfig, plan: Plan, collected, tracking_uri: str, mlflow_run_id: str,
               register: bool) -> pd.DataFrame:
        """Log every job's child run; the per-job table. Raises :class:`TrainingDiverged` when a
        job diverged (the others are kept, and combine uses them)."""
        keys = plan.shared["all_jobs"]
        log_binary_jobs(tracking_uri, plan.run, mlflow_run_id, keys, plan.digest)
        diverged = plan.run.diverged_jobs(keys)
        if diverged:
            raise TrainingDiverged(f"{len(diverged)} of {len(keys)} job(s) diverged, no weights kept for them "
                                   f"(combine leaves them out): " + "; ".join(diverged[:3])
                                   + ("; ..." if len(diverged) > 3 else ""))
        return pd.read_csv(plan.run.jobs_summary_file)

    def trial_result(self, table: pd.DataFrame, run: RunFolder) -> dict:
        return {"mean_val_accuracy": float(table["val_accuracy"].mean()),
                "mean_test_accuracy": float(table["test_accuracy"].mean()),
                "epochs_run": max(len(r["history"]) for r in run.job_records())}


class BinaryRank:
    """One worker's share of the jobs. Every rank checkpoints; the run ends when no rank has a
    job left (an all-reduce), so every rank reports as often as the others."""
    stopped = False  # a rank whose jobs all stopped keeps counting epochs until every rank's have

    def __init__(self, cfg: BinaryConfig, plan: Plan, rank: int, device: torch.device, shards: dict | None):
        self.cfg, self.rank, self.device, self.digest = cfg, rank, device, plan.digest
        self.state_file = f"rank{rank}.pt"
        self.total_epochs = max(j["max_epochs"] for share in plan.ranks for j in share)
        meta = read_metadata(cfg.prepared)
        jobs = [BinaryJob(**j) for j in plan.ranks[rank]]
        self.trainer = FusedBinaryTrainer(jobs, TrainerConfig.of(cfg, meta, plan.shared["positive_weights"]), device)
        self.train_batches, self.val_batches, self.test_batches = self._batch_sources(meta, shards)
        self._running = len(jobs)  # on every rank, after each epoch (fit_epoch)

    epoch = property(lambda self: self.trainer.epoch)

    def distribute(self, wrap: WrapModel) -> None:
        """Nothing to wrap: each worker's models are its own (no DDP)."""

    def writes_checkpoint(self) -> bool:
        return True  # each rank's own jobs

    def fit_epoch(self) -> dict:
        epoch = self.trainer.epoch + 1
        records = self.trainer.fit_epoch(self.train_batches(epoch - 1), self.val_batches()) \
            if self.trainer.running else {}
        self.trainer.epoch = epoch
        # (a job with no labelled validation rows has a NaN accuracy: left out of the mean)
        accuracies = [r["val_accuracy"] for r in records.values() if not math.isnan(r["val_accuracy"])]
        running, trained, validated, accuracy = _sum_over_ranks(
            [len(self.trainer.running), len(records), len(accuracies), sum(accuracies)], self.device)
        self._running = running
        metrics = {"epoch": epoch, "running": int(running), "jobs_trained": int(trained)}
        if validated:  # every rank's jobs this epoch
            metrics["mean_val_accuracy"] = accuracy / validated
        self._rank_line = (f"epoch {epoch}/{self.total_epochs}: {len(records)} job(s) trained, "
                           f"{len(self.trainer.running)} still running, mean val accuracy "
                           f"{np.mean(accuracies) if accuracies else float('nan'):.4f}")
        return metrics

    def is_last(self) -> bool:
        return self.trainer.epoch == self.total_epochs or self._running == 0

    def describe(self, record: dict) -> str:
        return f"{self._rank_line}, {record['epoch_seconds']:.0f}s"

    def state_dict(self) -> dict:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)

    def finalize(self, folder: RunFolder, resumed_from: int) -> None:
        test = self.trainer.evaluate_best(self.test_batches())
        for key in self.trainer.states:
            write_job_output(folder.job_dir(key), self.trainer, key, test.get(key),
                             extra={"resumed_from_epoch": resumed_from, "settings_hash": self.digest})

    def _batch_sources(self, meta: dict, shards: dict | None):
        """(train(epoch), val(), test()) batch iterators: from memory (every worker loads the
        arrays: jobs differ between workers, data not) or from Ray Data ``shards`` (stream mode).
        Rank 0's training batches print progress lines."""
        cfg = self.cfg

        def progress(batches, epoch: int, total: int | None):
            return with_progress(batches, epoch + 1, self.total_epochs, total) if self.rank == 0 else batches

        # With the variants drawn online an epoch shows each image as often as the 9x data holds
        # rows of it (PASSES_PER_EPOCH), so --epochs, --patience, --paper-epochs and the cadence of
        # validation and checkpoints mean what they mean on the 9x data.
        passes = PASSES_PER_EPOCH if self.trainer.cfg.online_augment else 1
        if shards is not None:
            return stream_sources(shards, cfg.batch_size, meta, cfg.seed, progress, passes)
        data = load_split_arrays(SplitSpec.of(cfg), BinaryTask.stream_columns(cfg))
        total = -(-len(data["train"]["labels"]) // cfg.batch_size) * passes

        def train(epoch: int):
            return epoch_of_passes(lambda s: array_batches(data["train"], cfg.batch_size, True, cfg.seed, s),
                                   epoch, passes)

        return (lambda e: progress(train(e), e, total),
                lambda: array_batches(data["val"], 256),
                lambda: array_batches(data["test"], 256))


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over the Ray Train workers (an all-reduce over its process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()
