"""The 4-trial sweep `facray sweep --smoke-test` runs on generated data (about a minute on 2
cores): a tiny model, learning rate x epoch budget."""
from ray import tune

from facray.training.configs import MultitaskConfig

CONFIG = MultitaskConfig
SPACE = {
    "lr": tune.grid_search([3e-3, 1e-2]),
    "epochs": tune.grid_search([1, 2]),
}
METRIC = "val_accuracy"
MODE = "max"
