"""Every search space names real config fields, with values the field accepts."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import tune_spaces
from facray.config import coerce


def _spaces():
    return [importlib.import_module(f"tune_spaces.{m.name}") for m in pkgutil.iter_modules(tune_spaces.__path__)]


@pytest.mark.parametrize("space", _spaces(), ids=lambda m: m.__name__)
def test_space_keys_are_config_fields(space):
    import typing
    fields = {f.name for f in dataclasses.fields(space.CONFIG)}
    hints = typing.get_type_hints(space.CONFIG)
    assert set(space.SPACE) <= fields and space.MODE in ("min", "max") and space.METRIC
    for key, domain in space.SPACE.items():
        values = domain["grid_search"] if isinstance(domain, dict) and "grid_search" in domain else [domain.sample()]
        for v in values:
            assert coerce(v, hints[key], key) == v


def test_kth_grid_is_the_papers():
    from tune_spaces import abm_lr_epochs
    assert abm_lr_epochs.SPACE["lr"]["grid_search"] == [1e-3, 1e-4, 1e-5]
    assert abm_lr_epochs.SPACE["epochs"]["grid_search"] == [25, 63, 125, 250]


def test_mtfl_grid_is_the_papers_over_the_multitask_config():
    from facray.training.configs import TrainConfig
    from tune_spaces import mtfl_lr_epochs
    assert mtfl_lr_epochs.CONFIG is TrainConfig
    assert mtfl_lr_epochs.SPACE["lr"]["grid_search"] == [1e-3, 1e-4, 1e-5]
    assert mtfl_lr_epochs.SPACE["epochs"]["grid_search"] == [25, 63, 125, 250]
