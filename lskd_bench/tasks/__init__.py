"""Task plugins, one module each, registered by name.

Third-party tasks register through the ``lskd_bench.tasks`` entry-point group (a Task subclass).
"""
from __future__ import annotations

from ..registry import Registry
from .base import ClassifierNet, InMemoryDataset, Task, TaskData, iterate_batches

TASKS: Registry[type[Task]] = Registry("task", "lskd_bench.tasks")

DEFAULT_TASK = "digits"


def get_task(name: str) -> Task:
    _import_builtin()
    obj = TASKS.get(name)
    return obj() if isinstance(obj, type) else obj


def task_names() -> list[str]:
    _import_builtin()
    return TASKS.names()


def _import_builtin() -> None:
    from . import cifar, digits, nmt, vision  # noqa: F401  (they register themselves)


__all__ = ["TASKS", "DEFAULT_TASK", "ClassifierNet", "InMemoryDataset", "Task", "TaskData", "get_task", "iterate_batches", "task_names"]
