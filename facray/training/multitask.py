"""Train one network with 40 sigmoid outputs. Pure torch: runs without Ray (Ray Train workers wrap
it, see :mod:`facray.training.ray_multitask`), on CPU or GPU, with or without DDP.

- Loss: BCE with logits over the attributes a row has labels for (-1 = unknown, e.g. MTFL's 37
  missing attributes, is masked out); optional class balance (``pos_weight`` = negatives /
  positives per attribute on the training split, capped), which lifts rare attributes off their
  majority class. Optional MSE heads (bbox, landmarks) add their losses when present.
- Learning rate: constant, or cosine-annealed from ``lr`` towards 0 over the ``epochs`` budget
  (set per epoch from the epoch counter, so a resumed run continues the same curve).
- Early stopping on validation loss (``patience`` epochs), best weights kept and restored.
- Per-attribute decision thresholds chosen on validation to maximise accuracy
  (:func:`facray.training.metrics.choose_thresholds`); 0.5 stays available for comparison.
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
from facray.training.metrics import attribute_metrics


@dataclass
class MultiTaskTrainerConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    image_size: int = 128
    patience: int = 3
    online_flip: bool = True
    seed: int = 0
    grad_clip: float = 5.0
    lr_schedule: str = "constant"  # constant | cosine (over ``epochs``)
    epochs: int = 0  # the budget the cosine schedule spans; 0 = constant


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss over labelled entries, per-attribute loss sums). ``labels``: int (B, A), -1 unknown."""
    known = labels >= 0
    target = labels.clamp(min=0).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none") * known
    return per.sum() / known.sum().clamp(min=1), per.sum(0).detach()


class MultiTaskTrainer:
    """Fit a model (possibly DDP-wrapped) epoch by epoch; see module docstring."""

    def __init__(self, model: nn.Module, cfg: MultiTaskTrainerConfig, device: torch.device,
                 pos_weight: np.ndarray | None = None):
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.module = getattr(model, "module", model)  # the bare model under DDP
        self.cuda = self.device.type == "cuda"
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.pos_weight = None if pos_weight is None else torch.as_tensor(pos_weight, device=self.device)
        self.flip_generator = torch.Generator().manual_seed(cfg.seed + 17)
        self.epoch = 0
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.history: list[dict] = []

    @property
    def stopped(self) -> bool:
        return self.bad_epochs >= self.cfg.patience

    def _forward(self, pixels: np.ndarray, train: bool) -> dict[str, torch.Tensor]:
        x = to_input(pixels, self.cfg.image_size, self.device, channels_last=self.cuda)
        if train and self.cfg.online_flip:
            flip = torch.rand(len(x), generator=self.flip_generator) < 0.5
            x[flip.to(x.device)] = x[flip.to(x.device)].flip(-1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            out = self.model(x)
        return {k: v.float() for k, v in out.items()}

    def _loss(self, out: dict[str, torch.Tensor], batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.as_tensor(batch["labels"], device=self.device).long()
        loss, per_attr = masked_bce(out["attributes"], labels, self.pos_weight)
        for head, key in (("bbox", "bbox"), ("landmarks", "landmarks_target")):
            if head in out and key in batch:
                target = torch.as_tensor(batch[key], device=self.device, dtype=torch.float32)
                ok = torch.isfinite(target).all(1)
                if ok.any():
                    loss = loss + F.mse_loss(out[head][ok], target[ok])
        return loss, per_attr

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch``."""
        if self.cfg.lr_schedule != "cosine" or self.cfg.epochs <= 1:
            return self.cfg.lr
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(epoch, self.cfg.epochs) / self.cfg.epochs))

    def fit_epoch(self, train_batches, val_batches) -> dict:
        """One epoch of training, then validation and early-stopping bookkeeping. Returns the record."""
        self.model.train()
        lr = self.lr_at(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total, seen = 0.0, 0
        for batch in train_batches:
            out = self._forward(batch["image"], train=True)
            loss, _ = self._loss(out, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            total += float(loss.detach()) * len(batch["labels"])
            seen += len(batch["labels"])
        val = self.evaluate(val_batches)
        self.epoch += 1
        record = {"epoch": self.epoch, "lr": lr, "loss": total / max(seen, 1), "val_loss": val["loss"],
                  "val_accuracy": float(np.nanmean(val["metrics"]["accuracy"][val["metrics"]["count"] > 0]))}
        if val["loss"] < self.best_val_loss - 1e-6:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val["loss"], self.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        else:
            self.bad_epochs += 1
        record["best_epoch"] = self.best_epoch
        self.history.append(record)
        return record

    @torch.no_grad()
    def predict(self, batches) -> tuple[np.ndarray, np.ndarray, float]:
        """(probabilities, labels, mean masked BCE) over ``batches`` with the current weights."""
        self.model.eval()
        probs, labels, loss_sum, count = [], [], 0.0, 0
        for batch in batches:
            logits = self._forward(batch["image"], train=False)["attributes"]
            y = torch.as_tensor(batch["labels"], device=self.device).long()
            _, per_attr = masked_bce(logits, y)  # unweighted: comparable across settings
            loss_sum += float(per_attr.sum())
            count += int((y >= 0).sum())
            probs.append(torch.sigmoid(logits).cpu().numpy())
            labels.append(batch["labels"])
        if not probs:
            return np.zeros((0, len(ATTRIBUTES)), np.float32), np.zeros((0, len(ATTRIBUTES)), np.int8), math.nan
        return np.concatenate(probs), np.concatenate(labels), loss_sum / max(count, 1)

    def evaluate(self, batches, thresholds: np.ndarray | float = 0.5) -> dict:
        probs, labels, loss = self.predict(batches)
        return {"loss": loss, "probs": probs, "labels": labels,
                "metrics": attribute_metrics(probs, labels, thresholds)}

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
