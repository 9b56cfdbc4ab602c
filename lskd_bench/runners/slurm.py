"""The ``slurm`` executor: a grid submitted to a Slurm cluster through submitit, one job per training unit.

- Each pending unit (a cell, or a fused group of students) becomes one job; a student job depends on its
  teacher's job (``--dependency=afterok:<id>``), so the whole grid is submitted at once and Slurm orders it.
- The job runs ``TrainUnitJob``: it takes the cells' locks (waiting for a stale lock to expire rather than
  training a cell twice), trains with the shared loop and writes results to the shared run directory.
  Multi-GPU and multi-node jobs run DDP over submitit's tasks (one per GPU), rank 0 writing results.
- On time-out or preemption submitit calls ``checkpoint()``, which requeues the same unit: it resumes from the
  cells' epoch checkpoints (``state.pt``).
- Job states come from ``squeue`` (no accounting database needed): a job that left the queue without its
  cells' results failed (cancelled, timed out, out of memory); ``error.json`` then records the tail of its log.
- Each submitted cell gets ``slurm.json`` (job id, log paths), which ``lskd-bench status`` and re-submission
  read: finished cells and cells whose job is still queued or running are not submitted again.

A shared filesystem between the submitting machine and the compute nodes is assumed (the run directory,
the profile's log folder, and the Python environment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import store
from ..errors import UsageError
from ..registry import EXECUTORS
from ..schema import Field, Section
from ..tasks import get_task
from .cells import Cell, plan_cells
from .executors import Executor
from .scheduler import Done, Handle
from .state import CellOutcome, outcome_from_disk
from .units import GridPlan, UnitContext, distributed, read_spec, train_unit

SLURM_JSON = "slurm.json"

PROFILE = Section(
    {
        "partition": Field(str, None, "Slurm partition", nullable=True, identity=False),
        "account": Field(str, None, "account to charge", nullable=True, identity=False),
        "qos": Field(str, None, "quality of service", nullable=True, identity=False),
        "nodes": Field(int, 1, "nodes per job (DDP across them)", min=1, identity=False),
        "gpus_per_node": Field(
            int, 0, "GPUs per node (one DDP process each; 0: one CPU process)", min=0, identity=False
        ),
        "cpus_per_task": Field(int, 4, "CPUs per process (data-loader workers)", min=1, identity=False),
        "mem_gb": Field(
            float, None, "memory per node in GB (null: the partition's default)", min=0.0, nullable=True, identity=False
        ),
        "time_min": Field(
            int, 1440, "time limit per job in minutes (a timed-out job is requeued and resumes)", min=1, identity=False
        ),
        "setup": Field(
            [str], [], "shell lines run before the job (module load ..., source venv/bin/activate)", identity=False
        ),
        "sbatch_args": Field([str], [], "extra sbatch options as key=value, e.g. constraint=a100", identity=False),
        "log_dir": Field(
            str,
            None,
            "submitit's folder for scripts and logs (default: RUNS/<task>/slurm)",
            nullable=True,
            identity=False,
        ),
        "poll_s": Field(float, 10.0, "seconds between squeue polls with --wait", min=0.1, max=3600.0, identity=False),
        "wait": Field(bool, False, "block until every cell settled, then print the leaderboard", identity=False),
    },
    "the slurm executor's profile (--runner-profile FILE.yaml)",
)


def _require(cmd: str) -> str:
    path = shutil.which(cmd)
    if path is None:
        raise UsageError(f"the slurm executor needs {cmd} on PATH (is this a Slurm login node?)")
    return path


def partitions() -> list[str]:
    out = subprocess.run([_require("sinfo"), "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
        raise UsageError(f"sinfo failed ({lines[-1].strip()}): is SLURM_CONF set and the controller up?")
    return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of the given jobs still known to squeue (PENDING, RUNNING, ...)."""
    if not job_ids:
        return {}
    out = subprocess.run(
        [_require("squeue"), "-h", "-o", "%i|%T|%r", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def read_job(cell_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(cell_dir) / SLURM_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_tail(info: dict[str, Any], lines: int = 15) -> str:
    for key in ("stderr", "stdout"):
        p = Path(info.get(key, ""))
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if text:
                return "\n".join(text[-lines:])
    return "(no log yet)"


class TrainUnitJob:
    """What a Slurm job runs: train one unit of a grid (spec written by the grid runner). Checkpointable:
    on time-out or preemption submitit requeues it and it resumes from the cells' checkpoints."""

    def __init__(self, spec: str, hashes: list[str]):
        self.spec, self.hashes = spec, hashes

    def __call__(self) -> dict[str, Any]:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:  # one intra-op thread per allocated CPU: oversubscribed OpenMP threads spin and crawl
            torch.set_num_threads(max(1, int(cpus)))
        spec = read_spec(self.spec)
        cfg = spec["config"]
        by_hash = {c.hash: c for c in plan_cells(cfg)}
        unit = [by_hash[h] for h in self.hashes]
        _environment_from_submitit()
        with distributed(cfg):
            ctx = UnitContext(get_task(cfg["task"]), cfg, Path(spec["out"]), progress=False)
            done = train_unit(ctx, unit, wait_for_busy=True)
        return {o.cell.name: (o.error or "finished") for o in done.outcomes}

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit  # optional [slurm] extra: imported where a Slurm job needs it

        return submitit.helpers.DelayedSubmission(TrainUnitJob(self.spec, self.hashes))


def _environment_from_submitit() -> None:
    """A job of several tasks (one per GPU) is one process group: torch.distributed's environment
    (``init_distributed`` reads it) from submitit's view of the job."""
    try:
        import submitit  # optional [slurm] extra: imported where a Slurm job needs it

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return
    if env.num_tasks <= 1:
        return
    os.environ.update({
        "RANK": str(env.global_rank), "LOCAL_RANK": str(env.local_rank), "WORLD_SIZE": str(env.num_tasks),
        "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(20000 + int(str(env.job_id).split("_")[0]) % 20000),
    })  # fmt: skip


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """Submit every pending unit as a Slurm job (teachers first; students ``afterok`` their teacher's job)."""

    config_section = PROFILE
    orders_dependencies = True  # a student's job waits for its teacher's (afterok): submitted right after it

    @staticmethod
    def status(dirs: list[Path]) -> dict[Path, dict[str, str]]:
        return slurm_status(dirs)

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        """Bad input before anything is written: no sbatch, unknown partition."""
        _require("sbatch")
        _require("squeue")
        part = cfg["slurm"]["partition"]
        if part:
            known = partitions()
            if part not in known:
                raise UsageError(f"unknown Slurm partition {part!r} (known: {', '.join(known) or 'none'})")

    def capacity(self, plan: GridPlan) -> tuple[None, int, int]:
        return None, 1, max(1, len(plan.units))  # every unit at once: Slurm queues them

    def open(self, plan: GridPlan) -> None:
        self.prof, self.out = plan.cfg["slurm"], plan.out
        self.poll_seconds = self.prof["poll_s"]
        self.reports_progress = self.prof["wait"]  # submitting only: no bar (the summary says what was submitted)
        self.spec = str(plan.write_spec())
        self.folder = Path(self.prof["log_dir"] or plan.out / plan.cfg["task"] / "slurm")
        self.live = self._live_jobs(plan)
        self.job_of = {cell_hash: jid for cell_hash, (jid, _) in self.live.items()}  # hash -> job producing it
        self.submitted: list[str] = []  # job ids submitted by this run
        self.queue = QueueView()

    def start(self, plan: GridPlan, unit: list[Cell], gpus: list[str] | None) -> Handle:
        queued = [c for c in unit if c.hash in self.live]
        todo = [c for c in unit if c.hash not in self.live]
        if todo:
            self._submit(plan, todo)
        if self.prof["wait"]:
            return WaitingJobs(self, plan.out, unit, plan.cfg["lock"]["stale_s"])
        return Done([CellOutcome(c, "queued") for c in queued] + [CellOutcome(c, "submitted") for c in todo])

    def _submit(self, plan: GridPlan, todo: list[Cell]) -> None:
        import submitit  # optional [slurm] extra: imported where the executor runs

        ex = submitit.SlurmExecutor(folder=self.folder)
        params = self._parameters(self.prof, plan.cfg, todo)
        tcell = todo[0].teacher
        if tcell is not None and store.read_result(tcell.dir(plan.out)) is None:
            if tcell.hash not in self.job_of:
                raise RuntimeError(f"{todo[0].name}: its teacher {tcell.name} is neither finished nor submitted")
            params["dependency"] = f"afterok:{self.job_of[tcell.hash]}"
        ex.update_parameters(**params)
        for c in todo:
            store.clear_error(c.dir(plan.out))
        sj = ex.submit(TrainUnitJob(self.spec, [c.hash for c in todo]))
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.submitted.append(sj.job_id)
        for c in todo:
            self.job_of[c.hash] = sj.job_id
            store.write_json(c.dir(plan.out) / SLURM_JSON, {
                "job_id": sj.job_id, "submitted_at": now, "unit": [x.name for x in todo],
                "stdout": str(sj.paths.stdout), "stderr": str(sj.paths.stderr),
                "dependency": params.get("dependency"),
            })  # fmt: skip

    def close(self) -> list[str]:
        if self.prof["wait"] or not self.submitted:
            return []
        jobs = sorted(set(self.submitted), key=int)
        return [
            f"Slurm jobs: {' '.join(jobs)}\nwatch them with: lskd-bench status --runs {self.out}   "
            f"(or squeue -j {','.join(jobs)})"
        ]

    @staticmethod
    def _parameters(prof: dict[str, Any], cfg: dict[str, Any], unit: list[Cell]) -> dict[str, Any]:
        gpus = int(prof["gpus_per_node"])
        params: dict[str, Any] = {
            "job_name": f"lskd-{cfg['task']}-{unit[0].name}"[:120],
            "time": int(prof["time_min"]),
            "nodes": int(prof["nodes"]),
            "ntasks_per_node": max(1, gpus),
            "cpus_per_task": int(prof["cpus_per_task"]),
            "signal_delay_s": 120,
            "stderr_to_stdout": False,
        }
        if gpus:
            params["gpus_per_node"] = gpus
        for key in ("partition", "account", "qos"):
            if prof[key]:
                params[key] = prof[key]
        if prof["mem_gb"]:
            params["mem"] = f"{int(prof['mem_gb'])}G"
        if prof["setup"]:
            params["setup"] = list(prof["setup"])
        extra: dict[str, Any] = {"kill-on-invalid-dep": "yes"}  # a student whose teacher's job failed is cancelled
        for item in prof["sbatch_args"]:
            key, _, value = item.lstrip("-").partition("=")
            extra[key] = value if value else True
        if extra:
            params["additional_parameters"] = extra
        return params

    @staticmethod
    def _live_jobs(plan: GridPlan) -> dict[str, tuple[str, str]]:
        """Cells whose previously submitted job is still queued or running: {hash: (job id, state)}."""
        infos = {c.hash: read_job(c.dir(plan.out)) for u in plan.units for c in u}
        ids = sorted({i["job_id"] for i in infos.values() if i})
        states = queue_states(ids)
        stuck = sorted(j for j, (_, reason) in states.items() if "DependencyNeverSatisfied" in reason)
        if stuck:  # waiting on a job that failed: cancel, they are submitted again below
            subprocess.run([_require("scancel"), *stuck], capture_output=True, timeout=60)
            states = {j: v for j, v in states.items() if j not in stuck}
        return {h: (i["job_id"], states[i["job_id"]][0]) for h, i in infos.items() if i and i["job_id"] in states}


class QueueView:
    """squeue's states of the jobs, read at most once per poll of the loop (every handle asks)."""

    def __init__(self) -> None:
        self.at = -1.0
        self.states: dict[str, tuple[str, str]] = {}

    def has(self, job_ids: set[str], max_age_s: float) -> set[str]:
        if time.monotonic() - self.at > max_age_s:
            self.states, self.at = queue_states(sorted(job_ids)), time.monotonic()
        return set(self.states)


@dataclass
class WaitingJobs:
    """The handle of a unit's jobs with ``--wait``: done once every cell has its result or its job left the
    queue without one (then failed, its error.json holding the log tail)."""

    executor: SlurmExecutor
    out: Path
    unit: list[Cell]
    stale_s: float

    def poll(self) -> bool | None:
        ex = self.executor
        alive = ex.queue.has(set(ex.job_of.values()), ex.poll_seconds / 2)
        for c in self.unit:
            if store.read_result(c.dir(self.out)) is None and ex.job_of.get(c.hash) in alive:
                return None
        return True

    def result(self) -> list[CellOutcome]:
        for c in self.unit:
            if store.read_result(c.dir(self.out)) is None:
                note_failure(c, c.dir(self.out))  # error.json: the cell's own, or the job's log tail
        return [outcome_from_disk(c, self.out, self.stale_s, "Slurm job ended without a result") for c in self.unit]

    def cancel(self) -> None:
        pass  # the jobs go on in Slurm: the next run finds them queued or finished


def note_failure(cell: Cell, d: Path) -> None:
    """A job ended without the cell's result: keep the cell's own error.json, or write one with the log tail."""
    if store.read_error(d) is not None:
        return
    info = read_job(d) or {}
    store.write_error(d, cell, RuntimeError(
        f"Slurm job {info.get('job_id')} ended without a result (cancelled, timed out, out of memory or failed "
        f"before training); log tail:\n{log_tail(info)}"), job_id=info.get("job_id"))  # fmt: skip


def slurm_status(dirs: list[Path]) -> dict[Path, dict[str, str]]:
    """The slurm executor's view of the cells it submitted (``SlurmExecutor.status``): queued or running
    in Slurm (``live``), or gone from the queue without a result (``ended``, with the log tail)."""
    infos = {p: read_job(p) for p in dirs}
    ids = sorted({i["job_id"] for i in infos.values() if i})
    states: dict[str, tuple[str, str]] = {}
    if ids and shutil.which("squeue"):
        states = queue_states(ids)
    view: dict[Path, dict[str, str]] = {}
    for p, info in infos.items():
        if not info:
            continue
        jid = info["job_id"]
        if jid in states:
            st, reason = states[jid]
            live = st in ("RUNNING", "COMPLETING")
            view[p] = {
                "job": jid,
                "live": "running" if live else "queued",
                "detail": st if live else f"{st} ({reason})",
            }
        else:
            view[p] = {"job": jid, "ended": f"job {jid} left the queue without a result; log tail:\n{log_tail(info)}"}
    return view
