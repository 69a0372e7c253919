"""Train K binary ABM-CNN jobs in one pass over the data. Pure torch: runs inside a Ray Train
worker, or on its own (a GPU box without Ray, a notebook, a test).

A *job* is one (attribute, modality) pair: modality ``real`` reads the cropped photo, ``sketch``
its pencil sketch. All jobs of a modality share one stack (:mod:`facray.models.abm`) and one Adam
(elementwise, so per model it is that model's own Adam). Each job has its own early stopping on
validation loss (patience, best weights kept) and its own epoch budget; a stopped job's model is
taken out of the stack, so it costs nothing afterwards and cannot change again.

Data comes as an iterable of batches, ``dict`` with ``image`` (B, S, S, 3) uint8, ``sketch``
(B, S, S[, 3]) uint8 and ``labels`` (B, 40) int8 (-1 = unknown, ignored in the loss), as numpy
arrays or tensors: :func:`facray.training.splits.array_batches` makes them from memory; Ray Data's ``iter_torch_batches``
makes them from a stream.
"""
from __future__ import annotations

import functools

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from facray.attributes import ATTRIBUTE_INDEX, MODALITIES
from facray.models.abm import build_stack, default_stack_kind, make_generators
from facray.models.inputs import to_input
from facray.training.augment import VariantDraw, apply_abm_variants, draw_abm_variants, homography_grid
from facray.training.configs import BinaryConfig
from facray.training.binary_jobs import BinaryJob, JobState, job_seed
from facray.training.metrics import PassStats
from facray.training.run_record import divergence
from facray.training.stack_optim import adam_step_per_model_lr, select_with_adam_state


@dataclass
class TrainerConfig:
    """Hyperparameters of the binary jobs. The defaults are ``facray train-binary``'s
    (:class:`~facray.training.configs.BinaryConfig`, ABM-CNN's values), declared there once;
    :meth:`of` fills the rest from a run's config and its prepared data."""
    batch_size: int = BinaryConfig.batch_size
    lr: float = BinaryConfig.lr
    dropout: float = BinaryConfig.dropout
    patience: int = BinaryConfig.patience
    image_size: int = 180  # model input, pixels; prepared crops of another size are resized on the fly
    sketch_channels: int = 1
    seed: int = BinaryConfig.seed
    stack: str = BinaryConfig.stack  # auto | loop | grouped
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    online_flip: bool = BinaryConfig.online_flip  # random horizontal flips at train time
    # ABM-CNN's 9 variants drawn per image and step (facray.training.augment.draw_abm_variants).
    online_augment: bool = False
    # Class balance: per attribute (official order) the weight of positive samples in the training
    # loss, e.g. negatives/positives capped (facray.training.metrics.positive_weights); None = off.
    # Validation loss stays unweighted, so early stopping compares like with like.
    positive_weights: tuple[float, ...] | None = None

    @classmethod
    def of(cls, cfg: BinaryConfig, prepared_meta: dict, positive_weights: list[float] | None) -> "TrainerConfig":
        """A run's trainer settings: ``cfg``'s, the input side (``cfg.image_size``, else the
        prepared crop's) and sketch channels from the prepared data's metadata."""
        return cls(batch_size=cfg.batch_size, lr=cfg.lr, dropout=cfg.dropout, patience=cfg.patience,
                   image_size=cfg.image_size or prepared_meta["size"], sketch_channels=prepared_meta["sketch_channels"],
                   seed=cfg.seed, stack=cfg.stack, online_flip=cfg.online_flip,
                   online_augment=cfg.augments_online(prepared_meta),
                   positive_weights=tuple(positive_weights) if positive_weights is not None else None)


class FusedBinaryTrainer:
    """Trains ``jobs`` together; see the module docstring. ``epoch`` counts finished epochs."""

    def __init__(self, jobs: list[BinaryJob], cfg: TrainerConfig, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.kind = default_stack_kind(self.device) if cfg.stack == "auto" else cfg.stack
        self.states = {j.key: JobState(j) for j in jobs}
        self.best: dict[str, dict[str, torch.Tensor]] = {}
        self.epoch = 0
        self.flip_generator = torch.Generator().manual_seed(cfg.seed + 17)
        self.augment_generator = torch.Generator().manual_seed(cfg.seed + 29)
        # Per modality: the stack of active models, their job keys (stack order), their optimiser.
        self.active: dict[str, list[str]] = {}
        self.stacks: dict[str, torch.nn.Module] = {}
        self.optims: dict[str, torch.optim.Optimizer] = {}
        for modality in MODALITIES:
            keys = [j.key for j in jobs if j.modality == modality]
            if keys:
                self._build(modality, keys)

    def _in_channels(self, modality: str) -> int:
        return 3 if modality == "real" else self.cfg.sketch_channels

    def job_lr(self, key: str) -> float:
        return self.states[key].job.lr or self.cfg.lr

    @functools.cached_property
    def base_lr(self) -> float:
        """Every stack's Adam runs at the largest job lr; a job with a smaller lr (an in-stack lr
        sweep) has its update scaled down (:meth:`_optimizer_step`). Fixed by the job list, so
        computed once, not every step."""
        return max(self.job_lr(k) for k in self.states)

    def _build(self, modality: str, keys: list[str]) -> None:
        seeds = [job_seed(self.states[k].job.model_key, self.cfg.seed) for k in keys]
        stack = build_stack(self.kind, seeds, self._in_channels(modality), self.cfg.image_size,
                            self.cfg.dropout).to(self.device)
        self.stacks[modality], self.active[modality] = stack, keys
        self.optims[modality] = torch.optim.Adam(stack.parameters(), lr=self.base_lr)

    def _optimizer_step(self, modality: str, stack: torch.nn.Module, keys: list[str]) -> None:
        """Adam's step, each model at its own lr (:func:`facray.training.stack_optim.adam_step_per_model_lr`)."""
        adam_step_per_model_lr(self.optims[modality], stack, [self.job_lr(k) / self.base_lr for k in keys])

    @property
    def running(self) -> list[str]:
        return [k for keys in self.active.values() for k in keys]

    def _targets(self, labels, keys: list[str]) -> torch.Tensor:
        cols = [ATTRIBUTE_INDEX[self.states[k].job.attribute] for k in keys]
        return torch.as_tensor(np.asarray(labels)[:, cols] if isinstance(labels, np.ndarray)
                               else labels[:, cols]).to(self.device).long()

    def _step(self, modality: str, stack: torch.nn.Module, keys: list[str], batch: dict,
              flip: torch.Tensor | None, variants: tuple[VariantDraw, torch.Tensor] | None,
              stats: PassStats) -> None:
        """One batch through one modality's stack; trains it when the stack is in train mode.
        Online augmentation: ``flip`` (B,) mirrors those images horizontally, ``variants`` (the
        draw and its sampling grid) makes each image its drawn ABM-CNN variant (the sketch takes
        the geometry only)."""
        pixels = batch["image"] if modality == "real" else batch["sketch"]
        cuda = self.device.type == "cuda"
        x = to_input(pixels, self.cfg.image_size, self.device, channels_last=cuda)
        if flip is not None:
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        if variants is not None:
            draw, grid = variants
            x = apply_abm_variants(x, draw, photometric=modality == "real", grid=grid)
            if cuda:  # grid_sample answers in the default layout
                x = x.contiguous(memory_format=torch.channels_last)
        train = stack.training
        y = self._targets(batch["labels"], keys)  # (B, K), -1 = unknown
        valid = y >= 0
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and self.cfg.amp):
            logits = stack(x)  # (B, K, 2)
        logits = logits.float()
        per_sample = F.cross_entropy(logits.permute(0, 2, 1), y.clamp(min=0), reduction="none") * valid
        n_valid = valid.sum(0)
        if train:
            # Each model's loss is the mean over its own labelled samples; summing them keeps
            # every model's gradient its own.
            weighted = per_sample
            if self.cfg.positive_weights is not None:
                w = torch.tensor([self.cfg.positive_weights[ATTRIBUTE_INDEX[self.states[k].job.attribute]]
                                  for k in keys], device=per_sample.device)
                weighted = per_sample * torch.where(y == 1, w, torch.ones_like(w))
            loss = (weighted.sum(0) / n_valid.clamp(min=1)).sum()
            self.optims[modality].zero_grad(set_to_none=True)
            loss.backward()
            self._optimizer_step(modality, stack, keys)
        stats.add(per_sample, logits.argmax(-1), y)

    def _pass(self, batches: Iterable[dict], stacks: dict, active: dict[str, list[str]],
              train: bool) -> dict[str, PassStats]:
        stats = {m: PassStats.zeros(len(keys)) for m, keys in active.items() if keys}
        for stack in stacks.values():
            stack.train(train)
        with torch.set_grad_enabled(train):
            for batch in batches:
                # One draw per batch, shared by both modalities: a model's augmentation does not
                # depend on which other models train beside it.
                flip = variants = None
                if train and self.cfg.online_flip:
                    flip = torch.rand(len(batch["labels"]), generator=self.flip_generator) < 0.5
                if train and self.cfg.online_augment:
                    size = self.cfg.image_size
                    draw = draw_abm_variants(len(batch["labels"]), size, self.augment_generator)
                    variants = draw, homography_grid(draw.inverse, size, size, self.device)
                for modality in stats:
                    self._step(modality, stacks[modality], active[modality], batch, flip, variants, stats[modality])
        return stats

    def run_pass(self, batches: Iterable[dict], train: bool) -> dict[str, PassStats]:
        """One pass over ``batches`` for every active model; per-modality stats in stack order."""
        return self._pass(batches, self.stacks, self.active, train)

    def fit_epoch(self, train_batches: Iterable[dict], val_batches: Iterable[dict]) -> dict[str, dict]:
        """Train one epoch, validate, apply early stopping. Returns this epoch's record per job."""
        train_stats = self.run_pass(train_batches, train=True)
        val_stats = self.run_pass(val_batches, train=False)
        self.epoch += 1
        records, stopped = {}, {}
        for modality, keys in self.active.items():
            if not keys:
                continue
            tr, va = train_stats[modality].summary(), val_stats[modality].summary("val_")
            val_count = val_stats[modality].count
            for i, key in enumerate(keys):
                st = self.states[key]
                rec = {"epoch": self.epoch, **{k: float(v[i]) for k, v in {**tr, **va}.items()}}
                records[key] = rec
                # (no labelled validation rows: the validation loss is NaN and says nothing)
                diverged = divergence(self.epoch, rec["loss"], rec["val_loss"] if val_count[i] else 0.0,
                                      self.job_lr(key))
                if diverged:  # this model only: the others in the stack have their own weights
                    st.diverge(rec, diverged)
                    self.best.pop(key, None)
                    stopped.setdefault(modality, []).append(i)
                    continue
                if st.record_epoch(rec, self.cfg.patience):  # (no labelled validation rows: every epoch)
                    self.best[key] = self.stacks[modality].export(i)
                if st.stopped:
                    stopped.setdefault(modality, []).append(i)
        for modality, idx in stopped.items():
            self._drop(modality, idx)
        return records

    def _drop(self, modality: str, indices: list[int]) -> None:
        """Take stopped models out of the stack, keeping the others' weights and Adam state."""
        keys = self.active[modality]
        keep = [i for i in range(len(keys)) if i not in set(indices)]
        self.active[modality] = [keys[i] for i in keep]
        if not keep:
            del self.stacks[modality], self.optims[modality]
            return
        self.stacks[modality], self.optims[modality] = select_with_adam_state(
            self.stacks[modality], self.optims[modality], keep, self.base_lr)

    # ---- results ----

    @torch.no_grad()
    def evaluate_best(self, batches: Iterable[dict], keys: list[str] | None = None) -> dict[str, dict]:
        """Test metrics of every job's best weights (one pass, all models; a diverged job has none).
        A job with no labelled test rows (no test split, or every label unknown) scores NaN, not 0:
        nothing was scored (``test_count`` 0)."""
        keys = [k for k in (keys or self.states) if k in self.best]
        by_mod = {m: [k for k in keys if self.states[k].job.modality == m] for m in MODALITIES}
        stacks = {}
        for m, ks in by_mod.items():
            if ks:
                s = build_stack(self.kind, [0] * len(ks), self._in_channels(m), self.cfg.image_size,
                                self.cfg.dropout).to(self.device)
                for i, k in enumerate(ks):
                    s.load(i, {n: t.to(self.device) for n, t in self.best[k].items()})
                stacks[m] = s.eval()
        stats = self._pass(batches, stacks, {m: ks for m, ks in by_mod.items() if ks}, train=False)
        out = {}
        for m, ks in by_mod.items():
            if not ks:
                continue
            summ = stats[m].summary("test_")
            for i, k in enumerate(ks):
                out[k] = {n: float(v[i]) for n, v in summ.items()}
                out[k]["confusion"] = [[int(stats[m].tn[i]), int(stats[m].fp[i])],
                                       [int(stats[m].fn[i]), int(stats[m].tp[i])]]
                out[k]["test_count"] = int(stats[m].count[i])
        return out

    def job_record(self, key: str, test: dict | None = None) -> dict:
        st = self.states[key]
        best = next((h for h in st.history if h["epoch"] == st.best_epoch), st.history[-1] if st.history else {})
        return {"attribute": st.job.attribute, "modality": st.job.modality, "lr": self.job_lr(key),
                "status": "diverged" if st.diverged else "finished", **({"diverged": st.diverged} if st.diverged else {}),
                "epochs": st.epochs_done, "best_epoch": st.best_epoch, "stopped": st.stopped or "max_epochs",
                "best": best, "history": st.history, "test": test or {}, "config": asdict(self.cfg)}

    # ---- checkpoints ----

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "kind": self.kind,
            "states": {k: asdict(s) for k, s in self.states.items()},
            "best": self.best, "active": self.active,
            "stacks": {m: s.state_dict() for m, s in self.stacks.items()},
            "optims": {m: o.state_dict() for m, o in self.optims.items()},
            "generators": {m: [g.get_state() for g in (s.generators or [])] for m, s in self.stacks.items()},
            "dropout_seeds": {m: list(s.dropout_seeds) for m, s in self.stacks.items()},
            "flip_generator": self.flip_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.kind, self.best = sd["epoch"], sd["kind"], sd["best"]
        self.flip_generator.set_state(sd["flip_generator"])
        if "augment_generator" in sd:  # checkpoints written before online augmentation have none
            self.augment_generator.set_state(sd["augment_generator"])
        for k, s in sd["states"].items():
            s = dict(s)
            self.states[k] = JobState(BinaryJob(**s.pop("job")), **s)
        self.stacks, self.optims, self.active = {}, {}, {}
        for m, keys in sd["active"].items():
            if not keys:
                self.active[m] = []
                continue
            self._build(m, keys)
            self.stacks[m].load_state_dict(sd["stacks"][m])
            self.stacks[m].dropout_seeds = sd["dropout_seeds"][m]
            self.optims[m].load_state_dict(sd["optims"][m])
            gens = sd["generators"].get(m) or []
            if gens:
                self.stacks[m].generators = make_generators(self.stacks[m].dropout_seeds, self.device)
                for g, state in zip(self.stacks[m].generators, gens):
                    g.set_state(state)
