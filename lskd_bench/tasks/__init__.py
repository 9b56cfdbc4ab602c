"""Task plugins, one module each, registered by name.

Third-party tasks register through the ``lskd_bench.tasks`` entry-point group (a Task subclass).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..metrics import MetricSpec
from ..registry import Registry
from .base import BatchRequest, ClassifierNet, InMemoryDataset, Task, TaskData, iterate_batches

# the built-in task modules register themselves when the registry is first looked up
TASKS: Registry[type[Task]] = Registry(
    "task",
    "lskd_bench.tasks",
    builtin=(
        "lskd_bench.tasks.cifar",
        "lskd_bench.tasks.digits",
        "lskd_bench.tasks.imagefolder",
        "lskd_bench.tasks.nmt",
        "lskd_bench.tasks.vision",
    ),
)

DEFAULT_TASK = "digits"


def get_task(name: str) -> Task:
    obj = TASKS.get(name)
    return obj() if isinstance(obj, type) else obj


def task_names() -> list[str]:
    return TASKS.names()


def result_metrics(result: Mapping[str, Any]) -> list[MetricSpec]:
    """The metric specs a result.json reports, in table order: those it records (``metric_specs``); for a
    result written before they were recorded, its task's declaration (or bare names for an unknown task)."""
    if result.get("metric_specs"):
        return [MetricSpec.from_dict(d) for d in result["metric_specs"]]
    task = result["cell"]["task"]
    declared = {m.name: m for m in get_task(task).metrics} if task in TASKS else {}
    names = result.get("metric_names") or list(result["metrics"])
    return [declared.get(n, MetricSpec(n, n)) for n in names]


__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "BatchRequest",
    "ClassifierNet",
    "InMemoryDataset",
    "Task",
    "TaskData",
    "get_task",
    "iterate_batches",
    "result_metrics",
    "task_names",
]
