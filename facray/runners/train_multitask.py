"""``facray train``: one multi-task network (40 sigmoid outputs) on Ray Train. Runs on the driver;
training runs in Ray Train workers (:func:`facray.runners.multitask_worker.train_per_worker`), the
math in the pure :mod:`facray.training.multitask`.

- DDP across ``num_workers``; a checkpoint every epoch, resumed after a failure
  (``FailureConfig``) or a re-run; the last checkpoint carries the predictor and the metrics,
  which the driver copies into the run folder (:mod:`facray.runs`) and registers in MLflow.
- What every worker shares (settings hash, class-balance weights, which attributes the data
  labels) is computed once here, from the training labels.
- MLflow: the driver opens the run; per-epoch metrics reach it *while training runs* from the
  Train controller (:class:`EpochMetricsToMlflow`, a Train V2 callback: one writer).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import ray.train

from facray.attributes import ATTRIBUTES, resolve_attributes
from facray.config import absolute_paths, config_to_dict
from facray.data.prepared import read_metadata
from facray.runners.mlflow_callback import EpochMetricsToMlflow
from facray.runners.multitask_worker import train_per_worker
from facray.runners.runtime import init_ray, verbose
from facray.runners.streaming import split_datasets
from facray.runners.train import fit_on_ray
from facray.runs import RunFolder
from facray.tracking import check_training_run, finish_training_run, start_training_run
from facray.training.configs import REGISTERED_PREFIX, MultitaskConfig, input_size, uses_identities, uses_masks
from facray.training.metrics import positive_weights, trainable_attributes
from facray.training.run_record import claim_run
from facray.training.splits import SplitSpec, check_splits, train_identities, train_labels


def train_multitask(cfg: MultitaskConfig, callbacks: tuple = (), parent_run_id: str | None = None,
                    register: bool = True) -> dict:
    """Train ``cfg.model`` into ``cfg.out`` (or find it already trained with these settings);
    register it in MLflow. Returns the run's metrics record.

    ``callbacks``: more Ray Train callbacks (a sweep trial passes Tune's); ``parent_run_id``: the
    MLflow run this one is a child of (a sweep's); ``register``: register the model (a sweep
    registers only its best trial's)."""
    cfg = absolute_paths(cfg)
    input_size(cfg)  # an unknown model fails here, before Ray starts, with the known names
    if cfg.weights and not Path(cfg.weights).is_file():
        raise FileNotFoundError(f"{cfg.weights}: --weights file not found")
    if cfg.data == "stream" and cfg.val_split == "holdout":
        raise ValueError("--val-split holdout needs --data memory; give the prepared data a val split for stream mode")
    selected = set(resolve_attributes(cfg.attributes))  # a typo fails here with the known names
    if uses_masks(cfg):
        if not read_metadata(cfg.prepared).get("mask_size"):
            raise ValueError(f"{cfg.model} trains on weak masks, and {cfg.prepared} has none: prepare it with "
                             f"--masks, or train without segmentation (--mask-weight 0)")
    identities = []
    if uses_identities(cfg):
        if cfg.data == "stream":
            raise ValueError(f"{cfg.model} with identities needs --data memory")
        identities = train_identities(SplitSpec.of(cfg)).tolist()
        if len(identities) < 2:
            raise ValueError(f"{cfg.prepared}: the training rows have {len(identities)} known identities; "
                             f"{cfg.model} needs a dataset with identities (CelebA's identity_CelebA.txt; "
                             f"prepare --split identity for closed-set identification), or --identity-weight 0")
    counts = check_splits(SplitSpec.of(cfg))
    # From the training labels, once, here (stream-mode workers never hold them all).
    labels = train_labels(SplitSpec.of(cfg))
    trainable = trainable_attributes(labels, [a for a in ATTRIBUTES if a in selected], cfg.prepared)
    run, digest = claim_run(cfg)
    if run.is_multitask and run.metrics().get("settings_hash") == digest:
        print(f"{run.root}: already trained with these settings (model in {run.model_dir})", flush=True)
        return run.metrics()
    if parent_run_id is None:  # a sweep checks its store once, not in every trial
        check_training_run(cfg)
    print(f"training {cfg.model} on {cfg.num_workers} worker(s); rows: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    init_ray()
    tracking_uri, run_id = start_training_run(cfg.tracking_uri, run, cfg.experiment, f"train-{cfg.model}",
                                              config_to_dict(cfg), parent_run_id)
    run.set_mlflow_run_id(run_id)  # evaluate logs under it
    model_kwargs = {**cfg.model_kwargs(), **({"num_identities": len(identities)} if identities else {})}
    loop_config = {"cfg": asdict(cfg), "verbose": verbose(), "settings_hash": digest, "model_kwargs": model_kwargs, "identities": identities, "positive_weights": positive_weights(labels, cfg.max_pos_weight).tolist(),
                   "labelled_attributes": trainable}
    datasets = data_config = None
    if cfg.data == "stream":
        columns = ("image", "masks") if uses_masks(cfg) else ("image",)
        datasets = split_datasets(SplitSpec.of(cfg), columns)
        data_config = ray.train.DataConfig(datasets_to_split=["train"])
    result = fit_on_ray(train_per_worker, loop_config, cfg, f"multitask-{digest[:12]}", cfg.num_workers,
                        (EpochMetricsToMlflow(tracking_uri, run_id), *callbacks), datasets, data_config)
    with result.checkpoint.as_directory() as d:
        record = run.take_model_from(RunFolder(d))
    record["registered"] = finish_training_run(tracking_uri, run_id, run, record,
                                               f"{REGISTERED_PREFIX}{cfg.model}" if register else None)
    run.write_metrics(record)
    return record
