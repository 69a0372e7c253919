"""The Ray Train worker loop of ``facray train`` (:func:`train_per_worker`). The math is the pure
:class:`facray.training.multitask.MultiTaskTrainer`; the driver is
:mod:`facray.runners.train_multitask`.

- DDP (``prepare_model``: gloo on CPU, NCCL on GPU); each worker loads the prepared arrays and
  trains on its equal share of every epoch's shuffled order (or its Ray Data shard in stream
  mode); every worker validates on the whole validation set, so early-stopping decisions agree
  without a collective.
- A checkpoint every epoch (rank 0), resumed after a failure or a re-run.
- At the end rank 0 restores the best epoch, chooses per-attribute thresholds on validation,
  scores the test split and writes the predictor and the metrics into the last checkpoint, in
  the run folder's layout (:class:`facray.runs.RunFolder`).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.data.prepared import read_metadata
from facray.models.inputs import to_channels_last
from facray.models.registry import build_model, model_spec
from facray.runners.ranks import set_up_on_every_rank
from facray.runners.runtime import quiet_train_worker
from facray.runners.streaming import stream_batches
from facray.runners.train import saved_state
from facray.runs import RunFolder
from facray.training.configs import MultitaskConfig, input_size, uses_identities, uses_masks
from facray.training.finalize import finalize
from facray.training.multitask import MultiTaskTrainer, MultiTaskTrainerConfig
from facray.training.progress import with_progress
from facray.training.run_record import TrainingDiverged, inject_failure_once
from facray.training.splits import SplitSpec, array_batches, identity_indices, load_split_arrays


def train_per_worker(config: dict) -> None:
    """Ray Train worker loop (see module docstring)."""
    import torch
    import ray.train
    import ray.train.torch

    cfg = MultitaskConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    quiet_train_worker(config.get("verbose", False))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    ready = set_up_on_every_rank(cfg.out, lambda: _setup(cfg, config, rank, world))
    if ready is None:  # a failure a retry would repeat: the driver reports it
        return
    model, meta, (train_batches, val_batches, test_batches) = ready
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        model = to_channels_last(model)
    # Parameters a step may leave out of the graph: AttParseNet's classifier in its mask-only
    # stage, an identity branch on a batch of unknown people, a bbox head with no bbox data.
    # DDP must be told, or it waits for their gradients forever.
    optional_outputs = cfg.segmentation_epochs > 0 or uses_identities(cfg) or cfg.bbox_head
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True} if optional_outputs else None)
    pos_weight = np.asarray(config["positive_weights"], np.float32) if cfg.class_balance else None
    tcfg = MultiTaskTrainerConfig.of(cfg)
    trained = np.isin(ATTRIBUTES, config["labelled_attributes"])
    trainer = MultiTaskTrainer(model, tcfg, device, pos_weight, trained, model_spec(cfg.model).head)
    resumed_from = 0
    state = saved_state("trainer.pt", device)
    if state is not None:
        trainer.load_state_dict(state)
        resumed_from = trainer.epoch

    while trainer.epoch < cfg.epochs and not trainer.stopped:
        inject_failure_once(cfg.out, cfg.fail_at_epoch, trainer.epoch + 1)
        start = time.perf_counter()
        try:
            record = trainer.fit_epoch(train_batches(trainer.epoch), val_batches())
        except TrainingDiverged as e:
            # Every rank stops at the same epoch (check_finite). Retrying would diverge again:
            # leave the reason for the driver and end normally instead of raising into Ray
            # Train's retries.
            if rank == 0:
                RunFolder(cfg.out).write_failure(str(e), ray.train.get_context().get_experiment_name())
            return
        record.update(epoch_seconds=time.perf_counter() - start, resumed_from_epoch=resumed_from)
        last = trainer.epoch == cfg.epochs or trainer.stopped
        if rank == 0:  # every rank validates on the same data: one line says it
            print(f"[rank {rank}] epoch {trainer.epoch}/{cfg.epochs}: loss {record['loss']:.4f}, val loss "
                  f"{record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}, "
                  f"{record['epoch_seconds']:.0f}s", flush=True)
        if rank != 0:
            ray.train.report(record)
            continue
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), Path(d) / "trainer.pt")
            if last:
                finalize(RunFolder(d), trainer, val_batches(), test_batches(), config["labelled_attributes"],
                         cfg, config["model_kwargs"], meta, config["settings_hash"], resumed_from)
            ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))


def _setup(cfg: MultitaskConfig, config: dict, rank: int, world: int):
    """The model (on the CPU, not yet wrapped for DDP), the prepared data's metadata and the batch
    sources: everything a missing file or a bad setting breaks."""
    model = build_model(cfg.model, input_size(cfg), pretrained=cfg.pretrained, weights_file=cfg.weights,
                        **config["model_kwargs"])
    meta = read_metadata(cfg.prepared)
    return model, meta, _batch_sources(cfg, meta, rank, world, np.asarray(config["identities"]))


def _batch_sources(cfg: MultitaskConfig, meta: dict, rank: int, world: int, identities: np.ndarray):
    """(train(epoch), val(), test()) batch iterators: from memory (each worker loads the arrays and
    takes its equal share of every epoch) or from Ray Data shards (``--data stream``; the train
    dataset is split equally between workers by Ray Train). ``identities``: an identity model's
    classes (each row gets its ``identity_index``)."""
    import ray.train

    def progress(batches, epoch: int, total: int | None):  # rank 0's share, printed by rank 0
        return with_progress(batches, epoch + 1, cfg.epochs, total) if rank == 0 else batches

    if cfg.data == "stream":
        shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val", "test")}  # see train_multitask
        return (lambda e: progress(stream_batches(shards["train"], cfg.batch_size, meta, cfg.seed * 1000 + e), e,
                                   None),
                lambda: stream_batches(shards["val"], 256, meta, None),
                lambda: stream_batches(shards["test"], 256, meta, None))
    data = load_split_arrays(SplitSpec.of(cfg), ("image", "masks") if uses_masks(cfg) else ("image",))
    if len(identities):
        for part in data.values():
            part["identity_index"] = identity_indices(part["identity"], identities)
    n = len(data["train"]["labels"])
    total = -(-((n - n % world) // world if world > 1 else n) // cfg.batch_size)
    return (lambda e: progress(array_batches(data["train"], cfg.batch_size, True, cfg.seed, e, rank, world), e, total),
            lambda: array_batches(data["val"], 256),
            lambda: array_batches(data["test"], 256))
