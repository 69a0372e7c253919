"""Every shipped search space passes the check a sweep makes before Ray starts
(:func:`facray.training.sweep_space.load_space`), and that check refuses what it should."""
from __future__ import annotations

import pkgutil

import pytest

import tune_spaces
from facray.training.sweep_space import load_space


@pytest.mark.parametrize("name", [m.name for m in pkgutil.iter_modules(tune_spaces.__path__)])
def test_every_shipped_space_loads(name):
    space = load_space(f"tune_spaces.{name}")
    assert space.space and space.trainer in ("binary", "multitask")


@pytest.mark.parametrize("body,error", [
    ("SPACE = {'lrr': tune.grid_search([1e-3])}", "'lrr' is not a MultitaskConfig field"),
    ("SPACE = {'lr': tune.grid_search(['fast'])}", "lr: expected float"),
    ("SPACE = {'num_workers': tune.grid_search([1, 2])}", "set by the sweep itself"),
    ("SPACE = {'lr': tune.grid_search([1e-3])}\nMETRIC = 'mean_val_accuracy'", "is not reported by the multitask"),
])
def test_a_bad_space_is_refused_before_ray_starts(tmp_path, body, error):
    f = tmp_path / "space.py"
    f.write_text("from ray import tune\nfrom facray.training.configs import MultitaskConfig as CONFIG\n"
                 "METRIC, MODE = 'val_loss', 'min'\n" + body + "\n")
    with pytest.raises(ValueError, match=error):
        load_space(str(f))


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
