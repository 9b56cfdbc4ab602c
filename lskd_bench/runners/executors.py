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

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import store
from ..errors import UsageError
from ..registry import EXECUTORS
from ..schema import Section
from . import devices
from .cells import Cell
from .devices import DevicePool, discover, require_cuda, worker_env
from .lock import is_stale, read_lock
from .scheduler import Scheduler, raise_if_data_error
from .train import resolve_device, threads_scope
from .units import GridJob, claim, read_spec, train_unit  # noqa: F401  (claim, read_spec: re-exported)


class Executor:
    """Base class of executors. ``run`` trains the given units, each through ``units.train_unit`` in whatever
    process or job it starts. ``config_section``, if set, is collected into the run config under the
    executor's registered name (a cluster profile: ``--runner-profile FILE`` sets it)."""

    config_section: Section | None = None

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        """Checks before anything is written (a missing scheduler command...); raise UsageError."""

    def run(self, job: GridJob, units: list[list[Cell]]) -> None:
        raise NotImplementedError

    @staticmethod
    def status(dirs: list[Path]) -> dict[Path, dict[str, str]]:
        """This executor's view of the cells it tracks elsewhere, for ``lskd-bench status``: per cell directory,
        ``{"job": id, "live": "queued" | "running", "detail": ...}`` while its job is queued or running, or
        ``{"job": id, "ended": why}`` once the job left without a result."""
        return {}


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    @classmethod
    def validate(cls, cfg: dict) -> None:
        require_cuda({"device": cfg["device"]})  # gpus: ignored here, with a note

    def run(self, job: GridJob, units: list[list[Cell]]) -> None:
        if job.cfg["gpus"] is not None or job.cfg["per_gpu"] > 1:
            job.say(
                "note: --gpus and --per-gpu are used by the subprocess and torchrun executors; the local executor "
                "trains one unit at a time on one device (--executor subprocess to spread units over GPUs)"
            )
        device = resolve_device(job.cfg)
        sched = Scheduler(job, units)
        teacher_cache: dict = {}
        cfg = job.cfg
        # one process trains: its loader workers are capped at the machine's cores, as the subprocess path does
        workers = devices.loader_workers(cfg["num_workers"], 1)
        if workers != cfg["num_workers"]:
            job.cfg = {**cfg, "num_workers": workers}
        try:
            with threads_scope(job.cfg):
                self._loop(job, sched, device, teacher_cache)
        finally:
            job.cfg = cfg

    def _loop(self, job: GridJob, sched: Scheduler, device, teacher_cache: dict) -> None:
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

    poll_seconds = 0.2

    def launcher(self, job: GridJob) -> list[str]:
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

    def plan(self, job: GridJob) -> tuple[DevicePool, int, int, int]:
        """(GPU pool, units at once, CPU threads per process, data-loader workers per process)."""
        cfg = job.cfg
        pool = DevicePool(discover(cfg), cfg["per_gpu"])
        k = self.procs_per_unit(cfg)
        jobs = cfg["jobs"]
        if pool:
            at_once = pool.slots // k
            at_once = min(jobs, at_once) if jobs else at_once
        else:
            at_once = jobs if jobs else 1
        share = devices.cpu_share(at_once * k)
        threads = int(cfg["threads"]) if cfg["threads"] else share
        workers = devices.loader_workers(cfg["num_workers"], at_once * k)
        return pool, max(1, at_once), threads, workers

    def run(self, job: GridJob, units: list[list[Cell]]) -> None:
        pool, jobs, threads, workers = self.plan(job)
        k = self.procs_per_unit(job.cfg)
        spec = job.write_spec({"num_workers": workers} if workers != job.cfg["num_workers"] else None)
        log = DeviceLog(job) if pool else None
        if log is not None:
            log.say(
                f"{len(pool.gpus)} GPU{'s' if len(pool.gpus) > 1 else ''} ({','.join(pool.gpus)}): "
                f"{self._packing(pool, k)}, {jobs} unit{'s' if jobs > 1 else ''} at a time, {threads} CPU "
                f"thread{'s' if threads > 1 else ''} per process ({type(self).__name__.removesuffix('Executor').lower()} "
                f"executor; --gpus, --per-gpu, --jobs or --executor local to change)",
                first=True,
            )
        elif job.cfg["per_gpu"] > 1:
            job.say(
                f"note: --per-gpu {job.cfg['per_gpu']} has no effect: no GPU here; {jobs} unit"
                f"{'s' if jobs > 1 else ''} at a time on the CPU (--jobs N)"
            )
        sched = Scheduler(job, units)
        running: list[tuple[subprocess.Popen, list[Cell], list[str] | None]] = []
        launch = Launch(job, self.launcher(job), spec, threads, die_with_parent())
        try:
            while not sched.done() or running:
                started = False
                while len(running) < jobs:
                    gpus = pool.acquire(k) if pool else None
                    if pool and gpus is None:
                        break
                    unit = sched.next_unit()
                    if unit is None:
                        if gpus is not None:
                            pool.release(gpus)
                        break
                    running.append((launch(unit, gpus), unit, gpus))
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
                    states = [self._outcome(job, sched, c, rc) for c in unit]
                    if log is not None:
                        log.event("end", gpus, unit, states)
                    raise_if_data_error(unit, job.out)
                sched.poll_waiting()
                if not started:
                    if pool and not running and pool.busy():
                        raise RuntimeError(f"GPU slots leaked: {pool.load}")  # a bug, never a hang
                    if running or sched.waiting:
                        time.sleep(self.poll_seconds if running else job.cfg["lock"]["poll_s"])
                    elif not sched.done():
                        sched.idle()
        finally:
            for proc, _, _ in running:
                proc.terminate()
            for proc, unit, gpus in running:
                proc.wait()
                if log is not None:  # every start has its end, an interrupted run's too
                    log.event("end", gpus, unit, ["stopped"] * len(unit))
            sched.close()

    @staticmethod
    def _outcome(job: GridJob, sched: Scheduler, c: Cell, rc: int) -> str:
        """Tell the scheduler how cell ``c`` of a worker that exited with ``rc`` ended; its devices.log word."""
        d = c.dir(job.out)
        if store.read_result(d) is not None:
            sched.finish(c, True)
            return "done"
        err = store.read_error(d)
        if err is not None:
            sched.finish(c, False, f"{err.get('error')}: {err.get('message')}")
            return "failed"
        info = read_lock(d)
        if info is not None and not is_stale(info, job.cfg["lock"]["stale_s"]):
            sched.finish(c, False, busy=True)  # another run holds it
            return "held elsewhere"
        sched.finish(c, False, f"worker process exited with code {rc}")
        return f"failed (exit {rc})"

    @staticmethod
    def _packing(pool: DevicePool, k: int) -> str:
        if k > 1:
            return f"{k} GPUs per unit" + (f", {pool.per_gpu} units per GPU" if pool.per_gpu > 1 else "")
        return "one unit per GPU" if pool.per_gpu == 1 else f"{pool.per_gpu} units per GPU"


@dataclass
class Launch:
    """Starts one worker process for a unit: the launcher command, the unit's cell hashes, its GPUs and threads."""

    job: GridJob
    launcher: list[str]
    spec: Path
    threads: int
    preexec: Any | None

    def __call__(self, unit: list[Cell], gpus: list[str] | None) -> subprocess.Popen:
        for c in unit:
            store.clear_error(c.dir(self.job.out))
        cmd = [*self.launcher, "--spec", str(self.spec), "--cells", ",".join(c.hash for c in unit)]
        return subprocess.Popen(cmd, env=worker_env(os.environ, gpus, self.threads), preexec_fn=self.preexec)


class DeviceLog:
    """The assignment log: which unit ran on which GPUs, appended to RUNS/<task>/devices.log and echoed."""

    def __init__(self, job: GridJob):
        self.path = job.out / job.cfg["task"] / "devices.log"
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

    def launcher(self, job: GridJob) -> list[str]:
        n = self.procs_per_unit(job.cfg)
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
    several (or ``gpus`` / ``per_gpu`` were given): one unit per GPU; else ``local`` (in this process)."""

    @staticmethod
    def choose(cfg: dict) -> str:
        if cfg["nproc_per_node"] > 1:
            return "torchrun"
        if cfg["gpus"] is not None or cfg["per_gpu"] > 1 or len(discover(cfg)) > 1:
            return "subprocess"
        return "local"

    @classmethod
    def validate(cls, cfg: dict) -> None:
        EXECUTORS.get(cls.choose(cfg)).validate(cfg)

    def run(self, job: GridJob, units: list[list[Cell]]) -> None:
        EXECUTORS.get(self.choose(job.cfg))().run(job, units)
