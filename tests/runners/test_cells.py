"""runners/cells.py: the planned cells of a tiny digits grid (order, teacher links, the T axis), what changes a
cell's hash, the teacher weights a student distils from and the cross-key grid rules."""

from __future__ import annotations

import json

import pytest

from lskd_bench import store
from lskd_bench.errors import UsageError
from lskd_bench.runners.cells import plan_cells, teacher_weights, validate_grid
from lskd_bench.runners.grid import resolve_config

from ..fixtures import real_result, tiny_overrides


def _cfg(**extra):
    return resolve_config("digits", {}, tiny_overrides(methods=["kd", "fitnet"], **extra))


def test_plan_cells_teachers_first_then_baseline_and_students_per_method_alpha_and_T():
    cells = plan_cells(_cfg())
    assert [c.name for c in cells] == [
        "teacher_cnn_wide_a0_s0",
        "teacher_cnn_wide_a0.1_s0",
        "baseline_cnn_tiny_s0",
        "student_kd_cnn_tiny_a0_T1_s0",
        "student_kd_cnn_tiny_a0_T4_s0",
        "student_kd_cnn_tiny_a0.1_T1_s0",
        "student_kd_cnn_tiny_a0.1_T4_s0",
        "student_fitnet_cnn_tiny_a0_Tnone_s0",  # fitnet has no temperature: one student per alpha
        "student_fitnet_cnn_tiny_a0.1_Tnone_s0",
    ]
    position = {c: i for i, c in enumerate(cells)}
    for c in cells:
        if c.role == "student":
            assert c.teacher is not None and c.teacher.role == "teacher" and c.teacher.alpha == c.alpha
            assert position[c.teacher] < position[c]
            assert (c.T is None) == (c.method == "fitnet")
        else:
            assert c.teacher is None and c.T is None and c.method == "ls"
    assert next(c for c in cells if c.role == "baseline").alpha == 0.0
    assert len({c.hash for c in cells}) == len(cells)


def test_cell_dir_and_describe(tmp_path):
    student = plan_cells(_cfg())[-1]
    assert student.dir(tmp_path) == tmp_path / "digits" / f"student_fitnet_cnn_tiny_a0.1_Tnone_s0-{student.hash}"
    d = student.describe()
    assert d["teacher"] == f"teacher_cnn_wide_a0.1_s0-{student.teacher.hash}"
    assert (d["role"], d["method"], d["T"], d["teacher_arch"]) == ("student", "fitnet", None, "cnn_wide")
    assert plan_cells(_cfg())[0].describe()["teacher_arch"] == "cnn_wide"  # a teacher's own arch


def test_hash_stable_for_an_equal_config_and_changed_by_identity_settings():
    base = {c.name: c.hash for c in plan_cells(_cfg())}
    assert {c.name: c.hash for c in plan_cells(_cfg())} == base
    # the teacher weights a student distils from: its students change, its teachers and the baseline do not
    last = {c.name: c.hash for c in plan_cells(_cfg(teacher_weights="last"))}
    assert {n for n in base if last[n] != base[n]} == {n for n in base if n.startswith("student_")}
    # a KD parameter changes only that method's students
    lam = {c.name: c.hash for c in plan_cells(_cfg(kd={"lambda": 0.5}))}
    assert {n for n in base if lam[n] != base[n]} == {n for n in base if n.startswith("student_kd_")}
    # per-rank BatchNorm statistics train something else: every cell
    per_rank = {c.name: c.hash for c in plan_cells(_cfg(sync_batchnorm=False))}
    assert all(per_rank[n] != base[n] for n in base)


def _finished(d, epochs, selected_epoch, weights):
    r = real_result()
    r["epochs"], r["best"]["epoch"] = epochs, selected_epoch
    if weights is None:
        del r["weights"]
    else:
        r["weights"] = weights
    d.mkdir(parents=True, exist_ok=True)
    (d / store.RESULT).write_text(json.dumps(r))


def test_teacher_weights_last_selected_and_an_old_teacher_without_selected_weights(tmp_path):
    teacher = plan_cells(_cfg())[1]
    d = teacher.dir(tmp_path)
    _finished(d, 5, 3, {"selected": store.SELECTED, "last": store.MODEL})
    name = f"{teacher.name}-{teacher.hash}"
    assert teacher_weights(teacher, tmp_path, "last") == (
        d / store.MODEL,
        {"cell": name, "which": "last", "file": store.MODEL, "epoch": 5, "last_epoch": 5},
    )
    assert teacher_weights(teacher, tmp_path, "selected") == (
        d / store.SELECTED,
        {"cell": name, "which": "selected", "file": store.SELECTED, "epoch": 3, "last_epoch": 5},
    )
    # finished before the selected epoch's weights were kept: its last weights if the last epoch was selected ...
    _finished(d, 5, 5, None)
    assert teacher_weights(teacher, tmp_path, "selected")[0] == d / store.MODEL
    # ... an error otherwise
    _finished(d, 5, 3, None)
    with pytest.raises(RuntimeError, match="kept no weights of its selected epoch 3"):
        teacher_weights(teacher, tmp_path, "selected")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["grid"].update(axes=["alpha", "alpha"]), "grid.axes lists an axis twice: alpha, alpha"),
        (lambda c: c["grid"].update(temperatures=[4.0, 4.0]), "grid.temperatures lists a value twice"),
        (lambda c: c.update(methods=["kd", "kd"]), "methods lists kd twice: kd, kd"),
    ],
)
def test_validate_grid_rejects_a_value_given_twice(edit, message):
    cfg = _cfg()
    validate_grid(cfg)
    edit(cfg)
    with pytest.raises(UsageError, match=message):
        validate_grid(cfg)
