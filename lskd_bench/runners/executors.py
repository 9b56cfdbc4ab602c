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

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .. import store
from ..registry import EXECUTORS
from ..schema import Section
from .cells import Cell
from .lock import is_stale, read_lock
from .scheduler import Scheduler, raise_if_data_error
from .train import resolve_device
from .units import GridJob, claim, read_spec, train_unit  # noqa: F401  (claim, read_spec: re-exported)


class Executor:
    """Base class of executors. ``run`` trains the given units, each through ``units.train_unit`` in whatever
    process or job it starts. ``config_section``, if set, is collected into the run config under the
    executor's registered name (a cluster profile: ``--runner-profile FILE`` sets it)."""

    config_section: Optional[Section] = None

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        """Checks before anything is written (a missing scheduler command...); raise UsageError."""

    def run(self, job: GridJob, units: list[list[Cell]]) -> None:
        raise NotImplementedError

    @staticmethod
    def status(dirs: list[Path]) -> dict[Path, dict[str, str]]:
        """This executor's view of cells that are not finished, for ``lskd-bench status``: per cell
        directory it knows about, ``{"state": ..., "detail": ..., "job": ...}``."""
        return {}


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    def run(self, job: GridJob, units: list[list[Cell]]) -> None:
        device = resolve_device(job.cfg)
        sched = Scheduler(job, units)
        teacher_cache: dict = {}
        try:
            while not sched.done():
                unit = sched.next_unit()
                if unit is None:
                    sched.idle()
                    continue
                outcomes, busy = train_unit(job, unit, device=device, teacher_cache=teacher_cache)
                for c in busy:
                    sched.finish(c, False, busy=True)
                for o in outcomes:
                    sched.finish(o.cell, o.error is None, o.error)
                sched.poll_waiting()
        finally:
            sched.close()


@EXECUTORS.register("subprocess")
class SubprocessExecutor(Executor):
    poll_seconds = 0.2

    def launcher(self, job: GridJob) -> list[str]:
        return [sys.executable, "-m", "lskd_bench.runners.worker"]

    def max_jobs(self, job: GridJob) -> int:
        return job.cfg["jobs"]

    def run(self, job: GridJob, units: list[list[Cell]]) -> None:
        spec = job.write_spec()
        sched = Scheduler(job, units)
        running: list[tuple[subprocess.Popen, list[Cell]]] = []
        jobs = self.max_jobs(job)
        env = dict(os.environ)
        if jobs > 1:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
        stale_s = job.cfg["lock"]["stale_s"]
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
                        time.sleep(self.poll_seconds if running else job.cfg["lock"]["poll_s"])
                    elif not sched.done():
                        sched.idle()
        finally:
            for proc, _ in running:
                proc.terminate()
            for proc, _ in running:
                proc.wait()
            sched.close()


@EXECUTORS.register("torchrun")
class TorchrunExecutor(SubprocessExecutor):
    """Each unit as one DDP job of ``nproc_per_node`` processes (``lskd-bench run --nproc-per-node N``),
    one unit at a time, launched through ``torch.distributed.run`` (torchrun)."""

    def launcher(self, job: GridJob) -> list[str]:
        n = job.cfg["nproc_per_node"]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "lskd_bench.runners.worker"]

    def max_jobs(self, job: GridJob) -> int:
        return 1
