"""Search spaces as code, loaded and checked before Ray starts. Pure Python (the space modules
import ``ray.tune`` for their domains; nothing here starts Ray).

A space is a module (``tune_spaces/NAME.py`` or any importable name) exposing:

- ``CONFIG``: the trainer's config class (:class:`facray.training.configs.BinaryConfig` or
  :class:`~facray.training.configs.MultitaskConfig`), which also says which trainer runs the trials;
- ``SPACE``: config field -> a Tune domain (``tune.grid_search([...])``, ``tune.loguniform(...)``)
  or a constant;
- ``METRIC`` and ``MODE``: what the trials report each epoch and whether to ``max`` or ``min`` it;
- optionally ``SCHEDULER(metric, mode, max_t)``: a function returning a Tune scheduler (e.g. ASHA).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from facray.config import coerce
from facray.training.configs import NON_WEIGHT_KEYS
from facray.training.tasks import TASKS

TRAINERS = {task.config_class: name for name, task in TASKS.items()}
# What a trial may report per epoch, by trainer (checked against the space's METRIC).
METRICS = {"binary": ("mean_val_accuracy",), "multitask": ("val_accuracy", "val_loss", "loss")}
# Keys the sweep sets itself (each trial's folder and store) or that decide where trials run.
SWEEP_OWNED = NON_WEIGHT_KEYS


@dataclass(frozen=True)
class SearchSpace:
    name: str
    config_class: type
    space: dict[str, Any]
    metric: str
    mode: str
    scheduler: Callable | None

    @property
    def trainer(self) -> str:
        return TRAINERS[self.config_class]

    def grid_values(self, key: str) -> list | None:
        """The grid of ``key``; None when it is not swept or sampled rather than gridded."""
        domain = self.space.get(key)
        return domain["grid_search"] if isinstance(domain, dict) and "grid_search" in domain else None


def load_space(spec: str) -> SearchSpace:
    """A space from a file path (``tune_spaces/abm_lr_epochs.py``) or a module name, checked:
    every key a field of its config with values the field accepts, a metric the trainer reports."""
    path = Path(spec)
    if spec.endswith(".py") and not path.is_file() and path.parent.name == "tune_spaces":
        spec = f"tune_spaces.{path.stem}"  # a shipped space, run from outside the repository
    if spec.endswith(".py") or "/" in spec:
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such search space file")
        module_spec = importlib.util.spec_from_file_location(f"facray_space_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        name = path.stem
    else:
        module, name = importlib.import_module(spec), spec.rsplit(".", 1)[-1]
    missing = [a for a in ("CONFIG", "SPACE", "METRIC", "MODE") if not hasattr(module, a)]
    if missing:
        raise ValueError(f"{spec}: a search space must define {', '.join(missing)}")
    space = SearchSpace(name, module.CONFIG, dict(module.SPACE), module.METRIC, module.MODE,
                        getattr(module, "SCHEDULER", None))
    check_space(space, spec)
    return space


def check_space(space: SearchSpace, source: str) -> None:
    if space.config_class not in TRAINERS:
        raise ValueError(f"{source}: CONFIG must be one of {', '.join(c.__name__ for c in TRAINERS)}, "
                         f"got {getattr(space.config_class, '__name__', space.config_class)}")
    fields = {f.name for f in dataclasses.fields(space.config_class)}
    hints = typing.get_type_hints(space.config_class)
    for key, domain in space.space.items():
        if key not in fields:
            raise ValueError(f"{source}: {key!r} is not a {space.config_class.__name__} field; known: {sorted(fields)}")
        if key in SWEEP_OWNED:
            raise ValueError(f"{source}: {key!r} is set by the sweep itself (or decides where trials run), "
                             "not swept")
        grid = space.grid_values(key)
        samples = grid if grid is not None else [domain.sample() if hasattr(domain, "sample") else domain]
        for value in samples:
            if coerce(value, hints[key], key) != value:
                raise ValueError(f"{source}: {key}={value!r} is not a valid {hints[key]}")
    if space.mode not in ("min", "max"):
        raise ValueError(f"{source}: MODE must be 'min' or 'max', got {space.mode!r}")
    if space.metric not in METRICS[space.trainer]:
        raise ValueError(f"{source}: METRIC {space.metric!r} is not reported by the {space.trainer} trainer "
                         f"(one of {', '.join(METRICS[space.trainer])})")
