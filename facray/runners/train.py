"""The one Ray Train driver for every training task (``facray train``, ``facray train-binary``,
a sweep's trials): :func:`train`. What differs between tasks is in :mod:`facray.training.tasks`;
each worker runs :func:`facray.runners.worker.train_per_worker`.

- Every check that can fail is made before Ray starts (``task.plan``); ``--data auto`` is decided
  from the nodes' memory once Ray is up, before any worker starts (:func:`with_data_mode`).
- One MLflow run per training run, opened before training: the epochs reach it *while training
  runs*, from the Train controller (:class:`EpochMetricsToMlflow`, one writer); a resumed run
  gets the same MLflow run back.
- A checkpoint every epoch; ``FailureConfig(max_failures)`` restarts lost workers from it, and a
  re-run of the same settings resumes it (the Train run's name is fixed by the settings).
- The last checkpoint carries the finished outputs, which ``task.collect`` copies into the run
  folder (:mod:`facray.runs`); ``task.finish`` logs and returns the result.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import ray.train
from ray.train.torch import TorchTrainer

from facray.config import absolute_paths, check_node_wait, config_to_dict
from facray.runners.mlflow_callback import EpochMetricsToMlflow
from facray.runners.node_wait import callback as node_wait_callback
from facray.runners.node_wait import exceeded as node_wait_exceeded
from facray.runners.node_wait import start_timeout
from facray.runners.runtime import (ClusterTooSmall, Terminated, describe_nodes, fit_in_thread, init_ray,
                                    started_local_ray, train_logging_config, verbose)
from facray.runners.streaming import split_datasets, stream_data_config
from facray.runners.worker import train_per_worker
from facray.data.prepared import read_metadata
from facray.runs import RunFolder
from facray.tracking import check_training_run, end_training_run, resolve_tracking_uri, start_training_run
from facray.training.binary_jobs import BinaryJob
from facray.training.binary_task import train_run_name
from facray.training.configs import TrainCommon
from facray.preflight import cgroup_memory_limit
from facray.training.data_mode import Node, bytes_per_worker, check_streamable, choose_data_mode
from facray.training.run_record import TrainingFailed
from facray.training.splits import SplitSpec
from facray.training.task import Plan, Task
from facray.training.tasks import TASKS, task_for


def train(cfg: TrainCommon, callbacks: tuple = (), parent_run_id: str | None = None, register: bool = True,
          trial: bool = False) -> Any:
    """Train ``cfg`` (a :class:`BinaryConfig` or :class:`MultitaskConfig`) into ``cfg.out``, or
    find it already trained with these settings; returns the task's result (binary: the per-job
    table; multi-task: the metrics record).

    ``callbacks``: more Ray Train callbacks (a sweep trial passes Tune's); ``parent_run_id``: the
    MLflow run this one is a child of (a sweep's); ``register``: register a multi-task model (a
    sweep registers only its best trial's); ``trial``: a Tune trial, which waits for its workers as
    long as it takes (trials queue for each other's resources), not ``cfg.node_wait``.
    ``cfg.out`` must be a run of the same settings (or new, or ``cfg.overwrite``): see
    :mod:`facray.training.run_record`. Raises ValueError (and its kin) for a bad setting before Ray
    starts, and for ``--data memory`` that does not fit the nodes before any worker starts;
    :class:`TrainingFailed` for a failure the workers reported; :class:`ClusterTooSmall` when no
    node offers the workers' resources within ``cfg.node_wait`` seconds."""
    task = task_for(cfg)
    cfg = task.resolve(absolute_paths(cfg))
    check_streamable(cfg.data, task.memory_only(cfg))
    check_node_wait(cfg.node_wait)
    resolve_tracking_uri(cfg.tracking_uri, cfg.out)  # --out on object storage needs a shared MLflow store
    plan = task.plan(cfg)
    try:
        return _train_planned(task, cfg, plan, callbacks, parent_run_id, register, trial)
    finally:  # a run on object storage: what this driver wrote goes back there, finished or not
        plan.run.push()


def _train_planned(task: Task, cfg: TrainCommon, plan: Plan, callbacks: tuple, parent_run_id: str | None,
                   register: bool, trial: bool) -> Any:
    if plan.done is not None:
        print(plan.summary, flush=True)
        return plan.done
    if parent_run_id is None:  # a sweep checks its store once, not in every trial
        check_training_run(cfg)
    print(plan.summary, flush=True)
    separate = getattr(cfg, "mode", "fused") == "separate"  # one worker per job, max_concurrent at once
    if plan.ranks:
        init_ray()
        workers = min(cfg.max_concurrent, sum(map(len, plan.ranks))) if separate else len(plan.ranks)
        cfg = with_data_mode(task, cfg, plan.rows, workers)
        plan = replace(plan, train_run=task.train_run_name(cfg, plan))
    tracking_uri, mlflow_run_id = start_training_run(cfg.tracking_uri, plan.run, cfg.experiment,
                                                     task.mlflow_run_name(cfg), config_to_dict(cfg), parent_run_id)
    plan.run.set_mlflow_run_id(mlflow_run_id)  # combine and evaluate log under it
    plan.run.push()  # on object storage: the run's identity there before training starts
    collected = None
    try:
        if plan.ranks and separate:
            run_separate(task, cfg, plan)
        elif plan.ranks:
            result = fit_on_ray(task, cfg, plan, (EpochMetricsToMlflow(tracking_uri, mlflow_run_id), *callbacks),
                                node_wait=None if trial else cfg.node_wait)
            with result.checkpoint.as_directory() as d:
                collected = task.collect(RunFolder(d), plan.run)
        return task.finish(cfg, plan, collected, tracking_uri, mlflow_run_id, register)
    except BaseException as e:
        try:
            end_training_run(tracking_uri, mlflow_run_id,
                             "KILLED" if isinstance(e, (KeyboardInterrupt, Terminated)) else "FAILED")
        except Exception:  # an unreachable store must not hide why the run stopped
            pass
        raise


def ray_nodes() -> list[Node]:
    """The live Ray nodes' memory for Ray workers (Ray's ``memory`` resource), CPUs and GPUs. When
    this driver started a local Ray, also within the driver's cgroup memory limit less the object
    store (:func:`cgroup_memory_limit`: a limit Ray does not see, which binds the Ray it starts)."""
    here, limit = ray.util.get_node_ip_address(), cgroup_memory_limit() if started_local_ray() else None
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        resources = n["Resources"]
        memory = resources.get("memory", 0.0)
        if limit is not None and n.get("NodeManagerAddress") == here:
            memory = min(memory, max(0.0, limit - resources.get("object_store_memory", 0.0)))
        nodes.append(Node(memory, resources.get("CPU", 0.0), resources.get("GPU", 0.0)))
    return nodes


def with_data_mode(task: Task, cfg: TrainCommon, rows: dict[str, int], workers: int) -> TrainCommon:
    """``cfg`` with ``data`` decided (``auto`` -> ``memory`` or ``stream``) and checked against
    the nodes' memory (:func:`facray.training.data_mode.choose_data_mode`), the choice printed.
    ``workers``: the Ray Train workers that run at once (a sweep: every concurrent trial's).
    Raises ValueError when memory mode does not fit, before any worker starts."""
    per_worker = bytes_per_worker(read_metadata(cfg.prepared), rows, task.stream_columns(cfg))
    mode, line = choose_data_mode(cfg.data, per_worker, ray_nodes(), workers, cfg.cpus_per_worker,
                                  cfg.gpus_per_worker, task.memory_only(cfg))
    print(line, flush=True)
    return replace(cfg, data=mode)


def scaling(cfg: TrainCommon, num_workers: int) -> ray.train.ScalingConfig:
    """``num_workers`` workers of ``cfg.cpus_per_worker`` CPUs (and ``cfg.gpus_per_worker`` GPUs),
    placed by ``cfg.placement`` (Ray's placement group strategy, PACK or SPREAD)."""
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    return ray.train.ScalingConfig(num_workers=num_workers, use_gpu=cfg.gpus_per_worker > 0,
                                   resources_per_worker=resources, placement_strategy=cfg.placement.upper())


def fit_on_ray(task: Task, cfg: TrainCommon, plan: Plan, callbacks: tuple = (),
               node_wait: float | None = None) -> ray.train.Result:
    """One Ray Train run of ``plan``: ``len(plan.ranks)`` workers, named ``plan.train_run``
    (storage: the run folder's ``ray_results/``, on its object storage for a run there; a re-run of the same name resumes from its latest
    checkpoint), ``cfg.max_failures`` restarts for lost workers and nodes, each from the latest
    checkpoint. A failure a retry would repeat, which a worker wrote with
    :meth:`RunFolder.write_failure` and then returned, is raised here as :class:`TrainingFailed`.

    ``node_wait``: seconds the workers may wait for their resources each time they have none (at
    the start, after a lost node), before :class:`ClusterTooSmall` is raised naming what is
    missing (:mod:`facray.runners.node_wait`). None: wait forever, as Ray Train does (a Tune trial
    queues for the resources other trials hold)."""
    datasets = {}
    if cfg.data == "stream":
        datasets = {"datasets": split_datasets(SplitSpec.of(cfg), task.stream_columns(cfg), shuffle_seed=cfg.seed),
                    "dataset_config": stream_data_config(task.split_train_stream)}
    storage_path, storage_filesystem = plan.run.ray_storage()  # on object storage for a run there
    trainer = TorchTrainer(
        train_per_worker,
        train_loop_config={"task": task.name, "cfg": config_to_dict(cfg), "plan": plan, "verbose": verbose()},
        scaling_config=scaling(cfg, len(plan.ranks)),
        run_config=ray.train.RunConfig(
            name=plan.train_run, storage_path=storage_path, storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[*callbacks, *node_wait_callback(node_wait)], logging_config=train_logging_config()),
        **datasets)
    plan.run.clear_failure(plan.train_run)
    try:
        with start_timeout(node_wait):
            result = fit_in_thread(trainer)
    except ray.train.ControllerError as e:
        if not node_wait_exceeded(e):
            raise
        need = scaling(cfg, len(plan.ranks))
        raise ClusterTooSmall(
            f"Ray Train waited {node_wait:g} s (--node-wait) for {need.num_workers} worker(s) of "
            f"{need.resources_per_worker} ({need.placement_strategy}) and no node offered them "
            f"({e.controller_failure}); {describe_nodes()}. Add a node (or let the autoscaler), then re-run the "
            f"same command: it resumes from the last checkpoint in {plan.run.location}") from None
    failure = plan.run.failure(plan.train_run)
    if failure:
        raise TrainingFailed(failure)
    return result


def run_separate(task: Task, cfg: TrainCommon, plan: Plan) -> None:
    """``train-binary --mode separate``: one Ray Train run per job, several at once as Ray Tune
    trials over the job grid (fractional CPU/GPU per trial): for comparison with fused mode, and
    for clusters with many small GPUs. Each job's epochs reach Tune, not MLflow (its child run
    holds them)."""
    from ray import tune

    jobs = [job for share in plan.ranks for job in share]
    storage_path, storage_filesystem = plan.run.ray_storage()
    tuner = tune.Tuner(
        tune.with_resources(_separate_trial, {"CPU": 0.01}),
        param_space={"task": task.name, "cfg": config_to_dict(cfg), "plan": replace(plan, ranks=[]),
                     "job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent),
        run_config=tune.RunConfig(name=f"separate-{int(time.time())}", storage_path=storage_path,
                                  storage_filesystem=storage_filesystem, verbose=0))
    try:
        grid = fit_in_thread(tuner)  # Ctrl-C reaches facray's one handler (see facray.runners.runtime)
    finally:  # a run on object storage: what the trials sent from their nodes, before any push
        plan.run.fetch_jobs([BinaryJob(**job).key for job in jobs])
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} separate job(s) failed: {errors[:3]}")


def _separate_trial(config: dict) -> None:
    """A Tune trial: one Ray Train run of one job; its epochs reach Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    task, job = TASKS[config["task"]], config["job"]
    cfg = task.config_class(**config["cfg"])
    name = train_run_name(f"job-{job['attribute']}__{job['modality']}", cfg, [BinaryJob(**job)])
    plan = replace(config["plan"], ranks=[[job]], train_run=name)
    result = fit_on_ray(task, cfg, plan, (TuneReportCallback(),))
    with result.checkpoint.as_directory() as d:  # this node may not be the driver's
        plan.run.send_jobs_from(RunFolder(d))
