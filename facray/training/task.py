"""One training skeleton for every trainer: a :class:`Task` (binary ABM-CNN jobs, one multi-task
network) supplies what differs, and :func:`train_epochs` is the one epoch loop every Ray Train
worker runs (:mod:`facray.runners.train` is the one driver). Pure: no Ray here; the runner hands
the loop its rank, a ``report`` function and the saved state, so the loop runs (and is tested)
without Ray too.

Per run, the driver calls ``task.resolve(cfg)`` (options decided from the data, once), then
``task.plan(cfg)`` (pre-flight checks and what every worker shares,
before Ray starts), trains ``plan.ranks`` on Ray Train, then ``task.collect`` (the last
checkpoint into the run folder) and ``task.finish`` (MLflow, the result). Per worker, the runner
calls ``task.setup`` (what a missing file or bad setting breaks), ``work.distribute`` (DDP), then
:func:`train_epochs`.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from facray.runs import RunFolder
from facray.staged_runs import run_folder
from facray.training.configs import TrainCommon
from facray.training.run_record import TrainingDiverged, inject_failure_once

# How the runner wraps a model for data-parallel training: (model, find_unused_parameters) -> model.
WrapModel = Callable[[torch.nn.Module, bool], torch.nn.Module]
# How the loop hands Ray Train an epoch's metrics and, when this rank writes one, a checkpoint folder.
Report = Callable[[dict, "Path | None"], None]


@dataclass
class Plan:
    """What the driver decided before Ray starts.

    ``ranks``: one share of the work per Ray Train worker (binary: its job dicts; multi-task: None
    each), empty when nothing is left to train; ``shared``: what every worker gets (JSON-able:
    settings hash, class-balance weights, ...); ``train_run``: the Ray Train run's name, fixed by
    the settings so a re-run resumes its checkpoint; ``summary``: the line printed before training;
    ``done``: the result of a run already finished with these settings (nothing is trained);
    ``rows``: usable rows per split (``train``, ``val``, ``test``)."""
    run: RunFolder
    digest: str
    ranks: list
    shared: dict
    train_run: str
    summary: str
    done: Any = None
    rows: dict = field(default_factory=dict)


class RankTraining(Protocol):
    """One worker rank's training state, as :func:`train_epochs` drives it."""
    epoch: int           # epochs finished (restored from a checkpoint)
    total_epochs: int
    state_file: str      # this rank's file in a checkpoint

    @property
    def stopped(self) -> bool: ...                  # nothing left to train here (early stopping)
    def distribute(self, wrap: WrapModel) -> None: ...  # after every rank's setup succeeded
    def fit_epoch(self) -> dict: ...                # one epoch; its metrics (may raise TrainingDiverged)
    def is_last(self) -> bool: ...                  # after fit_epoch, the same answer on every rank
    def writes_checkpoint(self) -> bool: ...
    def describe(self, record: dict) -> str | None: ...  # the epoch's console line, or None
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def finalize(self, folder: RunFolder, resumed_from: int) -> None: ...  # best weights, test metrics


class Task(Protocol):
    """A kind of training run (:data:`facray.training.tasks.TASKS`)."""
    name: str                        # "binary" | "multitask": the key workers look the task up by
    config_class: type[TrainCommon]
    split_train_stream: bool         # stream mode: Ray Train splits the train dataset between workers

    def resolve(self, cfg): ...                         # options decided from the data ("auto"), once
    def plan(self, cfg) -> Plan: ...
    def train_run_name(self, cfg, plan: Plan) -> str: ...  # fixed by the settings: a re-run resumes
    def mlflow_run_name(self, cfg) -> str: ...
    @staticmethod
    def stream_columns(cfg) -> tuple[str, ...]: ...       # the pixel columns a worker reads
    def memory_only(self, cfg) -> str: ...                 # why this run cannot stream ("" if it can)
    def setup(self, cfg, plan: Plan, rank: int, world: int, device: torch.device,
              shards: dict | None) -> RankTraining: ...
    def collect(self, checkpoint: RunFolder, run: RunFolder) -> Any: ...  # the last checkpoint -> run folder
    def finish(self, cfg, plan: Plan, collected, tracking_uri: str, mlflow_run_id: str, register: bool) -> Any: ...
    def trial_result(self, result, run: RunFolder) -> dict: ...


def train_epochs(work: RankTraining, rank: int, out: str | Path, train_run: str, report: Report,
                 saved: dict | None = None, fail_at_epoch: int = 0) -> None:
    """The epoch loop of every worker rank: resume from ``saved`` (this rank's state from the
    latest checkpoint), then train epoch by epoch, reporting each epoch's metrics and, on ranks
    that write one, a checkpoint; the last epoch's checkpoint also carries the finished outputs
    (``work.finalize``) in the run folder's layout. A diverged run writes its reason to the run
    folder (rank 0, under ``train_run``) and ends normally: a retry would diverge again."""
    resumed_from = 0
    if saved is not None:
        work.load_state_dict(saved)
        resumed_from = work.epoch
        if rank == 0:  # after a lost worker or node, or a re-run: the user sees where it picks up
            print(f"[rank 0] resuming from the checkpoint after epoch {resumed_from}", flush=True)
    while work.epoch < work.total_epochs and not work.stopped:
        inject_failure_once(out, fail_at_epoch, work.epoch + 1)
        start = time.perf_counter()
        try:
            record = work.fit_epoch()
        except TrainingDiverged as e:  # every rank stops at the same epoch (check_finite)
            if rank == 0:
                run_folder(out).write_failure(str(e), train_run)
            return
        last = work.is_last()
        record.update(epoch_seconds=time.perf_counter() - start, resumed_from_epoch=resumed_from)
        line = work.describe(record)
        if line:
            print(f"[rank {rank}] {line}", flush=True)
        if not work.writes_checkpoint():
            report(record, None)
            continue
        with tempfile.TemporaryDirectory() as d:
            torch.save(work.state_dict(), Path(d) / work.state_file)
            if last:
                work.finalize(RunFolder(d), resumed_from)
            report(record, Path(d))
        if last:
            break
