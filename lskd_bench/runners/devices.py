"""Which GPUs the local process executors (subprocess, torchrun) may use, and who holds which one.

The GPUs are ``gpus`` of the config (``--gpus 0,1,2,3``) when given, else ``CUDA_VISIBLE_DEVICES`` when
set, else every GPU torch sees (none on a CPU-only machine or with ``device: cpu``). Each GPU takes
``per_gpu`` units at a time; a unit of ``nproc_per_node = k`` processes takes one slot on each of k
distinct GPUs. The worker of a unit sees only its GPUs (``CUDA_VISIBLE_DEVICES``), so ``cuda:0`` (DDP rank
r: ``cuda:r``) is the GPU it was given.

Explicit ``gpus`` are not checked against the ids the machine has (they may be UUIDs, or outside this process's
``CUDA_VISIBLE_DEVICES``), but a machine where torch sees no GPU at all refuses them (``require_cuda``), as it
refuses ``device: cuda``: training would silently run on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UsageError
from .lock import ENV_GPUS  # the GPU ids (as the parent names them) a worker was given; recorded in its locks


def parse_gpus(text: str) -> list[str]:
    """``"0,1, 2"`` -> ``["0", "1", "2"]``; UsageError for an empty item or a repeated id."""
    ids = [s.strip() for s in str(text).split(",")]
    if not ids or any(not s for s in ids):
        raise UsageError(f"gpus must be comma-separated GPU ids such as 0,1,2,3, got {text!r}")
    if len(set(ids)) != len(ids):
        raise UsageError(f"gpus names a GPU twice: {text!r}")
    return ids


def cuda_available() -> bool:
    """Can torch use a CUDA GPU in this process? (one place, so tests can stand in for a GPU machine)"""
    return torch.cuda.is_available()


def require_cuda(cfg: Mapping[str, Any], where: str = "") -> None:
    """UsageError when the config asks for GPUs (``device: cuda``, explicit ``gpus``) on a machine without one."""
    if cuda_available():
        return
    if cfg.get("device") == "cuda":
        raise UsageError(f"device cuda: torch sees no CUDA GPU on this machine{where}; use --device cpu or auto")
    if cfg.get("gpus") is not None:
        raise UsageError(
            f"gpus {cfg['gpus']}: torch sees no CUDA GPU on this machine{where}; leave out --gpus "
            "(and --per-gpu) to train on the CPU"
        )


def discover(cfg: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this run may use (see the module docstring); [] means CPU only."""
    env = os.environ if environ is None else environ
    if cfg["gpus"] is not None:
        return parse_gpus(str(cfg["gpus"]))
    if cfg["device"] == "cpu":
        return []
    if not torch.cuda.is_available():
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [s.strip() for s in visible.split(",") if s.strip()]
        # like CUDA itself: the list stops at the first invalid id ("-1" hides every GPU)
        out = []
        for s in ids:
            if s.startswith("-"):
                break
            out.append(s)
        return out[: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_share(procs: int) -> int:
    """CPU cores each of ``procs`` processes running at once gets (at least 1)."""
    return max(1, cpu_count() // max(1, procs))


def loader_workers(requested: int, procs: int) -> int:
    """Data-loader workers per process: the recipe's ``num_workers`` capped at the process's CPU share, so
    ``procs`` processes at once do not start more loader workers than the machine has cores (every executor
    that trains on this machine applies it; ``num_workers`` is not a hash key)."""
    return min(int(requested), cpu_share(procs))


class DevicePool:
    """GPU slots: ``per_gpu`` per GPU. ``acquire(k)`` gives k distinct GPUs (the least loaded first, then in
    the listed order) or None when fewer than k have a free slot; ``release`` gives them back."""

    def __init__(self, gpus: list[str], per_gpu: int = 1):
        self.gpus = list(gpus)
        self.per_gpu = int(per_gpu)
        self.load = dict.fromkeys(self.gpus, 0)

    def __bool__(self) -> bool:
        return bool(self.gpus)

    @property
    def slots(self) -> int:
        return len(self.gpus) * self.per_gpu

    def free(self) -> int:
        return sum(self.per_gpu - n for n in self.load.values())

    def busy(self) -> bool:
        return any(self.load.values())

    def acquire(self, k: int = 1) -> list[str] | None:
        if k > len(self.gpus):
            raise ValueError(f"a unit of {k} processes needs {k} GPUs; only {len(self.gpus)} are available")
        open_ = [g for g in self.gpus if self.load[g] < self.per_gpu]
        if len(open_) < k:
            return None
        chosen = sorted(open_, key=lambda g: (self.load[g], self.gpus.index(g)))[:k]
        chosen.sort(key=self.gpus.index)
        for g in chosen:
            self.load[g] += 1
        return chosen

    def release(self, ids: list[str]) -> None:
        for g in ids:
            if self.load.get(g, 0) <= 0:
                raise ValueError(f"GPU {g} released but not held")
            self.load[g] -= 1


def worker_env(base: Mapping[str, str], gpus: list[str] | None, threads: int) -> dict[str, str]:
    """The environment of one unit's worker: its GPUs only, and its share of the CPU threads (an
    ``OMP_NUM_THREADS`` the user set wins)."""
    env = dict(base)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env[ENV_GPUS] = ",".join(gpus)
    env.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    return env


def device_record(device: Any, world: int = 1) -> dict[str, Any]:
    """What a result.json records of the hardware a cell trained on: the GPU ids as the machine names them
    (``CUDA_VISIBLE_DEVICES`` mapped back; one per DDP process), their names, and the raw variable."""
    visible_raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    rec: dict[str, Any] = {"gpus": [], "gpu_names": [], "cuda_visible_devices": visible_raw}
    if getattr(device, "type", str(device)) != "cuda":
        return rec
    visible = [s.strip() for s in visible_raw.split(",")] if visible_raw else None
    local = list(range(world)) if world > 1 else [device.index or 0]
    rec["gpus"] = [visible[i] if visible and i < len(visible) else str(i) for i in local]
    rec["gpu_names"] = [torch.cuda.get_device_name(i) for i in local]
    return rec
