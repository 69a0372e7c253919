"""``facray sweep``: a hyperparameter sweep on Ray Tune, for either trainer. Runs on the driver.

Train V2's way (RAY_NOTES): each Tune trial is a function (:func:`run_trial`) that trains one
ordinary facray run — its own run folder under ``SWEEP/trials/`` (evaluate it, label with it) —
with ``TuneReportCallback`` forwarding every epoch's metrics from the Ray Train controller to
Tune, so a scheduler (ASHA) can stop poor trials early. Every trial checkpoints every epoch
(Ray Train, inside its run folder); re-running an interrupted sweep restores the Tune experiment
and runs only the unfinished trials, which resume from their checkpoints.

MLflow (one writer per run): the driver opens the sweep's parent run; each trial's training run
is its child (per-epoch curves logged live by its Train controller). At the end the driver writes
``sweep_results.csv`` (one row per trial) and ``sweep_metric.png`` (the metric over the grid),
logs both to the parent and registers the best trial's predictor.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from facray import storage
from facray.config import config_to_dict, resolve_config
from facray.runners.runtime import fit_in_thread, init_ray
from facray.runners.train import train, with_data_mode
from facray.runs import RunFolder
from facray.staged_runs import run_folder
from facray.tracking import flat_params, register_predictor, resolve_tracking_uri, setup_mlflow
from facray.training.combine import combine
from facray.training.configs import CombineConfig, SweepConfig
from facray.training.data_mode import check_streamable
from facray.training.run_record import LATER_CONFIG_KEYS, later_keys_dropped, settings_hash
from facray.training.sweep_report import plot_metric
from facray.training.splits import SplitSpec, check_splits
from facray.training.sweep_space import SearchSpace, load_space
from facray.training.tasks import task_for

SWEEP_EXPERIMENT = "sweep"  # the Tune experiment's name under SWEEP/tune/


def trial_config(space: SearchSpace, cfg: SweepConfig, overrides: dict | None = None):
    """The trainer config every trial starts from (checked now, before Ray starts)."""
    import yaml
    base = yaml.safe_load(Path(cfg.trial_config).read_text()) if cfg.trial_config else {}
    trial = resolve_config(space.config_class, overrides={**(base or {}), **(overrides or {}),
                                                          "cpus_per_worker": cfg.cpus_per_trial,
                                                          "gpus_per_worker": cfg.gpus_per_trial})
    if getattr(trial, "mode", "fused") != "fused":
        raise ValueError("a binary sweep trains each trial's jobs fused (mode=fused); "
                         "mode=separate is itself a Tune run")
    return trial


def run_trial(config: dict, context: dict) -> None:
    """A Tune trial: one training run with this trial's values (``config``, the swept keys only),
    in its own run folder; ``context`` is what every trial shares (built by :func:`run_sweep`)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    run = run_folder(context["sweep_out"]).trial(tune.get_context().get_trial_name())
    cfg = context["config_class"](**{**context["base"], **config, "out": run.location,
                                     "tracking_uri": context["tracking_uri"], "experiment": context["experiment"]})
    result = train(cfg, (TuneReportCallback(),), context["parent_run_id"], register=False, trial=True)
    final = task_for(cfg).trial_result(result, run)
    # The trial's result: the best epoch's validation figures (the weights the run keeps).
    tune.report({**final, "run_folder": run.location, "finished": 1})


def _scheduler(space: SearchSpace, cfg: SweepConfig, max_t: int):
    if cfg.scheduler == "fifo" or (cfg.scheduler == "space" and space.scheduler is None):
        return None
    if cfg.scheduler == "space":
        return space.scheduler(space.metric, space.mode, max_t)
    from ray.tune.schedulers import ASHAScheduler
    return ASHAScheduler(metric=space.metric, mode=space.mode, max_t=max_t, grace_period=cfg.grace_period)


def run_sweep(cfg: SweepConfig, overrides: dict | None = None) -> dict:
    """Run (or resume) the sweep; return its summary (best trial, metric, registered model).

    ``cfg.out`` on object storage (a URI): the Tune experiment and every trial's run folder live
    there, so the trials may run on any node; their MLflow runs then need a store every node
    reaches (``--tracking-uri``), checked here before Ray starts (ValueError)."""
    space = load_space(cfg.space)
    base = trial_config(space, cfg, overrides)
    sweep = run_folder(cfg.out)
    resolve_tracking_uri(cfg.tracking_uri, sweep.location)  # on object storage: a shared MLflow store, or one line
    sweep.pull()
    try:
        return _run_sweep(sweep, space, base, cfg)
    finally:
        sweep.push()


def _run_sweep(sweep: RunFolder, space: SearchSpace, base, cfg: SweepConfig) -> dict:
    import ray.tune as tune

    task = task_for(base)
    base = task.resolve(base)
    check_streamable(base.data, task.memory_only(base))
    rows = check_splits(SplitSpec.of(base))
    init_ray()
    # Memory or stream for every trial, counting the trials that run at once; decided before the
    # sweep is claimed, so its settings record the mode its trials run in.
    base = with_data_mode(task, base, rows, base.num_workers * cfg.max_concurrent)
    settings = {"space": space.name, "space_values": repr(space.space), "metric": space.metric,
                "base": later_keys_dropped(config_to_dict(base), LATER_CONFIG_KEYS), "num_samples": cfg.num_samples,
                "scheduler": cfg.scheduler}
    sweep.claim(settings, settings_hash(settings), cfg.overwrite)
    uri = setup_mlflow(cfg.tracking_uri, sweep, cfg.experiment)
    parent = sweep.mlflow_run_id() or _open_parent(uri, cfg.experiment, f"sweep-{space.name}", settings)
    sweep.set_mlflow_run_id(parent)
    tune_path, tune_filesystem = sweep.ray_storage("tune")  # on the object storage for a sweep there
    experiment = f"{tune_path}/{SWEEP_EXPERIMENT}"
    context = {"trainer": space.trainer, "config_class": space.config_class, "base": config_to_dict(base),
               "sweep_out": sweep.location, "tracking_uri": uri, "experiment": cfg.experiment, "parent_run_id": parent}
    # CPU 0.01: the trial function only waits; its Ray Train worker holds the trial's CPUs/GPUs.
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"CPU": 0.01})
    if tune.Tuner.can_restore(experiment, storage_filesystem=tune_filesystem):
        print(f"resuming the sweep in {storage.join(sweep.location, 'tune', SWEEP_EXPERIMENT)} (finished trials "
              "are kept)", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=tune_filesystem)
    else:
        max_t = max(space.grid_values("epochs") or [getattr(base, "epochs", 1)]) + 1  # + the final report
        tuner = tune.Tuner(
            trainable, param_space=space.space,
            tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=cfg.num_samples,
                                        max_concurrent_trials=cfg.max_concurrent,
                                        scheduler=_scheduler(space, cfg, max_t)),
            run_config=tune.RunConfig(name=SWEEP_EXPERIMENT, storage_path=tune_path, storage_filesystem=tune_filesystem,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    grid = fit_in_thread(tuner)  # Ctrl-C reaches facray's handler: one line, exit 130; Tune resumes
    table = results_table(grid, space)
    return finish_sweep(sweep, space, cfg, table, uri, parent)


def _open_parent(uri: str, experiment: str, name: str, settings: dict) -> str:
    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.create_run(mlflow.get_experiment_by_name(experiment).experiment_id, run_name=name)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in flat_params(settings).items()])
    return run.info.run_id


def results_table(grid, space: SearchSpace) -> pd.DataFrame:
    """One row per trial: its values, the metric (best epoch's when finished, else the last one
    reported), how many epochs it ran, its status and run folder."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}  # a trial that never started has none
        finished = bool(metrics.get("finished"))
        status = ("error" if result.error else "finished" if finished else "stopped early" if metrics
                  else "not run")
        epochs = int(metrics.get("epochs_run") or metrics.get("epoch") or 0)
        rows.append({"trial": metrics.get("trial_id") or Path(result.path).name,
                     **{k: config.get(k, math.nan) for k in sorted(space.space)},
                     space.metric: metrics.get(space.metric, math.nan), "epochs_run": epochs,
                     "mean_test_accuracy": metrics.get("mean_test_accuracy", math.nan), "status": status,
                     "run_folder": metrics.get("run_folder", "")})
    table = pd.DataFrame(rows)
    return table.sort_values(space.metric, ascending=space.mode == "min", na_position="last").reset_index(drop=True)


def finish_sweep(sweep: RunFolder, space: SearchSpace, cfg: SweepConfig, table: pd.DataFrame, uri: str,
                 parent: str) -> dict:
    """Write the table and the plot, log them, register the best finished trial's predictor."""
    import mlflow

    table.to_csv(sweep.sweep_results_file, index=False)
    plot_metric(table, space, sweep.sweep_plot_file)
    finished = table[table.status == "finished"]
    if finished.empty:
        raise RuntimeError(f"no trial finished; see {storage.join(sweep.location, sweep.sweep_results_file.name)} and "
                           f"{storage.join(sweep.location, 'tune')}")
    best = finished.iloc[0]
    predictor = _best_predictor(run_folder(best.run_folder), space, uri)
    name = cfg.registered_name or f"facray-sweep-{space.name.replace('_', '-')}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=parent):
        mlflow.log_artifact(str(sweep.sweep_results_file))
        mlflow.log_artifact(str(sweep.sweep_plot_file))
        mlflow.log_metric(f"best_{space.metric}", float(best[space.metric]))
        mlflow.set_tag("best_trial", best.trial)
        registered = register_predictor(predictor, name)
    summary = {"metric": space.metric, "best_trial": best.trial, "best_config": {k: _plain(best[k]) for k in sorted(space.space)},
               space.metric: float(best[space.metric]), "run_folder": best.run_folder, "registered": registered,
               "results": storage.join(sweep.location, sweep.sweep_results_file.name),
               "plot": storage.join(sweep.location, sweep.sweep_plot_file.name),
               "trials": {s: int(n) for s, n in table.status.value_counts().items()}}
    sweep.sweep_summary_file.write_text(json.dumps(summary, indent=1))
    return summary


def _best_predictor(run: RunFolder, space: SearchSpace, uri: str) -> Path:
    """The best trial's predictor: a multi-task run's model, or a binary run combined now."""
    if space.trainer == "multitask":
        run.pull()  # a trial on object storage: its local copy, on this node
        return run.model_dir
    dest, _ = combine(CombineConfig(run=run.location, register=False, tracking_uri=uri))
    return dest


def _plain(v):
    return v.item() if hasattr(v, "item") else v
