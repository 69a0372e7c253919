"""Learning rate x weight decay for `facray train`'s multi-task models (AdamW, cosine schedule),
with ASHA stopping the poor trials after a few epochs. Give the model and data as trial keys:
``facray sweep --space tune_spaces/multitask_lr_wd.py model=resnet18 prepared=DIR epochs=12``."""
from ray import tune

from facray.training.configs import MultitaskConfig

CONFIG = MultitaskConfig
SPACE = {
    "lr": tune.grid_search([3e-4, 1e-3, 3e-3]),
    "weight_decay": tune.grid_search([1e-5, 1e-4, 1e-3]),
}
METRIC = "val_accuracy"  # mean over the labelled attributes, each epoch
MODE = "max"


def SCHEDULER(metric: str, mode: str, max_t: int):  # noqa: N802 - the space's named hook
    from ray.tune.schedulers import ASHAScheduler
    return ASHAScheduler(metric=metric, mode=mode, max_t=max_t, grace_period=3, reduction_factor=3)
