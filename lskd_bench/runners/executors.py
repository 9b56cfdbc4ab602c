"""Executors decide where and how the units (fused groups of cells) of a grid train.

- ``local``: one unit after the other in this process (default; data and the current teacher are cached).
- ``subprocess``: each unit in a fresh ``python -m lskd_bench.runners.worker`` process, one per GPU (``--gpus``,
  ``--per-gpu``; ``runners/devices.py``) or ``--jobs N`` at a time on the CPU, a student starting only after
  its teacher finished.
- ``torchrun``: each unit as a DDP job of ``--nproc-per-node N`` processes on N GPUs of its own (gloo on the
  CPU), as many units at once as the GPUs allow.
- ``auto`` (default): subprocess on a machine with several GPUs, torchrun with ``--nproc-per-node`` > 1,
  else local.

Whatever the executor, the process that trains a cell holds its lock (``runners/lock.py``): cells held by
another ``lskd-bench run`` on the same directory are waited for, never trained twice.

Third-party executors (a cluster scheduler, say) register through the ``lskd_bench.executors``
entry-point group: a class whose ``run(job, units)`` trains the given units.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from ..registry import Registry
from . import store
from .lock import CellLock, Heartbeat, is_stale, read_lock

if TYPE_CHECKING:
    from .cells import Cell
    from .devices import DevicePool
    from .grid import GridJob


class Executor(Protocol):
    def run(self, job: "GridJob", units: list[list["Cell"]]) -> None: ...


EXECUTORS: Registry[type] = Registry("executor", "lskd_bench.executors")


def claim(job: "GridJob", unit: list["Cell"]) -> tuple[list["Cell"], list[CellLock], list["Cell"]]:
    """Lock what we can of ``unit``: (cells now ours, their locks, cells another process holds)."""
    stale_s = float(job.cfg.get("lock", {}).get("stale_s", 300.0))
    mine, locks, busy = [], [], []
    for c in unit:
        lock = CellLock(c.dir(job.out))
        if lock.try_acquire(stale_s):
            if store.read_result(c.dir(job.out)) is not None:  # finished between our check and the lock
                lock.release()
                continue
            mine.append(c)
            locks.append(lock)
        else:
            busy.append(c)
    return mine, locks, busy


def train_unit_here(job: "GridJob", unit: list["Cell"], device, teacher_cache: Optional[dict] = None,
                    progress: bool = True):
    """Lock, train and release ``unit`` in this process. Returns (outcomes, busy cells)."""
    from .grid import unit_inputs
    from .train import train_group

    mine, locks, busy = claim(job, unit)
    outcomes = []
    if mine:
        try:
            with Heartbeat(locks, float(job.cfg.get("lock", {}).get("heartbeat_s", 10.0))):
                data, teacher = unit_inputs(job, mine, device, teacher_cache)
                outcomes = train_group(job.task, mine, job.cfg, data, [c.dir(job.out) for c in mine],
                                       teacher=teacher, progress=progress)
        finally:
            for lock in locks:
                lock.release()
    return outcomes, busy


@EXECUTORS.register("local")
class LocalExecutor:
    def run(self, job: "GridJob", units: list[list["Cell"]]) -> None:
        from .grid import Scheduler
        from .train import resolve_device

        device = resolve_device(job.cfg)
        sched = Scheduler(job, units)
        teacher_cache: dict = {}
        try:
            while not sched.done():
                unit = sched.next_unit()
                if unit is None:
                    sched.idle()
                    continue
                outcomes, busy = train_unit_here(job, unit, device, teacher_cache, progress=job.progress)
                for c in busy:
                    sched.finish(c, False, busy=True)
                for o in outcomes:
                    sched.finish(o.cell, o.error is None, o.error)
                sched.poll_waiting()
        finally:
            sched.close()


@EXECUTORS.register("subprocess")
class SubprocessExecutor:
    """Units in worker processes, several at a time. With GPUs (``runners/devices.py``) each unit gets its
    own (``per_gpu`` units share one); without, ``--jobs N`` units run at once on the CPU. The CPU threads
    and data-loader workers are divided among the processes that run at once."""

    poll_seconds = 0.2

    def launcher(self, job: "GridJob") -> list[str]:
        return [sys.executable, "-m", "lskd_bench.runners.worker"]

    def procs_per_unit(self, cfg: dict) -> int:
        return 1

    @classmethod
    def validate(cls, cfg: dict) -> None:
        from ..errors import UsageError
        from .devices import discover

        gpus = discover(cfg)
        k = cls().procs_per_unit(cfg)
        if gpus and k > len(gpus):
            raise UsageError(f"nproc_per_node {k} needs {k} GPUs per unit; only {len(gpus)} available "
                             f"({','.join(gpus)})")

    def plan(self, job: "GridJob") -> tuple["DevicePool", int, int, int]:
        """(GPU pool, units at once, CPU threads per process, data-loader workers per process)."""
        from .devices import DevicePool, cpu_count, discover

        cfg = job.cfg
        pool = DevicePool(discover(cfg), int(cfg.get("per_gpu", 1)))
        k = self.procs_per_unit(cfg)
        jobs = cfg.get("jobs")
        if pool:
            at_once = pool.slots // k
            at_once = min(int(jobs), at_once) if jobs else at_once
        else:
            at_once = int(jobs) if jobs else 1
        share = max(1, cpu_count() // max(1, at_once * k))
        threads = int(cfg["threads"]) if cfg.get("threads") else share
        workers = min(int(cfg.get("num_workers", 0)), share)
        return pool, max(1, at_once), threads, workers

    def run(self, job: "GridJob", units: list[list["Cell"]]) -> None:
        import time

        from .devices import worker_env
        from .grid import Scheduler, raise_if_data_error

        pool, jobs, threads, workers = self.plan(job)
        k = self.procs_per_unit(job.cfg)
        spec = job.write_spec({"num_workers": workers} if workers != int(job.cfg.get("num_workers", 0)) else None)
        log = DeviceLog(job) if pool else None
        if log is not None:
            log.say(f"{len(pool.gpus)} GPU{'s' if len(pool.gpus) > 1 else ''} ({','.join(pool.gpus)}): "
                    f"{self._packing(pool, k)}, {jobs} unit{'s' if jobs > 1 else ''} at a time, {threads} CPU "
                    f"thread{'s' if threads > 1 else ''} per process ({type(self).__name__.removesuffix('Executor').lower()} "
                    f"executor; --gpus, --per-gpu, --jobs or --executor local to change)", first=True)
        sched = Scheduler(job, units)
        running: list[tuple[subprocess.Popen, list["Cell"], Optional[list[str]]]] = []
        stale_s = float(job.cfg.get("lock", {}).get("stale_s", 300.0))
        try:
            while not sched.done() or running:
                started = False
                while len(running) < jobs:
                    gpus = None
                    if pool:
                        gpus = pool.acquire(k)
                        if gpus is None:
                            break
                    unit = sched.next_unit()
                    if unit is None:
                        if gpus is not None:
                            pool.release(gpus)
                        break
                    for c in unit:
                        store.clear_error(c.dir(job.out))
                    cmd = [*self.launcher(job), "--spec", str(spec), "--cells", ",".join(c.hash for c in unit)]
                    env = worker_env(os.environ, gpus, threads)
                    running.append((subprocess.Popen(cmd, env=env), unit, gpus))
                    if log is not None:
                        log.event("start", gpus, unit)
                    started = True
                for entry in list(running):
                    proc, unit, gpus = entry
                    rc = proc.poll()
                    if rc is None:
                        continue
                    running.remove(entry)
                    if gpus is not None:
                        pool.release(gpus)  # whatever the outcome: a failed unit fails alone
                    states = []
                    for c in unit:
                        d = c.dir(job.out)
                        if store.read_result(d) is not None:
                            sched.finish(c, True)
                            states.append("done")
                            continue
                        err = store.read_error(d)
                        if err is not None:
                            sched.finish(c, False, f"{err.get('error')}: {err.get('message')}")
                            states.append("failed")
                            continue
                        info = read_lock(d)
                        if info is not None and not is_stale(info, stale_s):
                            sched.finish(c, False, busy=True)  # another run holds it
                            states.append("held elsewhere")
                        else:
                            sched.finish(c, False, f"worker process exited with code {rc}")
                            states.append(f"failed (exit {rc})")
                    if log is not None:
                        log.event("end", gpus, unit, states)
                    raise_if_data_error(unit, job.out)
                sched.poll_waiting()
                if not started:
                    if pool and not running and pool.busy():
                        raise RuntimeError(f"GPU slots leaked: {pool.load}")  # a bug, never a hang
                    if running or sched.waiting:
                        time.sleep(self.poll_seconds if running else float(job.cfg.get("lock", {}).get("poll_s", 1.0)))
                    elif not sched.done():
                        sched.idle()
        finally:
            for proc, _, _ in running:
                proc.terminate()
            for proc, _, _ in running:
                proc.wait()
            sched.close()

    @staticmethod
    def _packing(pool: "DevicePool", k: int) -> str:
        if k > 1:
            return f"{k} GPUs per unit" + (f", {pool.per_gpu} units per GPU" if pool.per_gpu > 1 else "")
        return "one unit per GPU" if pool.per_gpu == 1 else f"{pool.per_gpu} units per GPU"


class DeviceLog:
    """The assignment log: which unit ran on which GPUs, appended to RUNS/<task>/devices.log and echoed."""

    def __init__(self, job: "GridJob"):
        self.path = job.out / job.cfg["task"] / "devices.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def say(self, text: str, first: bool = False) -> None:
        from datetime import datetime

        line = f"lskd-bench: {text}" if first else text
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")

    def event(self, what: str, gpus: Optional[list[str]], unit: list["Cell"], states: Optional[list[str]] = None) -> None:
        where = f"GPU{'s' if gpus and len(gpus) > 1 else ''} {','.join(gpus or [])}"
        cells = ", ".join(c.name + (f" {s}" if states else "") for c, s in zip(unit, states or [""] * len(unit)))
        self.say(f"{what:<5} {where:<8} {cells}")


def read_spec(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@EXECUTORS.register("torchrun")
class TorchrunExecutor(SubprocessExecutor):
    """Each unit as one DDP job of ``nproc_per_node`` processes (``lskd-bench run --nproc-per-node N``),
    one unit at a time, launched through ``torch.distributed.run`` (torchrun)."""

    def launcher(self, job: "GridJob") -> list[str]:
        n = self.procs_per_unit(job.cfg)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "lskd_bench.runners.worker"]

    def procs_per_unit(self, cfg: dict) -> int:
        return int(cfg.get("nproc_per_node", 1))


@EXECUTORS.register("auto")
class AutoExecutor:
    """The default: ``torchrun`` when ``nproc_per_node > 1``; ``subprocess`` over the GPUs when there are
    several (or ``gpus`` / ``per_gpu`` were given): one unit per GPU; else ``local`` (in this process)."""

    @staticmethod
    def choose(cfg: dict) -> str:
        from .devices import discover

        if int(cfg.get("nproc_per_node", 1)) > 1:
            return "torchrun"
        if cfg.get("gpus") is not None or int(cfg.get("per_gpu", 1)) > 1 or len(discover(cfg)) > 1:
            return "subprocess"
        return "local"

    @classmethod
    def validate(cls, cfg: dict) -> None:
        chosen = EXECUTORS.get(cls.choose(cfg))
        if hasattr(chosen, "validate"):
            chosen.validate(cfg)

    def run(self, job: "GridJob", units: list[list["Cell"]]) -> None:
        EXECUTORS.get(self.choose(job.cfg))().run(job, units)


from . import slurm as _slurm  # noqa: E402,F401  (registers the slurm executor)
