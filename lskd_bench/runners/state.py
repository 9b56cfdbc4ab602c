"""A cell's state, read from its folder: the one function ``lskd-bench status``, the scheduler and every
executor use (``cell_state``), and what became of a cell in one run (``CellOutcome``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import store
from .cells import Cell
from .lock import is_stale, read_lock
from .repair import status_problem

STATES = ("damaged", "finished", "running", "queued", "failed", "interrupted", "pending")


@dataclass(frozen=True)
class CellState:
    """``state``: one of ``STATES``; ``detail``: what ``status`` shows; ``reason``: for a cell with an
    error.json, ``"<error>: <message>"`` (what the run summary says of a failed cell)."""

    state: str
    detail: str = ""
    reason: str = ""


def cell_state(d: Path, *, stale_s: float, view: Mapping[str, str] | None = None, damage: bool = True) -> CellState:
    """The state of the cell folder ``d``. ``view``: an executor's view of the cell (``Executor.status``): a
    queued or running job (``live``) comes before the cell's own lock and error files; a job gone without a
    result (``ended``) only explains a cell with neither. ``damage``: check for damaged files first."""
    view = view or {}
    problem = status_problem(d, d.name.split("_")[0]) if damage else None
    if problem is not None:
        return CellState("damaged", problem)
    if store.read_result(d) is not None:
        return CellState("finished")
    if view.get("live"):
        return CellState(view["live"], view.get("detail", ""))
    lock = read_lock(d)
    if lock is not None and not is_stale(lock, stale_s):
        return CellState("running", lock.describe())
    err = store.read_error(d)
    if err is not None:
        reason = f"{err.get('error')}: {err.get('message')}"
        if err.get("error") == "Interrupted":
            return CellState("interrupted", str(err.get("message")), reason)
        return CellState("failed", reason, reason)
    return _unstarted(d, view, lock)


def _unstarted(d: Path, view: Mapping[str, str], lock) -> CellState:
    if view.get("ended"):
        return CellState("failed", view["ended"], view["ended"])
    if (d / store.STATE).is_file() or (d / store.STATE_PREV).is_file():
        return CellState("interrupted", "an epoch checkpoint exists: run again to resume")
    if not d.is_dir():
        return CellState("pending", "not started")
    if lock is not None and lock.problem:
        return CellState("pending", f"lock.json: {lock.describe()}: 'lskd-bench run' takes it over")
    return CellState("pending")


# what became of a cell in one run (the run summary's words)
OUTCOMES = ("trained", "failed", "busy", "elsewhere", "blocked", "submitted", "queued")


@dataclass(frozen=True)
class CellOutcome:
    """``state``: trained (here), failed (``reason``), busy (another process holds it: waited for), elsewhere
    (finished by another process), blocked (its teacher failed), submitted / queued (a job of a cluster
    scheduler: just submitted / still queued or running from an earlier run). ``notes``: repair lines."""

    cell: Cell
    state: str
    reason: str = ""
    notes: tuple[str, ...] = ()


def outcome_from_disk(cell: Cell, out: Path, stale_s: float, otherwise: str) -> CellOutcome:
    """How ``cell`` ended after a process or job trained it, read from its folder: trained, failed with its
    error.json, busy (another process holds its lock), else failed with ``otherwise`` (an exit code...)."""
    st = cell_state(cell.dir(out), stale_s=stale_s, damage=False)
    if st.state == "finished":
        return CellOutcome(cell, "trained")
    if st.state == "running":
        return CellOutcome(cell, "busy")
    if st.reason:
        return CellOutcome(cell, "failed", st.reason)
    return CellOutcome(cell, "failed", otherwise)
