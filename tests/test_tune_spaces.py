"""Every shipped search space passes the check a sweep makes before Ray starts
(:func:`facray.training.sweep_space.load_space`; what it refuses: tests/test_sweep.py)."""
from __future__ import annotations

import pkgutil

import pytest

import tune_spaces
from facray.training.sweep_space import load_space


@pytest.mark.parametrize("name", [m.name for m in pkgutil.iter_modules(tune_spaces.__path__)])
def test_every_shipped_space_loads(name):
    space = load_space(f"tune_spaces.{name}")
    assert space.space and space.trainer in ("binary", "multitask")


def test_kth_grid_is_the_papers():
    from tune_spaces import abm_lr_epochs
    assert abm_lr_epochs.SPACE["lr"]["grid_search"] == [1e-3, 1e-4, 1e-5]
    assert abm_lr_epochs.SPACE["epochs"]["grid_search"] == [25, 63, 125, 250]


def test_mtfl_grid_is_the_papers_over_the_multitask_config():
    from facray.training.configs import MultitaskConfig
    from tune_spaces import mtfl_lr_epochs
    assert mtfl_lr_epochs.CONFIG is MultitaskConfig
    assert mtfl_lr_epochs.SPACE["lr"]["grid_search"] == [1e-3, 1e-4, 1e-5]
    assert mtfl_lr_epochs.SPACE["epochs"]["grid_search"] == [25, 63, 125, 250]
