"""Fused grid training: the students of one teacher share each batch and the teacher forward, and end
bit-identical to students trained alone; groups resume per member, split at max_fused, and a new temperature
trains one student."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import fuse_units, resolve_config, run_grid
from lskd_bench.runners.train import load_model, train_group
from lskd_bench.tasks import get_task

from ..fixtures import (
    TINY_ARGS,
    assert_fused_equals_alone,
    same_weights,
    tiny_overrides,
    train_then_kill,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A digits config with kd at T 1 and 4, ctkd (a method with its own parameter) and the baseline, and a
    trained teacher."""
    base = tmp_path_factory.mktemp("fusion")
    cfg = resolve_config(
        "digits",
        {},
        tiny_overrides(epochs=3, methods=["kd", "ctkd"], grid={"alphas": [0.1], "temperatures": [1.0, 4.0]}),
    )
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(base)], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(base) / store.MODEL, torch.device("cpu"))
    students = [c for c in cells if c.role != "teacher"]
    return cfg, task, data, students, tmodel, base


@pytest.mark.slow
def test_fused_students_equal_students_trained_alone(setup, tmp_path):
    cfg, task, data, students, tmodel, _ = setup
    assert len(students) == 4  # baseline, kd T1, kd T4, ctkd
    assert_fused_equals_alone(task, students, cfg, data, tmodel, tmp_path)
    # the order of the members does not matter either
    rev = list(reversed(students))
    train_group(task, rev, cfg, data, [tmp_path / "rev" / c.name for c in rev], teacher=tmodel, progress=False)
    assert all(same_weights(tmp_path / "rev" / c.name, tmp_path / "alone" / c.name) for c in students)


@pytest.mark.slow
def test_killed_fused_group_resumes_every_member(setup, tmp_path):
    cfg, task, data, students, tmodel, _ = setup
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path, at_epoch=2)
    assert all(torch.load(cut / c.name / store.STATE, weights_only=False)["position"]["epoch"] == 2 for c in students)
    # one member finishes alone in the meantime; the others resume from epoch 2 in a group that still holds it
    (o,) = train_group(task, [students[1]], cfg, data, [cut / students[1].name], teacher=tmodel, progress=False)
    assert o.error is None
    seen = []
    train_group(
        task,
        [s for i, s in enumerate(students) if i != 1],
        cfg,
        data,
        [cut / c.name for i, c in enumerate(students) if i != 1],
        teacher=tmodel,
        progress=False,
        on_epoch_end=seen.append,
    )
    assert seen == [3]  # only the unfinished epoch ran
    assert all(same_weights(cut / c.name, ref / c.name) for c in students)


@pytest.mark.slow
def test_members_at_different_positions_train_together(setup, tmp_path):
    cfg, task, data, students, tmodel, _ = setup
    a, b = students[1], students[2]
    ref = tmp_path / "ref"
    train_group(task, [a, b], cfg, data, [ref / a.name, ref / b.name], teacher=tmodel, progress=False)

    def stop(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a reaches epoch 2 alone, b has not started
        train_group(task, [a], cfg, data, [tmp_path / a.name], teacher=tmodel, progress=False, on_epoch_end=stop)
    out = train_group(task, [a, b], cfg, data, [tmp_path / a.name, tmp_path / b.name], teacher=tmodel, progress=False)
    assert all(o.error is None for o in out)
    assert same_weights(tmp_path / a.name, ref / a.name) and same_weights(tmp_path / b.name, ref / b.name)


def test_fuse_units_grouping_and_split(tiny_cfg):
    cfg = resolve_config("digits", {}, tiny_overrides(methods=["kd", "dist"]))
    cells = plan_cells(cfg)
    units = fuse_units(cells, cfg, fuse=True, max_fused=cfg["max_fused"])
    roles = [sorted(c.role for c in u) for u in units]
    assert roles[0] == ["teacher", "teacher"]  # both alphas' teachers share one pass
    by_teacher = [u for u in units if u[0].role != "teacher"]
    assert len(by_teacher) == 2  # one group per teacher (alpha)
    assert sum(c.role == "baseline" for u in by_teacher for c in u) == 1  # the baseline joins one of them
    assert all(len({c.teacher.hash for c in u if c.teacher}) == 1 for u in by_teacher)
    split = fuse_units(cells, cfg, fuse=True, max_fused=2)
    assert max(len(u) for u in split) == 2 and sorted(c.hash for u in split for c in u) == sorted(c.hash for c in cells)
    assert all(len(u) == 1 for u in fuse_units(cells, cfg, fuse=False, max_fused=cfg["max_fused"]))


def test_members_whose_teachers_run_in_different_modes_train_in_different_passes():
    """The teacher runs once per batch for a fused group, in one mode: OFD's train-mode teacher (its default) and
    eval-mode methods are planned into separate units, and a group that mixes them is refused."""
    from lskd_bench.runners.train import FusedGroup

    over = tiny_overrides(methods=["kd", "ofd", "reviewkd", "ofd+kd"], grid={"alphas": [0.1], "temperatures": [4.0]})
    cfg = resolve_config("digits", {}, over)
    students = [c for c in plan_cells(cfg) if c.role != "teacher"]
    units = fuse_units(students, cfg, fuse=True, max_fused=8)
    assert sorted(sorted(c.method for c in u) for u in units) == [["kd", "ls", "reviewkd"], ["ofd", "ofd+kd"]]
    # ReviewKD in train mode joins OFD's pass; everything in eval mode is one pass again
    cfg = resolve_config("digits", {}, {**over, "reviewkd": {"teacher_mode": "train"}})
    units = fuse_units([c for c in plan_cells(cfg) if c.role != "teacher"], cfg, fuse=True, max_fused=8)
    assert sorted(sorted(c.method for c in u) for u in units) == [["kd", "ls"], ["ofd", "ofd+kd", "reviewkd"]]
    cfg = resolve_config("digits", {}, {**over, "ofd": {"teacher_mode": "eval"}})
    units = fuse_units([c for c in plan_cells(cfg) if c.role != "teacher"], cfg, fuse=True, max_fused=8)
    assert [sorted(c.method for c in u) for u in units] == [["kd", "ls", "ofd", "ofd+kd", "reviewkd"]]
    cfg = resolve_config("digits", {}, over)
    mixed = [c for c in plan_cells(cfg) if c.method in ("kd", "ofd")]
    with pytest.raises(ValueError, match="runs its teacher in one mode"):
        FusedGroup(get_task("digits"), mixed, cfg, None, [], torch.nn.Identity(), None, None)


@pytest.mark.slow
def test_adding_a_temperature_trains_only_that_student(tmp_path):
    cfg = resolve_config("digits", {}, tiny_overrides(grid={"alphas": [0.0, 0.1], "temperatures": [1.0, 2.0]}))
    first = run_grid(cfg, tmp_path, progress=False)
    assert len(first.trained) == 7
    more = resolve_config("digits", {}, tiny_overrides(grid={"alphas": [0.0, 0.1], "temperatures": [1.0, 2.0, 3.0]}))
    second = run_grid(more, tmp_path, progress=False)
    assert sorted(c.name for c in second.trained) == ["student_kd_cnn_tiny_a0.1_T3_s0", "student_kd_cnn_tiny_a0_T3_s0"]


@pytest.mark.slow
@pytest.mark.parametrize("target,expect_epoch", [(store.RESULT, 2), (store.STATE, 1)])
def test_disk_full_fails_the_cell_cleanly(tmp_path, monkeypatch, tiny_cfg, target, expect_epoch):
    """A write that fails (ENOSPC) leaves no partial file and an intact previous checkpoint; a re-run finishes."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.train import train_group
    from lskd_bench.tasks import get_task

    task = get_task("digits")
    cfg = {**tiny_cfg, "teacher": {**tiny_cfg["teacher"], "epochs": 2}}
    data = task.load_data(cfg)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    d = tmp_path / "cell"
    real_fsync = os.fsync
    writes = {"n": 0}

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if f".{target}." in name:
            writes["n"] += 1
            if target == store.RESULT or writes["n"] == 2:  # result.json, or the 2nd epoch's state.pt
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    (outcome,) = train_group(task, [teacher], cfg, data, [d], progress=False)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert outcome.error == f"DiskFull: no space left on device while writing {d / target}"  # names the cause
    assert not (d / store.RESULT).exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]  # no partial file
    assert json.loads((d / store.ERROR).read_text())["error"] == "DiskFull"
    assert torch.load(d / store.STATE, weights_only=False)["position"]["epoch"] == expect_epoch  # intact checkpoint
    seen = []
    (outcome,) = train_group(task, [teacher], cfg, data, [d], progress=False, on_epoch_end=seen.append)
    assert outcome.error is None and (d / store.RESULT).is_file() and not (d / store.ERROR).exists()
    assert seen == ([] if expect_epoch == 2 else [2])  # resumed from the checkpoint, nothing retrained


# ------------------------------------------------------------------------------------------ cases 6, 7: disk
@pytest.mark.slow
def test_full_disk_during_a_checkpoint_names_the_cause(tmp_path, monkeypatch, tiny_cfg):
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.train import train_group
    from lskd_bench.tasks import get_task

    task = get_task("digits")
    teacher = next(c for c in plan_cells(tiny_cfg) if c.role == "teacher")
    real_fdopen = os.fdopen

    class FullDisk:  # the disk fills while state.pt's bytes are written
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        return FullDisk(f) if f".{store.STATE}." in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    d = tmp_path / "cell"
    (out,) = train_group(task, [teacher], tiny_cfg, task.load_data(tiny_cfg), [d], progress=False)
    assert out.error == f"DiskFull: no space left on device while writing {d / store.STATE}"
    err = json.loads((d / store.ERROR).read_text())
    assert err["message"] == f"no space left on device while writing {d / store.STATE}"
    # no partial file: only the error and, complete, the weights of the epoch selected before the disk filled up
    assert sorted(p.name for p in d.iterdir()) == sorted([store.ERROR, store.SELECTED])


# ------------------------------------------------------------------------------------------ case 11: threads, progress
def test_thread_count_from_usable_cpus(monkeypatch):
    from lskd_bench.runners.executors import SubprocessExecutor
    from lskd_bench.runners.train import thread_count

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # 8 CPUs allowed (of any machine size)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_count({"threads": None}) == 8
    assert thread_count({"threads": 3}) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert thread_count({"threads": None}) == 2
    # the subprocess executor shares the same CPUs among the units it runs at once
    cfg = {
        "jobs": 3,
        "device": "cpu",
        "num_workers": 0,
        "gpus": None,
        "per_gpu": 1,
        "nproc_per_node": 1,
        "threads": None,
    }
    assert SubprocessExecutor().layout(cfg)[1:3] == (3, 2)  # a resolved config's keys


@pytest.mark.slow
def test_threads_setting_is_applied_recorded_and_not_part_of_the_hash(tmp_path, cli, tiny_cfg):
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    from ..fixtures import tiny_overrides

    assert [c.hash for c in plan_cells(resolve_config("digits", {}, {**tiny_overrides(), "threads": 3}))] == [
        c.hash for c in plan_cells(tiny_cfg)
    ]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the value asked for: a run that did not apply --threads 1 would record 2
    try:
        rc, _, err = cli("run", "--out", str(tmp_path), *TINY_ARGS, "--no-baseline", "--threads", "1")
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert rc == 0, err
    envs = [json.loads(p.read_text())["env"] for p in tmp_path.rglob(store.RESULT)]
    assert [e["threads"] for e in envs] == [1, 1] and after == 2  # applied during the run, restored after it


def test_step_progress_is_rate_limited_with_rate_and_loss():
    from lskd_bench.runners.train import StepMeter

    now = [100.0]
    meter = StepMeter(interval=2.0, clock=lambda: now[0])
    meter.start(first=10, total=110)
    shown = []
    for step in range(11, 111):
        now[0] += 0.25  # 4 steps/s
        line = meter.update(step, {"a0.1": 1.5 / step})
        if line:
            shown.append(line)
    assert len(shown) == 12  # once every 2 s of a 25 s epoch
    assert shown[0] == "step 18/110, 4.00 steps/s, loss a0.1=0.083"
    assert shown[-1] == "step 106/110, 4.00 steps/s, loss a0.1=0.014"
