"""The grid runner: expected cells, nothing retrained on re-run, resume after a kill or an interrupt.

``grid.GridSummary.of``: the run summary built from the cells' outcomes and the frozen plan."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import GridSummary, resolve_config, run_grid
from lskd_bench.runners.state import CellOutcome
from lskd_bench.runners.train import train_cell
from lskd_bench.runners.units import GridPlan
from lskd_bench.tasks import get_task

from ..fixtures import tiny_overrides

EXPECTED = {
    "teacher_cnn_wide_a0_s0",
    "teacher_cnn_wide_a0.1_s0",
    "baseline_cnn_tiny_s0",
    "student_kd_cnn_tiny_a0_T1_s0",
    "student_kd_cnn_tiny_a0_T4_s0",
    "student_kd_cnn_tiny_a0.1_T1_s0",
    "student_kd_cnn_tiny_a0.1_T4_s0",
}


def finished(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.rglob(store.RESULT)}


@pytest.mark.slow
def test_grid_trains_expected_cells_then_reuses_them(tmp_path, tiny_cfg):
    first = run_grid(tiny_cfg, tmp_path, progress=False)
    assert {c.name for c in first.trained} == EXPECTED
    done = finished(tmp_path)
    assert {n.rsplit("-", 1)[0] for n in done} == EXPECTED
    # every finished cell has its weights, no leftover epoch state, and no features nobody asked for (analyze
    # computes them when it needs them: tests/runners/test_features.py)
    for name in done:
        d = tmp_path / "digits" / name
        assert (d / store.MODEL).is_file() and not (d / store.FEATURES).exists()
        assert not (d / store.STATE).exists()
        res = json.loads((d / store.RESULT).read_text())
        assert 0.0 <= res["metrics"]["top1"] <= res["metrics"]["top5"] <= 100.0
    students = [json.loads(p.read_text()) for p in tmp_path.rglob(store.RESULT) if "student_" in str(p)]
    assert all(r["cell"]["teacher"].startswith("teacher_cnn_wide_a") for r in students)

    second = run_grid(tiny_cfg, tmp_path, progress=False)
    assert second.trained == [] and len(second.reused) == len(EXPECTED)
    assert finished(tmp_path) == done  # no result file was rewritten


@pytest.mark.slow
def test_changed_student_config_retrains_students_but_reuses_teachers(tmp_path, tiny_cfg):
    run_grid(tiny_cfg, tmp_path, progress=False)
    cfg2 = resolve_config("digits", {}, tiny_overrides(kd={"lambda": 0.9}))
    second = run_grid(cfg2, tmp_path, progress=False)
    assert {c.role for c in second.trained} == {"student"}
    assert len(second.trained) == 4  # baseline does not depend on kd settings; teachers reused
    assert len(finished(tmp_path)) == len(EXPECTED) + 4  # old results kept beside the new


def test_grid_axes(tiny_cfg):
    cfg = resolve_config("digits", {}, tiny_overrides(grid={"axes": ["T"], "temperatures": [1.0, 2.0, 3.0]}))
    names = {c.name for c in plan_cells(cfg)}
    assert "teacher_cnn_wide_a0.1_s0" in names and "teacher_cnn_wide_a0_s0" not in names
    assert {n for n in names if n.startswith("student")} == {f"student_kd_cnn_tiny_a0.1_T{t}_s0" for t in (1, 2, 3)}


@pytest.mark.slow
def test_interrupted_cell_resumes_to_identical_weights(tmp_path):
    cfg = resolve_config("digits", {}, tiny_overrides(epochs=4))
    task = get_task("digits")
    data = task.load_data(cfg)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")

    ref_dir = tmp_path / "ref"
    ref = train_cell(task, teacher, cfg, data, ref_dir, progress=False)

    def stop_after_two(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    cut_dir = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_cell(task, teacher, cfg, data, cut_dir, progress=False, on_epoch_end=stop_after_two)
    assert (cut_dir / store.STATE).is_file() and not (cut_dir / store.RESULT).exists()
    assert torch.load(cut_dir / store.STATE, weights_only=False)["position"]["epoch"] == 2

    seen = []
    res = train_cell(task, teacher, cfg, data, cut_dir, progress=False, on_epoch_end=seen.append)
    assert seen == [3, 4]  # only the unfinished epochs ran
    # where it picked up, numbered as history and the 'stopped by ... at epoch E, step S' message (1-based)
    assert [(r["epoch"], r["step"]) for r in res["resumes"]] == [(3, 0)]
    assert [h["loss"] for h in res["history"]] == [h["loss"] for h in ref["history"]]
    a = torch.load(ref_dir / store.MODEL, weights_only=True)
    b = torch.load(cut_dir / store.MODEL, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res["metrics"] == ref["metrics"]


@pytest.mark.slow
def test_killed_run_resumes_at_unfinished_cells(tmp_path):
    out = tmp_path / "runs"
    args = [
        sys.executable, "-m", "lskd_bench", "run", "--out", str(out), "--no-progress",
        "--alphas", "0,0.1", "--temperatures", "1,2,3", "--seeds", "0",
        "--set", "teacher.epochs=2", "--set", "student.epochs=12",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hang_guard = time.time() + 15 * 60  # only stops a hung test; nothing here depends on speed
    try:
        while len(finished(out)) < 4:  # the event: the teachers and the first fused student group are done
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < hang_guard, "the grid hung"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = finished(out)
    assert 4 <= len(before) < 9, "the kill should land mid-grid"

    cfg = resolve_config("digits", {}, {
        "grid": {"alphas": [0.0, 0.1], "temperatures": [1.0, 2.0, 3.0], "seeds": [0]},
        "teacher": {"epochs": 2}, "student": {"epochs": 12},
    })  # fmt: skip
    summary = run_grid(cfg, out, progress=False)
    assert len(summary.cells) == 9
    assert len(summary.trained) == 9 - len(before)
    after = finished(out)
    assert len(after) == 9
    assert {k: after[k] for k in before} == before  # finished cells untouched


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path):
    """compile: true (torch.compile of the model being trained, here on the CPU with inductor) trains the same cell:
    the same losses up to inductor's rounding (its fused kernels round otherwise: ~2e-4 relative after one epoch,
    growing as training goes), and model.pt keeps the module's own keys (no '_orig_mod.' prefix), so a
    compiled run's teacher serves uncompiled students and the other way round."""
    task = get_task("digits")
    eager_cfg = resolve_config("digits", {}, tiny_overrides(epochs=2))
    compiled_cfg = resolve_config("digits", {}, tiny_overrides(epochs=2, compile=True))
    data = task.load_data(eager_cfg)
    teacher = next(c for c in plan_cells(eager_cfg) if c.role == "teacher")
    assert teacher.hash == next(c for c in plan_cells(compiled_cfg) if c.role == "teacher").hash  # not identity
    from torch._dynamo.utils import counters

    counters.clear()
    eager = train_cell(task, teacher, eager_cfg, data, tmp_path / "eager", progress=False)
    assert counters["stats"]["unique_graphs"] == 0  # nothing compiled without compile: true
    compiled = train_cell(task, teacher, compiled_cfg, data, tmp_path / "compiled", progress=False)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo captured the model's graph: compile: true was applied
    assert [h["loss"] for h in compiled["history"]] == pytest.approx([h["loss"] for h in eager["history"]], rel=2e-2)
    a = torch.load(tmp_path / "eager" / store.MODEL, weights_only=True)
    b = torch.load(tmp_path / "compiled" / store.MODEL, weights_only=True)
    assert list(a) == list(b)
    assert compiled["history"][1]["loss"] < 0.2 * compiled["history"][0]["loss"]  # it trains


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
