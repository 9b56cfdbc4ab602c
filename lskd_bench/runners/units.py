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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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
from .train import Outcome, dist_info, load_model, resolve_device, threads_scope, train_group


@dataclass(frozen=True)
class GridPlan:
    """A grid planned once (``grid.plan_grid``), the immutable description a runner receives: its task, resolved
    config, run directory, every planned cell, the units (fused groups) of the unfinished ones, the finished
    cells reused, and the repairs made while planning."""

    task: Task
    cfg: dict[str, Any]
    out: Path
    cells: tuple[Cell, ...] = ()
    units: tuple[tuple[Cell, ...], ...] = ()
    reused: tuple[Cell, ...] = ()
    repairs: tuple[str, ...] = ()
    progress: bool = True

    def with_cfg(self, **changes: Any) -> GridPlan:
        """The same plan with settings outside the cells' identity changed (per-process loader workers)."""
        return replace(self, cfg={**self.cfg, **changes})

    def context(self) -> UnitContext:
        return UnitContext(self.task, self.cfg, self.out, self.progress)

    def say(self, line: str) -> None:
        """A line for the user while the grid runs (stderr, above any progress bar)."""
        progress.say(self.cfg, line)

    def progress_bar(self, total: int, show: bool = True):
        return progress.progress_bar(
            self.cfg, total=total, desc=f"{self.cfg['task']} grid", unit="cell", show=self.progress and show
        )

    def write_spec(self, overrides: dict[str, Any] | None = None) -> Path:
        """The run spec a worker process or a cluster job reads (``read_spec``); ``overrides`` change settings
        outside the cells' identity (per-process data-loader workers)."""
        cfg = {**self.cfg, **(overrides or {})}
        path = self.out / self.cfg["task"] / "configs" / f"spec-{config_hash(cfg)}.json"
        store.write_json(path, {"config": cfg, "out": str(self.out), "progress": False})
        return path


@dataclass
class UnitContext:
    """What training a unit reads: task, config, run directory, and the task's data (loaded once, kept)."""

    task: Task
    cfg: dict[str, Any]
    out: Path
    progress: bool = True
    _data: TaskData | None = None

    def data(self) -> TaskData:
        if self._data is None:
            self._data = self.task.load_data(self.cfg, cache_dir=self.out / self.cfg["task"] / "cache")
        return self._data


@dataclass(frozen=True)
class UnitResult:
    """What ``train_unit`` did: the outcomes of the cells trained here, the cells another process holds, and
    one line per repair (a lock taken over, a damaged checkpoint)."""

    outcomes: tuple[Outcome, ...] = ()
    busy: tuple[Cell, ...] = ()
    notes: tuple[tuple[Cell, str], ...] = ()  # (the cell, its repair line)


def read_spec(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def unit_inputs(ctx: UnitContext, unit: list[Cell], device, teacher_cache: dict | None = None):
    """(data, teacher model) a unit trains with; teacher-target students get the relabelled data."""
    data = ctx.data()
    tcell = unit[0].teacher if unit[0].role == "student" else None
    if tcell is None:
        return data, None
    cache = teacher_cache if teacher_cache is not None else {}
    if tcell.hash not in cache:
        cache.clear()  # one teacher in memory at a time
        path, _ = teacher_weights(tcell, ctx.out, ctx.cfg["teacher_weights"])  # last or selected epoch: the recipe's
        cache[tcell.hash] = load_model(ctx.task, tcell.arch, data, ctx.cfg, path, device)
    teacher = cache[tcell.hash]
    if method_class(unit[0].method).needs.teacher_targets:
        cached = "teacher_targets" + ("_selected" if ctx.cfg["teacher_weights"] == "selected" else "")  # per weights
        data = ctx.task.teacher_targets(teacher, data, ctx.cfg, device, tcell.dir(ctx.out) / cached)
    return data, teacher


@dataclass
class Claim:
    """The cells of a unit locked here (``mine``, ``locks``), those another process holds (``busy``), and one
    line per lock taken over from a dead or unreadable one (``notes``)."""

    mine: list[Cell] = field(default_factory=list)
    locks: list[CellLock] = field(default_factory=list)
    busy: list[Cell] = field(default_factory=list)
    notes: list[tuple[Cell, str]] = field(default_factory=list)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def claim(ctx: UnitContext, unit: list[Cell], into: Claim | None = None) -> Claim:
    """Lock what we can of ``unit`` (added to ``into``); a failure while locking (a full disk) releases the
    locks already taken."""
    got = into if into is not None else Claim()
    got.busy = []
    try:
        for c in unit:
            lock = CellLock(c.dir(ctx.out))
            if not lock.try_acquire(ctx.cfg["lock"]["stale_s"]):
                got.busy.append(c)
                continue
            if lock.took_over:
                got.notes.append((c, f"repaired: {c.name}: {lock.took_over}"))
            if store.read_result(c.dir(ctx.out)) is not None:  # finished between our check and the lock
                lock.release()
                continue
            got.mine.append(c)
            got.locks.append(lock)
    except BaseException:
        got.release()
        raise
    return got


def _claim_on_rank0(ctx: UnitContext, unit: list[Cell], wait_for_busy: bool) -> Claim:
    """Rank 0 claims (waiting for busy cells with ``wait_for_busy``); the ranks of a process group agree."""
    rank, world = dist_info()
    got = Claim()
    if rank == 0:
        claim(ctx, unit, got)
        while wait_for_busy and got.busy:
            time.sleep(max(ctx.cfg["lock"]["poll_s"], 5.0))
            claim(ctx, got.busy, got)
    if world > 1:
        by_hash = {c.hash: c for c in unit}
        box = [[c.hash for c in got.mine]]
        torch.distributed.broadcast_object_list(box, src=0)
        got.mine = [by_hash[h] for h in box[0]]
    return got


def train_unit(
    ctx: UnitContext,
    unit: list[Cell],
    *,
    device: torch.device | None = None,
    teacher_cache: dict | None = None,
    wait_for_busy: bool = False,
    claimed: Callable[[list[tuple[Cell, str]]], None] | None = None,
) -> UnitResult:
    """Lock, train and release ``unit`` (every rank of a process group calls it; rank 0 holds the locks).

    Cells another process holds are returned as busy, or, with ``wait_for_busy`` (a cluster job, which has
    nothing else to do), waited for until their holder finishes or dies (its lock goes stale). ``claimed``
    receives the claim's repair lines (locks taken over) before training, so that a caller whose unit then
    stops (bad data, a signal) still reports them."""
    got = _claim_on_rank0(ctx, unit, wait_for_busy)
    if claimed is not None:
        claimed(list(got.notes))
    outcomes: list[Outcome] = []
    try:
        if got.mine:
            # the thread policy (runners.threads) whatever executor runs the unit: the same threads, the same rounding
            with Heartbeat(got.locks, ctx.cfg["lock"]["heartbeat_s"]), threads_scope(ctx.cfg):
                outcomes = _train_claimed(ctx, got.mine, device, teacher_cache)
    finally:
        got.release()
    notes = [*got.notes, *((o.cell, line) for o in outcomes for line in o.notes)]
    return UnitResult(tuple(outcomes), tuple(got.busy), tuple(notes))


def _train_claimed(ctx: UnitContext, mine: list[Cell], device, teacher_cache: dict | None) -> list[Outcome]:
    rank, world = dist_info()
    device = device if device is not None else resolve_device(ctx.cfg)
    if world > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 builds shared caches (sub-words, teacher targets) first
    try:
        data, teacher = unit_inputs(ctx, mine, device, teacher_cache)
    except (UsageError, KeyboardInterrupt):  # bad input (data...) stops the grid
        raise
    except Exception as exc:
        if world > 1:
            raise  # the other ranks wait on this one: the whole process group stops
        for c in mine:
            store.write_error(c.dir(ctx.out), c, exc)
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return [Outcome(c, error=f"cannot prepare the teacher's inputs: {why}") for c in mine]
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    dirs = [c.dir(ctx.out) for c in mine]
    return train_group(ctx.task, mine, ctx.cfg, data, dirs, teacher=teacher, progress=ctx.progress)


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
