"""The binary jobs: what they are, which run, and what a finished one writes. Pure Python +
torch (for the weights file); runs on the driver and in Train workers.

A job is one (attribute, modality) pair. A finished job's folder (where:
:meth:`facray.runs.RunFolder.job_dir`) holds its ABM-CNN state dict with its shape and its
metrics (history, best epoch, test metrics and the hash of the settings it was trained with).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from facray.attributes import MODALITIES, resolve_attributes
from facray.runs import RunFolder, write_json_atomically
from facray.training.early_stopping import EarlyStopping

PAPER_TABLE = Path(__file__).resolve().parents[1] / "reference" / "abm_cnn_paper.csv"


@dataclass(frozen=True)
class BinaryJob:
    attribute: str
    modality: str
    max_epochs: int
    lr: float | None = None  # set by an in-stack lr sweep (``--lrs``); None: the run's --lr

    @property
    def model_key(self) -> str:
        """Which model this job trains: the attribute on a modality (what a predictor holds)."""
        return f"{self.attribute}__{self.modality}"

    @property
    def key(self) -> str:
        """The job's name (and folder): the model key, plus the lr in an in-stack sweep."""
        return self.model_key if self.lr is None else f"{self.model_key}__lr{self.lr:g}"


def job_seed(key: str, seed: int) -> int:
    """A model's initial weights depend on its model key and the run seed only (so an in-stack
    lr sweep's variants start from the same weights, as separate runs with each lr would)."""
    return (zlib.crc32(key.encode()) * 7919 + seed) % (2 ** 31 - 1)


@dataclass
class JobState(EarlyStopping):
    """A job's progress: its early stopping on validation loss and its epoch budget."""
    job: BinaryJob
    epochs_done: int = 0
    stopped: str = ""  # "", "early_stopping", "max_epochs" or "diverged"
    history: list[dict] = field(default_factory=list)
    diverged: str = ""  # why the job diverged (:func:`facray.training.run_record.divergence`)

    def diverge(self, rec: dict, message: str) -> None:
        """Add the epoch whose loss was not finite and stop: nothing this job trained is kept."""
        self.history.append(rec)
        self.epochs_done += 1
        self.stopped, self.diverged = "diverged", message

    def record_epoch(self, rec: dict, patience: int) -> bool:
        """Add one epoch's record (``epoch``, ``val_loss``, ...); True when it is the new best."""
        self.history.append(rec)
        self.epochs_done += 1
        improved = self.improves(rec["epoch"], rec["val_loss"])
        if self.exhausted(patience):
            self.stopped = "early_stopping"
        elif self.epochs_done >= self.job.max_epochs:
            self.stopped = "max_epochs"
        return improved


def paper_epochs() -> dict[tuple[str, str], int]:
    """Table 1's epochs per (attribute, modality) where the paper reports them."""
    table = pd.read_csv(PAPER_TABLE, comment="#")
    out = {}
    for _, r in table.iterrows():
        for m in MODALITIES:
            out[(r.attribute, m)] = int(r[f"{m}_epochs"])
    return out


def make_jobs(attributes: str, modalities: tuple[str, ...], epochs: int, use_paper_epochs: bool = False,
              lrs: tuple[float, ...] = ()) -> list[BinaryJob]:
    """One job per attribute x modality (x learning rate, for an in-stack sweep over ``lrs``)."""
    for m in modalities:
        if m not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {m!r}")
    if any(lr <= 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise ValueError(f"lrs must be distinct positive learning rates, got {lrs}")
    table = paper_epochs() if use_paper_epochs else {}
    return [BinaryJob(a, m, table.get((a, m), epochs), lr) for a in resolve_attributes(attributes)
            for m in modalities for lr in (lrs or (None,))]


def write_job_output(job_dir: str | Path, trainer, key: str, test: dict,
                     extra: dict | None = None) -> Path:
    """Job ``key``'s weights (an ABMCNN state dict with its shape) and metrics (the job record plus
    ``extra``) into ``job_dir`` (:meth:`facray.runs.RunFolder.job_dir`). A diverged job
    writes its metrics (status ``diverged``, the reason) and no weights."""
    d = Path(job_dir)
    d.mkdir(parents=True, exist_ok=True)
    job = trainer.states[key].job
    if key in trainer.best:
        torch.save({"state_dict": trainer.best[key], "in_channels": trainer._in_channels(job.modality),
                    "image_size": trainer.cfg.image_size, "dropout": trainer.cfg.dropout,
                    "attribute": job.attribute, "modality": job.modality}, RunFolder.job_weights_file(d))
    # The metrics file marks the job finished, so it goes last (after the weights), whole.
    write_json_atomically(RunFolder.job_metrics_file(d), {**trainer.job_record(key, test), **(extra or {})})
    return d
