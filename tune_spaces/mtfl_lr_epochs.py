"""The KTH study's grid for its own MTFL CNNs (Canal Garcia et al., "Prediction of Attributes"):
learning rate 1e-3 / 1e-4 / 1e-5 x epoch budgets 25 / 63 / 125 / 250, over `facray train`'s
config, with the model, the attributes and the nose-centred MTFL data as trial keys:

    facray sweep --space tune_spaces/mtfl_lr_epochs.py model=cascade-cnn attributes=Smiling \
        prepared=runs/mtfl64 lr_schedule=constant patience=250

The paper trains to the budget (no early stopping: hence the large patience) at a constant rate;
the metric is the validation accuracy of the trained attribute(s), as its tables report.
"""
from ray import tune

from facray.training.configs import MultitaskConfig

CONFIG = MultitaskConfig
SPACE = {
    "lr": tune.grid_search([1e-3, 1e-4, 1e-5]),
    "epochs": tune.grid_search([25, 63, 125, 250]),
}
METRIC = "val_accuracy"  # mean over the trained attributes, each epoch
MODE = "max"
