"""The one Ray Train worker loop (:func:`train_per_worker`) for every training task: Ray's side
of :func:`facray.training.task.train_epochs` (rank, device, dataset shards, DDP, checkpoints,
reports). What differs between tasks is in :mod:`facray.training.tasks`; the driver is
:mod:`facray.runners.train`."""
from __future__ import annotations

import socket
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch

from facray.runners.ranks import set_up_on_every_rank
from facray.runners.runtime import quiet_train_worker
from facray.training.task import train_epochs
from facray.training.tasks import TASKS


def train_per_worker(config: dict) -> None:
    """Ray Train worker loop. ``config``: ``task`` (a :data:`TASKS` name), ``cfg`` (its config
    as a dict), ``plan`` (the driver's :class:`~facray.training.task.Plan`), ``verbose``."""
    task = TASKS[config["task"]]
    cfg = task.config_class(**config["cfg"])
    plan = config["plan"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    quiet_train_worker(config.get("verbose", False))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = ray.train.torch.get_device()
    # One line per worker and attempt: where each rank landed (after a lost node, the new one).
    print(f"[rank {rank}] node {ray.get_runtime_context().get_node_id()[:12]} ({socket.gethostname()}), "
          f"{device}, {world} worker(s)", flush=True)
    shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val", "test")} if cfg.data == "stream" else None
    work = set_up_on_every_rank(cfg.out, lambda: task.setup(cfg, plan, rank, world, device, shards))
    if work is None:  # a failure a retry would repeat: the driver reports it
        return
    work.distribute(_prepare_model)
    train_epochs(work, rank, cfg.out, context.get_experiment_name(), _report, saved_state(work.state_file, device),
                 cfg.fail_at_epoch)


def _prepare_model(model: torch.nn.Module, find_unused_parameters: bool) -> torch.nn.Module:
    return ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True} if find_unused_parameters else None)


def _report(metrics: dict, folder: Path | None) -> None:
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)


def saved_state(filename: str, device: torch.device) -> dict | None:
    """This worker's ``filename`` from the latest checkpoint of this Train run (after a restart
    or a re-run), else None. Tensors, dicts and lists only: a checkpoint on shared storage can
    never run code."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None
    with checkpoint.as_directory() as d:
        path = Path(d) / filename
        return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None
