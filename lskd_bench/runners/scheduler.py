"""The one scheduling loop every executor runs under (``run_units``): which unit starts next (a student once its
teacher finished), on which GPU slots (``devices.DevicePool``), waiting for cells another process holds, and
what became of every cell (``state.CellOutcome``). An executor only starts a unit and hands back a ``Handle``
(``runners/executors.py``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .. import store
from ..errors import DataError
from .cells import Cell
from .devices import DevicePool
from .lock import read_lock
from .state import CellOutcome, cell_state
from .units import GridPlan

if TYPE_CHECKING:
    from collections.abc import Sequence

# the progress bar's word for each outcome
_WORD = {"trained": "done", "elsewhere": "done"}


class Scheduler:
    """Hands out units whose teachers are finished, and tracks every cell to its outcome: trained (here),
    elsewhere (by another process), failed, blocked (its teacher failed), submitted or queued (a cluster's).
    ``after_start``: a student may start once its teacher's unit started (the executor's backend orders them,
    as Slurm does with ``afterok``). ``show``: a progress bar of the settled cells.

    Cells another process is training (a live lock) are waited for: polled until their result appears,
    their lock is released (then they are ours to train) or the other process records a failure."""

    def __init__(self, plan: GridPlan, after_start: bool = False, show: bool = True):
        self.plan = plan
        self.queue = [list(u) for u in plan.units]
        self.outcomes: dict[str, CellOutcome] = {}  # hash -> what became of the cell
        self.waiting: dict[str, Cell] = {}  # held by another process
        self.running: set[str] = set()
        self.told: set[str] = set()  # cells whose wait was announced
        self.after_start = after_start
        self.bar = plan.progress_bar(sum(len(u) for u in plan.units), show=show)
        self.cfg_lock = plan.cfg["lock"]

    def settle(self, outcome: CellOutcome) -> None:
        h = outcome.cell.hash
        self.running.discard(h)
        if h in self.outcomes:
            return
        self.outcomes[h] = outcome
        self.bar.update(1)
        name = outcome.cell.name
        self.bar.note(name, event="cell", cell=name, state=_WORD.get(outcome.state, outcome.state))

    def _teacher_state(self, cell: Cell) -> str:
        """ready | wait | failed"""
        t = cell.teacher
        if t is None or store.read_result(t.dir(self.plan.out)) is not None:
            return "ready"
        got = self.outcomes.get(t.hash)
        if got is not None and got.state in ("failed", "blocked"):
            return "failed"
        if self.after_start and (t.hash in self.running or got is not None):
            return "ready"
        return "wait"

    def done(self) -> bool:
        return not self.queue and not self.waiting and not self.running

    def next_unit(self) -> list[Cell] | None:
        """The first queued unit that can start now (members already finished or blocked are dropped)."""
        for unit in list(self.queue):
            members = [c for c in unit if self._still_to_train(c)]
            if not members:
                self.queue.remove(unit)
                continue
            if any(self._teacher_state(c) == "wait" for c in members):
                unit[:] = members
                continue
            self.queue.remove(unit)
            self.running.update(c.hash for c in members)
            return members
        return None

    def _still_to_train(self, c: Cell) -> bool:
        if store.read_result(c.dir(self.plan.out)) is not None:
            self.settle(CellOutcome(c, "elsewhere"))
            return False
        if self._teacher_state(c) == "failed":
            self.settle(CellOutcome(c, "blocked"))
            return False
        return True

    def finish(self, outcome: CellOutcome) -> None:
        """Record the end of our attempt at a cell; one another process holds (busy) is waited for."""
        cell = outcome.cell
        if outcome.state != "busy":
            self.settle(outcome)
            return
        self.running.discard(cell.hash)
        if cell.hash not in self.waiting and cell.hash not in self.told:
            self.told.add(cell.hash)
            d = cell.dir(self.plan.out)
            info = read_lock(d)
            self.plan.say(
                f"waiting: {cell.name} is locked ({info.describe() if info else 'lock released'}; "
                f"{d / 'lock.json'}); taken over if its owner dies or it goes "
                f"{self.cfg_lock['stale_s']:g} s without a heartbeat (lock.stale_s)"
            )
        self.waiting[cell.hash] = cell

    def poll_waiting(self) -> None:
        """Settle the cells other processes hold once they finish; requeue those they let go."""
        for h, cell in list(self.waiting.items()):
            st = cell_state(cell.dir(self.plan.out), stale_s=self.cfg_lock["stale_s"], damage=False)
            if st.state == "running":
                continue
            del self.waiting[h]
            if st.state == "finished":
                self.settle(CellOutcome(cell, "elsewhere"))
            elif st.state == "failed":
                self.settle(CellOutcome(cell, "failed", f"{st.reason} (in another process)"))
            else:
                self.queue.append([cell])

    def idle(self) -> None:
        """Nothing can start: wait a little for teachers or cells held elsewhere."""
        self.poll_waiting()
        if self.waiting or self.queue:
            time.sleep(self.cfg_lock["poll_s"])

    def close(self) -> None:
        self.bar.close()


class Handle(Protocol):
    """A unit an executor started: ``poll()`` is None while it runs, else True; ``result()`` (once done) what
    became of its cells (a cell left out is read from its folder); ``cancel()`` stops it (a run interrupted)."""

    def poll(self) -> bool | None: ...

    def result(self) -> Sequence[CellOutcome]: ...

    def cancel(self) -> None: ...


@dataclass
class Done:
    """The handle of a unit whose outcomes are known when ``start`` returns: one the local executor trained to
    its end inside ``start``, or one handed to Slurm without waiting (``slurm.wait`` false)."""

    outcomes: list[CellOutcome]

    def poll(self) -> bool:
        return True

    def result(self) -> list[CellOutcome]:
        return self.outcomes

    def cancel(self) -> None:
        pass


class Starter(Protocol):
    """What the loop needs of an executor (``executors.Executor``)."""

    orders_dependencies: bool
    poll_seconds: float
    reports_progress: bool

    def capacity(self, plan: GridPlan) -> tuple[DevicePool | None, int, int]: ...

    def start(self, plan: GridPlan, unit: list[Cell], gpus: list[str] | None) -> Handle: ...


@dataclass
class Running:
    handle: Handle
    unit: list[Cell]
    gpus: list[str] | None


def run_units(plan: GridPlan, executor: Starter) -> list[CellOutcome]:
    """Train ``plan.units`` with ``executor``: start every unit it has room for (GPU slots, units at once) as
    soon as its teachers are finished, collect the outcomes of the units that ended, wait for cells held
    elsewhere. An interrupted run cancels the units still running."""
    pool, per_unit, at_once = executor.capacity(plan)
    sched = Scheduler(plan, after_start=executor.orders_dependencies, show=executor.reports_progress)
    running: list[Running] = []
    try:
        while not sched.done() or running:
            started = _start_ready(plan, sched, executor, running, (pool, per_unit, at_once))
            _collect(plan, sched, running, pool)
            sched.poll_waiting()
            if not started:
                _pause(plan, sched, executor, running, pool)
    finally:
        for r in running:
            r.handle.cancel()
        sched.close()
    return list(sched.outcomes.values())


def _start_ready(plan: GridPlan, sched: Scheduler, executor: Starter, running: list[Running], room) -> bool:
    pool, per_unit, at_once = room
    started = False
    while len(running) < at_once:
        gpus = pool.acquire(per_unit) if pool else None
        if pool and gpus is None:
            break
        unit = sched.next_unit()
        if unit is None:
            if gpus is not None:
                pool.release(gpus)
            break
        running.append(Running(executor.start(plan, unit, gpus), unit, gpus))
        started = True
    return started


def _collect(plan: GridPlan, sched: Scheduler, running: list[Running], pool: DevicePool | None) -> None:
    for r in list(running):
        if r.handle.poll() is None:
            continue
        running.remove(r)
        if pool and r.gpus is not None:
            pool.release(r.gpus)  # whatever the outcome: a failed unit fails alone
        for outcome in unit_outcomes(plan, r.unit, r.handle.result()):
            sched.finish(outcome)
        raise_if_data_error(r.unit, plan.out)


def unit_outcomes(plan: GridPlan, unit: list[Cell], given: Sequence[CellOutcome]) -> list[CellOutcome]:
    """The handle's outcomes, and for a cell it left out (finished by another process between our check and
    its lock) the cell's state from its folder."""
    by_hash = {o.cell.hash: o for o in given}
    outcomes = []
    for c in unit:
        o = by_hash.get(c.hash)
        if o is None:
            st = cell_state(c.dir(plan.out), stale_s=plan.cfg["lock"]["stale_s"], damage=False)
            found = {"finished": "elsewhere", "running": "busy"}.get(st.state, "failed")
            o = CellOutcome(c, found, "" if found != "failed" else st.reason or "the unit ended without training it")
        outcomes.append(o)
    return outcomes


def _pause(plan: GridPlan, sched: Scheduler, executor: Starter, running: list[Running], pool) -> None:
    if pool and not running and pool.busy():
        raise RuntimeError(f"GPU slots leaked: {pool.load}")  # a bug, never a hang
    if running or sched.waiting:
        time.sleep(executor.poll_seconds if running else plan.cfg["lock"]["poll_s"])
    elif not sched.done():
        sched.idle()


def raise_if_data_error(cells: list[Cell], out: Path) -> None:
    """A data error in any cell is bad input for the whole grid: stop with its message."""
    for c in cells:
        err = store.read_error(c.dir(out))
        if err and err.get("error") == "DataError":
            raise DataError(err.get("message", "unreadable sample"))
