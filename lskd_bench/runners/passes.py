"""The shared work of a fused group's data pass: the teacher's one forward per batch (``TeacherPass``) and the
epoch's batches, the next epoch's opened ahead (``BatchReader``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..methods import Method, method_teacher_mode
from ..outputs import Outputs, Tap
from ..tasks import Task, TaskData
from ..tasks.base import BatchRequest, autocast, close_batches
from .cells import Cell
from .distributed import sync_batchnorm
from .distributed import world as dist_info
from .member import Member
from .probe import TeacherView, teacher_mode, teacher_view


class TeacherPass:
    """The group's teacher as its members need it: one mode for all (eval, or BatchNorm on the batch's statistics
    for the methods whose ``teacher_mode`` is train: ``grid.fuse_units`` keeps the two apart), the view feature
    methods size their parts from (``view``, None when no member reads more than logits), and per batch the union
    of the outputs the stepping members read (``outputs``)."""

    def __init__(
        self,
        task: Task,
        teacher: nn.Module | None,
        cells: Sequence[Cell],
        methods: Sequence[Method],
        cfg: dict[str, Any],
        data: TaskData,
        device: torch.device,
    ):
        self.task, self.model, self.cfg, self.device = task, teacher, cfg, device
        needs = [m.needs for c, m in zip(cells, methods) if c.role == "student"]
        if any(n.teacher for n in needs) and teacher is None:
            raise ValueError(f"{cells[0].name}: method {cells[0].method!r} needs a teacher")
        modes = {method_teacher_mode(c.method, cfg) for c in cells if c.role == "student"} - {None}
        if len(modes) > 1:  # one teacher forward per batch
            raise ValueError("a fused group runs its teacher in one mode: " + ", ".join(c.name for c in cells))
        self.mode = modes.pop() if modes else None
        # the view of the batch the teacher's members train on (Method.train_view): one for all, like the mode
        readers = [m for c, m in zip(cells, methods) if c.role == "student" and m.needs.teacher]
        if len({m.batch_view for m in readers}) > 1:
            raise ValueError(
                "a fused group's members train on one view of the batch: " + ", ".join(c.name for c in cells)
            )
        self.viewer: Method | None = readers[0] if readers else None
        if self.mode == "train" and dist_info()[1] > 1 and cfg["sync_batchnorm"]:
            sync_batchnorm(teacher, "the teacher")  # its batch statistics: the global batch's (runners.distributed)
        self.view: TeacherView | None = None
        if any(n.features for n in needs):
            self.view = teacher_view(teacher, data, device, needs)

    def for_members(self, batch: Any, methods: Sequence[Method]) -> Outputs | None:
        """The union of the teacher outputs ``methods`` read, on ``batch`` as they train on it (``train_view``;
        None: they read none)."""
        wanted = list(dict.fromkeys(k for m in methods for k in m.needs.teacher))
        if not wanted:
            return None
        return self.outputs(self.viewer.train_view(batch) if self.viewer is not None else batch, wanted)

    def outputs(self, batch: Any, names: list[str]) -> Outputs:
        """The teacher's outputs ``names`` on ``batch``: the logits alone (inference mode, copied out of it), or,
        when a member reads features, the named outputs captured under ``no_grad`` (float32)."""
        mode = teacher_mode(self.model, self.mode)  # BatchNorm on the batch's statistics for "train"
        if names == ["logits"] or self.view is None:
            with mode:
                return Outputs(logits=teacher_logits(self.task, self.model, batch, self.device, self.cfg))
        with (
            torch.no_grad(),
            autocast(self.device, self.cfg),
            mode,
            Tap(self.model, self.view.layout, names) as tap,
        ):
            logits, _ = self.task.forward(self.model, batch)
        out = Outputs({k: v.float() for k, v in tap.out.items()})
        if "logits" in names:
            out["logits"] = logits.float()
        return out


def teacher_logits(
    task: Task, teacher: nn.Module, batch: Any, device: torch.device, cfg: dict[str, Any]
) -> torch.Tensor:
    with torch.inference_mode(), autocast(device, cfg):
        t_logits, _ = task.forward(teacher, batch)
    t_logits = t_logits.float().clone()  # leave inference mode for autograd
    if device.type != "cuda" and not torch.isfinite(t_logits).all():  # on CUDA: the students' losses tell
        raise FloatingPointError("the teacher gives non-finite logits")
    return t_logits


class BatchReader:
    """The training batches of a group's epochs (its seed, recipe, shard of the processes, skipped samples): an
    epoch's from a given batch on, and the next epoch's opened ahead (its loading starts before this one ends)."""

    def __init__(self, task: Task, data: TaskData, hp: dict[str, Any], cfg: dict[str, Any], seed: int, device: Any):
        self.task, self.data, self.hp, self.cfg, self.seed, self.device = task, data, hp, cfg, seed, device
        self.skipped: list[int] = []
        self.ahead: tuple[tuple[int, int], tuple[int, int, Any, Any]] | None = None  # ((epoch, first), open())

    def open(self, epoch: int, first: int) -> tuple[int, int, Any, Any]:
        """(number of batches, their ``lead``, iterator, their sample indices or None) of ``epoch`` from batch
        ``first`` on: the one opened ahead if it is for the same (epoch, first), else a new one (a stale one is
        closed)."""
        if self.ahead is not None:
            key, opened = self.ahead
            self.ahead = None
            if key == (epoch, first):
                return opened
            close_batches(opened[2])
        rank, world = dist_info()
        req = BatchRequest(self.seed, epoch, (rank, world), first, self.device.type == "cuda", self.skipped)
        batches = self.task.open_batches(self.data, self.hp, self.cfg, req)
        return len(batches), batches.lead, iter(batches), batches.plan

    def open_next(self, epoch: int, members: Sequence[Member]) -> None:
        """Open the batches of ``epoch + 1`` now (its loading starts), from the position its members will start
        at: 0 for those finishing ``epoch``, their own step for members waiting there. Nothing if none will train."""
        nxt = [m for m in members if not m.finished and m.pos.epoch in (epoch, epoch + 1) and m.epochs > epoch + 1]
        if nxt:
            self.open_ahead(epoch + 1, min(0 if m.pos.epoch == epoch else m.pos.step for m in nxt))

    def open_ahead(self, epoch: int, first: int) -> None:
        """Open the batches of ``epoch`` from batch ``first`` now, unless an epoch is already open ahead."""
        if self.ahead is None:
            self.ahead = ((epoch, first), self.open(epoch, first))

    def close_ahead(self) -> None:
        if self.ahead is not None:
            close_batches(self.ahead[1][2])
            self.ahead = None
