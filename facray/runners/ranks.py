"""What every Ray Train worker rank does together: set up, and agree on a failure a retry would
repeat, so the run ends at once with one line instead of hanging in a collective or being retried."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import ray.train
import torch.distributed as dist

from facray.staged_runs import run_folder

T = TypeVar("T")

# Errors a retry would only repeat: the same files, settings and code on every attempt. A Ray
# Train worker that meets one ends the run at once (:func:`failed_on_any_rank`); Ray Train's
# retries (``max_failures``) are for lost workers and nodes.
DETERMINISTIC_ERRORS = (ValueError, TypeError, LookupError, AttributeError, ImportError, FileNotFoundError,
                        NotADirectoryError, IsADirectoryError, PermissionError)


def set_up_on_every_rank(out: str | Path, setup: Callable[[], T]) -> T | None:
    """Run a Ray Train worker's ``setup`` (what a missing file or a bad setting breaks: reading
    the data, building the model), before any collective. Its result, or None when it failed
    with a :data:`DETERMINISTIC_ERRORS` error on this rank or any other: then the first error is
    the run's failure (:func:`failed_on_any_rank`) and the worker should return."""
    try:
        result, error = setup(), ""
    except DETERMINISTIC_ERRORS as e:
        result, error = None, f"{type(e).__name__}: {e}"
    return None if failed_on_any_rank(out, error) else result


def failed_on_any_rank(out: str | Path, error: str) -> bool:
    """Every Ray Train worker calls this once after its setup, with its error line ("" when none).
    True when any rank failed: the first failure is written as the run's (rank 0 writes
    :meth:`~facray.runs.RunFolder.write_failure`; the driver raises it) and every rank should return, so no rank
    waits for another in a collective and nothing is retried. One all-gather of short strings."""
    messages = [error]
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        messages = [None] * dist.get_world_size()
        dist.all_gather_object(messages, error)
    failed = [m for m in messages if m]
    if failed and (not distributed or dist.get_rank() == 0):
        run_folder(out).write_failure(failed[0], ray.train.get_context().get_experiment_name())
    return bool(failed)


