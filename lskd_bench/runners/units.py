"""Training one unit of a grid (a cell, or a fused group of cells sharing every batch): the one path every
executor takes, whether the unit trains in this process (``local``), in a worker process (``subprocess``,
``torchrun``: ``runners/worker.py``) or in a Slurm job (``runners/slurm.py``).

``train_unit``: rank 0 claims the cells' locks -> the ranks agree on the claimed cells -> heartbeat -> the
unit's inputs (data, teacher) -> ``train_group`` -> release. ``distributed`` sets up (and tears down) the
process group of a multi-process unit (torchrun ranks, Slurm tasks).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import store
from ..config import config_hash
from ..errors import UsageError
from ..methods import method_class
from ..tasks import Task, TaskData
from . import progress
from .cells import Cell, teacher_weights
from .lock import CellLock, Heartbeat
from .train import Outcome, dist_info, load_model, resolve_device, train_group


@dataclass
class GridJob:
    """A grid being run: its task, resolved config, run directory, and what became of its cells."""

    task: Task
    cfg: dict[str, Any]
    out: Path
    progress: bool = True
    trained: list[Cell] = field(default_factory=list)
    failed: dict[str, tuple[Cell, str]] = field(default_factory=dict)  # hash -> (cell, reason)
    blocked: list[Cell] = field(default_factory=list)
    elsewhere: list[Cell] = field(default_factory=list)  # finished by another process while we waited
    submitted: list[Cell] = field(default_factory=list)  # handed to a cluster scheduler (not finished yet)
    queued: list[Cell] = field(default_factory=list)  # already queued or running in the scheduler
    notes: list[str] = field(default_factory=list)  # lines the executor wants printed after the summary
    repairs: list[str] = field(default_factory=list)  # one line per damaged file recovered from
    _data: TaskData | None = None

    def data(self) -> TaskData:
        if self._data is None:
            self._data = self.task.load_data(self.cfg, cache_dir=self.cache_dir())
        return self._data

    def cache_dir(self) -> Path:
        return self.out / self.cfg["task"] / "cache"

    def mark_done(self, cell: Cell) -> None:
        self.trained.append(cell)

    def say(self, line: str) -> None:
        """A line for the user while the grid runs (stderr, above any progress bar)."""
        progress.say(self.cfg, line)

    def progress_bar(self, total: int):
        return progress.progress_bar(
            self.cfg, total=total, desc=f"{self.cfg['task']} grid", unit="cell", show=self.progress
        )

    def write_spec(self, overrides: dict[str, Any] | None = None) -> Path:
        """The run spec a worker process or a cluster job reads (``read_spec``); ``overrides`` change settings
        outside the cells' identity (per-process data-loader workers)."""
        cfg = {**self.cfg, **(overrides or {})}
        path = self.out / self.cfg["task"] / "configs" / f"spec-{config_hash(cfg)}.json"
        store.write_json(path, {"config": cfg, "out": str(self.out), "progress": False})
        return path


def read_spec(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def unit_inputs(job: GridJob, unit: list[Cell], device, teacher_cache: dict | None = None):
    """(data, teacher model) a unit trains with; teacher-target students get the relabelled data."""
    data = job.data()
    tcell = unit[0].teacher if unit[0].role == "student" else None
    if tcell is None:
        return data, None
    cache = teacher_cache if teacher_cache is not None else {}
    if tcell.hash not in cache:
        cache.clear()  # one teacher in memory at a time
        path, _ = teacher_weights(tcell, job.out, job.cfg["teacher_weights"])  # last or selected epoch: the recipe's
        cache[tcell.hash] = load_model(job.task, tcell.arch, data, job.cfg, path, device)
    teacher = cache[tcell.hash]
    if method_class(unit[0].method).needs.teacher_targets:
        cached = "teacher_targets" + ("_selected" if job.cfg["teacher_weights"] == "selected" else "")  # per weights
        data = job.task.teacher_targets(teacher, data, job.cfg, device, tcell.dir(job.out) / cached)
    return data, teacher


def claim(job: GridJob, unit: list[Cell]) -> tuple[list[Cell], list[CellLock], list[Cell]]:
    """Lock what we can of ``unit``: (cells now ours, their locks, cells another process holds). A lock taken
    over from a dead or unreadable one is recorded in ``job.repairs``; a failure while locking (a full disk)
    releases the locks already taken."""
    mine: list[Cell] = []
    locks: list[CellLock] = []
    busy: list[Cell] = []
    try:
        _claim_each(job, unit, mine, locks, busy)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return mine, locks, busy


def _claim_each(job: GridJob, unit: list[Cell], mine: list[Cell], locks: list[CellLock], busy: list[Cell]) -> None:
    for c in unit:
        lock = CellLock(c.dir(job.out))
        if lock.try_acquire(job.cfg["lock"]["stale_s"]):
            if lock.took_over:
                job.repairs.append(f"repaired: {c.name}: {lock.took_over}")
            if store.read_result(c.dir(job.out)) is not None:  # finished between our check and the lock
                lock.release()
                continue
            mine.append(c)
            locks.append(lock)
        else:
            busy.append(c)


def train_unit(
    job: GridJob,
    unit: list[Cell],
    *,
    device: torch.device | None = None,
    teacher_cache: dict | None = None,
    wait_for_busy: bool = False,
) -> tuple[list[Outcome], list[Cell]]:
    """Lock, train and release ``unit`` (every rank of a process group calls it; rank 0 holds the locks).

    Cells another process holds are returned as busy, or, with ``wait_for_busy`` (a cluster job, which has
    nothing else to do), waited for until their holder finishes or dies (its lock goes stale).
    Returns (outcomes of the cells trained here, busy cells)."""
    rank, world = dist_info()
    mine: list[Cell] = []
    locks: list[CellLock] = []
    busy: list[Cell] = []
    if rank == 0:
        mine, locks, busy = claim(job, unit)
        while wait_for_busy and busy:
            time.sleep(max(job.cfg["lock"]["poll_s"], 5.0))
            got, got_locks, busy = claim(job, busy)
            mine += got
            locks += got_locks
    if world > 1:
        by_hash = {c.hash: c for c in unit}
        box = [[c.hash for c in mine]]
        torch.distributed.broadcast_object_list(box, src=0)
        mine = [by_hash[h] for h in box[0]]
    outcomes: list[Outcome] = []
    try:
        if mine:
            with Heartbeat(locks, job.cfg["lock"]["heartbeat_s"]):
                device = device if device is not None else resolve_device(job.cfg)
                if world > 1 and rank != 0:
                    torch.distributed.barrier()  # rank 0 builds shared caches (sub-words, teacher targets) first
                try:
                    data, teacher = unit_inputs(job, mine, device, teacher_cache)
                except (UsageError, KeyboardInterrupt):  # bad input (data...) stops the grid
                    raise
                except Exception as exc:
                    if world > 1:
                        raise  # the other ranks wait on this one: the whole process group stops
                    for c in mine:
                        store.write_error(c.dir(job.out), c, exc)
                    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    return [Outcome(c, error=f"cannot prepare the teacher's inputs: {why}") for c in mine], busy
                if world > 1 and rank == 0:
                    torch.distributed.barrier()
                outcomes = train_group(
                    job.task,
                    mine,
                    job.cfg,
                    data,
                    [c.dir(job.out) for c in mine],
                    teacher=teacher,
                    progress=job.progress,
                )
                job.repairs += [line for o in outcomes for line in o.notes]
    finally:
        for lock in locks:
            lock.release()
    return outcomes, busy


def init_distributed(cfg: dict[str, Any]) -> tuple[int, int]:
    """Join the process group described by the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``: set by torchrun, or from Slurm's tasks by the slurm executor): one process per
    GPU with NCCL, gloo on the CPU. Returns (world size, rank); (1, 0) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0
    backend = "nccl" if torch.cuda.is_available() and cfg["device"] != "cpu" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend)
    return world, torch.distributed.get_rank()


@contextlib.contextmanager
def distributed(cfg: dict[str, Any]) -> Iterator[tuple[int, int]]:
    """``init_distributed`` for the duration of a ``with`` block; the process group is destroyed after it."""
    world, rank = init_distributed(cfg)
    try:
        yield world, rank
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
