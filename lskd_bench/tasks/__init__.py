"""Task plugins, one module each, registered by name.

Third-party tasks register through the ``lskd_bench.tasks`` entry-point group (a Task subclass).
"""
from __future__ import annotations

from ..registry import Registry
from .base import ClassifierNet, InMemoryDataset, Task, TaskData, iterate_batches

# the built-in task modules register themselves when the registry is first looked up
TASKS: Registry[type[Task]] = Registry("task", "lskd_bench.tasks",
                                       builtin=("lskd_bench.tasks.digits", "lskd_bench.tasks.nmt", "lskd_bench.tasks.vision"))

DEFAULT_TASK = "digits"


def get_task(name: str) -> Task:
    obj = TASKS.get(name)
    return obj() if isinstance(obj, type) else obj


def task_names() -> list[str]:
    return TASKS.names()


__all__ = ["TASKS", "DEFAULT_TASK", "ClassifierNet", "InMemoryDataset", "Task", "TaskData", "get_task",
           "iterate_batches", "task_names"]
