"""Executors decide where and how the units (fused groups of cells) of a grid train.

- ``local``: one unit after the other in this process (default; data and the current teacher are cached).
- ``subprocess``: each unit in a fresh ``python -m lskd_bench.runners.worker`` process, ``--jobs N`` at
  a time, a student starting only after its teacher finished.
- ``torchrun``: each unit as a DDP job of ``--nproc-per-node N`` processes (GPUs; gloo on the CPU).

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
    from .grid import GridJob


class Executor(Protocol):
    def run(self, job: "GridJob", units: list[list["Cell"]]) -> None: ...


EXECUTORS: Registry[type] = Registry("executor", "lskd_bench.executors")


def claim(job: "GridJob", unit: list["Cell"]) -> tuple[list["Cell"], list[CellLock], list["Cell"]]:
    """Lock what we can of ``unit``: (cells now ours, their locks, cells another process holds)."""
    stale_s = float(job.cfg.get("lock", {}).get("stale_s", 300.0))
    mine, locks, busy = [], [], []
    try:
        _claim_each(job, unit, stale_s, mine, locks, busy)
    except BaseException:  # a full disk while locking: let go of what we hold
        for lock in locks:
            lock.release()
        raise
    return mine, locks, busy


def _claim_each(job, unit, stale_s, mine, locks, busy) -> None:
    for c in unit:
        lock = CellLock(c.dir(job.out))
        if lock.try_acquire(stale_s):
            if lock.took_over:
                job.repairs.append(f"repaired: {c.name}: {lock.took_over}")
            if store.read_result(c.dir(job.out)) is not None:  # finished between our check and the lock
                lock.release()
                continue
            mine.append(c)
            locks.append(lock)
        else:
            busy.append(c)


def train_unit_here(job: "GridJob", unit: list["Cell"], device, teacher_cache: Optional[dict] = None,
                    progress: bool = True):
    """Lock, train and release ``unit`` in this process. Returns (outcomes, busy cells)."""
    from ..errors import DataError
    from .grid import unit_inputs
    from .train import Outcome, train_group

    mine, locks, busy = claim(job, unit)
    outcomes = []
    if mine:
        try:
            with Heartbeat(locks, float(job.cfg.get("lock", {}).get("heartbeat_s", 10.0))):
                try:
                    data, teacher = unit_inputs(job, mine, device, teacher_cache)
                except (DataError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - the teacher (or its targets) unusable: these cells fail
                    for c in mine:
                        store.write_error(c.dir(job.out), c, exc)
                    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    return [Outcome(c, error=f"cannot prepare the teacher's inputs: {why}") for c in mine], busy
                outcomes = train_group(job.task, mine, job.cfg, data, [c.dir(job.out) for c in mine],
                                       teacher=teacher, progress=progress)
                job.repairs += [line for o in outcomes for line in o.notes]
        finally:
            for lock in locks:
                lock.release()
    return outcomes, busy


@EXECUTORS.register("local")
class LocalExecutor:
    def run(self, job: "GridJob", units: list[list["Cell"]]) -> None:
        from .grid import Scheduler
        from .train import resolve_device, threads_scope

        device = resolve_device(job.cfg)
        sched = Scheduler(job, units)
        teacher_cache: dict = {}
        with threads_scope(job.cfg):
            self._loop(job, sched, device, teacher_cache)

    def _loop(self, job: "GridJob", sched, device, teacher_cache: dict) -> None:
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
    poll_seconds = 0.2

    def launcher(self, job: "GridJob") -> list[str]:
        return [sys.executable, "-m", "lskd_bench.runners.worker"]

    def max_jobs(self, job: "GridJob") -> int:
        return max(1, int(job.cfg.get("jobs", 1)))

    def run(self, job: "GridJob", units: list[list["Cell"]]) -> None:
        import time

        from .grid import Scheduler, raise_if_data_error

        spec = job.write_spec()
        sched = Scheduler(job, units)
        running: list[tuple[subprocess.Popen, list["Cell"]]] = []
        jobs = self.max_jobs(job)
        env = dict(os.environ)
        from .train import thread_count

        env["OMP_NUM_THREADS"] = str(thread_count(job.cfg))  # the worker also sets torch's count from the config
        stale_s = float(job.cfg.get("lock", {}).get("stale_s", 300.0))
        try:
            while not sched.done() or running:
                started = False
                while len(running) < jobs:
                    unit = sched.next_unit()
                    if unit is None:
                        break
                    for c in unit:
                        store.clear_error(c.dir(job.out))
                    cmd = [*self.launcher(job), "--spec", str(spec), "--cells", ",".join(c.hash for c in unit)]
                    running.append((subprocess.Popen(cmd, env=env), unit))
                    started = True
                for proc, unit in list(running):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    running.remove((proc, unit))
                    for c in unit:
                        d = c.dir(job.out)
                        if store.read_result(d) is not None:
                            sched.finish(c, True)
                            continue
                        err = store.read_error(d)
                        if err is not None:
                            sched.finish(c, False, f"{err.get('error')}: {err.get('message')}")
                            continue
                        info = read_lock(d)
                        if info is not None and not is_stale(info, stale_s):
                            sched.finish(c, False, busy=True)  # another run holds it
                        else:
                            sched.finish(c, False, f"worker process exited with code {rc}")
                    raise_if_data_error(unit, job.out)
                sched.poll_waiting()
                if not started:
                    if running or sched.waiting:
                        time.sleep(self.poll_seconds if running else float(job.cfg.get("lock", {}).get("poll_s", 1.0)))
                    elif not sched.done():
                        sched.idle()
        finally:
            for proc, _ in running:
                proc.terminate()
            for proc, _ in running:
                proc.wait()
            sched.close()


def read_spec(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@EXECUTORS.register("torchrun")
class TorchrunExecutor(SubprocessExecutor):
    """Each unit as one DDP job of ``nproc_per_node`` processes (``lskd-bench run --nproc-per-node N``),
    one unit at a time, launched through ``torch.distributed.run`` (torchrun)."""

    def launcher(self, job: "GridJob") -> list[str]:
        n = int(job.cfg.get("nproc_per_node", 1))
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "lskd_bench.runners.worker"]

    def max_jobs(self, job: "GridJob") -> int:
        return 1


from . import slurm as _slurm  # noqa: E402,F401  (registers the slurm executor)
