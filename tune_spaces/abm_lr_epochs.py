"""The KTH study's sweep (Canal Garcia et al., "Prediction of Attributes"): learning rate
1e-3 / 1e-4 / 1e-5 and epoch budgets 25 / 63 / 125 / 250, over train-binary's config.

Early stopping (patience 3) usually ends a job before the larger budgets; the budget then caps
rather than fixes the length, as in the ABM-CNN paper.
"""
from ray import tune

from facray.training.configs import BinaryConfig

CONFIG = BinaryConfig
SPACE = {
    "lr": tune.grid_search([1e-3, 1e-4, 1e-5]),
    "epochs": tune.grid_search([25, 63, 125, 250]),
}
METRIC = "mean_val_accuracy"  # what train-binary's workers report each epoch
MODE = "max"
