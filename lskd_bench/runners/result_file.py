"""A finished cell's files: the last weights (``model.pt``), the selected epoch's (``model_selected.pt``, kept
only when it is not the last) and ``result.json`` (what every report reads)."""

from __future__ import annotations

import contextlib
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__, store
from ..envinfo import cpu_model, git_commit
from ..methods import Method
from ..tasks import Task
from .cells import Cell, teacher_weights
from .devices import device_record
from .evaluation import save_weights
from .selection import Selector
from .threads import thread_policy


@dataclass
class CellRecord:
    """What result.json says of a finished member besides its last metrics: the cell and how it was trained
    (``runners.member.Member.describe``)."""

    task: Task
    cell: Cell
    cfg: dict[str, Any]
    hp: dict[str, Any]  # the role's recipe
    method: Method
    device: torch.device
    world: int  # processes
    run_dir: Path
    epochs: int  # epochs trained (0: a given teacher)
    init_epochs: int  # of them, an initialisation stage's
    updates: int
    history: list[dict[str, Any]]
    num_params: int
    skipped: list[int]
    resumes: list[dict[str, Any]]
    selector: Selector
    eval_seconds: float
    train_seconds: float
    epoch_times: list[dict[str, Any]]


def environment(device: torch.device, processes: int = 1) -> dict[str, Any]:
    """Where a result was computed: floating-point results are bit-identical on one machine and build, and
    may differ slightly across CPUs and library builds."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "lskd_bench": __version__,
        "commit": git_commit(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": name,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "processes": processes,
        "python": platform.python_version(),
    }


def save_final_weights(cell_dir: Path, model: nn.Module, selected: dict[str, Any] | None, epoch: int) -> str:
    """Write ``model.pt``; the file of the selected epoch's weights: ``model_selected.pt``, or ``model.pt`` when
    the last epoch is the selected one (or none was), the stale ``model_selected.pt`` then removed."""
    save_weights(cell_dir / store.MODEL, model)
    if selected is not None and selected["epoch"] != epoch and (cell_dir / store.SELECTED).is_file():
        return store.SELECTED
    with contextlib.suppress(FileNotFoundError):
        (cell_dir / store.SELECTED).unlink()
    return store.MODEL


def save_deployed(cell_dir: Path, model: nn.Module, deployed: nn.Module, selected_file: str) -> dict[str, str]:
    """Where the cell is evaluated as another model than its student (``Component.deployed``: SimKD's student,
    projector and reused teacher classifier): that model's whole state (``deployed.pt``, keys ``student.*`` and
    the parts it adds) beside the student's own ``model.pt``, which stays loadable as the student's architecture.
    result.json's ``weights.deployed``: ``{"last", "selected"}``; nothing when the student is what is deployed."""
    stale = cell_dir / store.DEPLOYED_SELECTED
    if deployed is model:
        return {}
    save_weights(cell_dir / store.DEPLOYED, deployed)
    if selected_file == store.SELECTED and stale.is_file():
        return {"deployed": {"last": store.DEPLOYED, "selected": store.DEPLOYED_SELECTED}}
    with contextlib.suppress(FileNotFoundError):
        stale.unlink()
    return {"deployed": {"last": store.DEPLOYED, "selected": store.DEPLOYED}}


def result_record(m: CellRecord, last: dict[str, float], selected_file: str, files: dict[str, Any], t0: float) -> dict:
    """result.json of the finished member ``m``: ``last`` the last evaluation's metrics,
    ``selected_file`` the selected epoch's weights, ``files`` the task's artifacts, ``t0`` when exporting began.
    ``best`` is the selected epoch (the key every result has had; ``store.selected_epoch`` reads it)."""
    task, cfg, world = m.task, m.cfg, m.world
    return {
        "cell": m.cell.describe(),
        "metrics": last,
        "best": m.selector.selected,
        "primary_metric": task.primary_metric,
        "metric_names": [s.name for s in task.reported_metrics(cfg)],
        "metric_specs": [s.as_dict() for s in task.reported_metrics(cfg)],
        "metric_info": task.metric_info(cfg),
        "selection": m.selector.record(),
        "weights": {"last": store.MODEL, "selected": selected_file},
        "teacher_weights": _teacher_epoch(m),
        "files": files,
        "epochs": m.epochs,
        **({"init_epochs": m.init_epochs} if m.init_epochs else {}),
        "updates": m.updates,
        "config": _config(m),
        "run_config": cfg,  # the whole resolved config: what 'lskd-bench translate' rebuilds the cell from
        "timings": _timings(m, t0),
        "history": m.history,
        "num_params": m.num_params,
        "skipped_samples": m.skipped,
        "resumes": m.resumes,
        "env": {
            **environment(m.device, processes=world),
            "threads_policy": thread_policy(m.cfg, m.device)[1],  # why env.threads is what it is
            **device_record(m.device, world),
        },
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _teacher_epoch(m: CellRecord) -> Any:
    """Which teacher epoch a student distilled from (None for a teacher or a baseline)."""
    if m.cell.teacher is None:
        return None
    return teacher_weights(m.cell.teacher, m.run_dir, m.cfg["teacher_weights"])[1]


def _config(m: CellRecord) -> dict[str, Any]:
    """What the cell was trained with: ``train`` is the role's recipe (``hp``: the teacher's or the student's)."""
    method = m.method
    return {
        "task": m.task.name,
        "train": m.hp,
        "method": method.p if method.params.fields and method.needs_teacher else None,
        "data": m.cfg["data"],
    }


def _timings(m: CellRecord, t0: float) -> dict[str, Any]:
    """Where the cell's time went. ``wall_s``: the wall time of the passes it trained in (shared with the cells
    fused with it: ``epochs[i].shared_by``) plus its own evaluations; of the passes, ``data_s`` loading batches and
    ``teacher_s`` in the teacher (shared too); ``train_s`` its own steps; ``eval_s`` its evaluations; ``export_s``
    writing its weights and files; ``epochs`` per epoch. On CUDA the split is host time (``synced`` false: the
    steps do not wait for the device); ``wall_s`` is the device's too (each epoch ends waiting for it)."""
    times = m.epoch_times
    return {
        "wall_s": sum(t["wall_s"] for t in times) + m.eval_seconds,
        "data_s": sum(t["data_s"] for t in times),
        "teacher_s": sum(t["teacher_s"] for t in times),
        "train_s": m.train_seconds,
        "eval_s": m.eval_seconds,
        "export_s": time.perf_counter() - t0,
        "synced": m.device.type != "cuda",
        "epochs": times,
    }
