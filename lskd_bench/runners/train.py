"""The shared training loop: one cell, or a fused group of cells that share every batch.

A group is trained in one data pass: each step loads one batch, runs the teacher once (eval mode, or its
BatchNorm on the batch's statistics for the methods whose ``teacher_mode`` is train, never both in one group;
inference mode, bf16 on CUDA) when a member needs its logits, then every member does its own forward,
backward and optimizer step. A cell trained alone is a group of one, through the same code, so fused and
unfused training give the same result bit for bit on the CPU:

- the batches of an epoch depend only on (seed, epoch), and each sample's augmentation is seeded by
  (seed, epoch, index) (``tasks.base.GuardedDataset``);
- each member keeps its own random-number state (dropout...), swapped in around its step;
- each member checkpoints its own state (``state.pt``): model, optimizer, method parameters, RNG,
  position (epoch, step within the epoch, updates), history, best metrics.

A killed group resumes every member from its last checkpoint; members at different positions join the
pass when it reaches them. ``checkpoint_every`` adds checkpoints within an epoch (translation).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import store
from ..methods import Method, build_method
from ..tasks import Task, TaskData, get_task
from ..tasks.base import close_batches
from .cells import Cell
from .distributed import world as dist_info
from .features import penultimate  # noqa: F401  (re-exported)
from .member import CellRun, Member, role_hp  # noqa: F401  (role_hp: re-exported)
from .optim import build_optimizer, learning_rate, lr_factor  # noqa: F401  (re-exported)
from .outcomes import Outcome, Outcomes
from .pass_progress import GroupProgress, StepMeter  # noqa: F401  (StepMeter: re-exported)
from .passes import BatchReader, TeacherPass
from .result_file import environment  # noqa: F401  (re-exported)
from .threads import thread_policy


def auto_cpu_reason(cfg: dict[str, Any]) -> str | None:
    """Why ``device: auto`` keeps this run on the CPU although CUDA is available (the task's models are
    tiny), or None."""
    if cfg["device"] != "auto" or not torch.cuda.is_available() or not cfg.get("task"):  # no task: translate's device
        return None
    return get_task(cfg["task"]).cpu_reason(cfg)


def resolve_device(cfg: dict[str, Any]) -> torch.device:
    want = cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() and auto_cpu_reason(cfg) is None else "cpu"
    if want == "cuda" and dist_info()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(want)


def thread_count(cfg: dict[str, Any]) -> int:
    """Intra-op threads of a local run (one training process): ``threads``, else ``threads.thread_policy`` (one
    for the tiny models, else the CPUs this process may use: its affinity mask, at most ``OMP_NUM_THREADS``). The
    subprocess/torchrun executors divide the CPUs among their workers themselves (``layout``)."""
    device = resolve_device(cfg) if "device" in cfg else torch.device("cpu")
    return thread_policy(cfg, device)[0]


@contextlib.contextmanager
def threads_scope(cfg: dict[str, Any]):
    """torch's intra-op thread count set from the config around a local run, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(thread_count(cfg))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_model(
    task: Task, arch: str, data: TaskData, cfg: dict[str, Any], path: Path, device: torch.device, role: str = "teacher"
) -> nn.Module:
    model = task.build_model(arch, data, cfg, cfg[role])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def _tick(profile: dict[str, float], key: str, since: float, device: torch.device, synced: bool) -> float:
    """Add the time since ``since`` to ``profile[key]`` (with ``synced`` waiting for the step's CUDA stream first);
    return the new mark. Only the consumer's stream: a device-wide synchronize would also wait for the batches the
    GPU pipeline decodes ahead on its side stream (``tasks.base.finished_ahead``), serialising the overlap the
    profile is meant to show. Without ``synced`` a CUDA time is the host's (what it took to queue the work)."""
    if synced and device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    now = time.perf_counter()
    profile[key] = profile.get(key, 0.0) + now - since
    return now


def _epoch_times(
    active: list[Member], epoch: int, wall: float, before: dict[str, float], clock: dict[str, float], steps: list
) -> None:
    """Each member's times of ``epoch``, before the checkpoint that keeps them: the pass's ``wall`` (shared by the
    members training in it), its data and teacher seconds (``clock`` since ``before``), the member's own steps."""
    for m, s in zip(active, steps):
        m.record.epoch_times.append(
            {
                "epoch": epoch + 1,
                "wall_s": wall,
                "data_s": clock.get("data", 0.0) - before.get("data", 0.0),
                "teacher_s": clock.get("teacher", 0.0) - before.get("teacher", 0.0),
                "steps_s": m.record.train_seconds - s,
                "shared_by": len(active),
            }
        )


def _short(cell: Cell) -> str:
    if cell.role == "teacher":
        return f"a{cell.alpha:g}"
    if cell.role == "baseline":
        return "base"
    return f"{cell.method}:a{cell.alpha:g}" + ("" if cell.T is None else f"T{cell.T:g}")


def train_group(
    task: Task,
    cells: Sequence[Cell],
    cfg: dict[str, Any],
    data: TaskData,
    dirs: Sequence[Path],
    *,
    teacher: nn.Module | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    profile: dict[str, float] | None = None,
) -> list[Outcome]:
    """Train ``cells`` (same role recipe and seed, same teacher) in one data pass; write each one's result.

    ``profile``, if given, accumulates wall seconds spent loading batches (``data``), in the teacher forward
    (``teacher``) and in the members' steps (``students``).

    A member whose own step fails (non-finite loss, out of memory) gets ``error.json`` and leaves the group;
    a failure of the shared work (data, teacher) fails every member. A ``DataError`` is re-raised after
    the members' errors are written (bad input stops the grid).
    """
    group = FusedGroup(task, cells, cfg, data, dirs, teacher, on_step, profile)
    return group.run(progress, on_epoch_end)


class FusedGroup:
    """The members of one data pass and their shared work: the epoch loop (``run``), one epoch's batches
    (``epoch``), one batch (``step``: the teacher forward once, then each member's step) and the end of an
    epoch (``end_epoch``: each member's evaluation and checkpoint)."""

    def __init__(
        self,
        task: Task,
        cells: Sequence[Cell],
        cfg: dict[str, Any],
        data: TaskData,
        dirs: Sequence[Path],
        teacher: nn.Module | None,
        on_step: Callable[[int, int], None] | None,
        profile: dict[str, float] | None,
    ):
        self.task, self.cells, self.cfg, self.data = task, cells, cfg, data
        self.on_step = on_step
        # seconds loading data, in the teacher and in the students' steps (timings in result.json); on CUDA the
        # step waits for the device at each mark only when the caller asked for a profile
        self.clock: dict[str, float] = profile if profile is not None else {}
        self.device = resolve_device(cfg)
        self.synced = profile is not None or self.device.type != "cuda"
        if len({(c.seed, c.role == "teacher") for c in cells}) != 1:
            raise ValueError("a fused group shares one seed and one role recipe: " + ", ".join(c.name for c in cells))
        self.outcomes = Outcomes(cells, dist_info()[0])
        methods = [build_method(c.method, cfg) for c in cells]  # each built once: its needs read, then trained
        self.teacher = TeacherPass(task, teacher, cells, methods, cfg, data, self.device)
        self.members = [self._member(c, d, m) for c, d, m in zip(cells, dirs, methods)]
        self.rank, self.world = dist_info()
        self.reader = BatchReader(task, data, self.members[0].run.hp, cfg, cells[0].seed, self.device)
        # unreadable samples (on_bad_sample=skip)
        self.reader.skipped = sorted({p for m in self.members for p in m.record.skipped})
        self.progress = GroupProgress(cfg)

    def _member(self, cell: Cell, d: Path, method: Method) -> Member:
        d.mkdir(parents=True, exist_ok=True)
        store.clear_error(d)
        m = Member(CellRun(self.task, cell, self.cfg, self.data, d, self.device), method, self.teacher.view)
        self.outcomes.joined(m)
        return m

    # -- the epoch loop -----------------------------------------------------------------------------
    def run(self, progress: bool, on_epoch_end: Callable[[int], None] | None) -> list[Outcome]:
        """Every epoch some member still trains, then each member's result; a member's failure is its outcome's
        error (and its ``error.json``), a stop by signal is written for every unfinished member and re-raised."""
        epochs = max(m.epochs for m in self.members)
        start = min((m.pos.epoch for m in self.members if not m.done()), default=epochs)
        self.progress.start(epochs, start, self.label(), progress and self.rank == 0)
        try:
            with self.outcomes.guard():
                for epoch in range(start, epochs):
                    active = [m for m in self.members if not m.finished and not m.done() and m.pos.epoch == epoch]
                    if active:
                        self.train_epoch(epoch, epochs, active, on_epoch_end)
                self.outcomes.finish_all()
        finally:
            self.close()
        return self.outcomes.ordered()

    def label(self) -> str:
        cells = self.cells
        return cells[0].name if len(cells) == 1 else f"{len(cells)} fused: " + ", ".join(_short(c) for c in cells)

    def train_epoch(
        self, epoch: int, epochs: int, active: list[Member], on_epoch_end: Callable[[int], None] | None
    ) -> None:
        """One epoch of the ``active`` members, its end (evaluations, checkpoints) and its progress line."""
        t0, before = time.perf_counter(), dict(self.clock)
        steps_before = [m.record.train_seconds for m in active]
        self.epoch(epoch, active)
        _epoch_times(active, epoch, time.perf_counter() - t0, before, self.clock, steps_before)
        self.end_epoch(epoch, active)
        done = {_short(m.cell): m.record.history[-1] for m in active if not m.finished and m.record.history}
        self.progress.epoch_done(epoch, epochs, done)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    def close(self) -> None:
        self.reader.close_ahead()
        self.progress.close()
        for m in self.members:
            log = m.parts.get("loggers")
            if log is not None:
                log.log.close()

    # -- one epoch ----------------------------------------------------------------------------------
    read_ahead = True  # open the next epoch's loading before this one ends (benchmarks switch it off to compare)

    def epoch(self, epoch: int, active: list[Member]) -> None:
        """The batches of ``epoch`` from the earliest position of the ``active`` members on."""
        first = min(m.pos.step for m in active)
        clock = time.perf_counter()  # opening the epoch's loading counts as waiting for data (profile)
        n, lead, batches, plan = self.reader.open(epoch, first)
        steps = first + n
        self.progress.meter.start(first, steps)
        losses: dict[str, float] = {}  # each member's last step loss, for the progress line
        try:
            for i, batch in enumerate(batches, first):
                if self.read_ahead and steps - 1 - i <= lead:
                    self.reader.open_next(epoch, self.members)
                stepping = [m for m in active if m.wants(epoch, i)]
                if not stepping:
                    if all(m.finished or m.done() for m in active):
                        break
                    continue
                idx = plan[i - first] if plan is not None else None
                clock = self.step(batch, stepping, epoch, steps, clock, losses, idx)
                self.progress.step(epoch, max(m.epochs for m in self.members), i + 1, losses)
                if self.on_step is not None:
                    self.on_step(epoch, i)
        finally:
            close_batches(batches)

    def step(
        self,
        batch: Any,
        stepping: list[Member],
        epoch: int,
        steps: int,
        clock: float,
        losses: dict[str, float] | None = None,
        indices: torch.Tensor | None = None,
    ) -> float:
        """One batch: to the device, the teacher's outputs once (the union of what the stepping members need),
        each member's step (its loss recorded in ``losses`` under the member's short name)."""
        device, profile, synced = self.device, self.clock, self.synced
        batch = self.task.to_device(batch, device, self.cfg)
        clock = _tick(profile, "data", clock, device, synced)
        t_out = self.teacher.for_members(batch, [m.method for m in stepping])
        if t_out is not None:
            clock = _tick(profile, "teacher", clock, device, synced)
        if indices is not None and any(m.method.needs.indices for m in stepping):
            indices = indices.to(device, non_blocking=True)
        for m in stepping:
            with self.outcomes.attempt(m):
                loss = m.train_step(batch, t_out, epoch, steps, indices if m.method.needs.indices else None)
                if losses is not None:
                    losses[_short(m.cell)] = loss
                if m.run.hp["checkpoint_every"] and m.pos.update % m.run.hp["checkpoint_every"] == 0:
                    m.checkpoint()
        return _tick(profile, "students", clock, device, synced)

    def end_epoch(self, epoch: int, active: list[Member]) -> None:
        """Each active member's history entry, evaluation (when due) and checkpoint."""
        for m in active:
            if not m.finished:
                m.record.skipped = sorted(set(self.reader.skipped))
                with self.outcomes.attempt(m):  # a deferred non-finite loss; the checkpoint not written
                    m.end_epoch(epoch)


def train_cell(
    task: Task,
    cell: Cell,
    cfg: dict[str, Any],
    data: TaskData,
    cell_dir: Path,
    *,
    teacher: nn.Module | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train one cell (a group of one) and return its result; raise ``RuntimeError`` if it failed."""
    (out,) = train_group(
        task,
        [cell],
        cfg,
        data,
        [cell_dir],
        teacher=teacher,
        progress=progress,
        on_epoch_end=on_epoch_end,
        on_step=on_step,
    )
    if out.error is not None:
        raise RuntimeError(f"{cell.name} failed: {out.error}")
    return out.result or {}
