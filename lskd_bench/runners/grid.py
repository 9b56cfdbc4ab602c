"""The grid runner: resolve the config, plan cells, skip the finished ones, group the rest into training
units (fused data passes) and hand them to an executor, which trains them under cross-process locks."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from ..config import Resolved, config_hash, resolve_layers
from ..errors import DataError, UsageError
from ..methods import check_student_methods, method_class
from ..tasks import DEFAULT_TASK, Task, TaskData, get_task
from . import store
from .cells import Cell, grid_values, plan_cells, validate_grid
from .executors import EXECUTORS
from .lock import read_lock


def resolve(task_name: Optional[str], file_cfg: Mapping[str, Any], overrides: Mapping[str, Any],
            file_label: str = "config file", check_executor: bool = True,
            profile: Optional[tuple[str, Mapping[str, Any]]] = None) -> Resolved:
    """schema defaults <- task recipe <- pair recipe (``pair``) <- YAML file <- executor profile <- CLI overrides,
    checked (UsageError on bad input)."""
    name = task_name or file_cfg.get("task") or DEFAULT_TASK
    task = get_task(name)
    recipe = task.default_config()
    pair = overrides.get("pair") or file_cfg.get("pair") or recipe.get("pair")
    pair_layers = [task.pair_layer(str(pair))] if pair else []  # the pair's published recipe over the task's
    res = resolve_layers(task, [(task.recipe_source(), recipe), *pair_layers, (file_label, file_cfg),
                                *([profile] if profile else []),
                                ("command line", {**overrides, "task": name} if task_name else dict(overrides))])
    cfg = res.cfg
    cfg["task"] = name
    validate_grid(cfg)
    check_student_methods(cfg["methods"], task.kind)
    executor = EXECUTORS.get(cfg["executor"])
    if check_executor and hasattr(executor, "validate"):
        executor.validate(cfg)
    if cfg["student"].get("checkpoint"):
        raise UsageError("student.checkpoint is not used: students are trained (did you mean student.init_checkpoint?)")
    if cfg["teacher"].get("checkpoint"):
        if not Path(cfg["teacher"]["checkpoint"]).is_file():
            raise UsageError(f"teacher checkpoint {cfg['teacher']['checkpoint']} does not exist")
        if len(grid_values(cfg)[0]) != 1:
            raise UsageError("--teacher-checkpoint gives one teacher: run one alpha at a time (--alphas A)")
    for role in ("teacher", "student"):
        hp = cfg[role]
        if hp["schedule"] == "step" and hp.get("step_size") is None:
            raise UsageError(f"{role}.schedule step needs {role}.step_size")
    if cfg["logging"]["tensorboard"]:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("logging.tensorboard needs the tensorboard package: pip install 'lskd-bench[tensorboard]'")
    task.validate(cfg)
    return res


def resolve_config(task_name: Optional[str], file_cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    return resolve(task_name, file_cfg, overrides).cfg


# ------------------------------------------------------------------------------------------ units
def fuse_units(cells: list[Cell], fuse: bool = True, max_fused: int = 8) -> list[list[Cell]]:
    """Group cells that can share one data pass: same role recipe, same seed and the same teacher
    (teachers of all alphas together; the no-KD baseline joins the first student group of its seed;
    students on teacher-generated targets train on other data, so they group only with each other).
    Groups larger than ``max_fused`` are split. Without ``fuse`` every cell is its own unit."""
    if not fuse:
        return [[c] for c in cells]
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    baselines = []
    for c in cells:
        if c.role == "teacher":
            groups[("teacher", c.seed)].append(c)
        elif c.role == "baseline":
            baselines.append(c)
        else:
            signal = method_class(c.method).teacher_signal
            key = ("student", c.seed, c.teacher.hash) if signal == "logits" else ("targets", c.seed, c.teacher.hash, c.method)
            groups[key].append(c)
    for b in baselines:
        host = next((k for k in groups if k[0] == "student" and k[1] == b.seed), None)
        groups[host if host is not None else ("baseline", b.seed)].append(b)
    units = []
    for members in groups.values():
        units += [members[i : i + max_fused] for i in range(0, len(members), max_fused)]
    return units


@dataclass
class GridJob:
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
    _data: Optional[TaskData] = None

    def data(self) -> TaskData:
        if self._data is None:
            self._data = self.task.load_data(self.cfg, cache_dir=self.cache_dir())
        return self._data

    def cache_dir(self) -> Path:
        return self.out / self.cfg["task"] / "cache"

    def mark_done(self, cell: Cell) -> None:
        self.trained.append(cell)

    def progress_bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"{self.cfg['task']} grid", unit="cell", disable=not self.progress)

    def write_spec(self, overrides: Optional[dict[str, Any]] = None) -> Path:
        """The config workers read; ``overrides`` change settings outside the cells' identity (per-process
        data-loader workers)."""
        cfg = {**self.cfg, **(overrides or {})}
        path = self.out / self.cfg["task"] / "configs" / f"spec-{config_hash(cfg)}.json"
        store.write_json(path, {"config": cfg, "out": str(self.out), "progress": False})
        return path


def unit_inputs(job: GridJob, unit: list[Cell], device, teacher_cache: Optional[dict] = None):
    """(data, teacher model) a unit trains with; teacher-target students get the relabelled data."""
    from .train import load_model

    data = job.data()
    tcell = unit[0].teacher if unit[0].role == "student" else None
    if tcell is None:
        return data, None
    cache = teacher_cache if teacher_cache is not None else {}
    if tcell.hash not in cache:
        cache.clear()  # one teacher in memory at a time
        cache[tcell.hash] = load_model(job.task, tcell.arch, data, job.cfg, tcell.dir(job.out) / store.MODEL, device)
    teacher = cache[tcell.hash]
    if method_class(unit[0].method).teacher_signal == "targets":
        data = job.task.teacher_targets(teacher, data, job.cfg, device, tcell.dir(job.out) / "teacher_targets")
    return data, teacher


# ------------------------------------------------------------------------------------------ scheduling
class Scheduler:
    """Hands out units whose teachers are finished, and tracks every cell to a final state:
    done (here or by another process), failed (error.json) or blocked (its teacher failed).

    Cells another process is training (a live lock) are waited for: polled until their result appears,
    their lock is released (then they are ours to train) or the other process records a failure."""

    def __init__(self, job: GridJob, units: list[list[Cell]]):
        self.job = job
        self.queue = [list(u) for u in units]
        self.total = sum(len(u) for u in units)
        self.settled: dict[str, str] = {}  # hash -> done | failed | blocked
        self.waiting: dict[str, Cell] = {}  # held by another process
        self.running: set[str] = set()
        self.bar = job.progress_bar(self.total)
        self.cfg_lock = job.cfg.get("lock", {})

    # -- states -----------------------------------------------------------------------------------
    def _settle(self, cell: Cell, state: str) -> None:
        if cell.hash in self.settled:
            return
        self.settled[cell.hash] = state
        self.bar.update(1)
        self.bar.set_postfix_str(cell.name)

    def _teacher_state(self, cell: Cell) -> str:
        """ready | wait | failed"""
        t = cell.teacher
        if t is None or store.read_result(t.dir(self.job.out)) is not None:
            return "ready"
        if self.settled.get(t.hash) in ("failed", "blocked"):
            return "failed"
        return "wait"

    def done(self) -> bool:
        return not self.queue and not self.waiting and not self.running

    def next_unit(self) -> Optional[list[Cell]]:
        """The first queued unit that can start now (members already finished or blocked are dropped)."""
        for unit in list(self.queue):
            members = []
            for c in unit:
                if store.read_result(c.dir(self.job.out)) is not None:
                    self._settle(c, "done")
                    if c not in self.job.trained:
                        self.job.elsewhere.append(c)
                    continue
                state = self._teacher_state(c)
                if state == "failed":
                    self.job.blocked.append(c)
                    self._settle(c, "blocked")
                    continue
                members.append(c)
            if not members:
                self.queue.remove(unit)
                continue
            if any(self._teacher_state(c) == "wait" for c in members):
                unit[:] = members
                continue
            self.queue.remove(unit)
            for c in members:
                self.running.add(c.hash)
            return members
        return None

    def finish(self, cell: Cell, result_ok: bool, reason: Optional[str] = None, busy: bool = False) -> None:
        """Record the end of our attempt at ``cell``: trained, failed, or held by someone else (busy)."""
        self.running.discard(cell.hash)
        if busy:
            self.waiting[cell.hash] = cell
            return
        if result_ok:
            self.job.mark_done(cell)
            self._settle(cell, "done")
        else:
            self.job.failed[cell.hash] = (cell, reason or "failed")
            self._settle(cell, "failed")

    def poll_waiting(self) -> None:
        """Settle the cells other processes hold once they finish; requeue those they let go."""
        stale_s = float(self.cfg_lock.get("stale_s", 300.0))
        from .lock import is_stale

        for h, cell in list(self.waiting.items()):
            d = cell.dir(self.job.out)
            if store.read_result(d) is not None:
                del self.waiting[h]
                self.job.elsewhere.append(cell)
                self._settle(cell, "done")
                continue
            info = read_lock(d)
            if info is not None and not is_stale(info, stale_s):
                continue
            del self.waiting[h]
            err = store.read_error(d)
            if err is not None:
                self.job.failed[h] = (cell, f"{err.get('error')}: {err.get('message')} (in another process)")
                self._settle(cell, "failed")
            else:
                self.queue.append([cell])

    def idle(self) -> None:
        """Nothing can start: wait a little for teachers or cells held elsewhere."""
        self.poll_waiting()
        if self.waiting or self.queue:
            time.sleep(float(self.cfg_lock.get("poll_s", 1.0)))

    def close(self) -> None:
        self.bar.close()


def raise_if_data_error(cells: list[Cell], out: Path) -> None:
    """A data error in any cell is bad input for the whole grid: stop with its message."""
    for c in cells:
        err = store.read_error(c.dir(out))
        if err and err.get("error") == "DataError":
            raise DataError(err.get("message", "unreadable sample"))


# ------------------------------------------------------------------------------------------ run
@dataclass
class GridSummary:
    cells: list[Cell]
    trained: list[Cell]
    reused: list[Cell]
    wall_s: float
    out: Path
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    blocked: list[Cell] = field(default_factory=list)
    elsewhere: list[Cell] = field(default_factory=list)
    submitted: list[Cell] = field(default_factory=list)
    queued: list[Cell] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked

    def line(self) -> str:
        extra = ""
        if self.submitted:
            extra += f", submitted {len(self.submitted)} to Slurm"
        if self.queued:
            extra += f", {len(self.queued)} already queued or running in Slurm"
        if self.elsewhere:
            extra += f", {len(self.elsewhere)} finished by another process"
        if self.failed:
            extra += f", {len(self.failed)} failed"
        if self.blocked:
            extra += f", {len(self.blocked)} not run (teacher failed)"
        return (f"{len(self.cells)} cells: trained {len(self.trained)}, reused {len(self.reused)} finished{extra} "
                f"({self.wall_s:.1f} s) -> {self.out}")

    def failure_lines(self) -> list[str]:
        lines = [f"failed: {c.name}: {reason} (see {c.dir(self.out) / store.ERROR})" for c, reason in self.failed]
        lines += [f"not run: {c.name}: its teacher {c.teacher.name} failed" for c in self.blocked]
        return lines


def run_grid(cfg: dict[str, Any], out: Path, progress: bool = True) -> GridSummary:
    """Train every unfinished cell of the grid in ``cfg`` under ``out``; finished cells are reused."""
    t0 = time.perf_counter()
    out = Path(out)
    store.check_writable_dir(out)
    task = get_task(cfg["task"])
    cells = plan_cells(cfg)
    pending = [c for c in cells if store.read_result(c.dir(out)) is None]
    reused = [c for c in cells if c not in pending]
    cfg_path = out / cfg["task"] / "configs" / f"{config_hash(cfg)}.yaml"
    if not cfg_path.exists():
        store.atomic_write(cfg_path, lambda f: yaml.safe_dump(cfg, f, sort_keys=False), mode="w")
    job = GridJob(task, cfg, out, progress)
    if pending:
        units = fuse_units(pending, bool(cfg.get("fuse", True)), int(cfg.get("max_fused", 8)))
        executor = EXECUTORS.get(cfg["executor"])()
        executor.run(job, units)
    return GridSummary(cells, job.trained, reused, time.perf_counter() - t0, out, failed=list(job.failed.values()),
                       blocked=job.blocked, elsewhere=job.elsewhere, submitted=job.submitted, queued=job.queued)

