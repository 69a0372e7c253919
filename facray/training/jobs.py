"""The binary jobs: what they are, which run, where a finished one's outputs live. Pure Python +
torch (for the weights file); runs on the driver and in Train workers.

A job is one (attribute, modality) pair. A finished job's folder ``<out>/jobs/<attribute>__<modality>/``
holds ``model.pt`` (an ABM-CNN state dict with its shape) and ``metrics.json`` (history, best
epoch, test metrics and the hash of the settings it was trained with).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from facray.attributes import MODALITIES, resolve_attributes
from facray.models.abm import ABMCNN

PAPER_TABLE = Path(__file__).resolve().parents[1] / "reference" / "abm_cnn_paper.csv"


@dataclass(frozen=True)
class BinaryJob:
    attribute: str
    modality: str
    max_epochs: int

    @property
    def key(self) -> str:
        return f"{self.attribute}__{self.modality}"


def job_seed(key: str, seed: int) -> int:
    """A model's initial weights depend on its job and the run seed only."""
    return (zlib.crc32(key.encode()) * 7919 + seed) % (2 ** 31 - 1)


def paper_epochs() -> dict[tuple[str, str], int]:
    """Table 1's epochs per (attribute, modality) where the paper reports them."""
    table = pd.read_csv(PAPER_TABLE, comment="#")
    out = {}
    for _, r in table.iterrows():
        for m in MODALITIES:
            out[(r.attribute, m)] = int(r[f"{m}_epochs"])
    return out


def make_jobs(attributes: str, modalities: tuple[str, ...], epochs: int, use_paper_epochs: bool = False
              ) -> list[BinaryJob]:
    for m in modalities:
        if m not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {m!r}")
    table = paper_epochs() if use_paper_epochs else {}
    return [BinaryJob(a, m, table.get((a, m), epochs)) for a in resolve_attributes(attributes) for m in modalities]


def finished_jobs(out: Path, settings_hash: str) -> set[str]:
    """Jobs finished under these settings (a job trained with other settings is not done)."""
    done = set()
    for f in (out / "jobs").glob("*/metrics.json"):
        try:
            rec = json.loads(f.read_text())
            if rec.get("status") == "finished" and rec.get("settings_hash") == settings_hash \
                    and (f.parent / "model.pt").is_file():
                done.add(f.parent.name)
        except (OSError, json.JSONDecodeError):
            pass
    return done


def write_job_output(folder: str | Path, trainer, key: str, test: dict,
                     extra: dict | None = None) -> Path:
    """``<folder>/<key>/model.pt`` (an ABMCNN state dict with its shape) and ``metrics.json``
    (the job record plus ``extra``)."""
    d = Path(folder) / key
    d.mkdir(parents=True, exist_ok=True)
    job = trainer.states[key].job
    torch.save({"state_dict": trainer.best[key], "in_channels": trainer._in_channels(job.modality),
                "image_size": trainer.cfg.image_size, "dropout": trainer.cfg.dropout,
                "attribute": job.attribute, "modality": job.modality}, d / "model.pt")
    (d / "metrics.json").write_text(json.dumps({**trainer.job_record(key, test), **(extra or {})}, indent=1))
    return d


def load_job_model(folder: str | Path) -> tuple[ABMCNN, dict]:
    blob = torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True)
    model = ABMCNN(blob["in_channels"], blob["image_size"], blob["dropout"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), {k: v for k, v in blob.items() if k != "state_dict"}
