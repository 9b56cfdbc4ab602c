"""``lskd_bench.runners.repair``: damaged run directories (empty locks, truncated checkpoints, bad result.json, a
deleted teacher model) are repaired with one line each and the grid finishes. Each test names the case of issue 18
it reproduces."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import torch

from lskd_bench.runners import store
from lskd_bench.runners.lock import LOCK
from lskd_bench.runners.repair import cell_problems, status_problem

from ..fixtures import TINY_ARGS, aged, cell_dirs, result_metrics


# ------------------------------------------------------------------------------------------ done when
@pytest.mark.slow
def test_damaged_run_dir_finishes_the_grid_with_one_line_per_repair(tmp_path, cli):
    """Cases 1-3 together: an empty lock.json, a truncated state.pt and a deleted teacher model.pt."""
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY_ARGS)
    assert rc == 0, err
    dirs = cell_dirs(tmp_path)
    teacher, student, base = (
        dirs["teacher_cnn_wide_a0.1_s0"],
        dirs["student_kd_cnn_tiny_a0.1_T1_s0"],
        dirs["baseline_cnn_tiny_s0"],
    )
    before = {d.name: result_metrics(d) for d in (teacher, student, base)}
    (teacher / store.MODEL).unlink()
    for d in (student, base):
        (d / store.RESULT).unlink()
    data = (student / store.MODEL).read_bytes()
    (student / store.STATE).write_bytes(data[: len(data) // 2])  # a checkpoint cut short by a crash
    (base / LOCK).write_bytes(b"")  # what a full disk at lock creation left behind
    aged(base / LOCK, 2 * 3600)

    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert rc == 0
    assert re.search(rf"{teacher.name} +damaged +- +model\.pt is missing: 'lskd-bench run' repairs it", out)
    assert re.search(rf"{student.name} +damaged +- +state\.pt is corrupt \(File is not a zip file\)", out)

    rc, out, err = cli("run", "--out", str(tmp_path), *TINY_ARGS)
    assert rc == 0, err
    repairs = [line for line in out.splitlines() if line.startswith("repaired: ")]
    assert len(repairs) == 3, out
    assert re.fullmatch(
        r"repaired: teacher_cnn_wide_a0\.1_s0: model\.pt is missing: the teacher is trained again "
        r"\(result\.json moved to result\.json\.unusable-model-\d{8}T\d{6}Z\)",
        repairs[0],
    )
    assert re.fullmatch(
        r"repaired: student_kd_cnn_tiny_a0\.1_T1_s0: state\.pt is corrupt \(File is not a zip file\): "
        r"moved to state\.pt\.corrupt-\d{8}T\d{6}Z; the cell restarts from scratch",
        repairs[1],
    )
    assert re.fullmatch(
        rf"repaired: baseline_cnn_tiny_s0: {re.escape(str(base / LOCK))} was unreadable \(empty\) and "
        r"untouched for 72\d\d s \(> lock\.stale_s 300 s\): taken over",
        repairs[2],
    )
    assert "3 cells: trained 3, reused 0 finished" in out
    # nothing lost: the damaged files are kept beside; retrained cells match the first run bit for bit
    assert (
        len(list(teacher.glob("result.json.unusable-model-*"))) == 1
        and len(list(student.glob("state.pt.corrupt-*"))) == 1
    )
    assert {d.name: result_metrics(d) for d in (teacher, student, base)} == before
    assert not list(tmp_path.rglob(LOCK)) and not list(tmp_path.rglob(store.STATE))


# ------------------------------------------------------------------------------------------ case 2: state.pt
@pytest.mark.slow
def test_checkpoint_that_does_not_load_is_moved_aside(tmp_path, tiny_cfg):
    """A complete-looking archive that still fails to load: the cell starts from scratch, said once."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.train import train_group
    from lskd_bench.tasks import get_task

    task = get_task("digits")
    data = task.load_data(tiny_cfg)
    teacher = next(c for c in plan_cells(tiny_cfg) if c.role == "teacher")
    clean, d = tmp_path / "clean", tmp_path / "cell"
    (ref,) = train_group(task, [teacher], tiny_cfg, data, [clean], progress=False)
    d.mkdir()
    with zipfile.ZipFile(d / store.STATE, "w") as z:
        z.writestr("archive/data.pkl", b"not a pickle")
    (out,) = train_group(task, [teacher], tiny_cfg, data, [d], progress=False)
    assert out.error is None
    (note,) = out.notes
    assert (
        note.startswith(f"repaired: {teacher.name}: state.pt is corrupt (") and "the cell restarts from scratch" in note
    )
    assert len(list(d.glob("state.pt.corrupt-*"))) == 1
    assert out.result["metrics"] == ref.result["metrics"] and out.result["resumes"] == []


@pytest.mark.slow
def test_damaged_checkpoint_resumes_from_the_one_before(tmp_path):
    """state.pt cut short after epoch 3: the cell resumes from state.prev.pt (epoch 2), says so once, and ends
    bit-identical to an uninterrupted run; finishing removes both checkpoints."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task

    from ..fixtures import tiny_overrides

    cfg = resolve_config("digits", {}, tiny_overrides(epochs=4))
    task = get_task("digits")
    data = task.load_data(cfg)
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    ref = train_cell(task, teacher, cfg, data, tmp_path / "ref", progress=False)

    def stop_after_three(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    d = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_cell(task, teacher, cfg, data, d, progress=False, on_epoch_end=stop_after_three)
    assert torch.load(d / store.STATE_PREV, weights_only=False)["position"]["epoch"] == 2
    data_pt = (d / store.STATE).read_bytes()
    (d / store.STATE).write_bytes(data_pt[: len(data_pt) // 2])

    seen = []
    res = train_cell(task, teacher, cfg, data, d, progress=False, on_epoch_end=seen.append)
    assert seen == [3, 4]  # epoch 3 again (its checkpoint was lost), then 4
    assert [(r["epoch"], r["step"]) for r in res["resumes"]] == [(3, 0)]
    assert [h["loss"] for h in res["history"]] == [h["loss"] for h in ref["history"]]
    assert res["metrics"] == ref["metrics"]
    assert len(list(d.glob("state.pt.corrupt-*"))) == 1
    assert not (d / store.STATE).exists() and not (d / store.STATE_PREV).exists()


@pytest.mark.slow
def test_repair_says_the_cell_resumes_from_the_previous_checkpoint(tmp_path, cli):
    import yaml

    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.repair import repair_cells

    rc, _, err = cli("run", "--out", str(tmp_path), *TINY_ARGS)
    assert rc == 0, err
    student = cell_dirs(tmp_path)["student_kd_cnn_tiny_a0.1_T1_s0"]
    (student / store.RESULT).unlink()
    model = (student / store.MODEL).read_bytes()
    (student / store.STATE).write_bytes(model[: len(model) // 2])  # damaged
    (student / store.STATE_PREV).write_bytes(model)  # stands in for a complete earlier checkpoint
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(
        rf"{student.name} +damaged +- +state\.pt is corrupt \(File is not a zip file\): 'lskd-bench run' "
        r"repairs it \(resumes from the previous checkpoint state\.prev\.pt\)",
        out,
    ), out
    cfg = yaml.safe_load(next((tmp_path / "digits" / "configs").glob("*.yaml")).read_text())
    repairs = repair_cells(plan_cells(cfg), tmp_path, cfg["teacher_weights"])
    assert len(repairs) == 1
    assert re.fullmatch(
        r"repaired: student_kd_cnn_tiny_a0\.1_T1_s0: state\.pt is corrupt \(File is not a zip file\): "
        r"moved to state\.pt\.corrupt-\d{8}T\d{6}Z; the cell resumes from the previous checkpoint "
        r"state\.prev\.pt",
        repairs[0],
    )


# ------------------------------------------------------------------------------------------ cases 3, 5, 8: results
@pytest.mark.slow
@pytest.mark.parametrize(
    "content,problem",
    [(b"{}", "lacks cell, metrics, epochs, timings"), (b'{"cell": {"task"', "is not valid JSON (truncated?)")],
)
def test_bad_result_json_is_reported_and_the_cell_retrained(tmp_path, cli, content, problem):
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY_ARGS, "--no-baseline")
    assert rc == 0, err
    student = cell_dirs(tmp_path)["student_kd_cnn_tiny_a0.1_T1_s0"]
    good = result_metrics(student)
    (student / store.RESULT).write_bytes(content)
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(rf"{student.name} +damaged +- +result\.json {re.escape(problem)}", out)
    rc, out, err = cli("leaderboard", "--runs", str(tmp_path))
    assert rc == 0 and "### digits: cnn_wide\n" in out and "T = 1" not in out  # the damaged student is left out...
    assert f"warning: skipped: {student / store.RESULT} ({problem}" in err  # ...and said so
    rc, out, err = cli("run", "--out", str(tmp_path), *TINY_ARGS, "--no-baseline")
    assert rc == 0, err
    assert re.search(
        rf"repaired: student_kd_cnn_tiny_a0\.1_T1_s0: result\.json {re.escape(problem)}.*: moved to "
        r"result\.json\.corrupt-\d{8}T\d{6}Z; the cell is trained again",
        out,
    )
    assert "2 cells: trained 1, reused 1 finished" in out and result_metrics(student) == good


@pytest.mark.slow
def test_status_does_not_promise_a_repair_run_will_not_make(tmp_path, cli):
    """A finished teacher without model.pt whose students all finished: run leaves it (nothing needs it), so
    status must not say that run retrains it."""
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY_ARGS)
    assert rc == 0, err
    teacher = cell_dirs(tmp_path)["teacher_cnn_wide_a0.1_s0"]
    (teacher / store.MODEL).unlink()
    rc, out, err = cli("run", "--out", str(tmp_path), *TINY_ARGS)
    assert rc == 0 and "trained 0" in out and "repaired:" not in out, out
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(
        rf"{teacher.name} +damaged +- +model\.pt is missing: 'lskd-bench run' repairs it when a student "
        r"still needs this teacher",
        out,
    ), out


# ------------------------------------------------------------------------------------------ detection
def _finished(d: Path, role: str = "teacher") -> None:
    cell = {"task": "digits", "role": role, "arch": "cnn_wide", "method": "ce", "hash": "0" * 12, "alpha": 0.1}
    res = {"cell": {**cell, "T": None, "seed": 0}, "metrics": {"top1": 1.0}, "epochs": 1, "timings": {"wall_s": 1.0}}
    store.write_json(d / store.RESULT, res)


def test_status_names_each_damaged_file_and_what_run_will_do(tmp_path):
    fine = tmp_path / "fine"
    _finished(fine)
    store.save_torch(fine / store.MODEL, {"w": torch.zeros(1)})
    assert cell_problems(fine, "teacher") == [] and status_problem(fine, "teacher") is None

    torn = tmp_path / "torn"
    _finished(torn)
    (torn / store.RESULT).write_text((torn / store.RESULT).read_text()[:20])
    assert [f for f, _ in cell_problems(torn, "student")] == [store.RESULT]
    assert status_problem(torn, "student").endswith("'lskd-bench run' repairs it (trains the cell again)")

    no_model = tmp_path / "no_model"
    _finished(no_model)
    assert status_problem(no_model, "teacher") == (
        "model.pt is missing: 'lskd-bench run' repairs it when a student still needs this teacher (trains it again)"
    )
    assert cell_problems(no_model, "student") == []  # only a teacher's weights are read by others

    resumable = tmp_path / "resumable"
    store.save_torch(resumable / store.STATE_PREV, {"epoch": 1})
    (resumable / store.STATE).write_bytes(b"PK\x03\x04 cut")
    assert status_problem(resumable, "student").startswith(f"{store.STATE} is corrupt")
    assert status_problem(resumable, "student").endswith(f"(resumes from the previous checkpoint {store.STATE_PREV})")


@pytest.mark.slow
def test_a_damaged_selected_teacher_file_is_repaired_when_students_load_it(tmp_path, cli):
    """digits students load the teacher's selected weights (teacher_weights: selected): a torn
    model_selected.pt is a damaged teacher (status says so) and the next run trains it again, bit for bit."""
    import json

    args = TINY_ARGS
    rc, _, err = cli("run", "--out", str(tmp_path), *args)
    assert rc == 0, err
    dirs = cell_dirs(tmp_path)
    teacher, student = dirs["teacher_cnn_wide_a0.1_s0"], dirs["student_kd_cnn_tiny_a0.1_T1_s0"]
    # one epoch: the selected epoch is the last; its weights kept as model_selected.pt too (as when they differ)
    (teacher / store.SELECTED).write_bytes((teacher / store.MODEL).read_bytes())
    tres = json.loads((teacher / store.RESULT).read_text())
    tres["weights"]["selected"] = store.SELECTED
    store.write_json(teacher / store.RESULT, tres)
    before = {d.name: result_metrics(d) for d in (teacher, student)}
    data = (teacher / store.SELECTED).read_bytes()
    (teacher / store.SELECTED).write_bytes(data[: len(data) // 2])
    (student / store.RESULT).unlink()
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(rf"{teacher.name} +damaged +- +model_selected\.pt is corrupt", out), out
    rc, out, err = cli("run", "--out", str(tmp_path), *args)
    assert rc == 0, err
    assert re.search(
        r"repaired: teacher_cnn_wide_a0\.1_s0: model_selected\.pt is corrupt .*: the teacher is trained again", out
    ), out
    assert {d.name: result_metrics(d) for d in (teacher, student)} == before
