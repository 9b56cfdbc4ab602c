"""``lskd_bench.runners.scheduler``: dependency order, a failing cell recorded while the grid carries on.

The one scheduling loop (``scheduler.run_units``) with a fake executor that trains nothing: dependency
order, GPU slots, outcomes of failed and blocked cells, and cells another process holds."""

from __future__ import annotations

import json

import pytest

from lskd_bench import store
from lskd_bench.methods import METHODS, HintonKD, total_loss
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.devices import DevicePool
from lskd_bench.runners.lock import LOCK, CellLock
from lskd_bench.runners.scheduler import run_units
from lskd_bench.runners.state import CellOutcome
from lskd_bench.runners.units import GridPlan
from lskd_bench.tasks import get_task

from ..fixtures import results_by_cell


# ------------------------------------------------------------------------------------------ failures
class NaNAtT2(HintonKD):
    """Hinton KD whose loss turns non-finite at T = 2: one failing cell in a healthy grid."""

    def loss(self, student_logits, targets, teacher_logits, ctx):
        loss = total_loss(super().loss(student_logits, targets, teacher_logits, ctx))
        return loss * float("nan") if ctx.T == 2.0 else loss


@pytest.fixture
def nan_method():
    METHODS.add("nan_at_t2", NaNAtT2)
    yield "nan_at_t2"
    METHODS._items.pop("nan_at_t2", None)


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_grid_carries_on(tmp_path, cli, nan_method):
    argv = [
        "run",
        "--out",
        str(tmp_path),
        "--alphas",
        "0.1",
        "--temperatures",
        "1,2",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--methods",
        f"kd,{nan_method}",
        "--no-progress",
    ]
    rc, out, err = cli(*argv)
    assert rc == 1
    assert "6 cells: trained 5, reused 0 finished, 1 failed" in out
    assert f"failed: student_{nan_method}_cnn_tiny_a0.1_T2_s0: CellFailed: non-finite loss" in err
    assert "run the same command again to retry the failed cells" in err
    done = results_by_cell(tmp_path)
    assert f"student_{nan_method}_cnn_tiny_a0.1_T1_s0" in done and "student_kd_cnn_tiny_a0.1_T2_s0" in done
    (error_file,) = tmp_path.rglob(store.ERROR)
    err_json = json.loads(error_file.read_text())
    assert err_json["error"] == "CellFailed" and err_json["cell"]["T"] == 2.0 and err_json["epoch"] == 0
    assert not (error_file.parent / store.RESULT).exists() and not (error_file.parent / LOCK).exists()
    rc, out, _ = cli(*argv)  # a re-run retries only the failed cell (and it fails again)
    assert rc == 1 and "6 cells: trained 0, reused 5 finished, 1 failed" in out


def test_failed_teacher_blocks_only_its_students(tmp_path, cli):
    rc, out, err = cli(
        "run",
        "--out",
        str(tmp_path),
        "--alphas",
        "0.1",
        "--temperatures",
        "1,2",
        "--epochs",
        "2",
        "--seeds",
        "0",
        "--set",
        "teacher.lr=1e30",
        "--no-progress",
    )
    assert rc == 1
    assert "4 cells: trained 1, reused 0 finished, 1 failed, 2 not run (teacher failed)" in out
    assert "not run: student_kd_cnn_tiny_a0.1_T1_s0: its teacher teacher_cnn_wide_a0.1_s0 failed" in err
    assert list(results_by_cell(tmp_path)) == ["baseline_cnn_tiny_s0"]


def finish(cell, out):
    store.write_json(
        cell.dir(out) / store.RESULT,
        {"cell": cell.describe(), "metrics": {"top1": 1.0}, "epochs": 1, "timings": {"wall_s": 0.1}},
    )


class Later:
    """A unit that ends on its second poll: trained, or failed for the cells in ``fail``."""

    def __init__(self, log, unit, gpus, out, fail):
        self.log, self.unit, self.gpus, self.out, self.fail, self.polls = log, unit, gpus, out, fail, 0

    def poll(self):
        self.polls += 1
        if self.polls < 2:
            return None
        self.log.append(("end", [c.name for c in self.unit], self.gpus))
        return True

    def result(self):
        got = []
        for c in self.unit:
            if c.name in self.fail:
                got.append(CellOutcome(c, "failed", "boom"))
            else:
                finish(c, self.out)
                got.append(CellOutcome(c, "trained"))
        return got

    def cancel(self):
        self.log.append(("cancel", [c.name for c in self.unit], self.gpus))


class Fake:
    orders_dependencies = False
    poll_seconds = 0.0
    reports_progress = False

    def __init__(self, out, gpus=("0", "1", "2", "3", "4", "5"), fail=()):
        self.out, self.pool, self.fail, self.log = out, DevicePool(list(gpus), 1), set(fail), []

    def capacity(self, plan):
        return self.pool, 1, 5  # at most 5 units at once, of 6 GPUs

    def start(self, plan, unit, gpus):
        self.log.append(("start", [c.name for c in unit], gpus))
        return Later(self.log, unit, gpus, self.out, self.fail)


def grid_plan(tiny_cfg, out, **cfg):
    cfg = {**tiny_cfg, **cfg}
    cells = plan_cells(cfg)
    return GridPlan(get_task("digits"), cfg, out, tuple(cells), tuple((c,) for c in cells), progress=False)


def test_students_start_after_their_teacher_on_free_gpus(tiny_cfg, tmp_path):
    plan = grid_plan(tiny_cfg, tmp_path)
    fake = Fake(tmp_path)
    outcomes = run_units(plan, fake)
    assert {o.state for o in outcomes} == {"trained"} and len(outcomes) == len(plan.cells)
    ended: set[str] = set()
    busy: set[str] = set()
    peak = 0
    for event, (name,), gpus in fake.log:
        (gpu,) = gpus
        if event == "start":
            cell = next(c for c in plan.cells if c.name == name)
            assert cell.teacher is None or cell.teacher.name in ended, f"{name} started before its teacher ended"
            assert gpu not in busy, f"GPU {gpu} given twice"
            busy.add(gpu)
            peak = max(peak, len(busy))
        else:
            ended.add(name)
            busy.discard(gpu)
    assert peak == 4  # the two teachers and the baseline, then the four students
    assert not fake.pool.busy()


def test_a_failed_teacher_blocks_its_students_only(tiny_cfg, tmp_path):
    plan = grid_plan(tiny_cfg, tmp_path)
    doomed = next(c for c in plan.cells if c.role == "teacher" and c.alpha == 0.0)
    outcomes = {o.cell.name: o for o in run_units(plan, Fake(tmp_path, fail={doomed.name}))}
    assert outcomes[doomed.name].state == "failed" and outcomes[doomed.name].reason == "boom"
    for c in plan.cells:
        if c.teacher is doomed:
            assert outcomes[c.name].state == "blocked"
        elif c is not doomed:
            assert outcomes[c.name].state == "trained"


def test_a_cell_held_by_another_process_is_waited_for_then_counted_elsewhere(tiny_cfg, tmp_path):
    cfg = {**tiny_cfg, "grid": {**tiny_cfg["grid"], "alphas": [0.1], "temperatures": [1.0]}, "baseline": False}
    plan = grid_plan(tiny_cfg, tmp_path, **{k: cfg[k] for k in ("grid", "baseline")})
    teacher = next(c for c in plan.cells if c.role == "teacher")
    lock = CellLock(teacher.dir(tmp_path))
    assert lock.try_acquire(300.0)

    class Busy(Fake):
        def start(self, plan, unit, gpus):
            handle = super().start(plan, unit, gpus)
            if unit[0] is teacher:  # the other process finishes it once we found it locked
                handle.result = lambda: (finish(teacher, tmp_path), lock.release(), [CellOutcome(teacher, "busy")])[2]
            return handle

    fake = Busy(tmp_path)
    outcomes = {o.cell.name: o.state for o in run_units(plan, fake)}
    assert outcomes == {teacher.name: "elsewhere", **{c.name: "trained" for c in plan.cells if c is not teacher}}
    assert next(names for event, names, _ in fake.log if event == "start") == [teacher.name]
