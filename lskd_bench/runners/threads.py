"""How many intra-op threads a training process uses when ``threads`` is not set (``thread_policy``).

Intra-op threads pay off only when each operation has enough work to share. The digits task's CNNs take well
under a million multiply-adds a sample: their threads spend the step waiting for each other, and on a busy
machine (a login node, a laptop, a shared GPU node) for a core, so a grid there slows far more than its share of
the CPU (issue 36: 8.1x with three CPU-bound processes beside it at the default 2 threads, against 2.2x with one).
Such models train with one thread; every other model uses the CPUs the process may use. The choice and its
reason are recorded in result.json (``env.threads``, ``env.threads_policy``).

The other CPUs are not left idle: on a machine with several, a grid of such models with enough training to pay for
starting processes trains its units side by side as worker processes of one thread each (``cpu_jobs``; the
``auto`` executor then picks ``subprocess``). One thread a unit gives the same floating-point results as the one
thread of a local run, and processes that do not wait for each other slow down only by their share on a busy machine.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import torch
from torch import nn

from ..tasks import get_task
from .cells import plan_cells
from .devices import cpu_count
from .probe import STAND_IN, probe_device

SMALL_WORK = 5_000_000  # multiply-adds a sample of the larger model below which one thread trains it
# multiply-adds of a grid's training from which its units train side by side as processes (``cpu_jobs``): a worker
# process takes ~2 s to start (torch's import); the default digits grid's seed 0 is ~2e11 (~30 s on one core), a
# 1-epoch grid ~6e9
PARALLEL_WORK = 100_000_000_000


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask: taskset, cgroup cpusets, Slurm), at most
    ``OMP_NUM_THREADS`` when the environment sets it."""
    n = max(1, cpu_count())
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return min(n, int(omp)) if omp.isdigit() and int(omp) > 0 else n


def multiply_adds(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of the convolutions and linear layers of one sample of ``shape`` through ``model``, counted on
    the model's device (a large model built on the meta device: shapes only, nothing is computed)."""
    total = 0

    def count(m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            return
        per_output = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * math.prod(m.kernel_size)
        total += out.numel() // out.shape[0] * per_output

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return total


_WORK: dict[str, int | None] = {}  # memo of work_per_sample: a function of (task, archs, input shape) alone


def work_per_sample(cfg: dict[str, Any]) -> int | None:
    """Multiply-adds a sample of the larger of the task's teacher and student, or None where there is no estimate
    (translation, a model the meta device cannot run)."""
    if not cfg.get("task"):
        return None
    task = get_task(cfg["task"])
    shape = task.probe_shape(cfg)
    if shape is None:
        return None
    archs = [cfg["teacher"]["arch"], cfg["student"]["arch"]]
    key = json.dumps([task.name, archs, list(shape)])
    if key not in _WORK:
        _WORK[key] = _estimate(task, cfg, tuple(shape))
    return _WORK[key]


def _estimate(task: Any, cfg: dict[str, Any], shape: tuple[int, ...]) -> int | None:
    out = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for role in ("teacher", "student"):
                device = probe_device(shape)  # small inputs: the CPU, faster than the meta device's first use
                with torch.device(device), torch.random.fork_rng(devices=[]):
                    model = task.build_model(cfg[role]["arch"], STAND_IN, cfg, cfg[role]).eval()
                out = max(out, multiply_adds(model, shape))
    except Exception:  # a model the meta device cannot run: no estimate (every CPU, as before)
        return None
    return out


def thread_policy(cfg: dict[str, Any], device: torch.device, cpus: int | None = None) -> tuple[int, str]:
    """(intra-op threads, why) of a training process on ``device`` with ``cpus`` CPUs for it (default: what it may
    use): the ``threads`` setting; else one thread for models under ``SMALL_WORK`` multiply-adds a sample on the CPU;
    else every CPU."""
    if cfg["threads"]:
        return int(cfg["threads"]), "the threads setting"
    n = usable_cpus() if cpus is None else max(1, cpus)
    work = work_per_sample(cfg) if device.type == "cpu" else None
    if work is not None and work < SMALL_WORK and n > 1:
        return 1, (
            f"auto: 1 thread, the models take {work / 1e6:.2g} M multiply-adds a sample (under {SMALL_WORK / 1e6:g} M, "
            "threads wait for each other, and on a busy machine for a core)"
        )
    return n, f"auto: the {n} CPU{'s' if n > 1 else ''} this process may use"


def grid_work(cfg: dict[str, Any]) -> float | None:
    """Multiply-adds of training every cell of ``cfg``'s grid: 3 (forward and backward) x the larger model's
    multiply-adds a sample x the task's training samples x the cell's epochs, summed; None where the task does not
    know its sample count without reading its data (``Task.train_samples``) or there is no per-sample estimate."""
    work = work_per_sample(cfg)
    samples = get_task(cfg["task"]).train_samples(cfg) if cfg.get("task") else None
    if work is None or samples is None:
        return None
    epochs = sum(cfg["teacher" if c.role == "teacher" else "student"]["epochs"] for c in plan_cells(cfg))
    return float(3 * work * samples * epochs)


def cpu_jobs(cfg: dict[str, Any]) -> tuple[int, str]:
    """(units trained at once on the CPU, why): the ``jobs`` setting; else, where the models train with one thread
    (``thread_policy``), neither ``threads`` nor ``OMP_NUM_THREADS`` asks for more, this process may use several CPUs
    and the grid has at least ``PARALLEL_WORK`` multiply-adds of training (``grid_work``), one unit per CPU (each a
    worker process of one thread); else 1 (one unit at a time, its threads on the CPUs)."""
    if cfg["jobs"]:
        return int(cfg["jobs"]), "the jobs setting"
    n = usable_cpus()
    if cfg["threads"] or n < 2:
        return 1, "one unit at a time"
    work = work_per_sample(cfg)
    if work is None or work >= SMALL_WORK:
        return 1, "one unit at a time, its threads on the CPUs"
    total = grid_work(cfg)
    if total is None or total < PARALLEL_WORK:
        return 1, "one unit at a time (too little training for worker processes to pay for their start)"
    return n, (
        f"auto: the models take {work / 1e6:.2g} M multiply-adds a sample, one thread each, and the grid "
        f"{total:.2g} of training: one unit per CPU"
    )
