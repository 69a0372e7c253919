"""The Ray Train callback that logs a training run's epochs to MLflow as they arrive. In a module
of its own: Ray Train's controller imports it to unpickle the callback, and needs neither torch
nor the training code for that."""
from __future__ import annotations

import ray.train

from facray.tracking import log_epoch


class EpochMetricsToMlflow(ray.train.UserCallback):
    """Runs in the Train controller: logs rank 0's epoch metrics to the run the driver opened,
    as they arrive (the controller is the only writer while training runs)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context, metrics, checkpoint):
        log_epoch(self.tracking_uri, self.run_id, metrics[0])
