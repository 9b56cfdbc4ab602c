"""The page's per-cell table: every cell of the run directory (``runners.status``: finished, running, failed...)
with its grid values and, where it has a readable result.json, its primary metric at the selected epoch
(``leaderboard.row_of``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import store
from ..leaderboard import row_of, spec_of
from ..runners.status import status_rows

HEAD = ["cell", "task", "role", "method", "α", "T", "seed", "state", "metric", "value", "epoch", "job", "detail"]
FILTERS = ["task", "method", "α", "T"]  # the columns the table's filter bar selects on
STATE_COL = HEAD.index("state")


def _value(row: dict[str, Any]) -> str:
    name = row["primary"]
    value = row["metrics"].get(name)
    if value is None:
        return ""
    try:
        return f"{value:{spec_of(row, name).format}}"
    except (ValueError, TypeError):  # a format a hand-edited result.json declares
        return f"{value:.2f}"


def cell_rows(runs: Path) -> tuple[list[list[Any]], list[str]]:
    """The table's rows (``HEAD``'s columns) and the state of each. Unreadable results are left to the page's
    "Unreadable results" list (``leaderboard.collect``): their cells show their state alone."""
    runs = Path(runs)
    finished: dict[Path, dict[str, Any]] = {}
    for res in store.iter_results(runs):
        try:
            finished[Path(res["cell_dir"]).resolve()] = row_of(res)
        except (KeyError, TypeError, ValueError, AttributeError, StopIteration):
            continue
    rows, states = [], []
    for s in status_rows(runs):
        r = finished.get((runs / s["task"] / s["cell"]).resolve())  # a damaged cell's result shows too
        if r is None:
            role = s["cell"].split("_")[0]
            rows.append([s["cell"], s["task"], role, "", "", "", "", s["state"], "", "", "", s["job"], s["detail"]])
        else:
            alpha = "" if r["alpha"] == "" else f"{r['alpha']:g}"
            t = "" if r["T"] == "" else f"{r['T']:g}"
            rows.append([s["cell"], r["task"], r["role"], r["method"], alpha, t, r["seed"], s["state"], r["primary"],
                         _value(r), r["epoch"], s["job"], s["detail"]])  # fmt: skip
        states.append(s["state"])
    return rows, states
