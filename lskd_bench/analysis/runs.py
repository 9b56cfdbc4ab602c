"""Find the finished cells an analysis needs in a run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..errors import UsageError
from ..runners.inference import cell_features
from ..tasks import TASKS, get_task


@dataclass
class CellRecord:
    result: dict[str, Any]
    dir: Path
    data_cache: dict[str, Any] = field(default_factory=dict)  # shared by a RunIndex's records (cell_features)

    @property
    def cell(self) -> dict[str, Any]:
        return self.result["cell"]

    def features(self) -> dict[str, np.ndarray]:
        """The cell's penultimate features (``features.npz``: computed from its weights and kept the first time)."""
        path = cell_features(self.dir, self.result, self.data_cache)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:
            raise UsageError(
                f"{path} is unreadable ({type(exc).__name__}: {exc}); delete the cell's result.json "
                f"and run again to recompute it"
            ) from None


class RunIndex:
    """Latest finished result per (task, role, arch, method, alpha, T, seed) under a run directory; an unusable
    result.json is skipped with a line in ``problems`` (the caller shows them, as the leaderboard does)."""

    def __init__(self, runs: Path, task: str | None = None, problems: list[str] | None = None):
        runs = Path(runs)
        if not runs.is_dir():
            raise UsageError(f"runs directory {runs} does not exist")
        latest: dict[tuple, CellRecord] = {}
        data_cache: dict[str, Any] = {}  # the data sets loaded to compute features, shared by the records
        for res in store.iter_results(runs, problems):
            c = res["cell"]
            key = (c["task"], c["role"], c["arch"], c["method"], c["alpha"], c["T"], c["seed"])
            if key not in latest or res.get("finished_at", "") >= latest[key].result.get("finished_at", ""):
                latest[key] = CellRecord(res, Path(res["cell_dir"]), data_cache)
        tasks = sorted({k[0] for k in latest})
        if not tasks:
            raise UsageError(f"no finished cells under {runs}")
        if task is None:
            if len(tasks) > 1:
                raise UsageError(f"{runs} holds several tasks ({', '.join(tasks)}); choose one with --task")
            task = tasks[0]
        elif task not in tasks:
            raise UsageError(f"no finished cells of task {task!r} under {runs} (found: {', '.join(tasks)})")
        self.task = task
        self.records = [r for k, r in latest.items() if k[0] == task]
        if task in TASKS and not get_task(task).supports_analysis:
            raise UsageError(
                f"task {task!r} is a translation task: the diffusion index and the penultimate-layer "
                "projection are defined for classification tasks (class centroids), so analyze and "
                "visualize do not apply to it"
            )

    def students(self, method: str = "kd", seed: int | None = None) -> list[CellRecord]:
        rs = [r for r in self.records if r.cell["role"] == "student" and r.cell["method"] == method]
        if not rs:
            raise UsageError(f"no finished {method} students of task {self.task!r}")
        seeds = sorted({r.cell["seed"] for r in rs})
        seed = seeds[0] if seed is None else seed
        if seed not in seeds:
            raise UsageError(f"no students with seed {seed} (found: {', '.join(map(str, seeds))})")
        return [r for r in rs if r.cell["seed"] == seed]

    def teachers(self) -> list[CellRecord]:
        return [r for r in self.records if r.cell["role"] == "teacher"]

    def find(self, records: list[CellRecord], alpha: float, T: float | None = None) -> CellRecord | None:
        for r in records:
            if float(r.cell["alpha"]) == float(alpha) and (T is None or float(r.cell["T"]) == float(T)):
                return r
        return None


def resolve_class(name: str, class_names: list[str]) -> int:
    """Class index from a class name (exact, then case-insensitive unique substring) or an index."""
    if name in class_names:
        return class_names.index(name)
    low = [c.lower() for c in class_names]
    hits = [i for i, c in enumerate(low) if name.lower() in c]
    if len(hits) == 1:
        return hits[0]
    if name.isdigit() and int(name) < len(class_names):
        return int(name)
    if len(hits) > 1:
        raise UsageError(f"class {name!r} is ambiguous: {', '.join(class_names[i] for i in hits[:5])}...")
    raise UsageError(f"unknown class {name!r}")
