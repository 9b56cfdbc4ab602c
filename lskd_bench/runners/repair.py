"""Damaged run directories: detect what a crash, a full disk or a stray edit left behind, and recover where
that is safe. Nothing is deleted: a damaged file is renamed beside itself (``NAME.corrupt-<UTC time>``).

- ``result.json`` that is not a complete result (truncated, ``{}``...): moved aside, the cell is unfinished.
- a finished teacher whose ``model.pt`` is missing or unreadable while students still need it: its
  result is moved aside, so the teacher is trained again (bit-identical on the same machine).
- ``state.pt`` that is not a complete checkpoint (truncated by a crash): moved aside, the cell restarts
  from scratch (``checkpoint.StateFiles`` does the same if a complete-looking checkpoint still fails to load).
- an unreadable ``lock.json`` is judged by its age (``runners/lock.py``); taking it over is reported too.

Each repair is one line: ``repaired: <cell>: <file> <problem>: <what was done>``.
"""

from __future__ import annotations

from pathlib import Path

from .. import store
from .cells import Cell


def cell_problems(d: Path, role: str, full: bool = False) -> list[tuple[str, str]]:
    """(file, problem) for each damaged file of the cell directory ``d``; ``full`` loads a teacher's weights."""
    found = []
    res, problem = store.load_result(d)
    if problem:
        found.append((store.RESULT, problem))
    if res is not None and role == "teacher":
        problem = store.torch_file_problem(d / store.MODEL, full=full)
        if problem:
            found.append((store.MODEL, problem))
    if res is None and (d / store.STATE).exists():
        problem = store.torch_file_problem(d / store.STATE)
        if problem:
            found.append((store.STATE, problem))
    return found


def repair_cells(cells: list[Cell], out: Path) -> list[str]:
    """Detect and recover damaged files of ``cells`` under ``out``; one line per repair."""
    lines: list[str] = []

    def say(cell: Cell, what: str) -> None:
        lines.append(f"repaired: {cell.name}: {what}")

    for c in cells:
        d = c.dir(out)
        problem = store.result_problem(d)
        if problem:
            aside = store.move_aside(d / store.RESULT)
            say(c, f"{store.RESULT} {problem}: moved to {aside.name}; the cell is trained again")
    needed = {
        c.teacher.hash: c.teacher for c in cells if c.teacher is not None and store.read_result(c.dir(out)) is None
    }
    for t in needed.values():
        d = t.dir(out)
        if store.read_result(d) is None:
            continue
        problem = store.torch_file_problem(d / store.MODEL, full=True)
        if problem:
            moved = store.move_aside(d / store.RESULT, "unusable-model")
            if (d / store.MODEL).exists():
                store.move_aside(d / store.MODEL)
            say(t, f"{store.MODEL} {problem}: the teacher is trained again ({store.RESULT} moved to {moved.name})")
    for c in cells:
        d = c.dir(out)
        if store.read_result(d) is None and (d / store.STATE).exists():
            problem = store.torch_file_problem(d / store.STATE)
            if problem:
                aside = store.move_aside(d / store.STATE)
                prev = d / store.STATE_PREV
                then = "the cell restarts from scratch"
                if prev.exists() and store.torch_file_problem(prev) is None:
                    then = f"the cell resumes from the previous checkpoint {store.STATE_PREV}"
                say(c, f"{store.STATE} {problem}: moved to {aside.name}; {then}")
    return lines


def status_problem(d: Path, role: str) -> str | None:
    """One line for ``lskd-bench status`` when the cell directory is damaged (cheap checks only)."""
    problems = cell_problems(d, role)
    if not problems:
        return None
    fix = "'lskd-bench run' repairs it (trains the cell again)"
    if all(f == store.MODEL for f, _ in problems):  # repair_cells retrains a teacher only for students that need it
        fix = "'lskd-bench run' repairs it when a student still needs this teacher (trains it again)"
    elif [f for f, _ in problems] == [store.STATE] and store.torch_file_problem(d / store.STATE_PREV) is None:
        fix = f"'lskd-bench run' repairs it (resumes from the previous checkpoint {store.STATE_PREV})"
    return "; ".join(f"{f} {p}" for f, p in problems) + ": " + fix
