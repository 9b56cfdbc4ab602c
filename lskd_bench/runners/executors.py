"""Executors decide where and how the units (fused groups of cells) of a grid train.

- ``local``: one unit after the other in this process (default; data and the current teacher are cached).
- ``subprocess``: each unit in a fresh ``python -m lskd_bench.runners.worker`` process, one per GPU (``--gpus``,
  ``--per-gpu``; ``runners/devices.py``) or ``--jobs N`` at a time on the CPU (by default one per CPU for small
  models with enough training: ``threads.cpu_jobs``), a student starting only after its teacher finished.
- ``torchrun``: each unit as a DDP job of ``--nproc-per-node N`` processes on N GPUs of its own (gloo on the
  CPU), as many units at once as the GPUs allow.
- ``auto`` (default): subprocess on a machine with several GPUs, torchrun with ``--nproc-per-node`` > 1,
  subprocess on the CPU when several units train at once there (``--jobs N``, or ``threads.cpu_jobs``'s default),
  else local.

Whatever the executor, the process that trains a cell holds its lock (``runners/lock.py``): cells held by
another ``lskd-bench run`` on the same directory are waited for, never trained twice.

Every executor runs under the one scheduling loop (``scheduler.run_units``: dependency order, GPU slots,
cells held elsewhere, outcomes); an executor only starts a unit and returns a handle (``Executor.start``).
Third-party executors (a cluster scheduler, say) register through the ``lskd_bench.executors``
entry-point group: an ``Executor`` subclass.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .. import store
from ..errors import UsageError
from ..registry import EXECUTORS
from ..schema import Section
from . import devices
from .cells import Cell
from .devices import DevicePool, discover, require_cuda, worker_env
from .scheduler import Done, Handle, run_units
from .state import CellOutcome, outcome_from_disk
from .threads import cpu_jobs, thread_policy
from .train import resolve_device, threads_scope
from .units import GridPlan, UnitResult, train_unit


class Executor:
    """Base class of executors. An executor starts units; the scheduling loop (``scheduler.run_units``) decides
    which and when. ``start(plan, unit, gpus)`` starts one unit (each cell trains through ``units.train_unit`` in
    whatever process or job it starts) and returns a ``Handle``: ``poll()`` None while it runs, ``result()`` the
    cells' ``CellOutcome``s (a cell left out is read from its folder: ``state.cell_state``), ``cancel()``.

    ``capacity(plan)``: (GPU pool or None, GPUs per unit, units at once). ``open(plan)`` / ``close()`` around the
    loop (``close`` returns lines for the run summary); ``reports_progress``: a bar of the settled cells (not
    for an executor that only submits jobs). ``orders_dependencies``: the backend itself starts a
    student after its teacher (Slurm's ``afterok``), so the loop starts a student once its teacher started.
    ``config_section``, if set, is collected into the run config under the executor's registered name (a
    cluster profile: ``--runner-profile FILE`` sets it)."""

    config_section: Section | None = None
    orders_dependencies = False
    poll_seconds = 0.2  # between polls of running units
    reports_progress = True  # a progress bar of the settled cells

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        """Checks before anything is written (a missing scheduler command...); raise UsageError."""

    @classmethod
    def for_config(cls, cfg: dict[str, Any]) -> Executor:
        """The executor that runs a grid of ``cfg`` (``auto`` picks one)."""
        return cls()

    def capacity(self, plan: GridPlan) -> tuple[DevicePool | None, int, int]:
        return None, 1, 1

    @classmethod
    def units_at_once(cls, cfg: dict[str, Any]) -> int:
        """How many units this executor trains at once for ``cfg`` (the planner splits the teachers' pass over
        them: ``grid.fuse_units``'s ``spread``)."""
        return 1

    def open(self, plan: GridPlan) -> None:
        """Before the first unit starts (a spec file, a note for the user)."""

    def start(self, plan: GridPlan, unit: list[Cell], gpus: list[str] | None) -> Handle:
        raise NotImplementedError

    def close(self) -> list[str]:
        """After the last unit ended (or the run stopped): lines printed after the run summary."""
        return []

    def run(self, plan: GridPlan) -> tuple[list[CellOutcome], list[str]]:
        """Every unit of ``plan`` through the scheduling loop: (the cells' outcomes, the executor's notes)."""
        self.open(plan)
        try:
            outcomes = run_units(plan, self)
        finally:
            notes = self.close()
        return outcomes, notes

    @staticmethod
    def status(dirs: list[Path]) -> dict[Path, dict[str, str]]:
        """This executor's view of the cells it tracks elsewhere, for ``lskd-bench status``: per cell directory,
        ``{"job": id, "live": "queued" | "running", "detail": ...}`` while its job is queued or running, or
        ``{"job": id, "ended": why}`` once the job left without a result."""
        return {}


def unit_result_outcomes(done: UnitResult) -> list[CellOutcome]:
    """``units.train_unit``'s result as the cells' outcomes (repair lines with the cell they name)."""
    notes: dict[str, list[str]] = {}
    for cell, line in done.notes:
        notes.setdefault(cell.hash, []).append(line)
    got = [
        CellOutcome(o.cell, "failed" if o.error else "trained", o.error or "", tuple(notes.pop(o.cell.hash, [])))
        for o in done.outcomes
    ]
    got += [CellOutcome(c, "busy", notes=tuple(notes.pop(c.hash, []))) for c in done.busy]
    return got


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """One unit after the other in this process; the data and the current teacher stay in memory."""

    @classmethod
    def validate(cls, cfg: dict) -> None:
        require_cuda({"device": cfg["device"]})  # gpus: ignored here, with a note

    def open(self, plan: GridPlan) -> None:
        cfg = plan.cfg
        if cfg["gpus"] is not None or cfg["per_gpu"] > 1 or (cfg["jobs"] or 1) > 1:
            plan.say(
                "note: --gpus, --per-gpu and --jobs are used by the subprocess and torchrun executors; the local "
                "executor trains one unit at a time on one device (--executor subprocess to spread units over GPUs "
                "or CPUs)"
            )
        # one process trains: its loader workers are capped at the machine's cores, as the subprocess path does
        self.ctx = plan.with_cfg(num_workers=devices.loader_workers(cfg["num_workers"], 1)).context()
        self.device = resolve_device(self.ctx.cfg)
        self.teacher_cache: dict = {}
        self.scope = contextlib.ExitStack()
        self.scope.enter_context(threads_scope(self.ctx.cfg))

    def start(self, plan: GridPlan, unit: list[Cell], gpus: list[str] | None) -> Done:
        done = train_unit(self.ctx, unit, device=self.device, teacher_cache=self.teacher_cache)
        return Done(unit_result_outcomes(done))

    def close(self) -> list[str]:
        self.scope.close()
        self.teacher_cache.clear()
        return []


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Any | None:
    """A ``preexec_fn`` that makes a worker (or the torchrun launcher, which stops its ranks) receive SIGTERM
    when this process dies, even by SIGKILL: an orphan would go on training and hold its GPU while a new run
    hands that GPU to another unit. The worker's SIGTERM path releases its locks and records 'interrupted'.
    Linux only (prctl); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@EXECUTORS.register("subprocess")
class SubprocessExecutor(Executor):
    """Units in worker processes, several at a time. With GPUs (``runners/devices.py``) each unit gets its
    own (``per_gpu`` units share one); without, ``--jobs N`` units run at once on the CPU. The CPU threads
    and data-loader workers are divided among the processes that run at once."""

    def launcher(self, plan: GridPlan) -> list[str]:
        return [sys.executable, "-m", "lskd_bench.runners.worker"]

    def procs_per_unit(self, cfg: dict) -> int:
        return 1

    @classmethod
    def validate(cls, cfg: dict) -> None:
        require_cuda(cfg)
        gpus = discover(cfg)
        k = cls().procs_per_unit(cfg)
        if gpus and k > len(gpus):
            raise UsageError(
                f"nproc_per_node {k} needs {k} GPUs per unit; only {len(gpus)} available ({','.join(gpus)})"
            )

    def layout(self, cfg: dict) -> tuple[DevicePool, int, int, int]:
        """(GPU pool, units at once, CPU threads per process, data-loader workers per process)."""
        pool = DevicePool(discover(cfg), cfg["per_gpu"])
        k = self.procs_per_unit(cfg)
        jobs = cfg["jobs"]
        if pool:
            at_once = pool.slots // k
            at_once = min(jobs, at_once) if jobs else at_once
        else:
            at_once = jobs if jobs else cpu_jobs(cfg)[0] if k == 1 else 1  # a DDP unit's ranks share the CPUs
        share = devices.cpu_share(at_once * k)
        device = torch.device("cuda") if pool else resolve_device(cfg)  # with GPUs the units train on them
        threads = thread_policy(cfg, device, cpus=share)[0]
        workers = devices.loader_workers(cfg["num_workers"], at_once * k)
        return pool, max(1, at_once), threads, workers

    def capacity(self, plan: GridPlan) -> tuple[DevicePool | None, int, int]:
        pool, jobs, _, _ = self.layout(plan.cfg)
        return (pool if pool else None), self.procs_per_unit(plan.cfg), jobs

    @classmethod
    def units_at_once(cls, cfg: dict[str, Any]) -> int:
        return cls().layout(cfg)[1]

    def open(self, plan: GridPlan) -> None:
        pool, jobs, threads, workers = self.layout(plan.cfg)
        spec = plan.write_spec({"num_workers": workers} if workers != plan.cfg["num_workers"] else None)
        self.log = DeviceLog(plan) if pool else None
        self.launch = Launch(plan, self.launcher(plan), spec, threads, die_with_parent())
        s = "s" if jobs > 1 else ""
        if self.log is not None:
            name = type(self).__name__.removesuffix("Executor").lower()
            self.log.say(
                f"{len(pool.gpus)} GPU{'s' if len(pool.gpus) > 1 else ''} ({','.join(pool.gpus)}): "
                f"{self._packing(pool, self.procs_per_unit(plan.cfg))}, {jobs} unit{s} at a time, {threads} CPU "
                f"thread{'s' if threads > 1 else ''} per process ({name} executor; --gpus, --per-gpu, --jobs or "
                "--executor local to change)",
                first=True,
            )
        elif plan.cfg["per_gpu"] > 1:
            plan.say(
                f"note: --per-gpu {plan.cfg['per_gpu']} has no effect: no GPU here; {jobs} unit{s} at a time on "
                "the CPU (--jobs N)"
            )
        elif jobs > 1:
            plan.say(
                f"CPU: {jobs} units at a time as worker processes, {threads} thread{'s' if threads > 1 else ''} "
                f"each ({cpu_jobs(plan.cfg)[1]}; --jobs 1 or --executor local for one at a time)"
            )

    def start(self, plan: GridPlan, unit: list[Cell], gpus: list[str] | None) -> WorkerHandle:
        handle = WorkerHandle(self.launch(unit, gpus), unit, gpus, self.log, plan.out, plan.cfg["lock"]["stale_s"])
        if self.log is not None:
            self.log.event("start", gpus, unit)
        return handle

    @staticmethod
    def _packing(pool: DevicePool, k: int) -> str:
        if k > 1:
            return f"{k} GPUs per unit" + (f", {pool.per_gpu} units per GPU" if pool.per_gpu > 1 else "")
        return "one unit per GPU" if pool.per_gpu == 1 else f"{pool.per_gpu} units per GPU"


@dataclass
class WorkerHandle:
    """A unit in a worker process (a torchrun launcher and its ranks): its outcome is read from the cells'
    folders once the process exited; devices.log gets the unit's end."""

    proc: subprocess.Popen
    unit: list[Cell]
    gpus: list[str] | None
    log: DeviceLog | None
    out: Path
    stale_s: float

    def poll(self) -> bool | None:
        return None if self.proc.poll() is None else True

    def result(self) -> list[CellOutcome]:
        rc = self.proc.returncode
        got = [outcome_from_disk(c, self.out, self.stale_s, f"worker process exited with code {rc}") for c in self.unit]
        if self.log is not None:
            self.log.event("end", self.gpus, self.unit, [self._word(o, rc) for o in got])
        return got

    @staticmethod
    def _word(o: CellOutcome, rc: int) -> str:
        if o.state == "trained":
            return "done"
        if o.state == "busy":
            return "held elsewhere"
        return "failed" if not o.reason.startswith("worker process exited") else f"failed (exit {rc})"

    def cancel(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        if self.log is not None:  # every start has its end, an interrupted run's too
            self.log.event("end", self.gpus, self.unit, ["stopped"] * len(self.unit))


@dataclass
class Launch:
    """Starts one worker process for a unit: the launcher command, the unit's cell hashes, its GPUs and threads."""

    plan: GridPlan
    launcher: list[str]
    spec: Path
    threads: int
    preexec: Any | None

    def __call__(self, unit: list[Cell], gpus: list[str] | None) -> subprocess.Popen:
        for c in unit:
            store.clear_error(c.dir(self.plan.out))
        cmd = [*self.launcher, "--spec", str(self.spec), "--cells", ",".join(c.hash for c in unit)]
        return subprocess.Popen(cmd, env=worker_env(os.environ, gpus, self.threads), preexec_fn=self.preexec)


class DeviceLog:
    """The assignment log: which unit ran on which GPUs, appended to RUNS/<task>/devices.log and echoed."""

    def __init__(self, plan: GridPlan):
        self.path = plan.out / plan.cfg["task"] / "devices.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def say(self, text: str, first: bool = False) -> None:
        line = f"lskd-bench: {text}" if first else text
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")

    def event(self, what: str, gpus: list[str] | None, unit: list[Cell], states: list[str] | None = None) -> None:
        where = f"GPU{'s' if gpus and len(gpus) > 1 else ''} {','.join(gpus or [])}"
        cells = ", ".join(c.name + (f" {s}" if states else "") for c, s in zip(unit, states or [""] * len(unit)))
        self.say(f"{what:<5} {where:<8} {cells}")


@EXECUTORS.register("torchrun")
class TorchrunExecutor(SubprocessExecutor):
    """Each unit as one DDP job of ``nproc_per_node`` processes (``lskd-bench run --nproc-per-node N``),
    one unit at a time, launched through ``torch.distributed.run`` (torchrun)."""

    def launcher(self, plan: GridPlan) -> list[str]:
        n = self.procs_per_unit(plan.cfg)
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
            "-m",
            "lskd_bench.runners.worker",
        ]

    def procs_per_unit(self, cfg: dict) -> int:
        return cfg["nproc_per_node"]


@EXECUTORS.register("auto")
class AutoExecutor(Executor):
    """The default: ``torchrun`` when ``nproc_per_node > 1``; ``subprocess`` over the GPUs when there are
    several (or ``gpus`` / ``per_gpu`` were given): one unit per GPU; ``subprocess`` on the CPU when several units
    train at once there (``jobs``, or by default ``threads.cpu_jobs``: small models, several CPUs, enough
    training); else ``local`` (in this process)."""

    @staticmethod
    def choose(cfg: dict) -> str:
        if cfg["nproc_per_node"] > 1:
            return "torchrun"
        if cfg["gpus"] is not None or cfg["per_gpu"] > 1 or len(discover(cfg)) > 1:
            return "subprocess"
        if resolve_device(cfg).type == "cpu" and cpu_jobs(cfg)[0] > 1:
            return "subprocess"
        return "local"

    @classmethod
    def units_at_once(cls, cfg: dict[str, Any]) -> int:
        return EXECUTORS.get(cls.choose(cfg)).units_at_once(cfg)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        EXECUTORS.get(cls.choose(cfg)).validate(cfg)

    @classmethod
    def for_config(cls, cfg: dict) -> Executor:
        return EXECUTORS.get(cls.choose(cfg)).for_config(cfg)
