"""What a training run folder was trained with, so a re-run resumes the same run or refuses.

Pure Python; runs on the driver. ``<out>/run.json`` holds the settings that decide the trained
weights (the config minus operational keys such as workers, tracking URI or failure injection,
plus the version of the prepared data) and their hash; every finished job's ``metrics.json``
carries the same hash. A re-run with other settings is refused with the keys that differ, unless
it asks to ``overwrite``; jobs finished under other settings are never counted as done.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from facray.config import config_to_dict, option

RECORD = "run.json"


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
    tracking_uri: str | None = option(None, "MLflow URI (default sqlite under out)")


def inject_failure_once(out: str | Path, fail_at_epoch: int, epoch: int) -> None:
    """Testing aid (``--fail-at-epoch``): raise once, at the start of that epoch; a marker file in
    ``out`` remembers, so the restarted worker goes on."""
    if fail_at_epoch and epoch == fail_at_epoch:
        marker = Path(out) / ".injected_failure"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"failed at epoch {epoch}\n")
            raise RuntimeError(f"injected failure at the start of epoch {epoch} (fail_at_epoch)")
# Keys that change how a run is executed or logged, not the weights it produces.
OPERATIONAL_KEYS = frozenset({
    "out", "tracking_uri", "experiment", "fail_at_epoch", "max_failures", "num_workers",
    "cpus_per_worker", "gpus_per_worker", "max_concurrent", "torch_threads", "mode", "data", "stack",
    "overwrite",
})
# What --overwrite removes: every trained output, never the MLflow store (history stays).
TRAINED_OUTPUTS = ("jobs", "ray_results", "combined", "report", "parent_run_id", "mlflow_logged.json",
                   "jobs_summary.csv", ".injected_failure", RECORD)


def run_settings(cfg, prepared_version: str) -> dict:
    """The settings that decide a run's weights (JSON-friendly, sorted)."""
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in OPERATIONAL_KEYS}
    settings["prepared_version"] = prepared_version
    return dict(sorted(settings.items()))


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs (or exists on one side only)."""
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def claim_run(out: Path, settings: dict, overwrite: bool = False) -> str:
    """Check ``out`` against ``settings`` and record them; return their hash.

    Raises ValueError naming the differing keys when ``out`` holds a run trained with other
    settings (``overwrite`` removes its trained outputs instead).
    """
    out.mkdir(parents=True, exist_ok=True)
    record = out / RECORD
    if record.is_file() and not overwrite:
        old = json.loads(record.read_text())["settings"]
        diff = differing_keys(old, settings)
        if diff:
            raise ValueError(f"{out} holds a run trained with other settings ({record}):\n  "
                             + "\n  ".join(diff)
                             + "\nuse another --out, or --overwrite to discard that run and start afresh")
    elif overwrite:
        for name in TRAINED_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    digest = settings_hash(settings)
    record.write_text(json.dumps({"settings_hash": digest, "settings": settings}, indent=1, default=str))
    return digest
