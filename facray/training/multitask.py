"""Train one network with 40 sigmoid outputs. Pure torch: runs without Ray (Ray Train workers wrap
it, see :mod:`facray.training.multitask_task`), on CPU or GPU, with or without DDP.

- Loss: BCE with logits over the attributes a row has labels for (-1 = unknown, e.g. MTFL's 37
  missing attributes, is masked out); a batch with ``soft`` targets (a teacher's probabilities,
  ``facray distill``) takes the BCE against those instead, plus ``hard_weight`` x the BCE on the
  labels; optional class balance (``pos_weight`` = negatives /
  positives per attribute on the training split, capped), which lifts rare attributes off their
  majority class. Optional MSE heads (bbox, landmarks) add their losses when present.
- Localisation maps (AttParseNet, models with a ``"masks"`` output): MSE against the prepared
  weak masks, downsampled by nearest neighbour to the maps' side, weighted by ``mask_weight``
  (0 = the same network without segmentation, the paper's ablation). The paper's two stages:
  the first ``segmentation_epochs`` train on the mask loss alone (no early stopping yet), then
  mask MSE + BCE.
- Online augmentation on the device: flips and an optional affine jitter; masks and landmark
  targets move with their image (:mod:`facray.training.augment`).
- Identities (the joint attribute-identity network, models with an ``"identity"`` output):
  cross-entropy over the batch's ``identity_index`` (-1 = none, left out), weighted by
  ``identity_weight`` and summed with ``attribute_weight`` x BCE; early stopping watches the same
  weighted sum on validation, and evaluation adds closed-set identification (top-1, top-5, CMC).
- Learning rate: constant, or cosine-annealed from ``lr`` towards 0 over the ``epochs`` budget
  (set per epoch from the epoch counter, so a resumed run continues the same curve). Fine-tuning
  a pretrained base (the KTH paper's InceptionV3): the first ``head_epochs`` train only the new
  head (the base's rate is 0; DDP still sees every parameter), then the base trains at
  ``base_lr_scale`` x the rate.
- Early stopping on validation loss (``patience`` epochs), best weights kept and restored.
- Per-attribute thresholds chosen on validation (:func:`facray.training.metrics.choose_thresholds`).
- ``state_dict`` holds everything a resume needs (model, optimiser, epoch, best, history) as
  tensors, dicts and lists, so checkpoints load with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from facray.attributes import ATTRIBUTES
from facray.models.inputs import to_input
from facray.training.augment import Jitter, augment_images, augment_targets
from facray.training.configs import MultitaskConfig, input_size
from facray.training.early_stopping import EarlyStopping
from facray.training.losses import mask_mse, masked_bce, soft_bce
from facray.training.metrics import attribute_metrics, identification_metrics
from facray.training.run_record import TrainingDiverged, divergence


def _mean_over_ranks(total: torch.Tensor, seen: int) -> float:
    """The epoch's mean training loss over every DDP rank (one all-reduce; this rank's alone
    without a process group). Every rank then sees the same value, so a non-finite loss on one
    rank stops them all at the same epoch (:func:`check_finite`) and none waits for the others
    in the next epoch's gradient all-reduce."""
    import torch.distributed as dist
    sums = torch.stack([total.detach().float().reshape(()), torch.tensor(float(seen), device=total.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    return float(sums[0]) / max(float(sums[1]), 1.0)


def check_finite(epoch: int, loss: float, val_loss: float, lr: float) -> None:
    """Raise :class:`TrainingDiverged` at the first epoch whose training or validation loss is not
    finite (:func:`facray.training.run_record.divergence`). The validation loss is computed on the
    same data on every DDP rank from the same weights and the training loss is averaged over the
    ranks (:func:`_mean_over_ranks`), so every rank stops at the same epoch."""
    message = divergence(epoch, loss, val_loss, lr)
    if message:
        raise TrainingDiverged(f"{message} (nothing was kept or registered)")


@dataclass
class MultiTaskTrainerConfig:
    """Hyperparameters of one network. The defaults are ``facray train``'s
    (:class:`~facray.training.configs.MultitaskConfig`, where each is declared and explained once);
    :meth:`of` fills them from a run's config."""
    lr: float = MultitaskConfig.lr
    weight_decay: float = MultitaskConfig.weight_decay
    image_size: int = 128  # the model's input side, pixels (a run's: :func:`~facray.training.configs.input_size`)
    patience: int = MultitaskConfig.patience
    online_flip: bool = MultitaskConfig.online_flip
    jitter: Jitter = Jitter()  # online shift / zoom / rotation (:mod:`facray.training.augment`)
    seed: int = MultitaskConfig.seed
    grad_clip: float = 5.0  # gradient norm clip
    lr_schedule: str = MultitaskConfig.lr_schedule  # constant | cosine (over ``epochs``)
    # The epochs a cosine schedule spans (a run's: its --epochs); 0 = none, the rate stays constant. Not
    # the training length: the caller runs the epochs, and a schedule over fewer would reach 0 early.
    epochs: int = 0
    mask_weight: float = MultitaskConfig.mask_weight
    segmentation_epochs: int = MultitaskConfig.segmentation_epochs
    head_epochs: int = MultitaskConfig.head_epochs
    base_lr_scale: float = MultitaskConfig.base_lr_scale
    attribute_weight: float = MultitaskConfig.attribute_weight
    identity_weight: float = MultitaskConfig.identity_weight
    # Distillation (batches with a "soft" key, the teacher's probabilities): the weight of the BCE
    # on the true labels beside the BCE on the teacher's (``facray distill --hard-weight``).
    hard_weight: float = 0.0

    @classmethod
    def of(cls, cfg: MultitaskConfig) -> "MultiTaskTrainerConfig":
        """A ``facray train`` config's trainer settings: what every worker runs, and what a run
        without Ray (``bench/gpu_train.py``) runs."""
        return cls(lr=cfg.lr, weight_decay=cfg.weight_decay, image_size=input_size(cfg), patience=cfg.patience,
                   online_flip=cfg.online_flip, jitter=Jitter(cfg.jitter_shift, cfg.jitter_scale, cfg.jitter_rotate),
                   seed=cfg.seed, lr_schedule=cfg.lr_schedule, epochs=cfg.epochs, mask_weight=cfg.mask_weight,
                   segmentation_epochs=cfg.segmentation_epochs, attribute_weight=cfg.attribute_weight,
                   identity_weight=cfg.identity_weight, head_epochs=cfg.head_epochs, base_lr_scale=cfg.base_lr_scale,
                   hard_weight=getattr(cfg, "hard_weight", 0.0))  # a DistillConfig's

    def __post_init__(self):
        if self.segmentation_epochs and self.mask_weight <= 0:
            raise ValueError("segmentation_epochs needs mask_weight > 0 (stage 1 trains on the mask loss alone)")


class MultiTaskTrainer(EarlyStopping):
    """Fit a model (possibly DDP-wrapped) epoch by epoch; see module docstring."""

    def __init__(self, model: nn.Module, cfg: MultiTaskTrainerConfig, device: torch.device,
                 pos_weight: np.ndarray | None = None, trained: np.ndarray | None = None,
                 head_modules: tuple[str, ...] = ()):
        """``trained``: (A,) bool, the attributes to learn (default all); the others' labels are
        treated as unknown, so their outputs get no gradient and no metrics. ``head_modules``:
        names of the modules that are new on a pretrained base (:attr:`ModelSpec.head`); the
        rest is the base, whose rate follows ``head_epochs`` / ``base_lr_scale``."""
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.untrained = None if trained is None or np.all(trained) else \
            torch.as_tensor(~np.asarray(trained, bool), device=self.device)
        self.module = getattr(model, "module", model)  # the bare model under DDP
        self.cuda = self.device.type == "cuda"
        # A head the model was built without (the identity branch when there are no identities) is
        # simply absent: an optional submodule set to None is not a module to get_submodule.
        modules = dict(self.module.named_modules())
        head_ids = {id(p) for name in head_modules if name in modules for p in modules[name].parameters()}
        params = [p for p in self.module.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) in head_ids or not head_ids], "role": "head"},
                  {"params": [p for p in params if head_ids and id(p) not in head_ids], "role": "base"}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.pos_weight = None if pos_weight is None else torch.as_tensor(pos_weight, device=self.device)
        self.flip_generator = torch.Generator().manual_seed(cfg.seed + 17)
        self.epoch = 0
        EarlyStopping.__init__(self)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []

    @property
    def stopped(self) -> bool:
        return self.exhausted(self.cfg.patience)

    def _labels(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        """The batch's labels as (B, A) long, -1 where unknown or not trained."""
        labels = torch.as_tensor(batch["labels"], device=self.device).long()
        return labels if self.untrained is None else labels.masked_fill(self.untrained, -1)

    @property
    def segmenting(self) -> bool:
        """In stage 1 (mask loss alone)?"""
        return self.epoch < self.cfg.segmentation_epochs

    def _forward(self, pixels: np.ndarray, train: bool
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """(model outputs in float32, which rows were flipped, the jitter's affine matrices or None)."""
        x = to_input(pixels, self.cfg.image_size, self.device, channels_last=self.cuda)
        flip, theta = torch.zeros(len(x), dtype=torch.bool, device=self.device), None
        if train:
            x, flip, theta = augment_images(x, self.cfg.online_flip, self.cfg.jitter, self.flip_generator)
            x = x.contiguous(memory_format=torch.channels_last) if self.cuda else x
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            out = self.model(x)
        return {k: v.float() for k, v in out.items()}, flip, theta

    def _loss(self, out: dict[str, torch.Tensor], batch: dict[str, np.ndarray], flip: torch.Tensor,
              theta: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of one batch (see module docstring for its parts and stages)."""
        masks = landmarks = None
        if "masks" in out and "masks" in batch and self.cfg.mask_weight > 0:
            masks = torch.as_tensor(batch["masks"], device=self.device)
        if "landmarks" in out and "landmarks" in batch:  # crop pixels -> [0, 1]
            landmarks = torch.as_tensor(batch["landmarks"], device=self.device, dtype=torch.float32)
            landmarks = landmarks / batch["image"].shape[1]
        masks, landmarks = augment_targets(masks, landmarks, flip, theta)
        loss = torch.zeros((), device=self.device)
        if masks is not None:
            loss = loss + self.cfg.mask_weight * mask_mse(out["masks"], masks)
        elif self.segmenting:
            raise ValueError("segmentation stage without masks: the model has no mask output or the "
                             "prepared data none (prepare --masks)")
        if self.segmenting:
            return loss
        if self.cfg.attribute_weight > 0 and "soft" in batch:  # distillation: the teacher's probabilities
            soft = torch.as_tensor(batch["soft"], device=self.device, dtype=torch.float32)
            if self.untrained is not None:
                soft = soft.masked_fill(self.untrained, float("nan"))
            loss = loss + self.cfg.attribute_weight * soft_bce(out["attributes"], soft, self.pos_weight)
            if self.cfg.hard_weight > 0:
                loss = loss + self.cfg.hard_weight * masked_bce(out["attributes"], self._labels(batch),
                                                                self.pos_weight)[0]
        elif self.cfg.attribute_weight > 0:
            loss = loss + self.cfg.attribute_weight * masked_bce(out["attributes"], self._labels(batch),
                                                                 self.pos_weight)[0]
        if "identity" in out and "identity_index" in batch and self.cfg.identity_weight > 0:
            target = torch.as_tensor(batch["identity_index"], device=self.device).long()
            if (target >= 0).any():
                loss = loss + self.cfg.identity_weight * F.cross_entropy(out["identity"], target, ignore_index=-1)
        if landmarks is not None:
            ok = torch.isfinite(landmarks).all(1)
            if ok.any():
                loss = loss + F.mse_loss(out["landmarks"][ok], landmarks[ok])
        return loss

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch``."""
        if self.cfg.lr_schedule != "cosine" or self.cfg.epochs <= 1:
            return self.cfg.lr
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(epoch, self.cfg.epochs) / self.cfg.epochs))

    def fit_epoch(self, train_batches, val_batches) -> dict:
        """One epoch of training, then validation and early-stopping bookkeeping. Returns the record."""
        self.model.train()
        lr = self.lr_at(self.epoch)
        base_lr = 0.0 if self.epoch < self.cfg.head_epochs else lr * self.cfg.base_lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = base_lr if group["role"] == "base" else lr
        total, seen = torch.zeros((), device=self.device), 0  # summed on the device: no sync per step
        segmenting = self.segmenting
        for batch in train_batches:
            out, flip, theta = self._forward(batch["image"], train=True)
            loss = self._loss(out, batch, flip, theta)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            total += loss.detach() * len(batch["labels"])
            seen += len(batch["labels"])
        val = self.evaluate(val_batches)
        self.epoch += 1
        loss = _mean_over_ranks(total, seen)
        check_finite(self.epoch, loss, val["loss"] if val["scored"] else 0.0, lr)  # (not scored: NaN, not divergence)
        scored = val["metrics"]["count"] > 0
        record = {"epoch": self.epoch, "lr": lr, "loss": loss, "val_loss": val["loss"],
                  "val_accuracy": float(val["metrics"]["accuracy"][scored].mean()) if scored.any() else math.nan}
        if "identity" in val:
            record.update(val_identity_top1=val["identity"]["top1"], val_identity_loss=val["identity"]["loss"])
        if segmenting:  # the attribute layer has not trained yet: no best epoch, no patience used
            record["stage"] = "segmentation"
        elif self.improves(self.epoch, val["loss"]):
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        record["best_epoch"] = self.best_epoch
        self.history.append(record)
        return record

    @torch.no_grad()
    def predict(self, batches) -> tuple[np.ndarray, np.ndarray, float, dict | None]:
        """(probabilities, labels, mean masked BCE, identities) over ``batches`` with the current
        weights; identities: ``{"scores": (N, K), "targets": (N,)}`` for models with an identity
        output fed ``identity_index``, else None."""
        self.model.eval()
        probs, labels, loss_sum, count = [], [], 0.0, 0
        scores, targets = [], []
        for batch in batches:
            out = self._forward(batch["image"], train=False)[0]
            logits = out["attributes"]
            if "identity" in out and "identity_index" in batch:
                scores.append(out["identity"].cpu().numpy())
                targets.append(np.asarray(batch["identity_index"], np.int64))
            y = self._labels(batch)
            _, per_attr = masked_bce(logits, y)  # unweighted: comparable across settings
            loss_sum += float(per_attr.sum())
            count += int((y >= 0).sum())
            probs.append(torch.sigmoid(logits).cpu().numpy())
            labels.append(y.cpu().numpy().astype(np.int8))
        identities = {"scores": np.concatenate(scores), "targets": np.concatenate(targets)} if scores else None
        if not probs:
            return np.zeros((0, len(ATTRIBUTES)), np.float32), np.zeros((0, len(ATTRIBUTES)), np.int8), math.nan, None
        # (no labelled rows: NaN, nothing scored; early stopping then keeps the latest epoch)
        return np.concatenate(probs), np.concatenate(labels), loss_sum / count if count else math.nan, identities

    def evaluate(self, batches, thresholds: np.ndarray | float = 0.5) -> dict:
        """Attribute metrics, and identification for identity models. ``loss``: what early
        stopping watches (the weighted sum of the training objectives, see module docstring), over
        the objectives that had labelled rows; NaN when none had (``scored`` False: nothing to
        validate on, which is not divergence)."""
        probs, labels, bce, identities = self.predict(batches)
        metrics = attribute_metrics(probs, labels, thresholds)
        attributes_scored = bool(metrics["count"].sum())
        terms = [(1.0, bce, attributes_scored)]  # (weight, loss, had labelled rows)
        result = {"attribute_loss": bce, "probs": probs, "labels": labels, "metrics": metrics}
        if identities is not None and self.cfg.identity_weight > 0:
            known = identities["targets"] >= 0
            ce = float(F.cross_entropy(torch.as_tensor(identities["scores"][known]),
                                       torch.as_tensor(identities["targets"][known]))) if known.any() else math.nan
            result["identity"] = {**identification_metrics(identities["scores"], identities["targets"]), "loss": ce}
            terms = [(self.cfg.attribute_weight, bce, attributes_scored),
                     (self.cfg.identity_weight, ce, bool(known.any()))]
        scored = [w * loss for w, loss, s in terms if w > 0 and s]
        result.update(loss=sum(scored) if scored else math.nan, scored=bool(scored))
        return result

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
                "best_state": self.best_state, "bad_epochs": self.bad_epochs, "history": copy.deepcopy(self.history),
                "flip_generator": self.flip_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best_val_loss, self.best_epoch = state["epoch"], state["best_val_loss"], state["best_epoch"]
        self.best_state, self.bad_epochs, self.history = state["best_state"], state["bad_epochs"], state["history"]
        self.flip_generator.set_state(state["flip_generator"])
