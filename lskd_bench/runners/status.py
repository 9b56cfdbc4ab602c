"""``lskd-bench status``: the state of every cell of a run directory, from its files (result, lock, error,
epoch checkpoint), with the view of each executor that tracks cells elsewhere (the slurm executor: job ids,
queue states, log tails)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..errors import UsageError
from ..registry import EXECUTORS
from ..schema import LOCK
from .cells import plan_cells
from .state import cell_state

ROLES = ("teacher", "student", "baseline")


def cell_dirs(runs: Path, task: str | None = None) -> list[Path]:
    dirs = sorted(p for p in Path(runs).glob("*/*") if p.is_dir() and "-" in p.name and p.name.split("_")[0] in ROLES)
    return [p for p in dirs if task is None or p.parent.name == task]


def planned_dirs(runs: Path, task: str | None = None) -> list[Path]:
    """The cell folders of the grid each task's newest run planned (``TASK/configs/<hash>.yaml``, touched by every
    ``lskd-bench run``), so cells a running grid has not started yet are listed too. A config that no longer
    plans (an older version's keys, a task no longer registered) is skipped: its cells show through their folders."""
    dirs = []
    for cfg_dir in sorted(Path(runs).glob("*/configs")):
        if task is not None and cfg_dir.parent.name != task:
            continue
        configs = sorted(cfg_dir.glob("*.yaml"), key=lambda p: p.stat().st_mtime)
        if not configs:
            continue
        try:
            cfg = yaml.safe_load(configs[-1].read_text(encoding="utf-8"))
            dirs += [c.dir(runs) for c in plan_cells(cfg)]
        except (UsageError, LookupError, AttributeError, TypeError, ValueError, yaml.YAMLError, OSError):
            continue
    return dirs


def _one_per_cell(dirs: list[Path], planned: set[Path]) -> list[Path]:
    """One folder per cell: a cell reused from another data path (``moved.find_moved``) is a link to its folder;
    of the two, the planned one is listed (else the folder itself)."""
    by_real: dict[str, Path] = {}
    for p in dirs:
        real = os.path.realpath(p)
        kept = by_real.get(real)
        if kept is None or (p in planned, not p.is_symlink()) > (kept in planned, not kept.is_symlink()):
            by_real[real] = p
    return sorted(by_real.values())


def status_rows(runs: Path, task: str | None = None) -> list[dict[str, str]]:
    """Per cell under ``runs`` (and per cell the newest run of each task planned but has not started):
    damaged / finished / running / queued / failed / interrupted / pending (``state.cell_state``), with job ids."""
    planned = set(planned_dirs(runs, task))
    dirs = _one_per_cell(sorted(set(cell_dirs(runs, task)) | planned), planned)
    views: dict[Path, dict[str, str]] = {}
    for _, executor in EXECUTORS.items():
        for p, v in executor.status(dirs).items():
            views.setdefault(p, v)
    stale_s = LOCK.fields["stale_s"].default  # the run's own setting is not known here
    rows = []
    for p in dirs:
        view = views.get(p, {})
        st = cell_state(p, stale_s=stale_s, view=view)
        rows.append({"task": p.parent.name, "cell": p.name, "job": view.get("job", ""), "state": st.state,
                     "detail": st.detail})  # fmt: skip
    return rows
