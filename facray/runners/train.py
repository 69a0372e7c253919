"""What both Ray Train drivers (:mod:`.train_binary`, :mod:`.train_multitask`) and their worker
loops share: one Ray Train run with facray's settings (resources, storage in the run folder,
retries, two checkpoints kept, a failure the workers reported raised as one line), and a worker's
own state read back from the latest checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import ray.train
import torch
from ray.train.torch import TorchTrainer

from facray.runners.runtime import fit_in_thread, train_logging_config
from facray.runs import RunFolder
from facray.training.configs import TrainCommon
from facray.training.run_record import TrainingFailed


def scaling(cfg: TrainCommon, num_workers: int) -> ray.train.ScalingConfig:
    """``num_workers`` workers of ``cfg.cpus_per_worker`` CPUs (and ``cfg.gpus_per_worker`` GPUs)."""
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    return ray.train.ScalingConfig(num_workers=num_workers, use_gpu=cfg.gpus_per_worker > 0,
                                   resources_per_worker=resources)


def fit_on_ray(loop: Callable[[dict], None], loop_config: dict, cfg: TrainCommon, name: str, num_workers: int,
               callbacks: tuple = (), datasets: dict | None = None,
               dataset_config: ray.train.DataConfig | None = None) -> ray.train.Result:
    """Run ``loop(loop_config)`` on ``num_workers`` Ray Train workers as the Train run ``name``
    (storage: the run folder's ``ray_results/``; a re-run of the same name resumes from its latest
    checkpoint), ``cfg.max_failures`` restarts for lost workers. A failure a retry would repeat,
    which a worker wrote with :meth:`RunFolder.write_failure` and then returned, is raised here as
    :class:`TrainingFailed`."""
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config, scaling_config=scaling(cfg, num_workers),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(RunFolder(cfg.out).ray_results_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks), logging_config=train_logging_config()),
        **({"datasets": datasets, "dataset_config": dataset_config} if datasets else {}))
    run = RunFolder(cfg.out)
    run.clear_failure(name)
    result = fit_in_thread(trainer)
    failure = run.failure(name)
    if failure:
        raise TrainingFailed(failure)
    return result


def saved_state(filename: str, device: torch.device) -> dict | None:
    """In a worker: its ``filename`` from the latest checkpoint of this Train run (after a
    restart or a re-run), else None. Tensors, dicts and lists only: a checkpoint on shared storage
    can never run code."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None
    with checkpoint.as_directory() as d:
        path = Path(d) / filename
        return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None
