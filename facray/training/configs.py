"""The configs of the training commands (``facray train-binary``, ``facray train``), parsed and
validated on the driver before Ray starts (:mod:`facray.config`), and read back by the Ray Train
workers from the dict the driver sends them. Pure Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facray.attributes import MODALITIES
from facray.config import option

# Registered MLflow model names of `facray train` runs: facray-<model name>.
REGISTERED_PREFIX = "facray-"


@dataclass
class RunOptions:
    """Config fields every training command shares (``train-binary``, ``train``): which prepared
    rows train, validate and test, and how a run is executed, resumed and tracked. Subclasses add
    their own fields (and their own ``experiment`` default)."""
    train_split: str = option("train", "split to train on")
    val_split: str = option("val", "split for early stopping and thresholds, or 'holdout'")
    test_split: str = option("test", "split for the final metrics")
    holdout: float = option(0.1, "with val_split=holdout: fraction of train images (all their variants) "
                                 "held out for validation")
    torch_threads: int = option(0, "torch CPU threads per worker (0 = default)")
    max_failures: int = option(3, "worker failures tolerated (resume from checkpoint)")
    fail_at_epoch: int = option(0, "testing: raise once at the start of this epoch")
    overwrite: bool = option(False, "discard a run in --out trained with other settings and start afresh")
    tracking_uri: str | None = option(None, "MLflow URI (default sqlite under out)", path=True)


@dataclass
class TrainBinaryConfig(RunOptions):
    prepared: str = option("prepared", "folder written by `facray prepare`", path=True)
    out: str = option("runs/abm", "output folder (jobs, checkpoints, MLflow store)", path=True)
    attributes: str = option("all", "comma list, or all / identity / abm / rendered")
    modalities: tuple[str, ...] = option(MODALITIES, "real,sketch")
    epochs: int = option(20, "epoch budget per job (paper: 15 or 20)")
    paper_epochs: bool = option(False, "use Table 1's per-attribute epochs where reported")
    batch_size: int = option(32, "images per step (paper: 32)")
    lr: float = option(1e-3, "Adam learning rate")
    lrs: tuple[float, ...] = option((), "in-stack lr sweep: every job once per learning rate in the same data "
                                        "pass (e.g. 1e-3,1e-4,1e-5); combine keeps each attribute's best")
    image_size: int = option(0, "model input side; 0 = the prepared crop size")
    dropout: float = option(0.5, "dropout before the dense layers")
    patience: int = option(3, "early stopping patience on validation loss")
    seed: int = option(0, "seed of weights, shuffling and dropout")
    mode: Literal["fused", "separate"] = option("fused", "fused | separate")
    num_workers: int = option(1, "Ray Train workers (fused: jobs spread over them)")
    gpus_per_worker: float = option(0.0, "GPUs per worker (fractions allowed)")
    cpus_per_worker: float = option(1.0, "CPUs per worker (use < 1 on small machines)")
    max_concurrent: int = option(2, "separate mode: runs at once")
    stack: Literal["auto", "grouped", "loop"] = option("auto", "auto (grouped on GPU, loop on CPU) | grouped | loop")
    data: Literal["memory", "stream"] = option("memory", "memory (each worker loads the prepared shards) | "
                                                       "stream (Ray Data feeds the workers)")
    online_flip: bool = option(False, "random horizontal flips while training")
    class_balance: bool = option(False, "weight positives by negatives/positives per attribute (rare attributes)")
    max_pos_weight: float = option(10.0, "cap of the class-balance weight")
    experiment: str = option("facray-abm", "MLflow experiment")


@dataclass
class TrainConfig(RunOptions):
    model: str = option("abm-trunk", "registered model (facray train --list-models)")
    prepared: str = option("prepared", "folder or URI written by `facray prepare`", path=True)
    out: str = option("runs/multitask", "run folder (model, checkpoints, report, MLflow store)", path=True)
    image_size: int = option(0, "model input side; 0 = the model's default")
    pretrained: str | None = option(None, "torchvision weights name (DEFAULT, IMAGENET1K_V1; downloads once)")
    weights: str | None = option(None, "local state dict to start from (torchvision backbone or facray model)", path=True)
    train_base: bool | None = option(None, "train the base under the new head: default yes, but vgg19-transfer's "
                                           "is frozen (seed 004); --no-train-base on resnet/inception = the "
                                           "KTH paper's bottleneck retraining")
    head_epochs: int = option(0, "fine-tuning: the first epochs train only the new head, then all layers")
    base_lr_scale: float = option(1.0, "fine-tuning: the base's learning rate relative to --lr after the head "
                                       "epochs (KTH: 0.1)")
    bbox_head: bool = option(False, "vgg19-transfer: bbox regression head (MSE)")
    landmark_head: bool = option(False, "vgg19-transfer: landmark regression head (MSE)")
    attributes: str = option("all", "attributes to train: comma list, or all / identity / abm / rendered "
                                    "(the others are left out of the loss and predicted as unknown)")
    mask_weight: float = option(1.0, "models with localisation maps (attparsenet): weight of the mask MSE; "
                                     "0 = the same network without segmentation")
    segmentation_epochs: int = option(0, "attparsenet: first epochs on the mask loss alone (paper: 10)")
    identity_weight: float = option(1.0, "joint-attr-id: weight of the identity cross-entropy; 0 = attributes "
                                         "alone (no identity branch)")
    attribute_weight: float = option(1.0, "weight of the attribute BCE; 0 with joint-attr-id = identity alone")
    fusion: Literal["identity", "all"] = option("identity", "joint-attr-id: attributes fused with the pooled "
                                                            "features (the paper's 10 identity ones, or all 40)")
    epochs: int = option(20, "epoch budget")
    batch_size: int = option(64, "images per step per worker")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    lr_schedule: Literal["constant", "cosine"] = option("cosine", "learning rate over the epoch budget")
    patience: int = option(3, "early stopping patience on validation loss")
    class_balance: bool = option(False, "weight positives by negatives/positives per attribute (rare attributes)")
    max_pos_weight: float = option(10.0, "cap of the class-balance weight")
    online_flip: bool = option(True, "random horizontal flips while training")
    jitter_shift: float = option(0.0, "online jitter: largest shift, as a fraction of the side (e.g. 0.06)")
    jitter_scale: float = option(0.0, "online jitter: zoom drawn from [1 - s, 1 + s] (e.g. 0.1)")
    jitter_rotate: float = option(0.0, "online jitter: largest rotation, degrees (e.g. 10)")
    seed: int = option(0, "seed of weights, shuffling and flips")
    data: Literal["memory", "stream"] = option("memory", "memory (each worker loads the prepared arrays) | "
                                                         "stream (Ray Data feeds the workers)")
    num_workers: int = option(1, "Ray Train workers (DDP)")
    gpus_per_worker: float = option(0.0, "GPUs per worker")
    cpus_per_worker: float = option(1.0, "CPUs per worker (use < 1 on small machines)")
    experiment: str = option("facray-multitask", "MLflow experiment")

    def model_kwargs(self) -> dict:
        """The builder arguments that come from the config (an identity model's number of
        identities comes from the data: :func:`uses_identities`)."""
        if self.model.startswith("vgg"):
            return {"train_base": bool(self.train_base), "bbox_head": self.bbox_head,
                    "landmark_head": self.landmark_head}
        if self.model.startswith("joint-attr-id"):
            return {"fusion": self.fusion}
        if self.model.startswith(("resnet", "inception")) and self.train_base is False:
            return {"train_base": False}
        return {}


def trainer_config(cfg: TrainConfig):
    """The pure trainer's settings (:class:`facray.training.multitask.MultiTaskTrainerConfig`) for a
    ``facray train`` config: what every worker runs, and what a run without Ray (bench/) runs."""
    from facray.training.augment import Jitter  # lazy: torch; `facray train --help` builds flags from this module
    from facray.training.multitask import MultiTaskTrainerConfig  # lazy: torch, as above
    return MultiTaskTrainerConfig(
        lr=cfg.lr, weight_decay=cfg.weight_decay, image_size=input_size(cfg), patience=cfg.patience,
        online_flip=cfg.online_flip, jitter=Jitter(cfg.jitter_shift, cfg.jitter_scale, cfg.jitter_rotate),
        seed=cfg.seed, lr_schedule=cfg.lr_schedule, epochs=cfg.epochs, mask_weight=cfg.mask_weight,
        segmentation_epochs=cfg.segmentation_epochs, attribute_weight=cfg.attribute_weight,
        identity_weight=cfg.identity_weight, head_epochs=cfg.head_epochs, base_lr_scale=cfg.base_lr_scale)


def uses_masks(cfg: TrainConfig) -> bool:
    """Does this run train on the prepared weak masks?"""
    from facray.models.registry import model_spec  # lazy: torch, as in trainer_config
    return model_spec(cfg.model).mask_output and cfg.mask_weight > 0


def uses_identities(cfg: TrainConfig) -> bool:
    """Does this run train an identity branch on the prepared identities?"""
    from facray.models.registry import model_spec  # lazy: torch, as in trainer_config
    return model_spec(cfg.model).identity_output and cfg.identity_weight > 0


def input_size(cfg: TrainConfig) -> int:
    from facray.models.registry import model_spec  # lazy: torch, as in trainer_config
    return cfg.image_size or model_spec(cfg.model).input_size


@dataclass
class SweepConfig:
    """``facray sweep``: the sweep's own settings. The trials' trainer config is the space's
    ``CONFIG``, built from ``trial_config`` and the ``key=value`` arguments that are not sweep keys."""
    space: str = option("tune_spaces/abm_lr_epochs.py", "search space: a .py file or a module name")
    out: str = option("runs/sweep", "sweep folder: a run folder per trial, results.csv, the plot, MLflow store", path=True)
    trial_config: str | None = option(None, "YAML of the trainer config every trial starts from", path=True)
    num_samples: int = option(1, "Tune num_samples: repeats of the grid, or the trials of a random space")
    scheduler: Literal["space", "fifo", "asha"] = option("space", "space (its SCHEDULER, else fifo) | fifo (every "
                                                                  "trial to its end) | asha (stop poor trials early)")
    grace_period: int = option(2, "asha: epochs every trial runs before it may be stopped")
    max_concurrent: int = option(2, "trials at once")
    cpus_per_trial: float = option(1.0, "CPUs of each trial's training worker")
    gpus_per_trial: float = option(0.0, "GPUs of each trial's worker; a fraction puts several trials on one GPU")
    experiment: str = option("facray-sweep", "MLflow experiment")
    tracking_uri: str | None = option(None, "MLflow URI (default sqlite under out)", path=True)
    registered_name: str = option("", "MLflow name of the best trial's model (default facray-sweep-<space>)")
    overwrite: bool = option(False, "discard a sweep in --out run with other settings and start afresh")
