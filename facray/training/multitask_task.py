"""``facray train`` as a :class:`~facray.training.task.Task`: one multi-task network (40 sigmoid
outputs; AttParseNet's masks, the joint identity branch, the KTH bbox head as the model asks),
data-parallel over the Ray Train workers (DDP: each worker trains on its equal share of every
epoch, or its Ray Data shard in stream mode; every worker validates on the whole validation set,
so early-stopping decisions agree without a collective). Rank 0 checkpoints every epoch; its
last checkpoint carries the predictor and the metrics (:func:`facray.training.finalize.finalize`),
which the driver copies into the run folder and registers in MLflow. The math is the pure
:class:`~facray.training.multitask.MultiTaskTrainer`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facray.attributes import ATTRIBUTES, resolve_attributes
from facray.data.prepared import read_metadata
from facray.models.inputs import to_channels_last
from facray.models.registry import build_model, model_spec
from facray.runs import RunFolder
from facray.tracking import finish_training_run
from facray.training.configs import (REGISTERED_PREFIX, MultitaskConfig, input_size, model_kwargs, uses_identities,
                                     uses_masks)
from facray.training.finalize import finalize
from facray.training.metrics import positive_weights, trainable_attributes, unvalidated_attributes
from facray.training.multitask import MultiTaskTrainer, MultiTaskTrainerConfig
from facray.training.progress import with_progress
from facray.training.run_record import claim_run
from facray.training.splits import (SplitSpec, array_batches, check_splits, identity_indices, load_split_arrays,
                                    load_validation, stream_sources, train_identities, train_labels)
from facray.training.task import Plan, WrapModel


class MultitaskTask:
    name = "multitask"
    config_class = MultitaskConfig
    split_train_stream = True

    def resolve(self, cfg: MultitaskConfig) -> MultitaskConfig:
        return cfg  # nothing decided from the data

    def plan(self, cfg: MultitaskConfig) -> Plan:
        """Every check that can fail before Ray starts; what the workers share (settings hash,
        class-balance weights, the attributes the data labels, an identity model's classes)."""
        input_size(cfg)  # an unknown model fails here, with the known names
        if cfg.weights and not Path(cfg.weights).is_file():
            raise FileNotFoundError(f"{cfg.weights}: --weights file not found")
        selected = set(resolve_attributes(cfg.attributes))  # a typo fails here with the known names
        if uses_masks(cfg) and not read_metadata(cfg.prepared).get("mask_size"):
            raise ValueError(f"{cfg.model} trains on weak masks, and {cfg.prepared} has none: prepare it with "
                             f"--masks, or train without segmentation (--mask-weight 0)")
        identities = []
        if uses_identities(cfg):  # (--data stream is refused by the driver: memory_only)
            identities = train_identities(SplitSpec.of(cfg)).tolist()
            if len(identities) < 2:
                raise ValueError(f"{cfg.prepared}: the training rows have {len(identities)} known identities; "
                                 f"{cfg.model} needs a dataset with identities (CelebA's identity_CelebA.txt; "
                                 f"prepare --split identity for closed-set identification), or --identity-weight 0")
        spec = SplitSpec.of(cfg)
        counts = check_splits(spec)
        labels = train_labels(spec)  # once, here: stream-mode workers never hold them all
        trainable = trainable_attributes(labels, [a for a in ATTRIBUTES if a in selected], cfg.prepared)
        unvalidated_attributes(load_validation(spec, columns=())["labels"], trainable, cfg.prepared, cfg.val_split)
        run, digest = claim_run(cfg, self.run_inputs(cfg))
        builder = {**model_kwargs(cfg), **({"num_identities": len(identities)} if identities else {})}
        shared = {"settings_hash": digest, "model_kwargs": builder, "identities": identities,
                  "positive_weights": positive_weights(labels, cfg.max_pos_weight).tolist(),
                  "labelled_attributes": trainable}
        summary = (f"training {cfg.model} on {cfg.num_workers} worker(s); rows: "
                   + ", ".join(f"{k} {v}" for k, v in counts.items()))
        plan = Plan(run, digest, [None] * cfg.num_workers, shared, "", summary, rows=counts)
        plan.train_run = self.train_run_name(cfg, plan)
        if run.is_multitask and run.metrics().get("settings_hash") == digest:
            plan.ranks, plan.done = [], run.metrics()
            plan.summary = f"{run.location}: already trained with these settings (model in {run.model_dir})"
        return plan

    def run_inputs(self, cfg: MultitaskConfig) -> dict:
        """What decides the weights beyond the config (:func:`claim_run`'s ``inputs``): nothing here."""
        return {}

    def train_run_name(self, cfg: MultitaskConfig, plan: Plan) -> str:
        return f"multitask-{plan.digest[:12]}"

    def memory_only(self, cfg: MultitaskConfig) -> str:
        if cfg.val_split == "holdout":
            return "--val-split holdout needs --data memory (give the prepared data a val split)"
        return f"{cfg.model} with identities needs --data memory" if uses_identities(cfg) else ""

    def mlflow_run_name(self, cfg: MultitaskConfig) -> str:
        return f"train-{cfg.model}"

    @staticmethod
    def stream_columns(cfg: MultitaskConfig) -> tuple[str, ...]:
        return ("image", "masks") if uses_masks(cfg) else ("image",)

    def setup(self, cfg: MultitaskConfig, plan: Plan, rank: int, world: int, device: torch.device,
              shards: dict | None) -> "MultitaskRank":
        return MultitaskRank(cfg, plan, rank, world, device, shards)

    def collect(self, checkpoint: RunFolder, run: RunFolder) -> dict:
        return run.take_model_from(checkpoint)

    def finish(self, cfg: MultitaskConfig, plan: Plan, record: dict, tracking_uri: str, mlflow_run_id: str,
               register: bool) -> dict:
        """Log the final metrics (``record``: what :meth:`collect` returned), register the
        predictor (``register``; a sweep registers only its best trial's), and write the run's
        metrics record: the mark of a finished run, so it goes last."""
        record["registered"] = finish_training_run(tracking_uri, mlflow_run_id, plan.run, record,
                                                   f"{REGISTERED_PREFIX}{cfg.model}" if register else None)
        plan.run.write_metrics(record)
        return record

    def trial_result(self, record: dict, run: RunFolder) -> dict:
        """The best epoch's validation figures (the weights the run keeps)."""
        best = record["history"][record["best_epoch"] - 1] if record["best_epoch"] else record["history"][-1]
        return {**{k: best[k] for k in ("val_accuracy", "val_loss", "loss")},
                "mean_test_accuracy": record["mean_test_accuracy"], "epochs_run": record["epochs_run"]}


class MultitaskRank:
    """One DDP worker. Rank 0 alone checkpoints and prints (every rank validates on the same
    data, so one line says it)."""
    state_file = "trainer.pt"

    def __init__(self, cfg: MultitaskConfig, plan: Plan, rank: int, world: int, device: torch.device,
                 shards: dict | None):
        self.cfg, self.plan, self.rank, self.device = cfg, plan, rank, device
        self.total_epochs = cfg.epochs
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        # On the CPU, not yet wrapped: DDP's broadcast waits until every rank's setup succeeded.
        self.model = build_model(cfg.model, input_size(cfg), pretrained=cfg.pretrained, weights_file=cfg.weights,
                                 **plan.shared["model_kwargs"])
        self.meta = read_metadata(cfg.prepared)
        self.train_batches, self.val_batches, self.test_batches = self._batch_sources(
            rank, world, np.asarray(plan.shared["identities"]), shards)
        self.trainer: MultiTaskTrainer | None = None

    def distribute(self, wrap: WrapModel) -> None:
        """Move the model to the device and wrap it for DDP; build the trainer around it."""
        cfg, model = self.cfg, self.model.to(self.device)
        if self.device.type == "cuda":
            model = to_channels_last(model)
        # Parameters a step may leave out of the graph: AttParseNet's classifier in its mask-only
        # stage, an identity branch on a batch of unknown people, a bbox head with no bbox data.
        # DDP must be told, or it waits for their gradients forever.
        model = wrap(model, cfg.segmentation_epochs > 0 or uses_identities(cfg) or cfg.bbox_head)
        shared = self.plan.shared
        pos_weight = np.asarray(shared["positive_weights"], np.float32) if cfg.class_balance else None
        trained = np.isin(ATTRIBUTES, shared["labelled_attributes"])
        self.trainer = MultiTaskTrainer(model, MultiTaskTrainerConfig.of(cfg), self.device, pos_weight, trained,
                                        model_spec(cfg.model).head)

    epoch = property(lambda self: self.trainer.epoch)
    stopped = property(lambda self: self.trainer.stopped)

    def fit_epoch(self) -> dict:
        return self.trainer.fit_epoch(self.train_batches(self.trainer.epoch), self.val_batches())

    def is_last(self) -> bool:
        return self.trainer.epoch == self.total_epochs or self.trainer.stopped

    def writes_checkpoint(self) -> bool:
        return self.rank == 0

    def describe(self, record: dict) -> str | None:
        if self.rank != 0:
            return None
        return (f"epoch {self.trainer.epoch}/{self.total_epochs}: loss {record['loss']:.4f}, val loss "
                f"{record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}, "
                f"{record['epoch_seconds']:.0f}s")

    def state_dict(self) -> dict:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)

    def finalize(self, folder: RunFolder, resumed_from: int) -> None:
        shared = self.plan.shared
        finalize(folder, self.trainer, self.val_batches(), self.test_batches(), shared["labelled_attributes"],
                 self.cfg, shared["model_kwargs"], self.meta, self.plan.digest, resumed_from)

    def columns(self) -> tuple[str, ...]:
        """The prepared columns this rank loads."""
        return MultitaskTask.stream_columns(self.cfg)

    def add_training_targets(self, data: dict[str, dict[str, np.ndarray]]) -> None:
        """A hook on the loaded splits before training: a distillation rank adds the teacher's
        probabilities (:class:`facray.training.distill_task.DistillRank`)."""

    def _batch_sources(self, rank: int, world: int, identities: np.ndarray, shards: dict | None):
        """(train(epoch), val(), test()) batch iterators: from memory (each worker loads the arrays
        and takes its equal share of every epoch) or from Ray Data ``shards`` (stream mode: Ray
        Train splits the train dataset equally between workers). ``identities``: an identity
        model's classes (each row gets its ``identity_index``)."""
        cfg, meta = self.cfg, self.meta

        def progress(batches, epoch: int, total: int | None):  # rank 0's share, printed by rank 0
            return with_progress(batches, epoch + 1, cfg.epochs, total) if rank == 0 else batches

        if shards is not None:
            return stream_sources(shards, cfg.batch_size, meta, cfg.seed, progress)
        data = load_split_arrays(SplitSpec.of(cfg), self.columns())
        if len(identities):
            for part in data.values():
                part["identity_index"] = identity_indices(part["identity"], identities)
        self.add_training_targets(data)
        n = len(data["train"]["labels"])
        total = -(-((n - n % world) // world if world > 1 else n) // cfg.batch_size)
        return (lambda e: progress(array_batches(data["train"], cfg.batch_size, True, cfg.seed, e, rank, world),
                                   e, total),
                lambda: array_batches(data["val"], 256),
                lambda: array_batches(data["test"], 256))
