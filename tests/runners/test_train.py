"""Fused grid training: the students of one teacher share each batch and the teacher forward, and end
bit-identical to students trained alone; groups resume per member, split at max_fused, and a new temperature
trains one student."""

from __future__ import annotations

import pytest
import torch

from lskd_bench import store
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import fuse_units, resolve_config, run_grid
from lskd_bench.runners.train import load_model, train_group
from lskd_bench.tasks import get_task

from ..fixtures import assert_fused_equals_alone, same_weights, tiny_overrides


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


def test_fused_students_equal_students_trained_alone(setup, tmp_path):
    cfg, task, data, students, tmodel, _ = setup
    assert len(students) == 4  # baseline, kd T1, kd T4, ctkd
    assert_fused_equals_alone(task, students, cfg, data, tmodel, tmp_path)
    # the order of the members does not matter either
    rev = list(reversed(students))
    train_group(task, rev, cfg, data, [tmp_path / "rev" / c.name for c in rev], teacher=tmodel, progress=False)
    assert all(same_weights(tmp_path / "rev" / c.name, tmp_path / "alone" / c.name) for c in students)


def test_killed_fused_group_resumes_every_member(setup, tmp_path):
    cfg, task, data, students, tmodel, _ = setup
    ref = tmp_path / "ref"
    train_group(task, students, cfg, data, [ref / c.name for c in students], teacher=tmodel, progress=False)

    def stop(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_group(
            task,
            students,
            cfg,
            data,
            [cut / c.name for c in students],
            teacher=tmodel,
            progress=False,
            on_epoch_end=stop,
        )
    assert all(torch.load(cut / c.name / store.STATE, weights_only=False)["epoch"] == 2 for c in students)
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
    units = fuse_units(cells, fuse=True, max_fused=cfg["max_fused"])
    roles = [sorted(c.role for c in u) for u in units]
    assert roles[0] == ["teacher", "teacher"]  # both alphas' teachers share one pass
    by_teacher = [u for u in units if u[0].role != "teacher"]
    assert len(by_teacher) == 2  # one group per teacher (alpha)
    assert sum(c.role == "baseline" for u in by_teacher for c in u) == 1  # the baseline joins one of them
    assert all(len({c.teacher.hash for c in u if c.teacher}) == 1 for u in by_teacher)
    split = fuse_units(cells, fuse=True, max_fused=2)
    assert max(len(u) for u in split) == 2 and sorted(c.hash for u in split for c in u) == sorted(c.hash for c in cells)
    assert all(len(u) == 1 for u in fuse_units(cells, fuse=False, max_fused=cfg["max_fused"]))


def test_adding_a_temperature_trains_only_that_student(tmp_path):
    cfg = resolve_config("digits", {}, tiny_overrides(grid={"alphas": [0.0, 0.1], "temperatures": [1.0, 2.0]}))
    first = run_grid(cfg, tmp_path, progress=False)
    assert len(first.trained) == 7
    more = resolve_config("digits", {}, tiny_overrides(grid={"alphas": [0.0, 0.1], "temperatures": [1.0, 2.0, 3.0]}))
    second = run_grid(more, tmp_path, progress=False)
    assert sorted(c.name for c in second.trained) == ["student_kd_cnn_tiny_a0.1_T3_s0", "student_kd_cnn_tiny_a0_T3_s0"]
