"""The grid runner: resolve the config (``resolve``: the one call a command line makes), plan the grid once
into a frozen ``units.GridPlan`` (cells, the finished ones reused, the rest grouped into training units of
fused data passes), run it through the configured executor under the one scheduling loop
(``scheduler.run_units``; cells train under cross-process locks, ``runners/units.py``) and sum up the cells'
outcomes (``GridSummary``)."""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import store
from ..config import Resolved, config_hash, resolve_layers
from ..errors import UsageError
from ..methods import build_method, check_student_methods, method_class, method_teacher_mode
from ..models import init_path, read_checkpoint
from ..registry import EXECUTORS
from ..schema import deep_merge
from ..tasks import DEFAULT_TASK, Task, get_task
from . import loggers
from .cells import Cell, grid_values, plan_cells, validate_grid
from .loggers import check_loggers
from .moved import find_moved, record_fingerprints
from .probe import check_feature_methods, check_input_size
from .progress import duration
from .repair import repair_cells
from .state import CellOutcome
from .units import GridPlan


def resolve(
    task_name: str | None,
    file_cfg: Mapping[str, Any],
    overrides: Mapping[str, Any],
    file_label: str = "config file",
    check_executor: bool = True,
    profile: tuple[str, Mapping[str, Any]] | None = None,
    wait: bool = False,
) -> Resolved:
    """schema defaults <- task recipe <- pair recipe (``pair``) <- YAML file <- executor profile <- CLI overrides,
    checked (UsageError on bad input): the one call that turns a command line into a run's config, with where
    each value came from. ``wait``: set the chosen executor's ``wait`` (one that submits jobs and returns)."""
    name = task_name or file_cfg.get("task") or DEFAULT_TASK
    task = get_task(name)
    command_line = {**overrides, "task": name} if task_name else dict(overrides)
    res = resolve_layers(task, _layers(task, file_cfg, file_label, profile, command_line))
    executor = res.cfg["executor"]
    if wait and "wait" in res.cfg.get(executor, {}):
        command_line = deep_merge(command_line, {executor: {"wait": True}})
        res = resolve_layers(task, _layers(task, file_cfg, file_label, profile, command_line))
    res.cfg["task"] = name
    check_run_config(task, res.cfg, check_executor)
    return res


def _layers(task, file_cfg, file_label, profile, command_line) -> list[tuple[str, Mapping[str, Any]]]:
    recipe = task.default_config()
    pair = command_line.get("pair") or file_cfg.get("pair") or recipe.get("pair")
    pair_layers = [task.pair_layer(str(pair))] if pair else []  # the pair's published recipe over the task's
    return [
        (task.recipe_source(), recipe),
        *pair_layers,
        (file_label, file_cfg),
        *([profile] if profile else []),
        ("command line", command_line),
    ]


def check_run_config(task: Task, cfg: dict[str, Any], check_executor: bool = True) -> None:
    """The checks across keys, registries and files that the per-key schema cannot make."""
    validate_grid(cfg)
    if cfg["lock"]["heartbeat_s"] * 2 > cfg["lock"]["stale_s"]:  # a live owner elsewhere must look alive
        raise UsageError(
            f"lock.heartbeat_s ({cfg['lock']['heartbeat_s']:g}) must be at most half of lock.stale_s "
            f"({cfg['lock']['stale_s']:g}): a lock is taken over when its heartbeat is older than stale_s"
        )
    check_student_methods(cfg["methods"], task.kind)
    check_logit_methods(cfg)
    executor = EXECUTORS.get(cfg["executor"])
    if check_executor and hasattr(executor, "validate"):
        executor.validate(cfg)
    _check_checkpoints(cfg)
    check_loggers(cfg)
    task.validate(cfg)
    task.registered_metrics(cfg)  # known, reportable, and the task's evaluation feeds them
    models = check_input_size(task, cfg)  # small inputs: the CPU models it built, for the next check too
    check_feature_methods(task, cfg, models)


def check_logit_methods(cfg: dict[str, Any]) -> None:
    """Each method without intermediate outputs checks the run's config (``Method.check_run``: DOT's optimizer)
    before anything is written; feature methods are checked with their probe (``check_feature_methods``)."""
    for name in cfg["methods"]:
        if not method_class(name).needs.features:
            build_method(name, cfg).check_run(cfg)


def _check_checkpoints(cfg: dict[str, Any]) -> None:
    if cfg["student"]["checkpoint"]:
        raise UsageError("student.checkpoint is not used: students are trained (did you mean student.init_checkpoint?)")
    if cfg["teacher"]["checkpoint"]:
        if not Path(cfg["teacher"]["checkpoint"]).is_file():
            raise UsageError(f"teacher checkpoint {cfg['teacher']['checkpoint']} does not exist")
        if len(grid_values(cfg)[0]) != 1:
            raise UsageError("--teacher-checkpoint gives one teacher: run one alpha at a time (--alphas A)")
        read_checkpoint(cfg["teacher"]["checkpoint"])
    for role in ("teacher", "student"):
        if cfg[role]["init_checkpoint"]:
            for a in grid_values(cfg)[0]:
                read_checkpoint(init_path(cfg[role]["init_checkpoint"], a))


def resolve_config(task_name: str | None, file_cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    return resolve(task_name, file_cfg, overrides).cfg


# ------------------------------------------------------------------------------------------ units
def fuse_units(
    cells: list[Cell], cfg: dict[str, Any], *, fuse: bool, max_fused: int, spread: int = 1
) -> list[list[Cell]]:
    """Group cells that can share one data pass: same role recipe, same seed and the same teacher run in the same
    mode (``method_teacher_mode`` under ``cfg``: the teacher runs once per batch for the group) on the same view of
    the batch (``Method.batch_view``, in the key only where a method has one; teachers of all
    alphas together; the no-KD baseline joins the first student group of its seed; students on teacher-generated
    targets train on other data, so they group only with each other). Groups larger than ``max_fused`` are split.
    ``spread``: units the executor trains at once; where there are fewer teachers' groups than that, each is split
    into up to ``spread // groups`` parts (teachers share only the data pass, no teacher forward: splitting them
    costs little, and their units would otherwise train one at a time while the students wait for them; results
    are the same fused or not). Without ``fuse`` every cell is its own unit."""
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
            targets = method_class(c.method).needs.teacher_targets
            mode = method_teacher_mode(c.method, cfg) or "eval"
            key = (
                ("targets", c.seed, c.teacher.hash, c.method) if targets else ("student", c.seed, c.teacher.hash, mode)
            )
            view = method_class(c.method).batch_view
            key = key if view is None else (*key, view)  # another view of the batch: another teacher pass
            groups[key].append(c)
    for b in baselines:
        host = next((k for k in groups if k[0] == "student" and k[1] == b.seed), None)
        groups[host if host is not None else ("baseline", b.seed)].append(b)
    teacher_groups = sum(k[0] == "teacher" for k in groups)
    parts = max(1, spread // teacher_groups) if teacher_groups else 1
    units = []
    for key, members in groups.items():
        size = max_fused if key[0] != "teacher" else min(max_fused, -(-len(members) // parts))
        units += [members[i : i + size] for i in range(0, len(members), size)]
    return units


# ------------------------------------------------------------------------------------------ run
@dataclass(frozen=True)
class GridSummary:
    """What a run did, built from its cells' outcomes (``GridSummary.of``)."""

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
    notes: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, plan: GridPlan, outcomes: list[CellOutcome], notes: list[str], wall_s: float) -> GridSummary:
        def cells(state: str) -> list[Cell]:
            return [o.cell for o in outcomes if o.state == state]

        return cls(
            list(plan.cells),
            cells("trained"),
            list(plan.reused),
            wall_s,
            plan.out,
            failed=[(o.cell, o.reason or "failed") for o in outcomes if o.state == "failed"],
            blocked=cells("blocked"),
            elsewhere=cells("elsewhere"),
            submitted=cells("submitted"),
            queued=cells("queued"),
            notes=list(notes),
            repairs=[*plan.repairs, *(line for o in outcomes for line in o.notes)],
        )

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
        return (
            f"{len(self.cells)} cells: trained {len(self.trained)}, reused {len(self.reused)} finished{extra} "
            f"({self.wall_s:.1f} s) -> {self.out}"
        )

    def failure_lines(self) -> list[str]:
        lines = [f"failed: {c.name}: {reason} (see {c.dir(self.out) / store.ERROR})" for c, reason in self.failed]
        lines += [f"not run: {c.name}: its teacher {c.teacher.name} failed" for c in self.blocked]
        return lines


def plan_grid(cfg: dict[str, Any], out: Path, progress: bool = True) -> GridPlan:
    """Plan the grid of ``cfg`` under ``out`` once: check the folders and the data, repair damaged files, reuse
    finished cells (also those moved from another data path), record the config, group the rest into units."""
    out = Path(out)
    store.check_writable_dir(out)
    task = get_task(cfg["task"])
    cells = plan_cells(cfg)
    for d in (out / cfg["task"], out / cfg["task"] / "configs", *(c.dir(out) for c in cells)):
        if d.exists() and not d.is_dir():  # a file where a folder belongs: no cell can be written there
            raise UsageError(f"{d} is a file where lskd-bench keeps a folder: move it away and run again")
    if any(store.read_result(c.dir(out)) is None for c in cells):
        task.check_layout(cfg)  # bad data is bad input: stop before anything is written
    repairs = repair_cells(cells, out, cfg["teacher_weights"])
    repairs += find_moved(cells, cfg, out)  # the same data at another path: its finished cells are reused
    pending = [c for c in cells if store.read_result(c.dir(out)) is None]
    _record_config(cfg, out)
    spread = units_at_once(cfg) if pending else 1
    units = fuse_units(pending, cfg, fuse=cfg["fuse"], max_fused=cfg["max_fused"], spread=spread) if pending else []
    return GridPlan(
        task, cfg, out, tuple(cells), tuple(tuple(u) for u in units),
        tuple(c for c in cells if c not in pending), tuple(repairs), progress,
    )  # fmt: skip


def units_at_once(cfg: dict[str, Any]) -> int:
    """How many units the configured executor trains at once (1 for a plugin executor that does not say)."""
    at_once = getattr(EXECUTORS.get(cfg["executor"]), "units_at_once", None)
    return max(1, at_once(cfg)) if at_once else 1


def _record_config(cfg: dict[str, Any], out: Path) -> None:
    cfg_path = out / cfg["task"] / "configs" / f"{config_hash(cfg)}.yaml"
    if not cfg_path.exists():
        store.atomic_write(cfg_path, lambda f: yaml.safe_dump(cfg, f, sort_keys=False), mode="w")
    else:
        os.utime(cfg_path)  # the newest config is this run's grid: 'status' lists its cells not started yet


def run_plan(plan: GridPlan) -> tuple[list[CellOutcome], list[str]]:
    """The planned units through the configured executor: (the cells' outcomes, the executor's notes)."""
    if not plan.units:
        return [], []
    loggers.preflight(plan.cfg)  # a tracker that does not answer: one warning for the grid, its workers included
    return EXECUTORS.get(plan.cfg["executor"]).for_config(plan.cfg).run(plan)


@dataclass(frozen=True)
class Outline:
    """What a grid is about to do, said before its first cell trains (the header of ``lskd-bench run``): its cells,
    those to train (in ``units``) and those reused (finished), the executor (``auto``: with the one it chooses),
    the run directory, and the wall time of the training with ``at_once`` units at a time, estimated from the
    finished cells of the task in the run directory (None: none of a pending cell's recipe has finished there)."""

    task: str
    cells: int
    train: int
    units: int
    reuse: int
    executor: str
    out: Path
    estimate_s: float | None = None
    estimated_from: int = 0
    at_once: int = 1

    def lines(self) -> list[str]:
        units = f" in {self.units} units" if self.units != self.train else ""
        lines = [
            f"{self.task}: {self.cells} cells, {self.train} to train{units}, {self.reuse} finished (reused); "
            f"executor {self.executor}; run dir {self.out}"
        ]
        if self.estimate_s is not None:
            lines.append(
                f"estimate: ~{duration(self.estimate_s)} of training, "
                f"{'one unit' if self.at_once == 1 else f'{self.at_once} units'} at a time (from "
                f"{self.estimated_from} finished cells of {self.task} in {self.out})"
            )
        return lines


def outline(plan: GridPlan) -> Outline:
    cfg = plan.cfg
    name = cfg["executor"]
    choose = getattr(EXECUTORS.get(name), "choose", None)  # auto: the executor it picks for this config
    at_once = units_at_once(cfg) if plan.units else 1
    estimate, seen = _estimate(plan, at_once)
    return Outline(
        cfg["task"], len(plan.cells), sum(len(u) for u in plan.units), len(plan.units), len(plan.reused),
        f"{name} ({choose(cfg)})" if choose else name, plan.out, estimate, seen, at_once,
    )  # fmt: skip


def _recipe(role: str) -> str:
    return "teacher" if role == "teacher" else "student"  # the baseline trains with the student's recipe


def _estimate(plan: GridPlan, at_once: int = 1) -> tuple[float | None, int]:
    """(seconds, finished cells read): each pending unit takes the longest of its cells, a cell its recipe's
    epochs times the median seconds an epoch took in the finished cells of that recipe (and arch, when some
    have it) under RUNS/TASK; the units one after the other, or, ``at_once`` at a time, each in plan order on the
    first free slot once its teachers' units ended (``_schedule``). A result file is untrusted input: only its
    checked numbers (``timings.wall_s``, ``epochs``) are read."""
    per_epoch: dict[tuple[str, str], list[float]] = defaultdict(list)
    seen = 0
    task_dir = plan.out / plan.cfg["task"]
    for d in sorted(task_dir.iterdir()) if task_dir.is_dir() else ():
        result = store.read_result(d) if d.is_dir() else None
        wall = ((result or {}).get("timings") or {}).get("wall_s")
        if not wall or not result.get("epochs"):
            continue
        cell = result["cell"]
        rate = float(wall) / result["epochs"]
        per_epoch[(_recipe(cell["role"]), cell["arch"])].append(rate)
        per_epoch[(_recipe(cell["role"]), "")].append(rate)
        seen += 1
    if not seen or not plan.units:
        return None, seen
    spans = []
    for unit in plan.units:
        longest = 0.0
        for c in unit:
            rates = per_epoch.get((_recipe(c.role), c.arch)) or per_epoch.get((_recipe(c.role), ""))
            if not rates:
                return None, seen
            longest = max(longest, statistics.median(rates) * plan.cfg[_recipe(c.role)]["epochs"])
        spans.append(longest)
    return _schedule(plan.units, spans, at_once), seen


def _schedule(units: Sequence[Sequence[Cell]], spans: list[float], at_once: int) -> float:
    """When the last of ``units`` (taking ``spans`` seconds) ends, ``at_once`` at a time: each in order on the slot
    free first, not before the units training its cells' teachers ended."""
    unit_of = {c.hash: i for i, u in enumerate(units) for c in u}
    ends, slots = [0.0] * len(units), [0.0] * max(1, at_once)
    for i, unit in enumerate(units):
        ready = max((ends[unit_of[c.teacher.hash]] for c in unit if c.teacher and c.teacher.hash in unit_of), default=0)
        k = min(range(len(slots)), key=slots.__getitem__)
        ends[i] = slots[k] = max(slots[k], ready) + spans[i]
    return max(ends, default=0.0)


def run_grid(
    cfg: dict[str, Any], out: Path, progress: bool = True, on_plan: Callable[[Outline], None] | None = None
) -> GridSummary:
    """Train every unfinished cell of the grid in ``cfg`` under ``out``; finished cells are reused. ``on_plan``
    receives the grid's ``Outline`` once it is planned, before any cell trains."""
    t0 = time.perf_counter()
    loggers.new_run()
    plan = plan_grid(cfg, out, progress)
    if on_plan is not None:
        on_plan(outline(plan))
    try:
        outcomes, notes = run_plan(plan)
    finally:
        os.environ.pop(loggers.OFF_ENV, None)  # the workers have read it
    notes = [*notes, *record_fingerprints(list(plan.cells), cfg, plan.out)]  # the data each cell saw (moved runs)
    return GridSummary.of(plan, outcomes, notes, time.perf_counter() - t0)
