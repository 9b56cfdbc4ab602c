"""How many intra-op threads a training process uses when ``threads`` is not set (``thread_policy``).

Intra-op threads pay off only when each operation has enough work to share. The digits task's CNNs take well
under a million multiply-adds a sample: their threads spend the step waiting for each other, and on a busy
machine (a login node, a laptop, a shared GPU node) for a core, so a grid there slows far more than its share of
the CPU (issue 36: 8.1x with three CPU-bound processes beside it at the default 2 threads, against 2.2x with one).
Such models train with one thread; every other model uses the CPUs the process may use. The choice and its
reason are recorded in result.json (``env.threads``, ``env.threads_policy``).
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
from .devices import cpu_count
from .probe import STAND_IN, probe_device

SMALL_WORK = 5_000_000  # multiply-adds a sample of the larger model below which one thread trains it


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
