"""``facray train``: one multi-task network (40 sigmoid outputs) on Ray Train. Runs on the driver;
training runs in Ray Train workers (:func:`train_per_worker`), the math in the pure
:mod:`facray.training.multitask`.

- DDP across ``num_workers`` (``prepare_model``: gloo on CPU, NCCL on GPU); each worker loads the
  prepared arrays and trains on its equal share of every epoch's shuffled order; every worker
  validates on the whole validation set, so early-stopping decisions agree without a collective.
- A checkpoint every epoch (rank 0), resumed after a failure (``FailureConfig``) or a re-run.
- At the end rank 0 restores the best epoch, chooses per-attribute thresholds on validation,
  scores the test split and writes the predictor (:mod:`facray.predictor`, multi-task format)
  into the last checkpoint; the driver copies it to ``<out>/model`` and registers it in MLflow.
- MLflow: the driver opens the run; per-epoch metrics reach it *while training runs* from the
  Train controller (:class:`EpochMetricsToMlflow`, a Train V2 callback: one writer).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from facray.config import config_to_dict, option, save_config
from facray.training.run_record import (RunOptions, claim_run, inject_failure_once, run_settings,
                                        settings_hash)
from facray.attributes import ATTRIBUTES
from facray.training.metrics import positive_weights
from facray.training.splits import SplitSpec, array_batches, check_splits, load_split_arrays, train_labels

REGISTERED_PREFIX = "facray-"


@dataclass
class TrainConfig(RunOptions):
    model: str = option("abm-trunk", "registered model (facray train --list-models)")
    prepared: str = option("prepared", "folder or URI written by `facray prepare`")
    out: str = option("runs/multitask", "run folder (model, checkpoints, report, MLflow store)")
    image_size: int = option(0, "model input side; 0 = the model's default")
    pretrained: str | None = option(None, "torchvision weights name (DEFAULT, IMAGENET1K_V1; downloads once)")
    weights: str | None = option(None, "local state dict to start from (torchvision backbone or facray model)")
    train_base: bool = option(False, "vgg19-transfer: also train the convolutional base")
    bbox_head: bool = option(False, "vgg19-transfer: bbox regression head (MSE)")
    landmark_head: bool = option(False, "vgg19-transfer: landmark regression head (MSE)")
    epochs: int = option(20, "epoch budget")
    batch_size: int = option(64, "images per step per worker")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    lr_schedule: Literal["constant", "cosine"] = option("cosine", "learning rate over the epoch budget")
    patience: int = option(3, "early stopping patience on validation loss")
    class_balance: bool = option(False, "weight positives by negatives/positives per attribute (rare attributes)")
    max_pos_weight: float = option(10.0, "cap of the class-balance weight")
    online_flip: bool = option(True, "random horizontal flips while training")
    seed: int = option(0, "seed of weights, shuffling and flips")
    data: Literal["memory", "stream"] = option("memory", "memory (each worker loads the prepared arrays) | "
                                                         "stream (Ray Data feeds the workers)")
    num_workers: int = option(1, "Ray Train workers (DDP)")
    gpus_per_worker: float = option(0.0, "GPUs per worker")
    cpus_per_worker: float = option(1.0, "CPUs per worker (use < 1 on small machines)")
    experiment: str = option("facray-multitask", "MLflow experiment")

    def model_kwargs(self) -> dict:
        if not self.model.startswith("vgg"):
            return {}
        return {"train_base": self.train_base, "bbox_head": self.bbox_head, "landmark_head": self.landmark_head}


def input_size(cfg: TrainConfig) -> int:
    from facray.models.registry import model_spec
    return cfg.image_size or model_spec(cfg.model).input_size


# ---- the worker ---------------------------------------------------------------------------------

def train_per_worker(config: dict) -> None:
    """Ray Train worker loop (see module docstring)."""
    import torch
    import ray.train
    import ray.train.torch

    from facray.data.prepared import read_metadata
    from facray.models.registry import build_model
    from facray.training.multitask import MultiTaskTrainer, MultiTaskTrainerConfig

    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    size = input_size(cfg)
    model = build_model(cfg.model, size, pretrained=cfg.pretrained, weights_file=cfg.weights, **cfg.model_kwargs())
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    meta = read_metadata(cfg.prepared)
    train_batches, val_batches, test_batches = _batch_sources(cfg, meta, rank, world)
    pos_weight = np.asarray(config["positive_weights"], np.float32) if cfg.class_balance else None
    tcfg = MultiTaskTrainerConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, image_size=size, patience=cfg.patience,
                                  class_balance=cfg.class_balance, max_pos_weight=cfg.max_pos_weight,
                                  online_flip=cfg.online_flip, seed=cfg.seed,
                                  lr_schedule=cfg.lr_schedule, epochs=cfg.epochs)
    trainer = MultiTaskTrainer(model, tcfg, device, pos_weight)
    resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            # Tensors, dicts and lists only: a checkpoint on shared storage can never run code.
            trainer.load_state_dict(torch.load(Path(d) / "trainer.pt", map_location=device, weights_only=True))
            resumed_from = trainer.epoch
    digest = settings_hash(run_settings(cfg, meta["shards"]))

    while trainer.epoch < cfg.epochs and not trainer.stopped:
        inject_failure_once(cfg.out, cfg.fail_at_epoch, trainer.epoch + 1)
        start = time.perf_counter()
        record = trainer.fit_epoch(train_batches(trainer.epoch), val_batches())
        record.update(epoch_seconds=time.perf_counter() - start, resumed_from_epoch=resumed_from)
        last = trainer.epoch == cfg.epochs or trainer.stopped
        print(f"[rank {rank}] epoch {trainer.epoch}/{cfg.epochs}: loss {record['loss']:.4f}, val loss "
              f"{record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}, "
              f"{record['epoch_seconds']:.0f}s", flush=True)
        if rank != 0:
            ray.train.report(record)
            continue
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), Path(d) / "trainer.pt")
            if last:
                write_final_outputs(Path(d), trainer, val_batches(), test_batches(), config["labelled_attributes"],
                                    cfg, meta, digest, resumed_from)
            ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))


def _batch_sources(cfg: TrainConfig, meta: dict, rank: int, world: int):
    """(train(epoch), val(), test()) batch iterators: from memory (each worker loads the arrays and
    takes its equal share of every epoch) or from Ray Data shards (``--data stream``; the train
    dataset is split equally between workers by Ray Train)."""
    import ray.train
    if cfg.data == "stream":
        from facray.training.streaming import stream_batches
        shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val", "test")}
        return (lambda e: stream_batches(shards["train"], cfg.batch_size, meta, cfg.seed * 1000 + e),
                lambda: stream_batches(shards["val"], 256, meta, None),
                lambda: stream_batches(shards["test"], 256, meta, None))
    data = load_split_arrays(SplitSpec.of(cfg), ("image",))
    return (lambda e: array_batches(data["train"], cfg.batch_size, True, cfg.seed, e, rank, world),
            lambda: array_batches(data["val"], 256),
            lambda: array_batches(data["test"], 256))


def write_final_outputs(folder: Path, trainer, val_batches, test_batches, labelled_attributes: list[str],
                        cfg: TrainConfig, meta: dict, digest: str, resumed_from: int) -> None:
    """Best weights, thresholds on validation, test metrics, the predictor (rank 0, last epoch)."""
    from facray.predictor import write_multitask_predictor
    from facray.training.metrics import attribute_metrics, choose_thresholds

    trainer.restore_best()
    val = trainer.evaluate(val_batches)
    thresholds = choose_thresholds(val["probs"], val["labels"])
    test = trainer.evaluate(test_batches, thresholds)
    half = attribute_metrics(test["probs"], test["labels"], 0.5)
    val_tuned = attribute_metrics(val["probs"], val["labels"], thresholds)
    trained = [ATTRIBUTES.index(a) for a in labelled_attributes]
    per_attr = []
    for j in trained:
        m = {k: v[j].item() for k, v in test["metrics"].items()}
        per_attr.append({"attribute": ATTRIBUTES[j], "threshold": float(thresholds[j]),
                         "val_accuracy": float(val_tuned["accuracy"][j]), "test_accuracy": m["accuracy"],
                         "test_accuracy_at_0.5": float(half["accuracy"][j]), "test_precision": m["precision"],
                         "test_recall": m["recall"], "test_f1": m["f1"],
                         "confusion": [[m["tn"], m["fp"]], [m["fn"], m["tp"]]], "test_count": m["count"]})
    state = {k: v.detach().cpu() for k, v in trainer.module.state_dict().items()}
    choices = [{k: r[k] for k in ("attribute", "threshold", "val_accuracy", "test_accuracy")} for r in per_attr]
    write_multitask_predictor(folder / "predictor", cfg.model, cfg.model_kwargs(), state,
                              {"size": meta["size"], "margin": meta.get("margin", 0.35)}, trainer.cfg.image_size,
                              choices, extra={"name": f"{REGISTERED_PREFIX}{cfg.model}:{digest[:8]}",
                                              "settings_hash": digest})
    record = {"model": cfg.model, "settings_hash": digest, "status": "finished", "best_epoch": trainer.best_epoch,
              "epochs_run": trainer.epoch, "stopped_early": trainer.stopped, "resumed_from_epoch": resumed_from,
              "history": trainer.history, "attributes": per_attr,
              "mean_test_accuracy": float(np.mean([r["test_accuracy"] for r in per_attr])),
              "mean_test_accuracy_at_0.5": float(np.mean([r["test_accuracy_at_0.5"] for r in per_attr]))}
    (folder / "metrics.json").write_text(json.dumps(record, indent=1))


# ---- the driver ---------------------------------------------------------------------------------

def _callback_class():
    import ray.train

    class EpochMetricsToMlflow(ray.train.UserCallback):
        """Runs in the Train controller: logs rank 0's epoch metrics to the run the driver opened,
        as they arrive (the controller is the only writer while training runs)."""

        def __init__(self, tracking_uri: str, run_id: str):
            self.tracking_uri, self.run_id = tracking_uri, run_id

        def after_report(self, run_context, metrics, checkpoint):
            from facray.tracking import log_epoch
            log_epoch(self.tracking_uri, self.run_id, metrics[0])

    return EpochMetricsToMlflow


def train_multitask(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` into ``cfg.out`` (or find it already trained with these settings);
    register it in MLflow. Returns the run's metrics record."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from facray.data.prepared import read_metadata
    from facray.runtime import init_ray
    from facray.tracking import finish_training_run, start_training_run

    input_size(cfg)  # an unknown model fails here, before Ray starts, with the known names
    if cfg.data == "stream" and cfg.val_split == "holdout":
        raise ValueError("--val-split holdout needs --data memory; give the prepared data a val split for stream mode")
    out = Path(cfg.out).resolve()
    counts = check_splits(SplitSpec.of(cfg))
    digest = claim_run(out, run_settings(cfg, read_metadata(cfg.prepared)["shards"]), cfg.overwrite)
    save_config(cfg, out / "config.yaml")
    metrics_file = out / "metrics.json"
    if metrics_file.is_file() and json.loads(metrics_file.read_text()).get("settings_hash") == digest \
            and (out / "model" / "manifest.json").is_file():
        print(f"{out}: already trained with these settings (model in {out / 'model'})", flush=True)
        return json.loads(metrics_file.read_text())
    print(f"training {cfg.model} on {cfg.num_workers} worker(s); rows: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    init_ray()
    tracking_uri, run_id = start_training_run(cfg.tracking_uri, out, cfg.experiment, f"train-{cfg.model}",
                                              config_to_dict(cfg), out / "config.yaml")
    (out / "parent_run_id").write_text(run_id)  # evaluate logs under it
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    # From the training labels, once, here (stream-mode workers never hold them all).
    labels = train_labels(SplitSpec.of(cfg))
    loop_config = {"cfg": asdict(cfg), "positive_weights": positive_weights(labels, cfg.max_pos_weight).tolist(),
                   "labelled_attributes": [a for j, a in enumerate(ATTRIBUTES) if (labels[:, j] >= 0).any()]}
    stream = {}
    if cfg.data == "stream":
        from facray.training.streaming import split_datasets
        stream = {"datasets": split_datasets(SplitSpec.of(cfg), ("image",)),
                  "dataset_config": ray.train.DataConfig(datasets_to_split=["train"])}
    trainer = TorchTrainer(
        train_per_worker, train_loop_config=loop_config, **stream,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"multitask-{digest[:12]}", storage_path=str(out / "ray_results"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_callback_class()(tracking_uri, run_id)]))
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        shutil.copytree(Path(d) / "predictor", out / "model")
        shutil.copy(Path(d) / "metrics.json", metrics_file)
    record = json.loads(metrics_file.read_text())
    record["registered"] = finish_training_run(tracking_uri, run_id, out, record,
                                               registered_name=f"{REGISTERED_PREFIX}{cfg.model}")
    metrics_file.write_text(json.dumps(record, indent=1))
    return record
