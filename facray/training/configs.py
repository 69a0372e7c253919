"""The configs of the training commands (``facray train-binary``, ``facray train``, ``facray
sweep``) and of those that read a trained run (``combine``, ``evaluate``), parsed and
validated on the driver before Ray starts (:mod:`facray.config`), and read back by the Ray Train
workers from the dict the driver sends them. Pure Python.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from facray.attributes import MODALITIES
from facray.config import node_wait_option, option

# Registered MLflow model names of `facray train` runs: facray-<model name>.
REGISTERED_PREFIX = "facray-"


# Keys that change how a run is executed or logged, not the weights it produces: left out of
# ``run.json``'s settings and hash (:func:`facray.training.run_record.run_settings`), so moving a
# run to more workers or another MLflow store resumes it.
NON_WEIGHT_KEYS = frozenset({
    "out", "tracking_uri", "experiment", "fail_at_epoch", "max_failures", "num_workers", "placement", "node_wait",
    "cpus_per_worker", "gpus_per_worker", "max_concurrent", "torch_threads", "mode", "data", "stack",
    "overwrite",
})
# Of those, the ones that leave a Ray Train run's checkpoints usable as well: the others (workers,
# mode) change what each worker holds, so a binary run's Ray Train name includes them (the data
# path does not, see facray.training.binary_task.train_run_name).
CHECKPOINT_NEUTRAL_KEYS = frozenset({"out", "tracking_uri", "experiment", "fail_at_epoch", "max_failures",
                                     "placement", "node_wait"})
assert CHECKPOINT_NEUTRAL_KEYS <= NON_WEIGHT_KEYS


@dataclass
class TrainCommon:
    """Config fields every training command shares (``train-binary``, ``train``), each declared
    once: the data, the training budget, the split, and how a run is executed, resumed and
    tracked. :class:`BinaryConfig` and :class:`MultitaskConfig` add their own fields, and declare
    the few whose defaults differ by design (``out``, ``experiment``, ``batch_size``: the ABM
    paper's 32 against 64 for one network; ``online_flip``; the meaning of ``image_size`` 0)."""
    prepared: str = option("prepared", "folder or URI written by `facray prepare`", path=True)
    attributes: str = option("all", "attributes to train: comma list, or all / identity / abm / rendered")
    epochs: int = option(20, "epoch budget (per job for train-binary; ABM paper: 15 or 20)")
    lr: float = option(1e-3, "learning rate (Adam for the binary jobs, AdamW for one network)")
    patience: int = option(3, "early stopping patience on validation loss")
    seed: int = option(0, "seed of weights, shuffling, dropout and flips")
    class_balance: bool = option(False, "weight positives by negatives/positives per attribute (rare attributes)")
    max_pos_weight: float = option(10.0, "cap of the class-balance weight")
    train_split: str = option("train", "split to train on")
    val_split: str = option("val", "split for early stopping and thresholds, or 'holdout'")
    test_split: str = option("test", "split for the final metrics")
    holdout: float = option(0.1, "with val_split=holdout: fraction of train images (all their variants) "
                                 "held out for validation")
    holdout_seed: int | None = option(None, "with val_split=holdout: the holdout's seed (default --seed); runs "
                                            "with other --seed but one --holdout-seed validate on the same rows, so "
                                            "`facray ensemble` can fit them together")
    data: Literal["auto", "memory", "stream"] = option(
        "auto", "memory (each worker loads the prepared arrays) | stream (Ray Data feeds the workers) | auto: "
                "memory when every worker that fits on a node, holding its decoded arrays x1.5, fits in 80%% of "
                "the node's memory for Ray workers, else stream (the choice and sizes are printed)")
    num_workers: int = option(1, "Ray Train workers (train-binary: jobs spread over them; train: DDP)")
    gpus_per_worker: float = option(0.0, "GPUs per worker (fractions allowed)")
    cpus_per_worker: float = option(1.0, "CPUs per worker (use < 1 on small machines)")
    placement: Literal["pack", "spread"] = option(
        "pack", "where Ray puts the workers: pack (as few nodes as possible, Ray's default: fast collectives) | "
                "spread (one per node where possible: every node's GPU, CPUs and memory)")
    torch_threads: int = option(0, "torch CPU threads per worker (0 = default)")
    max_failures: int = option(3, "lost workers tolerated over the run, each resumed from the last checkpoint "
                                  "(-1: no limit)")
    node_wait: float = node_wait_option()
    fail_at_epoch: int = option(0, "testing: raise once at the start of this epoch")
    overwrite: bool = option(False, "discard a run in --out trained with other settings and start afresh")
    tracking_uri: str | None = option(None, "MLflow URI (default: SQLite in the out folder; a URI --out needs "
                                                     "one every machine reaches, e.g. a server)", path=True)


@dataclass
class BinaryConfig(TrainCommon):
    """``facray train-binary``: ABM-CNN's binary jobs, one per attribute x modality."""
    # --smoke-test: 2 attributes x 2 modalities at 32 px on 60 generated faces (facray.testing).
    SMOKE: ClassVar[dict] = {"attributes": "Eyeglasses,Smiling", "epochs": 2, "image_size": 32, "batch_size": 16,
                             "cpus_per_worker": 0.5}
    out: str = option("runs/abm", "run folder (jobs, checkpoints, MLflow store): a path, or a URI such "
                                   "as s3://bucket/runs/abm", path=True)
    modalities: tuple[str, ...] = option(MODALITIES, "real,sketch")
    paper_epochs: bool = option(False, "use Table 1's per-attribute epochs where reported")
    batch_size: int = option(32, "images per step (paper: 32)")
    lrs: tuple[float, ...] = option((), "in-stack lr sweep: every job once per learning rate in the same data "
                                        "pass (e.g. 1e-3,1e-4,1e-5); combine keeps each attribute's best")
    image_size: int = option(0, "model input side; 0 = the prepared crop size")
    dropout: float = option(0.5, "dropout before the dense layers")
    mode: Literal["fused", "separate"] = option("fused", "fused | separate")
    max_concurrent: int = option(2, "separate mode: runs at once")
    stack: Literal["auto", "grouped", "loop"] = option("auto", "auto (grouped on GPU, loop on CPU) | grouped | loop")
    online_flip: bool = option(False, "random horizontal flips while training")
    online_augment: Literal["auto", "on", "off"] = option(
        "auto", "auto | on | off: ABM-CNN's 9 variants (prepare --augment's transforms) applied while training, "
                "so the prepared data stays 1x; an epoch is then 9 passes over the train rows, a fresh variant "
                "per image each time (as many images as an epoch of --augment 9 data): auto = on for --augment "
                "1 data, off for --augment 2 or more")
    experiment: str = option("facray-abm", "MLflow experiment")

    def augments_online(self, prepared_meta: dict) -> bool:
        """``online_augment`` decided for data with ``prepared_meta``: ``auto`` is on when the data
        holds one variant per train image (``prepare --augment 1``), off when it holds variants
        already (drawing them again on those would be another recipe than the paper's)."""
        if self.online_augment == "auto":
            return int(prepared_meta.get("augment", 1)) <= 1
        return self.online_augment == "on"


@dataclass
class MultitaskConfig(TrainCommon):
    """``facray train``: one multi-task network with an output per attribute."""
    # --smoke-test: the tiny trunk at 32 px on 60 generated faces (facray.testing).
    SMOKE: ClassVar[dict] = {"model": "abm-trunk-tiny", "epochs": 2, "batch_size": 16, "image_size": 32,
                             "cpus_per_worker": 0.5}
    model: str = option("abm-trunk", "registered model (facray train --list-models)")
    out: str = option("runs/multitask", "run folder (model, checkpoints, report, MLflow store): a path, or a "
                                         "URI such as s3://bucket/runs/x", path=True)
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
    mask_weight: float = option(1.0, "models with localisation maps (attparsenet): weight of the mask MSE; "
                                     "0 = the same network without segmentation")
    segmentation_epochs: int = option(0, "attparsenet: first epochs on the mask loss alone (paper: 10)")
    identity_weight: float = option(1.0, "joint-attr-id: weight of the identity cross-entropy; 0 = attributes "
                                         "alone (no identity branch)")
    attribute_weight: float = option(1.0, "weight of the attribute BCE; 0 with joint-attr-id = identity alone")
    fusion: Literal["identity", "all"] = option("identity", "joint-attr-id: attributes fused with the pooled "
                                                            "features (the paper's 10 identity ones, or all 40)")
    batch_size: int = option(64, "images per step per worker")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    lr_schedule: Literal["constant", "cosine"] = option("cosine", "learning rate over the epoch budget")
    online_flip: bool = option(True, "random horizontal flips while training")
    jitter_shift: float = option(0.0, "online jitter: largest shift, as a fraction of the side (e.g. 0.06)")
    jitter_scale: float = option(0.0, "online jitter: zoom drawn from [1 - s, 1 + s] (e.g. 0.1)")
    jitter_rotate: float = option(0.0, "online jitter: largest rotation, degrees (e.g. 10)")
    experiment: str = option("facray-multitask", "MLflow experiment")


def model_kwargs(cfg: MultitaskConfig) -> dict:
    """The builder arguments that come from the config: the options its model declares
    (:attr:`ModelSpec.config_keys`) that are set. An identity model's number of identities
    comes from the data (:func:`uses_identities`)."""
    from facray.models.registry import model_spec  # lazy: torch; `facray train --help` builds flags from this module
    return {k: getattr(cfg, k) for k in model_spec(cfg.model).config_keys if getattr(cfg, k) is not None}


def uses_masks(cfg: MultitaskConfig) -> bool:
    """Does this run train on the prepared weak masks?"""
    from facray.models.registry import model_spec  # lazy: torch; `facray train --help` builds flags from this module
    return model_spec(cfg.model).mask_output and cfg.mask_weight > 0


def uses_identities(cfg: MultitaskConfig) -> bool:
    """Does this run train an identity branch on the prepared identities?"""
    from facray.models.registry import model_spec  # lazy: torch; `facray train --help` builds flags from this module
    return model_spec(cfg.model).identity_output and cfg.identity_weight > 0


def input_size(cfg: MultitaskConfig) -> int:
    from facray.models.registry import model_spec  # lazy: torch; `facray train --help` builds flags from this module
    return cfg.image_size or model_spec(cfg.model).input_size


@dataclass
class SweepConfig:
    """``facray sweep``: the sweep's own settings. The trials' trainer config is the space's
    ``CONFIG``, built from ``trial_config`` and the ``key=value`` arguments that are not sweep keys."""
    # --smoke-test: a 4-trial space, two trials at once; every trial a tiny model (SMOKE_TRIAL).
    SMOKE: ClassVar[dict] = {"space": "tune_spaces.smoke_multitask", "cpus_per_trial": 0.5, "max_concurrent": 2}
    SMOKE_TRIAL: ClassVar[dict] = {"model": "abm-trunk-tiny", "image_size": 32, "batch_size": 16}
    space: str = option("tune_spaces/abm_lr_epochs.py", "search space: a .py file or a module name")
    out: str = option("runs/sweep", "sweep folder: a run folder per trial, sweep_results.csv, the plot, MLflow store; "
                                     "a path, or a URI (s3://...: needs --tracking-uri)", path=True)
    trial_config: str | None = option(None, "YAML of the trainer config every trial starts from", path=True)
    num_samples: int = option(1, "Tune num_samples: repeats of the grid, or the trials of a random space")
    scheduler: Literal["space", "fifo", "asha"] = option("space", "space (its SCHEDULER, else fifo) | fifo (every "
                                                                  "trial to its end) | asha (stop poor trials early)")
    grace_period: int = option(2, "asha: epochs every trial runs before it may be stopped")
    max_concurrent: int = option(2, "trials at once")
    cpus_per_trial: float = option(1.0, "CPUs of each trial's training worker")
    gpus_per_trial: float = option(0.0, "GPUs of each trial's worker; a fraction puts several trials on one GPU")
    experiment: str = option("facray-sweep", "MLflow experiment")
    tracking_uri: str | None = option(None, "MLflow URI (default: SQLite in the out folder; a URI --out needs "
                                                     "one every machine reaches, e.g. a server)", path=True)
    registered_name: str = option("", "MLflow name of the best trial's model (default facray-sweep-<space>)")
    overwrite: bool = option(False, "discard a sweep in --out run with other settings and start afresh")

    @classmethod
    def split_overrides(cls, overrides: list[str]) -> tuple[list[str], dict[str, str]]:
        """``key=value`` arguments -> (the sweep's own, as ``key=value``; the trials' trainer keys,
        as a dict): one command line sets both. Raises ``ValueError`` for an item without ``=``."""
        names = {f.name for f in dataclasses.fields(cls)}
        pairs = [o.split("=", 1) if "=" in o else (o, None) for o in overrides]
        bad = [k for k, v in pairs if v is None]
        if bad:
            raise ValueError(f"override {bad[0]!r} is not key=value")
        keys = [(k.strip().replace("-", "_"), v) for k, v in pairs]
        return ([f"{k}={v}" for k, v in keys if k in names], {k: v for k, v in keys if k not in names})


# The names before 2026-12, which search spaces written for facray (tune_spaces/*.py: CONFIG) import.
TrainConfig = MultitaskConfig
TrainBinaryConfig = BinaryConfig


# The commands that read a trained run: in this torch-free module, so that `facray --help`
# builds every parser without importing torch or MLflow.
REGISTERED_NAME = "facray-abm-combined"


@dataclass
class CombineConfig:
    # --smoke-test: a one-epoch smoke train-binary run first (facray.testing), then combine it.
    SMOKE: ClassVar[dict] = {}

    run: str = option("runs/abm", "the train-binary run folder (a path or a URI)", path=True)
    out: str = option("", "predictor folder (default <run>/combined)", path=True)
    prepared: str | None = option(None, "the prepared data the run trained on, if it moved (default: as "
                                        "recorded in the run; its version is checked either way)", path=True)
    register: bool = option(True, "log to MLflow and register the model")
    registered_name: str = option(REGISTERED_NAME, "MLflow registered model name")
    thresholds: Literal["validation", "0.5"] = option("validation", "per-attribute decision thresholds chosen "
                                                      "on the validation rows, or 0.5 for all")
    tracking_uri: str | None = option(None, "MLflow URI (default: SQLite in the run folder; a URI run needs "
                                                     "the server it trained with)", path=True)
    experiment: str = option("facray-abm", "MLflow experiment")


@dataclass
class EvaluateConfig:
    # --smoke-test: a one-epoch smoke `facray train` run first (facray.testing), then its report.
    SMOKE: ClassVar[dict] = {}

    run: str = option("runs/abm", "the run folder (train-binary + combine, or train): a path or a URI",
                      path=True)
    out: str = option("", "report folder (default <run>/report; with --dataset <model>/eval-<dataset name>; with "
                          "--prepared ./eval-<prepared name>-<split>)",
                      path=True)
    dataset: str = option("", "score the model on this dataset folder instead (CelebA, a CelebA-style list or "
                              "CSV with any subset of the attributes, MTFL): its images are labelled as "
                              "`facray label` does, then scored per attribute the dataset labels", path=True)
    model: str = option("", "with --dataset or --prepared: the model to score (a run, ensemble or predictor "
                            "folder, models:/ URI; default --run)", path=True)
    split: Literal["", "all", "train", "val", "test"] = option(
        "", "the rows to score: with --dataset default all; with --model and --prepared a split of the prepared "
            "data, default test")
    min_confidence: float = option(0.9, "with --model and --prepared: also report the coverage and accuracy of the "
                                        "decisions whose class has at least this calibrated probability")
    skip_missing: bool = option(False, "with --dataset: go on without images its lists name but that are missing")
    prepared: str | None = option(None, "the prepared data the run trained on, if it moved (default: as "
                                        "recorded in the run; its version is checked either way); with --model: "
                                        "score the model on this prepared data's --split (no face detection, "
                                        "calibration report and reliability plot)", path=True)
    log_mlflow: bool = option(True, "log the report to MLflow")
    tracking_uri: str | None = option(None, "MLflow URI (default: SQLite in the run folder; a URI run needs "
                                                     "the server it trained with)", path=True)
    experiment: str | None = option(None, "MLflow experiment (default: facray-abm or facray-multitask, "
                                          "by the run's kind)")


@dataclass
class EnsembleConfig:
    """``facray ensemble MEMBER... --out DIR``: one predictor from several (:mod:`facray.training.ensemble`)."""
    # --smoke-test: two one-epoch smoke `facray train` runs (seeds 0 and 1) first (facray.testing).
    SMOKE: ClassVar[dict] = {"flip": True, "test_split": "test"}

    members: tuple[str, ...] = option((), "the members: run folders (train, train-binary + combine, distill, sweep "
                                          "trials), predictor folders or models:/ URIs (also as positional arguments)")
    out: str = option("runs/ensemble", "ensemble folder (a path or a URI): the predictor in model/, members.csv, report/, MLflow "
                                       "store", path=True)
    weights: tuple[float, ...] = option((), "each member's weight in the mean, in order (default: equal)")
    flip: bool = option(False, "average each member over the image and its mirror image (2x the compute)")
    prepared: str | None = option(None, "prepared data holding the validation rows (default: the members')",
                                  path=True)
    val_split: str = option("", "validation split of --prepared, or 'holdout' (with --holdout, --seed); default: "
                                "the one every member validated on. Temperatures and thresholds are fitted there; "
                                "a member that trained on any of its images is refused")
    holdout: float = option(0.1, "with --val-split holdout: the fraction of the train split held out")
    seed: int = option(0, "with --val-split holdout: the holdout's seed")
    test_split: str = option("", "also score the ensemble on this split of the prepared data (e.g. test) and write "
                                 "the report into <out>/report")
    register: bool = option(True, "log to MLflow and register the model")
    registered_name: str = option("facray-ensemble", "MLflow registered model name")
    tracking_uri: str | None = option(None, "MLflow URI (default: SQLite in the out folder; a URI --out needs "
                                                     "one every machine reaches, e.g. a server)", path=True)
    experiment: str = option("facray-ensemble", "MLflow experiment")


@dataclass
class DistillConfig(MultitaskConfig):
    """``facray distill``: one multi-task network trained on a teacher predictor's probabilities
    (:mod:`facray.training.distill_task`); every other key is ``facray train``'s. ``--smoke-test``:
    ``train``'s, taught by a one-epoch smoke ``train`` run (:mod:`facray.testing`)."""
    teacher: str = option("", "the teacher: an ensemble or any predictor, as a folder the workers read (an "
                              "ensemble's --out, a run or predictor folder; not a models:/ URI)",
                          path=True)
    unlabelled: str | None = option(None, "prepared unlabelled faces (`facray prepare --dataset folder`, the same "
                                          "crop) the teacher labels for the student too", path=True)
    hard_weight: float = option(0.0, "weight of the BCE on the true labels beside the BCE on the teacher's "
                                     "probabilities (0 = the teacher's alone)")
    out: str = option("runs/distill", "run folder (model, checkpoints, report, MLflow store)", path=True)
    experiment: str = option("facray-distill", "MLflow experiment")
