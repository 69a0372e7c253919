"""What a training run folder was trained with, so a re-run resumes the same run or refuses.

Pure Python; runs on the driver. ``<out>/run.json`` holds the settings that decide the trained
weights (the config minus operational keys such as workers, tracking URI or failure injection,
plus the version of the prepared data) and their hash; every finished job's ``metrics.json``
carries the same hash. A re-run with other settings is refused with the keys that differ, unless
it asks to ``overwrite``; jobs finished under other settings are never counted as done. The
folder's layout is :mod:`facray.runs`'s.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from facray import storage
from facray.config import config_text, config_to_dict
from facray.data.prepared import read_metadata
from facray.runs import RunFolder
from facray.staged_runs import run_folder
from facray.training.configs import NON_WEIGHT_KEYS


class TrainingFailed(ValueError):
    """A Ray Train run ended by a failure a retry would repeat (a missing file, a bad setting, a
    diverged loss), reported by its workers (:func:`failed_on_any_rank`); nothing of it is kept."""


class TrainingDiverged(TrainingFailed):
    """The loss became non-finite: the weights are no use, nothing of the run may be kept or
    registered (raised by the trainers' ``check_finite``; the CLI prints it in one line)."""


def divergence(epoch: int, loss: float, val_loss: float, lr: float) -> str | None:
    """The line that says training diverged at ``epoch`` when its training or validation loss is
    not finite (None when both are): the one finiteness rule of every trainer. Checked once per
    epoch (the loss is summed on the device, so a per-step check would wait for the GPU every
    step); nothing trained after a non-finite loss is kept."""
    if math.isfinite(loss) and math.isfinite(val_loss):
        return None
    return (f"training diverged at epoch {epoch}: loss {loss:.4g}, validation loss {val_loss:.4g} at learning "
            f"rate {lr:.3g}; lower --lr (or check the data) and re-run with --overwrite")


def inject_failure_once(out: str | Path, fail_at_epoch: int, epoch: int) -> None:
    """Testing aid (``--fail-at-epoch``): raise once, at the start of that epoch; a marker file in
    ``out`` (on its object storage for a run there: the restarted worker may be on another node)
    remembers, so the restarted worker goes on."""
    if fail_at_epoch and epoch == fail_at_epoch:
        run = run_folder(out)
        marker = storage.join(run.location, run.failure_marker.name)
        if not storage.exists(marker):
            storage.write_text(marker, f"failed at epoch {epoch}\n")
            raise RuntimeError(f"injected failure at the start of epoch {epoch} (fail_at_epoch)")


# Keys added after runs were trained without them, left out of the settings while at these values (what
# those runs did), so the runs still resume and keep their hash.
LATER_KEYS = {"holdout_seed": None, "online_augment": "off"}
# The same for what hashes a whole config (a sweep's base, a Ray Train run's name), which has held
# holdout_seed since before those hashes were kept.
LATER_CONFIG_KEYS = {"online_augment": "off"}


def later_keys_dropped(settings: dict, later: dict = LATER_KEYS) -> dict:
    """``settings`` without the ``later`` keys at the values runs had before those keys existed."""
    return {k: v for k, v in settings.items() if not (k in later and v == later[k])}


def run_settings(cfg, prepared_version: str) -> dict:
    """The settings that decide a run's weights (JSON-friendly, sorted)."""
    settings = {k: v for k, v in later_keys_dropped(config_to_dict(cfg)).items() if k not in NON_WEIGHT_KEYS}
    settings["prepared_version"] = prepared_version
    return dict(sorted(settings.items()))


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_run(cfg, inputs: dict | None = None) -> tuple[RunFolder, str]:
    """Check ``cfg.out`` against ``cfg``'s settings, record them and the config; return the run
    folder and the settings hash (see :meth:`facray.runs.RunFolder.claim`). ``inputs``: more
    that decides the weights beyond the config (a distillation teacher's weights and calibration
    digests: the same path may hold another teacher later). A run on object storage is pulled into
    its local copy first (:func:`facray.staged_runs.run_folder`); :func:`facray.runners.train.train`
    pushes it back."""
    run = run_folder(cfg.out)
    run.pull()
    settings = {**run_settings(cfg, read_metadata(cfg.prepared)["shards"]), **(inputs or {})}
    digest = settings_hash(settings)
    run.claim(settings, digest, cfg.overwrite)
    run.write_config(config_text(cfg))
    return run, digest
