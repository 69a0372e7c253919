"""Early stopping on validation loss: the one rule of every trainer (a binary job's
:class:`facray.training.binary_jobs.JobState`, :class:`facray.training.multitask.MultiTaskTrainer`).

An epoch improves when its validation loss is below the best by more than ``MIN_DELTA`` (so noise
at the sixth decimal is not progress); ``patience`` epochs in a row without improvement stop the
training, and the best epoch's weights are the ones kept. A NaN validation loss means nothing was
labelled to validate on (an attribute unlabelled in the validation split): every epoch is then the
latest best, so the model trains all its epochs and keeps the last. A loss that diverged never gets
here: the trainers stop on it first (:func:`facray.training.run_record.divergence`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MIN_DELTA = 1e-6


@dataclass(kw_only=True, eq=False)  # a base of trainers: identity, not field equality
class EarlyStopping:
    """The best validation loss so far, its epoch (1-based; 0 = none yet) and the epochs since.
    A base of the trainers' state, so their checkpoints keep these three fields as they always had."""
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def improves(self, epoch: int, val_loss: float) -> bool:
        """Record ``epoch``'s validation loss; True when it is the new best (keep its weights), and
        always when it is NaN (nothing to compare: the latest epoch is kept)."""
        if math.isnan(val_loss) or math.isnan(self.best_val_loss) or val_loss < self.best_val_loss - MIN_DELTA:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def exhausted(self, patience: int) -> bool:
        """``patience`` epochs in a row without improvement."""
        return self.bad_epochs >= patience
