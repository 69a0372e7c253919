"""``--node-wait`` for Ray Train: how long a run may wait for its workers' resources, each time it
has none (at the start, after a lost node), before it stops naming what is missing.

Ray Train V2 on its own retries a worker group whose placement group is not ready every 60 s,
forever (``FailureConfig.controller_failure_limit=-1``), and prints nothing: a lost node nobody
replaces hung the run. A cap on those retries (``controller_failure_limit``) would be counted over
the whole run, never reset, so a long run on spot instances would stop at its second slow
replacement. Here a controller callback measures each wait itself: it starts when the controller
leaves the running state (scheduling, restarting after a lost worker), ends when workers run again,
and raises :class:`NodeWaitExceeded` in the controller once it passes ``node_wait``; the driver
turns that into :class:`facray.runners.runtime.ClusterTooSmall`.
"""
from __future__ import annotations

import contextlib
import os
import time

try:  # Ray Train V2's controller hooks (DeveloperAPI in 2.60, the home of its own callbacks)
    from ray.train.v2._internal.execution.callback import ControllerCallback
except ImportError:  # another Ray: no bound, Ray's own retries (see callback())
    ControllerCallback = None

# Ray Train's wait for one placement group, per try (read by its controller, which the driver's
# environment reaches: ray.train.v2._internal.constants.ENV_VARS_TO_PROPAGATE).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# Controller states in which no worker group runs and the controller is waiting to start one.
WAITING_STATES = frozenset({"SchedulingState", "ReschedulingState", "RestartingState", "ResizingState"})


class NodeWaitExceeded(RuntimeError):
    """Raised in the Train controller when one wait for resources passed ``--node-wait``."""


if ControllerCallback is not None:
    class NodeWaitCallback(ControllerCallback):
        """Stops the run when one wait for resources lasts longer than ``seconds``."""

        def __init__(self, seconds: float):
            self.seconds, self.since = seconds, None

        def after_controller_state_update(self, previous_state, current_state) -> None:
            name = type(current_state).__name__
            if name == "RunningState":
                self.since = None
            elif name in WAITING_STATES:
                if self.since is None:
                    self.since = time.monotonic()
                elif time.monotonic() - self.since > self.seconds:
                    raise NodeWaitExceeded(f"{time.monotonic() - self.since:.0f} s without the resources")


def callback(seconds: float | None) -> list:
    """The controller callback for ``--node-wait`` (none for ``seconds`` None, or a Ray without
    the hooks)."""
    return [] if seconds is None or ControllerCallback is None else [NodeWaitCallback(seconds)]


@contextlib.contextmanager
def start_timeout(seconds: float | None):
    """Ray Train's per-try placement wait, for the ``fit`` inside: at most 60 s (Ray's default) and
    at most half of ``seconds``, so the callback gets to look at least twice within the bound. A
    value the user set is kept; the environment is restored afterwards."""
    if seconds is None or START_TIMEOUT_ENV in os.environ:
        yield
        return
    os.environ[START_TIMEOUT_ENV] = f"{min(60.0, seconds / 2):g}"
    try:
        yield
    finally:
        os.environ.pop(START_TIMEOUT_ENV, None)


def exceeded(error: BaseException) -> bool:
    """Whether a ``ray.train.ControllerError`` is this bound's (or Ray's own verdict that no node
    of the cluster can ever hold the workers)."""
    failure = getattr(error, "controller_failure", None)
    return type(failure).__name__ in ("NodeWaitExceeded", "InsufficientClusterResourcesError")
