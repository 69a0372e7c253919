"""The training configs: a run's identity (its ``run.json`` hash) stays put across refactors, and
every training option is declared once."""
from __future__ import annotations

import dataclasses

from facray.training.configs import TrainBinaryConfig, TrainConfig
from facray.training.run_record import run_settings, settings_hash


def test_run_json_hashes_are_pinned():
    """Existing run folders resume only while these hashes hold: a renamed field or a changed
    default makes every earlier run look like another one (re-training, or a refusal)."""
    binary = run_settings(TrainBinaryConfig(prepared="/data/p", out="/runs/a"), "shards-1")
    multitask = run_settings(TrainConfig(prepared="/data/p", out="/runs/b", model="resnet18", lr=3e-4), "shards-1")
    assert (settings_hash(binary), len(binary)) == ("8135881b0e52bf75", 20)
    assert (settings_hash(multitask), len(multitask)) == ("8599a303aea28eb2", 34)


def test_operational_keys_leave_the_hash_alone():
    base = TrainConfig(prepared="/data/p", out="/runs/b")
    moved = dataclasses.replace(base, out="/elsewhere", num_workers=4, tracking_uri="http://x", max_failures=0)
    assert settings_hash(run_settings(base, "s")) == settings_hash(run_settings(moved, "s"))
    assert settings_hash(run_settings(base, "s")) != settings_hash(run_settings(dataclasses.replace(base, lr=0.1), "s"))
