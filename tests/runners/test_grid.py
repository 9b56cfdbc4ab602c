"""``grid.GridSummary.of``: the run summary built from the cells' outcomes and the frozen plan."""

from __future__ import annotations

import dataclasses

import pytest

from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import GridSummary
from lskd_bench.runners.state import CellOutcome
from lskd_bench.runners.units import GridPlan
from lskd_bench.tasks import get_task


def test_summary_from_outcomes(tiny_cfg, tmp_path):
    cells = plan_cells(tiny_cfg)
    t0, t1, base, *students = cells
    plan = GridPlan(get_task("digits"), tiny_cfg, tmp_path, tuple(cells), reused=(t1,), repairs=("repaired: x",))
    outcomes = [
        CellOutcome(t0, "failed", "RuntimeError: nan", notes=("repaired: t0 lock",)),
        CellOutcome(base, "elsewhere"),
        *(CellOutcome(s, "blocked") for s in students if s.teacher is t0),
        *(CellOutcome(s, "trained") for s in students if s.teacher is t1),
    ]
    s = GridSummary.of(plan, outcomes, ["a note"], 1.0)
    assert s.failed == [(t0, "RuntimeError: nan")] and s.elsewhere == [base] and not s.ok
    assert s.repairs == ["repaired: x", "repaired: t0 lock"] and s.notes == ["a note"]
    assert s.line().startswith(
        "7 cells: trained 2, reused 1 finished, 1 finished by another process, 1 failed, 2 not run"
    )
    assert s.failure_lines()[1:] == [f"not run: {c.name}: its teacher {t0.name} failed" for c in s.blocked]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.out = tmp_path / "other"  # the plan is a value
