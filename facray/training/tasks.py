"""Every training :class:`~facray.training.task.Task` by name (how a Ray Train worker finds its
task) and by config class (how the driver and a sweep pick one)."""
from __future__ import annotations

from facray.training.binary_task import BinaryTask
from facray.training.distill_task import DistillTask
from facray.training.multitask_task import MultitaskTask
from facray.training.task import Task

TASKS: dict[str, Task] = {t.name: t for t in (BinaryTask(), MultitaskTask(), DistillTask())}


def task_for(cfg_or_class) -> Task:
    """The task that trains a config (or config class): :class:`BinaryConfig` -> ``binary``,
    :class:`MultitaskConfig` -> ``multitask``, :class:`DistillConfig` -> ``distill``. ``TypeError``
    for anything else."""
    cls = cfg_or_class if isinstance(cfg_or_class, type) else type(cfg_or_class)
    for task in TASKS.values():
        if cls is task.config_class:
            return task
    raise TypeError(f"no training task for {cls.__name__}: one of "
                    + ", ".join(t.config_class.__name__ for t in TASKS.values()))
