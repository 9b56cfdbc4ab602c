"""Which unit trains next, for the executors that train units from this process (``local``) or from its
children (``subprocess``, ``torchrun``): a unit starts once its teachers are finished, and every cell is
tracked to a final state."""

from __future__ import annotations

import time
from pathlib import Path

from .. import store
from ..errors import DataError
from .cells import Cell
from .lock import is_stale, read_lock
from .units import GridJob


class Scheduler:
    """Hands out units whose teachers are finished, and tracks every cell to a final state:
    done (here or by another process), failed (error.json) or blocked (its teacher failed).

    Cells another process is training (a live lock) are waited for: polled until their result appears,
    their lock is released (then they are ours to train) or the other process records a failure."""

    def __init__(self, job: GridJob, units: list[list[Cell]]):
        self.job = job
        self.queue = [list(u) for u in units]
        self.total = sum(len(u) for u in units)
        self.settled: dict[str, str] = {}  # hash -> done | failed | blocked
        self.waiting: dict[str, Cell] = {}  # held by another process
        self.running: set[str] = set()
        self.told: set[str] = set()  # cells whose wait was announced
        self.bar = job.progress_bar(self.total)
        self.cfg_lock = job.cfg["lock"]

    # -- states -----------------------------------------------------------------------------------
    def _settle(self, cell: Cell, state: str) -> None:
        if cell.hash in self.settled:
            return
        self.settled[cell.hash] = state
        self.bar.update(1)
        self.bar.note(cell.name, event="cell", cell=cell.name, state=state)

    def _teacher_state(self, cell: Cell) -> str:
        """ready | wait | failed"""
        t = cell.teacher
        if t is None or store.read_result(t.dir(self.job.out)) is not None:
            return "ready"
        if self.settled.get(t.hash) in ("failed", "blocked"):
            return "failed"
        return "wait"

    def done(self) -> bool:
        return not self.queue and not self.waiting and not self.running

    def next_unit(self) -> list[Cell] | None:
        """The first queued unit that can start now (members already finished or blocked are dropped)."""
        for unit in list(self.queue):
            members = []
            for c in unit:
                if store.read_result(c.dir(self.job.out)) is not None:
                    self._settle(c, "done")
                    if c not in self.job.trained:
                        self.job.elsewhere.append(c)
                    continue
                state = self._teacher_state(c)
                if state == "failed":
                    self.job.blocked.append(c)
                    self._settle(c, "blocked")
                    continue
                members.append(c)
            if not members:
                self.queue.remove(unit)
                continue
            if any(self._teacher_state(c) == "wait" for c in members):
                unit[:] = members
                continue
            self.queue.remove(unit)
            for c in members:
                self.running.add(c.hash)
            return members
        return None

    def finish(self, cell: Cell, result_ok: bool, reason: str | None = None, busy: bool = False) -> None:
        """Record the end of our attempt at ``cell``: trained, failed, or held by someone else (busy)."""
        self.running.discard(cell.hash)
        if busy:
            if cell.hash not in self.waiting and cell.hash not in self.told:
                self.told.add(cell.hash)
                info = read_lock(cell.dir(self.job.out))
                stale_s = self.cfg_lock["stale_s"]
                self.job.say(
                    f"waiting: {cell.name} is locked ({info.describe() if info else 'lock released'}; "
                    f"{cell.dir(self.job.out) / 'lock.json'}); taken over if its owner dies or it goes "
                    f"{stale_s:g} s without a heartbeat (lock.stale_s)"
                )
            self.waiting[cell.hash] = cell
            return
        if result_ok:
            self.job.mark_done(cell)
            self._settle(cell, "done")
        else:
            self.job.failed[cell.hash] = (cell, reason or "failed")
            self._settle(cell, "failed")

    def poll_waiting(self) -> None:
        """Settle the cells other processes hold once they finish; requeue those they let go."""
        stale_s = self.cfg_lock["stale_s"]
        for h, cell in list(self.waiting.items()):
            d = cell.dir(self.job.out)
            if store.read_result(d) is not None:
                del self.waiting[h]
                self.job.elsewhere.append(cell)
                self._settle(cell, "done")
                continue
            info = read_lock(d)
            if info is not None and not is_stale(info, stale_s):
                continue
            del self.waiting[h]
            err = store.read_error(d)
            if err is not None and err.get("error") != "Interrupted":
                self.job.failed[h] = (cell, f"{err.get('error')}: {err.get('message')} (in another process)")
                self._settle(cell, "failed")
            else:
                self.queue.append([cell])

    def idle(self) -> None:
        """Nothing can start: wait a little for teachers or cells held elsewhere."""
        self.poll_waiting()
        if self.waiting or self.queue:
            time.sleep(self.cfg_lock["poll_s"])

    def close(self) -> None:
        self.bar.close()


def raise_if_data_error(cells: list[Cell], out: Path) -> None:
    """A data error in any cell is bad input for the whole grid: stop with its message."""
    for c in cells:
        err = store.read_error(c.dir(out))
        if err and err.get("error") == "DataError":
            raise DataError(err.get("message", "unreadable sample"))
