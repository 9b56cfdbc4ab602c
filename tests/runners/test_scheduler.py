"""The one scheduling loop (``scheduler.run_units``) with a fake executor that trains nothing: dependency
order, GPU slots, outcomes of failed and blocked cells, and cells another process holds."""

from __future__ import annotations

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.devices import DevicePool
from lskd_bench.runners.lock import CellLock
from lskd_bench.runners.scheduler import run_units
from lskd_bench.runners.state import CellOutcome
from lskd_bench.runners.units import GridPlan
from lskd_bench.tasks import get_task


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
