"""The shared training loop: one cell, or a fused group of cells that share every batch.

A group is trained in one data pass: each step loads one batch, runs the teacher once (eval mode, or its
BatchNorm on the batch's statistics for the methods whose ``teacher_mode`` is train, never both in one group;
inference mode, bf16 on CUDA) when a member needs its logits, then every member does its own forward,
backward and optimizer step. A cell trained alone is a group of one, through the same code, so fused and
unfused training give the same result bit for bit on the CPU:

- the batches of an epoch depend only on (seed, epoch), and each sample's augmentation is seeded by
  (seed, epoch, index) (``tasks.base.GuardedDataset``);
- each member keeps its own random-number state (dropout...), swapped in around its step;
- each member checkpoints its own state (``state.pt``): model, optimizer, method parameters, RNG,
  position (epoch, step within the epoch, updates), history, best metrics.

A killed group resumes every member from its last checkpoint; members at different positions join the
pass when it reaches them. ``checkpoint_every`` adds checkpoints within an epoch (translation).
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import store
from ..errors import DataError, Interrupted
from ..methods import LossContext, Method, build_method, method_teacher_mode, total_loss
from ..models import init_path, load_init_checkpoint
from ..outputs import Outputs, Tap
from ..tasks import Task, TaskData, get_task
from ..tasks.base import BatchRequest, autocast, close_batches
from .cells import Cell
from .checkpoint import StateFiles
from .distributed import average_grads, gather_step, sync_batchnorm
from .distributed import world as dist_info
from .epoch_loss import CellFailed, LossSums, NonFiniteWatch, hits
from .evaluation import Evaluator
from .features import export_features, penultimate  # noqa: F401  (penultimate: re-exported)
from .loggers import open_loggers
from .optim import build_optimizer, learning_rate, lr_factor  # noqa: F401  (re-exported)
from .probe import TeacherView, setup_method, teacher_mode, teacher_view
from .progress import line_interval, progress_bar
from .result_file import environment, result_record, save_final_weights  # noqa: F401  (environment: re-exported)
from .rng import RngState
from .selection import Selector
from .threads import thread_policy


def auto_cpu_reason(cfg: dict[str, Any]) -> str | None:
    """Why ``device: auto`` keeps this run on the CPU although CUDA is available (the task's models are
    tiny), or None."""
    if cfg["device"] != "auto" or not torch.cuda.is_available() or not cfg.get("task"):  # no task: translate's device
        return None
    return get_task(cfg["task"]).cpu_reason(cfg)


def resolve_device(cfg: dict[str, Any]) -> torch.device:
    want = cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() and auto_cpu_reason(cfg) is None else "cpu"
    if want == "cuda" and dist_info()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(want)


def thread_count(cfg: dict[str, Any]) -> int:
    """Intra-op threads of a local run (one training process): ``threads``, else ``threads.thread_policy`` (one
    for the tiny models, else the CPUs this process may use: its affinity mask, at most ``OMP_NUM_THREADS``). The
    subprocess/torchrun executors divide the CPUs among their workers themselves (``layout``)."""
    device = resolve_device(cfg) if "device" in cfg else torch.device("cpu")
    return thread_policy(cfg, device)[0]


@contextlib.contextmanager
def threads_scope(cfg: dict[str, Any]):
    """torch's intra-op thread count set from the config around a local run, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(thread_count(cfg))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_model(
    task: Task, arch: str, data: TaskData, cfg: dict[str, Any], path: Path, device: torch.device, role: str = "teacher"
) -> nn.Module:
    model = task.build_model(arch, data, cfg, cfg[role])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


class InitStage:
    """A method's initialisation stage (RepDistiller's AB, FT, FSP: ``helper/pretrain.py`` ``init``): its first
    ``epochs`` epochs train ``modules`` alone with ``init_loss`` and their own SGD at a constant lr, the rest of the
    student in eval mode (``model_s.eval(); init_modules.train()``). ``updates``: where the main schedule starts.
    Without one (every logit method), ``epochs`` is 0 and nothing changes."""

    def __init__(
        self,
        epochs: int = 0,
        modules: Sequence[nn.Module] = (),
        lr: float = 0.0,
        opt: torch.optim.Optimizer | None = None,
    ):
        self.epochs, self.modules, self.lr, self.opt = epochs, list(modules), lr, opt
        self.params = [p for m in self.modules for p in m.parameters() if p.requires_grad]
        self.updates = 0

    @classmethod
    def of(cls, method: Method, model: nn.Module, hp: dict[str, Any]) -> InitStage:
        epochs = int(method.init_stage()) if hasattr(method, "init_stage") else 0
        if not epochs:
            return cls()
        modules = method.init_modules(model)
        lr = float(method.init_lr(hp))
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        return cls(epochs, modules, lr, opt)

    def train_mode(self, model: nn.Module) -> None:
        model.eval()
        for m in self.modules:
            m.train()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict() if self.opt is not None else None, "updates": self.updates}

    def load_state_dict(self, st: dict[str, Any] | None) -> None:
        if st and self.opt is not None:
            self.opt.load_state_dict(st["optimizer"])
            self.updates = st["updates"]


@dataclass
class Outcome:
    cell: Cell
    result: dict[str, Any] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # repairs made while starting the cell


def role_hp(cfg: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The recipe ``hp`` a cell trains with: the teacher's (``cfg["teacher"]``) or the students' (``cfg["student"]``);
    result.json keeps it as ``config.train``."""
    return cfg["teacher"] if cell.role == "teacher" else cfg["student"]


@dataclass
class Member:
    """One cell being trained: its model, optimizer, method and position (epoch, step, updates, history), with
    collaborators that keep their own state: ``rng`` (its random stream), ``losses`` (the epoch's loss sums),
    ``watch`` (the deferred non-finite check), ``selector`` and ``evaluator`` (the selected epoch, evaluations),
    ``states`` (its checkpoint files). ``state_dict()`` is what a checkpoint holds; ``finish`` writes the result."""

    task: Task
    cell: Cell
    cfg: dict[str, Any]
    data: TaskData
    dir: Path
    device: torch.device
    teacher: TeacherView | None = None  # feature methods: the group's teacher, for setup()
    model: nn.Module = field(init=False)
    method: Method = field(init=False)
    epoch: int = 0  # epochs finished
    step: int = 0  # batches done within the current epoch
    update: int = 0  # optimizer updates in total
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    skipped: list = field(default_factory=list)
    resumes: list = field(default_factory=list)  # where each resumed run picked up (epoch, step, time)
    finished: bool = False
    notes: list = field(default_factory=list)  # repairs (a checkpoint that would not load, moved aside)
    epoch_times: list = field(default_factory=list)  # per epoch: the pass's wall, data, teacher, own steps (timings)

    def __post_init__(self) -> None:
        self.hp = role_hp(self.cfg, self.cell)
        self._build()
        self.losses, self.watch = LossSums(), NonFiniteWatch()
        self.selector = Selector.of(self.task.selection(self.cfg, self.hp))
        self.evaluator = Evaluator(self.task, self.data, self.cfg, self.hp, self.dir, self.device, self.selector)
        self.states = StateFiles(self.dir, self.cell.name, self.notes)
        state = self.states.load()
        if state is None and (self.given or self.hp["init_checkpoint"]):
            init = self.given or init_path(self.hp["init_checkpoint"], self.cell.alpha)
            load_init_checkpoint(self.model, init, strict=bool(self.given))
        self.rng = RngState(self.device)  # the stream after the model's initial draws
        if state is not None:
            self.load_state_dict(state)
        self.rank, self.world = dist_info()
        self.log = open_loggers(self.dir, self.cell, self.cfg, self.update, self.rank, self.selector.spec())
        self.step_model = self._step_model()
        self.ctx = LossContext(alpha=self.alpha, T=self.cell.T, epochs=max(self.epochs - self.init.epochs, 1))

    def _build(self) -> None:
        """Model (from the cell's seed), method, optimizer and the method's initialisation stage."""
        cell, device = self.cell, self.device
        self.method = build_method(cell.method, self.cfg)
        self.alpha = cell.alpha if cell.role == "teacher" else 0.0
        torch.manual_seed(cell.seed)
        self.model = self.task.build_model(cell.arch, self.data, self.cfg, self.hp).to(device)
        if dist_info()[1] > 1 and self.cfg["sync_batchnorm"]:  # the global batch's statistics (runners.distributed)
            sync_batchnorm(self.model, cell.name)
        if self.cfg["channels_last"] and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tap: Tap | None = None  # captures the student's named outputs (feature methods)
        if self.method.needs.features:
            self._setup_method()
        self.method_params: list[nn.Parameter] = []
        if isinstance(self.method, nn.Module):
            self.method.to(device)
            self.method_params = list(self.method.parameters())
        self.opt = build_optimizer([*self.model.parameters(), *self.method_params], self.hp)
        # a trained teacher supplied by the user (--teacher-checkpoint) is evaluated, not trained
        self.given = self.hp["checkpoint"] if cell.role == "teacher" else None
        self.init = InitStage.of(self.method, self.model, self.hp)  # a method's initialisation stage (AB, FT, FSP)
        self.epochs = 0 if self.given else int(self.hp["epochs"]) + self.init.epochs
        self.max_updates = self.hp["max_updates"]

    def _step_model(self) -> nn.Module:
        """What a step runs: the model, in DistributedDataParallel with several processes, compiled on request."""
        step_model: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            step_model = DistributedDataParallel(self.model, device_ids=ids)
        if self.cfg["compile"]:
            # the eager random stream (dropout masks): a compiled cell draws what the same cell draws uncompiled,
            # so compile stays out of the cell's identity and resume/fusion stay exact
            torch._inductor.config.fallback_random = True
            step_model = torch.compile(step_model)
        return step_model

    def _setup_method(self) -> None:
        """The student's tap, and the method's trainable parts sized from a probe forward of both models (their
        initial values drawn from the cell's random stream, as the model's were)."""
        if self.teacher is None:
            raise ValueError(f"{self.cell.name}: method {self.cell.method!r} needs a teacher")
        labels = self.data.labels("train") if self.method.needs.indices else None
        self.tap = setup_method(
            self.method, self.model, self.teacher, len(self.data.train), self.data.num_classes, labels
        )

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What ``state.pt`` holds: model, optimizer, method parameters, random state, position, history, the
        selected epoch, times, the epoch's loss sums (its keys unchanged since the first version)."""
        method = self.method.state_dict() if isinstance(self.method, nn.Module) else None
        return {
            "epoch": self.epoch, "step": self.step, "update": self.update,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "method": method,
            **self.rng.state_dict(), "history": self.history, **self.selector.state_dict(),
            "train_seconds": self.train_seconds, **self.evaluator.state_dict(), **self.losses.state_dict(),
            "skipped": self.skipped, "resumes": self.resumes, "epoch_times": self.epoch_times,
            **({"init": self.init.state_dict()} if self.init.epochs else {}),
        }  # fmt: skip

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Resume from a checkpoint (``state_dict()``); the resume is recorded in ``resumes``."""
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        if st.get("method") and isinstance(self.method, nn.Module):
            self.method.load_state_dict(st["method"])
        self.init.load_state_dict(st.get("init"))
        self.rng.load_state_dict(st)
        self.epoch, self.step, self.update = st["epoch"], st.get("step", 0), st.get("update", 0)
        self.history, self.train_seconds = st["history"], st["train_seconds"]
        self.evaluator.load_state_dict(st)
        self.selector.load_state_dict(st)
        self.losses.load_state_dict(st)
        self.skipped = st.get("skipped", [])
        self.epoch_times = st.get("epoch_times", [])
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.resumes = [*st.get("resumes", []), {"epoch": self.epoch + 1, "step": self.step, "at": at}]  # 1-based

    def checkpoint(self) -> None:
        self.sync()  # never write the state of a step that went non-finite
        if self.rank == 0:
            self.states.save(self.state_dict())

    def sync(self) -> None:
        """Raise ``CellFailed`` if a step since the start had a non-finite loss, and bring the epoch's loss sums to
        the host (on CUDA both wait until here: a checkpoint, the epoch's end)."""
        self.watch.check(self.epoch)
        self.losses.sync()

    # -- training -----------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.epoch >= self.epochs or (self.max_updates is not None and self.update >= self.max_updates)

    def wants(self, epoch: int, i: int) -> bool:
        """Does this member step on batch ``i`` of ``epoch``?"""
        return not self.finished and not self.done() and self.epoch == epoch and self.step <= i

    def train_step(
        self,
        batch: Any,
        t_out: Outputs | None,
        epoch: int,
        steps_per_epoch: int = 1,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One optimizer step. On the CPU a non-finite loss raises ``CellFailed`` at once; on CUDA the step
        does not wait for the device (no host sync): ``sync()`` raises it at the next checkpoint or epoch end."""
        t0 = time.perf_counter()
        stage, opt, lr, params = self._schedule(epoch, steps_per_epoch)
        self.ctx.epoch = epoch - (0 if stage is not None else self.init.epochs)
        self.ctx.indices = indices
        with self.rng.scope():
            loss, terms, n, correct = self._loss(batch, t_out, stage, indices)
            self.watch.see(loss, epoch, self.update)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.world > 1:  # DDP averaged the model's gradients; the method's parts (the stage's: all) likewise
                average_grads(self.method_params if stage is None else stage.params)
            if self.hp["clip_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(
                    params or [*self.model.parameters(), *self.method_params], self.hp["clip_norm"]
                )
            opt.step()
        self.losses.add(loss, terms, n, correct)  # training top-1 counted on the device (no host sync)
        self.step += 1
        self.update += 1
        self.train_seconds += time.perf_counter() - t0  # on CUDA: host time (the queue keeps it near the device's)
        if self.log is not None:
            self.log.step(self.update, loss.detach(), lr)  # converted to a float (a sync) only when logged
        return loss.detach()

    def _schedule(self, epoch: int, steps_per_epoch: int) -> tuple[InitStage | None, Any, float, list | None]:
        """(the initialisation stage or None, the optimizer, its learning rate, the parameters to clip or None: all)
        of a step in ``epoch``; the main schedule's learning rate is set on the optimizer."""
        if epoch < self.init.epochs:
            return self.init, self.init.opt, self.init.lr, self.init.params
        lr = learning_rate(self.hp, epoch - self.init.epochs, self.update - self.init.updates, steps_per_epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return None, self.opt, lr, None

    def _loss(
        self, batch: Any, t_out: Outputs | None, stage: InitStage | None, indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, Any, int, torch.Tensor]:
        """(the step's loss, the method's terms, the number of samples, how many of them the student's logits got
        right, on the device): the forward in training mode and the method's loss (the initialisation stage's,
        during it)."""
        if stage is not None:
            stage.train_mode(self.model)
        else:
            self.model.train()
        # an initialisation stage trains a part of the student (the head gets no gradient, which DDP would wait
        # for): it runs the model itself, its gradients averaged in train_step
        model = self.step_model if stage is None else self.model
        with autocast(self.device, self.cfg), self.tap or contextlib.nullcontext():
            s_logits, targets = self.task.forward(model, batch)
        if indices is not None and indices.numel() != targets.numel():
            raise CellFailed(
                f"method {self.cell.method} reads each sample's index, but this batch lost samples "
                "(data.on_bad_sample: skip): fix the data (lskd-bench check-data) or drop the skip"
            )
        s_out = Outputs(logits=s_logits.float())
        if self.tap is not None:
            s_out.update({k: v.float() for k, v in self.tap.out.items()})
        if self.world > 1:  # the loss of the global batch, on every rank (runners.distributed)
            s_out, targets, t_out, indices = gather_step(s_out, targets, t_out, indices)
            self.ctx.indices = indices
        compute = self.method.init_loss if stage is not None else self.method.compute
        terms = compute(s_out, targets, t_out, self.ctx)
        return total_loss(terms), terms, int(targets.shape[0]), hits(s_out["logits"], targets)

    def end_epoch(self, epoch: int) -> None:
        """The epoch's history entry, its evaluation when due, and a checkpoint."""
        self.sync()
        in_init = epoch < self.init.epochs
        entry = self._epoch_entry(epoch, in_init)
        self.epoch, self.step = epoch + 1, 0
        self.losses.reset()
        if self.epoch == self.init.epochs and in_init:
            self.init.updates = self.update  # the main schedule counts its updates from here
        main = self.epoch - self.init.epochs
        if self.done() or (main > 0 and main % self.hp["eval_every"] == 0):
            entry["eval"] = self.evaluate()
            if self.evaluator.last_loss is not None:
                entry["eval_loss"] = self.evaluator.last_loss
            if self.selector.last_score is not None:
                entry["selection"] = self.selector.last_score
        self.history.append(entry)
        if self.log is not None:
            self.log.epoch(self.update, entry)
        self.checkpoint()

    def _epoch_entry(self, epoch: int, in_init: bool) -> dict[str, Any]:
        """The history entry of ``epoch``: mean loss (and terms), training top-1 (``train_top1``, percent of the
        rows whose target had the highest logit, in training mode), lr, updates. Under several processes every rank
        summed the losses of the global batch (``runners.distributed``): the same sums everywhere."""
        total, count = self.losses.loss_sum, self.losses.loss_count
        names = sorted(self.losses.term_sums)
        terms = [self.losses.term_sums[k] for k in names]
        top1 = self.losses.top1()
        return {
            "epoch": epoch + 1,
            "loss": total / max(count, 1),
            "lr": self.init.lr if in_init else self.opt.param_groups[0]["lr"],
            "updates": self.update,
            **{f"loss_{k}": v / max(count, 1) for k, v in zip(names, terms)},
            **({} if top1 is None else {"train_top1": top1}),
            **self.method.report(),
            **({"stage": "init"} if in_init else {}),
        }

    def evaluate(self) -> dict[str, float]:
        """Evaluate (rank 0): the metrics; the selected epoch and the task's output files updated."""
        metrics: dict[str, float] = {}
        if self.rank == 0:
            metrics = self.evaluator(self.model, self.epoch, self.rng)
        if self.world > 1:
            torch.distributed.barrier()
        return metrics

    def finish(self) -> dict[str, Any] | None:
        """Final evaluation, weights, features and result.json (rank 0; None on the others); removes the
        checkpoints."""
        result = self._write_result() if self.rank == 0 else None
        self.finished = True
        if self.world > 1:
            torch.distributed.barrier()
        return result

    def _write_result(self) -> dict[str, Any]:
        last = self.history[-1].get("eval") if self.history else None
        if last is None:  # --teacher-checkpoint (no epochs) or max_updates hit mid-epoch
            last = self.evaluate()
        t0 = time.perf_counter()
        selected = save_final_weights(self.dir, self.model, self.selector.selected, self.epoch)
        files = self.task.export_artifacts(self.data, self.cfg, self.dir)
        if self.task.supports_analysis and self.cfg["analysis"]["export"]:  # else analyze computes them when asked
            export_features(self.model, self.data, self.cfg, self.device, self.dir / store.FEATURES)
        result = result_record(self, last, selected, files, t0)
        store.write_json(self.dir / store.RESULT, result)
        if self.log is not None:
            self.log.finish(result)
        self.states.remove()
        return result


def _teacher_logits(
    task: Task, teacher: nn.Module, batch: Any, device: torch.device, cfg: dict[str, Any]
) -> torch.Tensor:
    with torch.inference_mode(), autocast(device, cfg):
        t_logits, _ = task.forward(teacher, batch)
    t_logits = t_logits.float().clone()  # leave inference mode for autograd
    if device.type != "cuda" and not torch.isfinite(t_logits).all():  # on CUDA: the students' losses tell
        raise FloatingPointError("the teacher gives non-finite logits")
    return t_logits


def _tick(profile: dict[str, float], key: str, since: float, device: torch.device, synced: bool) -> float:
    """Add the time since ``since`` to ``profile[key]`` (with ``synced`` waiting for the step's CUDA stream first);
    return the new mark. Only the consumer's stream: a device-wide synchronize would also wait for the batches the
    GPU pipeline decodes ahead on its side stream (``tasks.base.finished_ahead``), serialising the overlap the
    profile is meant to show. Without ``synced`` a CUDA time is the host's (what it took to queue the work)."""
    if synced and device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    now = time.perf_counter()
    profile[key] = profile.get(key, 0.0) + now - since
    return now


def _losses(entry: dict[str, Any]) -> str:
    """``0.512`` or, for a method with named terms, ``0.512(ce 0.201 kd 0.311)``."""
    terms = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in entry.items() if k.startswith("loss_"))
    return f"{entry['loss']:.3f}" + (f"({terms})" if terms else "")


class StepMeter:
    """Progress within an epoch, at most once every ``interval`` seconds: ``step i/n, R steps/s, loss L``
    (long epochs would otherwise look hung). ``clock`` is injectable for tests."""

    def __init__(self, interval: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = interval, clock
        self.total, self.t0, self.first, self.last = 0, 0.0, 0, float("-inf")
        self.fields: dict[str, Any] = {}  # the last line's numbers (JSON progress)

    def start(self, first: int, total: int) -> None:
        self.first, self.total, self.t0 = first, total, self.clock()
        self.last = self.t0

    def update(self, step: int, losses: dict[str, float]) -> str | None:
        """``step``: batches done so far in the epoch. A line when ``interval`` passed since the last one."""
        now = self.clock()
        if now - self.last < self.interval:
            return None
        self.last = now
        rate = (step - self.first) / max(now - self.t0, 1e-9)
        loss = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
        self.fields = {
            "step": step,
            "steps": self.total,
            "steps_per_s": rate,
            "loss": {k: float(v) for k, v in losses.items()},
        }
        return f"step {step}/{self.total}, {rate:.2f} steps/s, loss {loss}"


def _short(cell: Cell) -> str:
    if cell.role == "teacher":
        return f"a{cell.alpha:g}"
    if cell.role == "baseline":
        return "base"
    return f"{cell.method}:a{cell.alpha:g}" + ("" if cell.T is None else f"T{cell.T:g}")


def train_group(
    task: Task,
    cells: Sequence[Cell],
    cfg: dict[str, Any],
    data: TaskData,
    dirs: Sequence[Path],
    *,
    teacher: nn.Module | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    profile: dict[str, float] | None = None,
) -> list[Outcome]:
    """Train ``cells`` (same role recipe and seed, same teacher) in one data pass; write each one's result.

    ``profile``, if given, accumulates wall seconds spent loading batches (``data``), in the teacher forward
    (``teacher``) and in the members' steps (``students``).

    A member whose own step fails (non-finite loss, out of memory) gets ``error.json`` and leaves the group;
    a failure of the shared work (data, teacher) fails every member. A ``DataError`` is re-raised after
    the members' errors are written (bad input stops the grid).
    """
    group = FusedGroup(task, cells, cfg, data, dirs, teacher, on_step, profile)
    return group.run(progress, on_epoch_end)


class FusedGroup:
    """The members of one data pass and their shared work: the epoch loop (``run``), one epoch's batches
    (``epoch``), one batch (``step``: the teacher forward once, then each member's step) and the end of an
    epoch (``end_epoch``: each member's evaluation and checkpoint)."""

    def __init__(
        self,
        task: Task,
        cells: Sequence[Cell],
        cfg: dict[str, Any],
        data: TaskData,
        dirs: Sequence[Path],
        teacher: nn.Module | None,
        on_step: Callable[[int, int], None] | None,
        profile: dict[str, float] | None,
    ):
        self.task, self.cells, self.cfg, self.data, self.teacher = task, cells, cfg, data, teacher
        self.on_step = on_step
        # seconds loading data, in the teacher and in the students' steps (timings in result.json); on CUDA the
        # step waits for the device at each mark only when the caller asked for a profile
        self.clock: dict[str, float] = profile if profile is not None else {}
        self.device = resolve_device(cfg)
        self.synced = profile is not None or self.device.type != "cuda"
        if len({(c.seed, c.role == "teacher") for c in cells}) != 1:
            raise ValueError("a fused group shares one seed and one role recipe: " + ", ".join(c.name for c in cells))
        self.outcomes = {c.hash: Outcome(c) for c in cells}
        needs = [build_method(c.method, cfg).needs if c.role == "student" else None for c in cells]
        if any(n is not None and n.teacher for n in needs) and teacher is None:
            raise ValueError(f"{cells[0].name}: method {cells[0].method!r} needs a teacher")
        modes = {method_teacher_mode(c.method, cfg) for c in cells if c.role == "student"} - {None}
        if len(modes) > 1:  # one teacher forward per batch: grid.fuse_units keeps such members apart
            raise ValueError("a fused group runs its teacher in one mode: " + ", ".join(c.name for c in cells))
        self.teacher_mode = modes.pop() if modes else None
        if self.teacher_mode == "train" and dist_info()[1] > 1 and cfg["sync_batchnorm"]:
            sync_batchnorm(teacher, "the teacher")  # its batch statistics: the global batch's (runners.distributed)
        view = None
        if any(n is not None and n.features for n in needs):
            view = teacher_view(teacher, data, self.device, [n for n in needs if n is not None])
        self.members: list[Member] = []
        for cell, d in zip(cells, dirs):
            d.mkdir(parents=True, exist_ok=True)
            store.clear_error(d)
            self.members.append(Member(task, cell, cfg, data, d, self.device, view))
            self.outcomes[cell.hash].notes = self.members[-1].notes
        self.t_layout = view.layout if view is not None else None
        self.rank, self.world = dist_info()
        self.seed = cells[0].seed
        self.hp = self.members[0].hp
        self.skipped = sorted({p for m in self.members for p in m.skipped})  # unreadable samples (on_bad_sample=skip)
        self.bar: Any = None  # progress.progress_bar
        self.show = False  # progress lines (rank 0 with progress on)
        interval = line_interval(cfg)  # plain/json lines: logging.interval_s; bars: StepMeter's own rate
        self.meter = StepMeter() if interval is None else StepMeter(interval)
        self.ahead: tuple[tuple[int, int], tuple[int, int, Any, Any]] | None = None  # ((epoch, first), open_epoch())

    def fail(self, m: Member, exc: BaseException) -> None:
        self.outcomes[m.cell.hash].error = f"{type(exc).__name__}: {exc}"
        m.finished = True
        if self.rank == 0:
            store.write_error(m.dir, m.cell, exc, epoch=m.epoch, update=m.update)

    def unfinished(self) -> list[Member]:
        return [m for m in self.members if not m.finished]

    # -- the epoch loop -----------------------------------------------------------------------------
    def run(self, progress: bool, on_epoch_end: Callable[[int], None] | None) -> list[Outcome]:
        """Every epoch some member still trains, then each member's result; a member's failure is its outcome's
        error (and its ``error.json``), a stop by signal is written for every unfinished member and re-raised."""
        epochs = max(m.epochs for m in self.members)
        start = min((m.epoch for m in self.members if not m.done()), default=epochs)
        self.show = progress and self.rank == 0
        self.bar = progress_bar(
            self.cfg, total=epochs, initial=start, desc=self.label(), unit="ep", leave=False, show=self.show
        )
        try:
            for epoch in range(start, epochs):
                active = [m for m in self.members if not m.finished and not m.done() and m.epoch == epoch]
                if active:
                    self.train_epoch(epoch, epochs, active, on_epoch_end)
            self.finish_all()
        except DataError as exc:
            self.fail_unfinished(exc)
            raise
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through errors.raise_on_sigterm
            self.interrupted(getattr(exc, "signal_name", "SIGINT"))
            raise
        except SystemExit:
            raise
        except Exception as exc:
            self.fail_unfinished(exc)
            if os.environ.get("LSKD_DEBUG"):
                traceback.print_exc()
        finally:
            self.close()
        return [self.outcomes[c.hash] for c in self.cells]

    def label(self) -> str:
        cells = self.cells
        return cells[0].name if len(cells) == 1 else f"{len(cells)} fused: " + ", ".join(_short(c) for c in cells)

    def train_epoch(
        self, epoch: int, epochs: int, active: list[Member], on_epoch_end: Callable[[int], None] | None
    ) -> None:
        """One epoch of the ``active`` members, its end (evaluations, checkpoints) and its progress line."""
        t0, before = time.perf_counter(), dict(self.clock)
        steps_before = [m.train_seconds for m in active]
        self.epoch(epoch, active)
        for m, s in zip(active, steps_before):  # the epoch's times, before the checkpoint that keeps them
            m.epoch_times.append(
                {
                    "epoch": epoch + 1,
                    "wall_s": time.perf_counter() - t0,  # the pass, shared by the members training in it
                    "data_s": self.clock.get("data", 0.0) - before.get("data", 0.0),
                    "teacher_s": self.clock.get("teacher", 0.0) - before.get("teacher", 0.0),
                    "steps_s": m.train_seconds - s,  # this member's own steps
                    "shared_by": len(active),
                }
            )
        self.end_epoch(epoch, active)
        self.bar.update(1)
        done = {_short(m.cell): m.history[-1] for m in active if not m.finished and m.history}
        text = " ".join(f"{k}={_losses(h)}" for k, h in done.items())
        line = f"epoch {epoch + 1}/{epochs} done, loss {text}"
        self.bar.note(
            text, line=line, throttle=epoch + 1 < epochs, event="epoch", epoch=epoch + 1, epochs=epochs, members=done
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    def finish_all(self) -> None:
        for m in self.unfinished():
            try:
                self.outcomes[m.cell.hash].result = m.finish()
            except OSError as exc:  # weights or result could not be written: no result.json
                self.fail(m, exc)

    def fail_unfinished(self, exc: BaseException) -> None:
        for m in self.unfinished():
            self.fail(m, exc)

    def interrupted(self, sig: str) -> None:
        """Stopped by ``sig``: each unfinished member's ``error.json`` says where, to resume from (rank 0)."""
        if self.rank != 0:
            return
        for m in self.unfinished():
            where = f"stopped by {sig} at epoch {m.epoch + 1}, step {m.step}"
            message = f"{where}: run again to resume from the last checkpoint"
            store.write_error(m.dir, m.cell, Interrupted(sig), epoch=m.epoch, update=m.update, message=message)

    def close(self) -> None:
        self.close_ahead()
        if self.bar is not None:
            self.bar.close()
        for m in self.members:
            if m.log is not None:
                m.log.close()

    # -- one epoch ----------------------------------------------------------------------------------
    read_ahead = True  # open the next epoch's loading before this one ends (benchmarks switch it off to compare)

    def open_epoch(self, epoch: int, first: int) -> tuple[int, int, Any, Any]:
        """(number of batches, their ``lead``, iterator, their sample indices or None) of ``epoch`` from batch
        ``first`` on: the one opened ahead if it is for the same (epoch, first), else a new one (a stale one is
        closed)."""
        if self.ahead is not None:
            key, opened = self.ahead
            self.ahead = None
            if key == (epoch, first):
                return opened
            close_batches(opened[2])
        pin = self.device.type == "cuda"
        req = BatchRequest(self.seed, epoch, (self.rank, self.world), first, pin, self.skipped)
        batches = self.task.open_batches(self.data, self.hp, self.cfg, req)
        return len(batches), batches.lead, iter(batches), batches.plan

    def open_ahead(self, epoch: int) -> None:
        """Open the batches of ``epoch + 1`` now (its loading starts), from the position its members will start
        at: 0 for those finishing ``epoch``, their own step for members waiting there. Nothing if none will train."""
        nxt = [m for m in self.members if not m.finished and m.epoch in (epoch, epoch + 1) and m.epochs > epoch + 1]
        if self.ahead is not None or not nxt:
            return
        first = min(0 if m.epoch == epoch else m.step for m in nxt)
        self.ahead = ((epoch + 1, first), self.open_epoch(epoch + 1, first))

    def close_ahead(self) -> None:
        if self.ahead is not None:
            close_batches(self.ahead[1][2])
            self.ahead = None

    def epoch(self, epoch: int, active: list[Member]) -> None:
        """The batches of ``epoch`` from the earliest position of the ``active`` members on."""
        first = min(m.step for m in active)
        clock = time.perf_counter()  # opening the epoch's loading counts as waiting for data (profile)
        n, lead, batches, plan = self.open_epoch(epoch, first)
        steps = first + n
        self.meter.start(first, steps)
        losses: dict[str, float] = {}  # each member's last step loss, for the progress line
        try:
            for i, batch in enumerate(batches, first):
                if self.read_ahead and steps - 1 - i <= lead:
                    self.open_ahead(epoch)
                stepping = [m for m in active if m.wants(epoch, i)]
                if not stepping:
                    if all(m.finished or m.done() for m in active):
                        break
                    continue
                idx = plan[i - first] if plan is not None else None
                clock = self.step(batch, stepping, epoch, steps, clock, losses, idx)
                if self.show and self.bar is not None:
                    line = self.meter.update(i + 1, losses)
                    if line is not None:
                        epochs = max(m.epochs for m in self.members)
                        self.bar.note(
                            f"epoch {epoch + 1}: {line}",
                            line=f"epoch {epoch + 1}/{epochs} {line}",
                            event="step",
                            epoch=epoch + 1,
                            epochs=epochs,
                            **self.meter.fields,
                        )
                if self.on_step is not None:
                    self.on_step(epoch, i)
        finally:
            close_batches(batches)

    def step(
        self,
        batch: Any,
        stepping: list[Member],
        epoch: int,
        steps: int,
        clock: float,
        losses: dict[str, float] | None = None,
        indices: torch.Tensor | None = None,
    ) -> float:
        """One batch: to the device, the teacher's outputs once (the union of what the stepping members need),
        each member's step (its loss recorded in ``losses`` under the member's short name)."""
        device, profile, synced = self.device, self.clock, self.synced
        batch = self.task.to_device(batch, device, self.cfg)
        clock = _tick(profile, "data", clock, device, synced)
        t_out = None
        wanted = list(dict.fromkeys(k for m in stepping for k in m.method.needs.teacher))
        if wanted:
            t_out = self.teacher_outputs(batch, wanted)
            clock = _tick(profile, "teacher", clock, device, synced)
        if indices is not None and any(m.method.needs.indices for m in stepping):
            indices = indices.to(device, non_blocking=True)
        for m in stepping:
            try:
                loss = m.train_step(batch, t_out, epoch, steps, indices if m.method.needs.indices else None)
                if losses is not None:
                    losses[_short(m.cell)] = loss
                every = self.hp["checkpoint_every"]
                if every and m.update % every == 0:
                    m.checkpoint()
            except (CellFailed, torch.OutOfMemoryError, OSError) as exc:
                self.fail(m, exc)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        return _tick(profile, "students", clock, device, synced)

    def teacher_outputs(self, batch: Any, names: list[str]) -> Outputs:
        """The teacher's outputs ``names`` on ``batch``: the logits alone as before (inference mode, copied out of it),
        or, when a member reads features, the named outputs captured under ``no_grad`` (float32)."""
        mode = teacher_mode(self.teacher, self.teacher_mode)  # BatchNorm on the batch's statistics for "train"
        if names == ["logits"] or self.t_layout is None:
            with mode:
                return Outputs(logits=_teacher_logits(self.task, self.teacher, batch, self.device, self.cfg))
        with torch.no_grad(), autocast(self.device, self.cfg), mode, Tap(self.teacher, self.t_layout, names) as tap:
            logits, _ = self.task.forward(self.teacher, batch)
        out = Outputs({k: v.float() for k, v in tap.out.items()})
        if "logits" in names:
            out["logits"] = logits.float()
        return out

    def end_epoch(self, epoch: int, active: list[Member]) -> None:
        """Each active member's history entry, evaluation (when due) and checkpoint."""
        for m in active:
            if not m.finished:
                m.skipped = sorted(set(self.skipped))
                try:
                    m.end_epoch(epoch)
                except (CellFailed, OSError) as exc:  # a deferred non-finite loss; the checkpoint not written
                    self.fail(m, exc)


def train_cell(
    task: Task,
    cell: Cell,
    cfg: dict[str, Any],
    data: TaskData,
    cell_dir: Path,
    *,
    teacher: nn.Module | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train one cell (a group of one) and return its result; raise ``RuntimeError`` if it failed."""
    (out,) = train_group(
        task,
        [cell],
        cfg,
        data,
        [cell_dir],
        teacher=teacher,
        progress=progress,
        on_epoch_end=on_epoch_end,
        on_step=on_step,
    )
    if out.error is not None:
        raise RuntimeError(f"{cell.name} failed: {out.error}")
    return out.result or {}
