"""Damaged run directories: detect what a crash, a full disk or a stray edit left behind, and recover where
that is safe. Nothing is deleted: a damaged file is renamed beside itself (``NAME.corrupt-<UTC time>``).

- ``result.json`` that is not a complete result (truncated, ``{}``...): moved aside, the cell is unfinished.
- a finished teacher whose ``model.pt`` (or, with ``teacher_weights: selected``, the ``model_selected.pt`` its
  students load) is missing or unreadable while students still need it: its result is moved aside, so the
  teacher is trained again (bit-identical on the same machine).
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
        for name in _teacher_files(res, "selected"):  # every weights file it keeps
            problem = store.torch_file_problem(d / name, full=full)
            if problem:
                found.append((name, problem))
    if res is None and (d / store.STATE).exists():
        problem = store.torch_file_problem(d / store.STATE)
        if problem:
            found.append((store.STATE, problem))
    return found


def repair_cells(cells: list[Cell], out: Path, teacher_weights: str) -> list[str]:
    """Detect and recover damaged files of ``cells`` under ``out``; one line per repair. ``teacher_weights``
    (the run's "last" or "selected") names the teacher file the students load, checked with ``model.pt``."""
    lines: list[str] = []
    for c in cells:
        d = c.dir(out)
        problem = store.result_problem(d)
        if problem:
            aside = store.move_aside(d / store.RESULT)
            lines.append(
                f"repaired: {c.name}: {store.RESULT} {problem}: moved to {aside.name}; the cell is trained again"
            )
    needed = {
        c.teacher.hash: c.teacher for c in cells if c.teacher is not None and store.read_result(c.dir(out)) is None
    }
    lines += [line for t in needed.values() if (line := _repair_teacher(t, out, teacher_weights))]
    lines += [line for c in cells if (line := _repair_state(c, out))]
    return lines


def _teacher_files(result: dict, teacher_weights: str) -> list[str]:
    """The weight files of a finished teacher its students may load: model.pt, and the selected epoch's."""
    selected = store.selected_weights(result)
    return [store.MODEL] + ([store.SELECTED] if teacher_weights == "selected" and selected == store.SELECTED else [])


def _repair_teacher(t: Cell, out: Path, teacher_weights: str) -> str | None:
    d = t.dir(out)
    result = store.read_result(d)
    if result is None:
        return None
    files = _teacher_files(result, teacher_weights)
    for name in files:
        problem = store.torch_file_problem(d / name, full=True)
        if problem:
            moved = store.move_aside(d / store.RESULT, "unusable-model")
            for f in files:
                if (d / f).exists():
                    store.move_aside(d / f)
            then = f"the teacher is trained again ({store.RESULT} moved to {moved.name})"
            return f"repaired: {t.name}: {name} {problem}: {then}"
    return None


def _repair_state(c: Cell, out: Path) -> str | None:
    d = c.dir(out)
    if store.read_result(d) is not None or not (d / store.STATE).exists():
        return None
    problem = store.torch_file_problem(d / store.STATE)
    if not problem:
        return None
    aside = store.move_aside(d / store.STATE)
    prev = d / store.STATE_PREV
    then = "the cell restarts from scratch"
    if prev.exists() and store.torch_file_problem(prev) is None:
        then = f"the cell resumes from the previous checkpoint {store.STATE_PREV}"
    return f"repaired: {c.name}: {store.STATE} {problem}: moved to {aside.name}; {then}"


def status_problem(d: Path, role: str) -> str | None:
    """One line for ``lskd-bench status`` when the cell directory is damaged (cheap checks only)."""
    problems = cell_problems(d, role)
    if not problems:
        return None
    fix = "'lskd-bench run' repairs it (trains the cell again)"
    if all(
        f in (store.MODEL, store.SELECTED) for f, _ in problems
    ):  # repair_cells retrains a teacher only for students that need it
        fix = "'lskd-bench run' repairs it when a student still needs this teacher (trains it again)"
    elif [f for f, _ in problems] == [store.STATE] and store.torch_file_problem(d / store.STATE_PREV) is None:
        fix = f"'lskd-bench run' repairs it (resumes from the previous checkpoint {store.STATE_PREV})"
    return "; ".join(f"{f} {p}" for f, p in problems) + ": " + fix
