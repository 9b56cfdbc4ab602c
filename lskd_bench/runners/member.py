"""One cell being trained: a small core (model, optimizer, method, position) and its components.

Every other per-cell concern is a component (``lskd_bench.components``) that owns its state: the random stream
(``rng``), the epoch's loss sums and the non-finite watch (``losses``), the selected epoch (``selection``), the
evaluations (``evaluation``), the history and times (``record``), the method's parts (``method``, ``init``: brought
by ``Method.components``), registered per-cell concerns (``ema``) and the loggers (``loggers``). A checkpoint
(``state.pt``) is the core's state and each component's under its key (``checkpoint.pack``); checkpoints written
before the components existed (one flat dict) still resume (``checkpoint.unpack``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import store
from ..components import Component, Parts, Stage, StepInfo, cell_components
from ..methods import LossContext, Method, Probe, Site, total_loss
from ..models import init_path, load_init_checkpoint
from ..outputs import Outputs, Tap
from ..tasks import Task, TaskData
from ..tasks.base import autocast
from .cells import Cell
from .checkpoint import StateFiles, pack, unpack
from .distributed import average_grads, gather_step, sync_batchnorm
from .distributed import world as dist_info
from .epoch_loss import CellFailed, LossSums, hits
from .evaluation import Evaluator
from .features import export_features
from .loggers import open_loggers
from .optim import build_optimizer, learning_rate
from .probe import TeacherView, method_probe
from .result_file import CellRecord, result_record, save_deployed, save_final_weights
from .rng import RngState
from .selection import Selector


def role_hp(cfg: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The recipe ``hp`` a cell trains with: the teacher's (``cfg["teacher"]``) or the students' (``cfg["student"]``);
    result.json keeps it as ``config.train``."""
    return cfg["teacher"] if cell.role == "teacher" else cfg["student"]


@dataclass
class CellRun:
    """What a member trains and where: the task, the cell, the resolved config and the role's recipe ``hp``, the
    data, the cell's directory, the device, the process's rank among ``world``."""

    task: Task
    cell: Cell
    cfg: dict[str, Any]
    data: TaskData
    dir: Path
    device: torch.device
    hp: dict[str, Any] = field(init=False)
    rank: int = field(init=False)
    world: int = field(init=False)

    def __post_init__(self) -> None:
        self.hp = role_hp(self.cfg, self.cell)
        self.rank, self.world = dist_info()

    @property
    def given(self) -> str | None:
        """A trained teacher supplied by the user (``--teacher-checkpoint``): evaluated, not trained."""
        return self.hp["checkpoint"] if self.cell.role == "teacher" else None

    @property
    def alpha(self) -> float:
        """The label smoothing the cell trains with: a teacher's alpha; 0 for students and the baseline."""
        return self.cell.alpha if self.cell.role == "teacher" else 0.0

    @property
    def run_dir(self) -> Path:
        return self.dir.parent.parent  # RUNS/<task>/<cell>-<hash>


@dataclass
class Position:
    """Where a member stands: epochs finished, batches done in the current epoch, optimizer updates in total, and
    the update the main schedule started at (after a method's initialisation stage)."""

    epoch: int = 0
    step: int = 0
    update: int = 0
    main_from: int = 0


class Record(Component):
    """The member's history (one entry per epoch), the time in its own steps, the unreadable samples skipped, where
    each resumed run picked up, and per epoch the pass's wall, data, teacher and own-step times."""

    key = "record"

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.skipped: list[int] = []
        self.resumes: list[dict[str, Any]] = []
        self.epoch_times: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        keys = ("history", "train_seconds", "skipped", "resumes", "epoch_times")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.history, self.train_seconds = st["history"], st["train_seconds"]
        self.skipped, self.epoch_times = st.get("skipped", []), st.get("epoch_times", [])
        self.resumes = list(st.get("resumes", []))

    def resumed(self, pos: Position) -> None:
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.resumes.append({"epoch": pos.epoch + 1, "step": pos.step, "at": at})  # 1-based epoch


class Loggers(Component):
    """The member's trackers (``runners.loggers``): a step's loss and lr, each epoch's entry, the final result."""

    key = "loggers"

    def __init__(self, log: Any):
        self.log = log

    def on_step_end(self, cell: Any, step: StepInfo) -> None:
        self.log.step(step.update, step.loss, step.lr)  # converted to a float (a sync) only when logged

    def on_epoch_end(self, cell: Any, entry: dict[str, Any]) -> None:
        self.log.epoch(cell.update, entry)

    def on_finish(self, cell: Any, result: dict[str, Any]) -> None:
        self.log.finish(result)


def build_model(run: CellRun) -> nn.Module:
    """The cell's model from its seed, on its device (global BatchNorm under several processes, channels-last)."""
    torch.manual_seed(run.cell.seed)
    model = run.task.build_model(run.cell.arch, run.data, run.cfg, run.hp).to(run.device)
    if run.world > 1 and run.cfg["sync_batchnorm"]:  # the global batch's statistics (runners.distributed)
        sync_batchnorm(model, run.cell.name)
    if run.cfg["channels_last"] and run.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_for_steps(model: nn.Module, run: CellRun) -> nn.Module:
    """What a main-schedule step runs: the model, in DistributedDataParallel with several processes, compiled on
    request (the eager random stream kept: a compiled cell draws what it draws uncompiled)."""
    step_model: nn.Module = model
    if run.world > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        step_model = DistributedDataParallel(model, device_ids=ids)
    if run.cfg["compile"]:
        torch._inductor.config.fallback_random = True
        step_model = torch.compile(step_model)
    return step_model


class Member:
    """One cell being trained: ``run`` (what and where), ``model``, ``opt``, ``method``, ``pos`` (its position) and
    ``parts`` (its components, by key). ``state_dict()`` is what a checkpoint holds; ``finish`` writes the result."""

    def __init__(self, run: CellRun, method: Method, teacher: TeacherView | None = None):
        self.run, self.method, self.pos = run, method, Position()
        self.finished = False
        self.notes: list[str] = []  # repairs (a checkpoint that would not load, moved aside)
        self.model = build_model(run)
        self.tap: Tap | None = None  # captures the student's named outputs (feature methods)
        own = method.components(Site(self.model, run.hp, run.device, lambda: probe(self, teacher)))
        self.opt = Parts(own).optimizer(build_optimizer([*self.model.parameters(), *Parts(own).params()], run.hp))
        self.epochs = 0 if run.given else int(run.hp["epochs"]) + Parts(own).lead_epochs
        self.parts = assemble(self, own)
        self.step_model = wrap_for_steps(self.model, run)
        self.ctx = LossContext(alpha=run.alpha, T=run.cell.T, epochs=max(self.epochs - self.parts.lead_epochs, 1))

    # -- what components read (components.Trainee) ---------------------------------------------------
    @property
    def cfg(self) -> dict[str, Any]:
        return self.run.cfg

    @property
    def dir(self) -> Path:
        return self.run.dir

    @property
    def cell(self) -> Cell:
        return self.run.cell

    @property
    def epoch(self) -> int:
        return self.pos.epoch

    @property
    def update(self) -> int:
        return self.pos.update

    @property
    def record(self) -> Record:
        return self.parts["record"]

    def assess(self, model: nn.Module) -> dict[str, float]:
        """The task's metrics of ``model`` (e.g. averaged weights), outside the member's random stream."""
        run = self.run
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            return run.task.assess(model, run.data, run.cfg, run.device, run.hp).metrics

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What ``state.pt`` holds: the position, model, optimizer and each component's state by its key."""
        return pack(vars(self.pos), self.model.state_dict(), self.opt.state_dict(), self.parts.state_dict())

    def load_state_dict(self, st: dict[str, Any], parts: Parts | None = None) -> None:
        """Resume from a checkpoint (either layout, ``checkpoint.unpack``); the resume is recorded."""
        parts = parts or self.parts
        pos, model, opt, states = unpack(st)
        self.model.load_state_dict(model)
        self.opt.load_state_dict(opt)
        parts.load_state_dict(states)
        self.pos = Position(**pos)
        parts["record"].resumed(self.pos)

    def checkpoint(self) -> None:
        self.sync()  # never write the state of a step that went non-finite
        if self.run.rank == 0:
            self.parts["checkpoint"].save(self.state_dict())

    def sync(self) -> None:
        """Raise ``CellFailed`` if a step since the start had a non-finite loss, and bring the epoch's loss sums to
        the host (on CUDA both wait until here: a checkpoint, the epoch's end)."""
        self.parts["losses"].sync(self.pos.epoch)

    # -- training -----------------------------------------------------------------------------------
    def done(self) -> bool:
        cap = self.run.hp["max_updates"]
        return self.pos.epoch >= self.epochs or (cap is not None and self.pos.update >= cap)

    def wants(self, epoch: int, i: int) -> bool:
        """Does this member step on batch ``i`` of ``epoch``?"""
        return not self.finished and not self.done() and self.pos.epoch == epoch and self.pos.step <= i

    def train_step(
        self, batch: Any, t_out: Outputs | None, epoch: int, steps_per_epoch: int = 1, indices: Any = None
    ) -> torch.Tensor:
        """One optimizer step. On the CPU a non-finite loss raises ``CellFailed`` at once; on CUDA the step
        does not wait for the device (no host sync): ``sync()`` raises it at the next checkpoint or epoch end."""
        t0, run, parts = time.perf_counter(), self.run, self.parts
        stage = parts.stage(epoch)
        opt, lr = schedule(self, stage, epoch, steps_per_epoch)
        self.ctx.epoch = epoch - (0 if stage is not None else parts.lead_epochs)
        self.ctx.indices, self.ctx.batch = indices, batch
        with parts["rng"].scope():
            loss, terms, n, correct = step_loss(self, batch, t_out, stage, indices)
            parts["losses"].watch.see(loss, epoch, self.pos.update)
            opt.zero_grad(set_to_none=True)
            parts.backward(terms, loss)
            trained = stage.params if stage is not None else [*self.model.parameters(), *parts.params()]
            if run.world > 1:  # DDP averaged the model's gradients; the method's parts (the stage's: all) likewise
                average_grads(parts.params() if stage is None else stage.params)
            if run.hp["clip_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(trained, run.hp["clip_norm"])
            opt.step()
        parts["losses"].add(loss, terms, n, correct)  # training top-1 counted on the device (no host sync)
        self.pos.step += 1
        self.pos.update += 1
        self.record.train_seconds += time.perf_counter() - t0  # on CUDA: host time
        parts.on_step_end(self, StepInfo(loss.detach(), lr, self.pos.update))
        return loss.detach()

    def end_epoch(self, epoch: int) -> None:
        """The epoch's history entry, its evaluation when due, the components' epoch hooks, and a checkpoint."""
        self.sync()
        stage = self.parts.stage(epoch)
        entry = epoch_entry(self, epoch, stage)
        self.pos.epoch, self.pos.step = epoch + 1, 0
        self.parts["losses"].reset()
        if stage is not None and self.parts.stage(epoch + 1) is None:
            self.pos.main_from = self.pos.update  # the main schedule counts its updates from here
        main = self.pos.epoch - self.parts.lead_epochs
        if self.done() or (main > 0 and main % self.run.hp["eval_every"] == 0):
            entry["eval"] = self.evaluate()
            evaluator, selector = self.parts["evaluation"], self.parts["selection"]
            if evaluator.last_loss is not None:
                entry["eval_loss"] = evaluator.last_loss
            if selector.last_score is not None:
                entry["selection"] = selector.last_score
        self.record.history.append(entry)
        self.parts.on_epoch_end(self, entry)
        self.checkpoint()

    def evaluate(self) -> dict[str, float]:
        """Evaluate (rank 0): the metrics; the selected epoch and the task's output files updated."""
        metrics: dict[str, float] = {}
        if self.run.rank == 0:
            parts = self.parts
            metrics = parts["evaluation"](self.model, self.pos.epoch, parts["rng"], parts.deployed(self.model))
        if self.run.world > 1:
            torch.distributed.barrier()
        return metrics

    def finish(self) -> dict[str, Any] | None:
        """Final evaluation, weights, features and result.json (rank 0; None on the others); removes the
        checkpoints."""
        result = write_result(self) if self.run.rank == 0 else None
        self.finished = True
        if self.run.world > 1:
            torch.distributed.barrier()
        return result


def schedule(m: Member, stage: Stage | None, epoch: int, steps_per_epoch: int) -> tuple[Any, float]:
    """(the optimizer, the learning rate) of a step in ``epoch``: a stage's own, or the main schedule's (set
    on the student's optimizer)."""
    if stage is not None:
        return stage.opt, stage.epoch_lr(epoch)
    lead = m.parts.lead_epochs
    lr = learning_rate(m.run.hp, epoch - lead, m.pos.update - m.pos.main_from, steps_per_epoch)
    for g in m.opt.param_groups:
        g["lr"] = lr
    return m.opt, lr


def step_loss(m: Member, batch: Any, t_out: Outputs | None, stage: Stage | None, indices: Any) -> tuple:
    """(the step's loss, the method's terms, the number of samples, how many of them the student's logits got
    right, on the device): the forward in training mode and the method's loss (a stage's, during it). A stage
    trains a part of the student (the head gets no gradient, which DDP would wait for): it runs the model
    itself, its gradients averaged in ``train_step``."""
    stage.train_mode(m.model) if stage is not None else m.model.train()
    model = m.step_model if stage is None else m.model
    with autocast(m.run.device, m.run.cfg), m.tap or contextlib.nullcontext():
        s_logits, targets = m.run.task.forward(model, m.method.train_view(batch))  # the teacher's pass: the same view
    if indices is not None and indices.numel() != targets.numel():
        raise CellFailed(
            f"method {m.run.cell.method} reads each sample's index, but this batch lost samples "
            "(data.on_bad_sample: skip): fix the data (lskd-bench check-data) or drop the skip"
        )
    s_out = Outputs(logits=s_logits.float())
    if m.tap is not None:
        s_out.update({k: v.float() for k, v in m.tap.out.items()})
    if m.run.world > 1:  # the loss of the global batch, on every rank (runners.distributed)
        s_out, targets, t_out, indices = gather_step(s_out, targets, t_out, indices)
        m.ctx.indices = indices
    terms = (stage.loss if stage is not None else m.method.compute)(s_out, targets, t_out, m.ctx)
    return total_loss(terms), terms, int(targets.shape[0]), hits(s_out["logits"], targets)


def probe(m: Member, teacher: TeacherView | None) -> Probe:
    """The probe a method of ``m`` sizes its parts from (and the student's tap for its named outputs)."""
    run = m.run
    if teacher is None:
        raise ValueError(f"{run.cell.name}: method {run.cell.method!r} needs a teacher")
    labels = run.data.labels("train") if m.method.needs.indices else None
    m.tap, found = method_probe(m.method, m.model, teacher, len(run.data.train), run.data.num_classes, labels)
    return found


def assemble(m: Member, own: list[Component]) -> Parts:
    """The components of ``m`` (the method's ``own`` first), its checkpoint resumed (or the initial weights loaded),
    the random stream captured after the model's initial draws, the loggers opened at the resumed position."""
    run = m.run
    files = StateFiles(run.dir, run.cell.name, m.notes)
    selector = Selector.of(run.task.selection(run.cfg, run.hp))
    evaluator = Evaluator(run.task, run.data, run.cfg, run.hp, run.dir, run.device, selector)
    core: list[Component] = [*own, LossSums(), selector, evaluator, Record(), files]
    state = files.load()
    if state is None and (run.given or run.hp["init_checkpoint"]):
        init = run.given or init_path(run.hp["init_checkpoint"], run.cell.alpha)
        load_init_checkpoint(m.model, init, strict=bool(run.given))
    parts = Parts([RngState(run.device), *core, *cell_components(run.cfg, m)])
    if state is not None:
        m.load_state_dict(state, parts)
    log = open_loggers(run.dir, run.cell, run.cfg, m.pos.update, run.rank, selector.spec())
    return Parts([*parts, *([Loggers(log)] if log is not None else [])])


def epoch_entry(m: Member, epoch: int, stage: Stage | None) -> dict[str, Any]:
    """The history entry of ``epoch``: mean loss (and terms), training top-1 (``train_top1``, percent of the rows
    whose target had the highest logit, in training mode), lr, updates. Under several processes every rank summed
    the losses of the global batch (``runners.distributed``): the same sums everywhere."""
    losses = m.parts["losses"]
    count = max(losses.loss_count, 1)
    top1 = losses.top1()
    return {
        "epoch": epoch + 1,
        "loss": losses.loss_sum / count,
        "lr": stage.epoch_lr(epoch) if stage is not None else m.opt.param_groups[0]["lr"],
        "updates": m.pos.update,
        **{f"loss_{k}": losses.term_sums[k] / count for k in sorted(losses.term_sums)},
        **({} if top1 is None else {"train_top1": top1}),
        **m.method.report(),
        **({"stage": stage.name} if stage is not None else {}),
    }


def write_result(m: Member) -> dict[str, Any]:
    """The finished member's weights, artifacts, features (when exported) and result.json (with what its
    components add), its checkpoints removed after."""
    run, history = m.run, m.record.history
    last = history[-1].get("eval") if history else None
    if last is None:  # --teacher-checkpoint (no epochs) or max_updates hit mid-epoch
        last = m.evaluate()
    t0 = time.perf_counter()
    selected = save_final_weights(run.dir, m.model, m.parts["selection"].selected, m.pos.epoch)
    model = m.parts.deployed(m.model)
    deployed = save_deployed(run.dir, m.model, model, selected)  # {} for most methods
    files = run.task.export_artifacts(run.data, run.cfg, run.dir)
    # else analyze computes them from model.pt when asked; a deployed model (SimKD's) it cannot rebuild: now
    if run.task.supports_analysis and (run.cfg["analysis"]["export"] or model is not m.model):
        export_features(model, run.data, run.cfg, run.device, run.dir / store.FEATURES)
    result = result_record(cell_record(m), last, selected, files, t0)
    result["weights"].update(deployed)
    m.parts.on_finish(m, result)
    store.write_json(run.dir / store.RESULT, result)
    m.parts["checkpoint"].remove()
    return result


def cell_record(m: Member) -> CellRecord:
    """What result.json says of ``m`` (``result_file.result_record``)."""
    run, record = m.run, m.record
    return CellRecord(
        task=run.task, cell=run.cell, cfg=run.cfg, hp=run.hp, method=m.method, device=run.device,
        world=run.world, run_dir=run.run_dir, epochs=m.pos.epoch if not run.given else 0,
        init_epochs=m.parts.lead_epochs, updates=m.pos.update, history=record.history,
        num_params=sum(p.numel() for p in m.model.parameters()), skipped=sorted(set(record.skipped)),
        resumes=record.resumes, selector=m.parts["selection"], eval_seconds=m.parts["evaluation"].seconds,
        train_seconds=record.train_seconds, epoch_times=record.epoch_times,
    )  # fmt: skip
