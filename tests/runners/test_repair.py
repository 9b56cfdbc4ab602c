"""Reliability, round 2: damaged run directories, check-data agreeing with run, one-line errors, full disks,
the umask, SIGTERM, the thread setting, per-step progress and the environment of published tables.
Each test names the case of issue 18 it reproduces."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from lskd_bench.runners import store
from lskd_bench.runners.lock import LOCK, CellLock, read_lock

from ..fixtures import WNIDS, make_cub, make_imagefolder, make_plain

HANG_GUARD_S = 15 * 60  # only prevents a hung test; no assertion depends on speed
TINY = ["--alphas", "0.1", "--temperatures", "1", "--seeds", "0", "--epochs", "1", "--no-progress"]
IMG = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--num-workers",
    "0",
    "--lr",
    "0.001",
    "--alphas",
    "0.1",
    "--temperatures",
    "1",
    "--set",
    "data.image_size=32",
    "--no-progress",
]


def cell_dirs(out: Path) -> dict[str, Path]:
    return {p.name.rsplit("-", 1)[0]: p for p in (out / "digits").iterdir() if "_" in p.name}


def metrics(d: Path) -> dict:
    return json.loads((d / store.RESULT).read_text())["metrics"]


def aged(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# ------------------------------------------------------------------------------------------ done when
def test_damaged_run_dir_finishes_the_grid_with_one_line_per_repair(tmp_path, cli):
    """Cases 1-3 together: an empty lock.json, a truncated state.pt and a deleted teacher model.pt."""
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY)
    assert rc == 0, err
    dirs = cell_dirs(tmp_path)
    teacher, student, base = (
        dirs["teacher_cnn_wide_a0.1_s0"],
        dirs["student_kd_cnn_tiny_a0.1_T1_s0"],
        dirs["baseline_cnn_tiny_s0"],
    )
    before = {d.name: metrics(d) for d in (teacher, student, base)}
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

    rc, out, err = cli("run", "--out", str(tmp_path), *TINY)
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
    assert {d.name: metrics(d) for d in (teacher, student, base)} == before
    assert not list(tmp_path.rglob(LOCK)) and not list(tmp_path.rglob(store.STATE))


# ------------------------------------------------------------------------------------------ case 1: locks
def test_unreadable_lock_is_judged_by_its_age(tmp_path):
    (tmp_path / LOCK).write_bytes(b"")
    info = read_lock(tmp_path)
    assert info is not None and info.problem == "empty"
    assert info.describe().startswith("unreadable lock (empty), last touched ")
    assert not CellLock(tmp_path).try_acquire(stale_s=60)  # fresh: its writer may still be alive
    aged(tmp_path / LOCK, 120)
    lock = CellLock(tmp_path)
    assert lock.try_acquire(stale_s=60) and lock.took_over and "was unreadable (empty)" in lock.took_over
    assert read_lock(tmp_path).token == lock.token
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_lock_is_never_left_half_written(tmp_path, monkeypatch):
    """A full disk while the lock is written leaves no lock.json (before: an empty one, blocking the cell)."""
    real_open = open

    def full_disk_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if str(path).endswith(".tmp") and LOCK in str(path):

            def write(_):
                raise OSError(errno.ENOSPC, "No space left on device")

            f.write = write
        return f

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(
        store.DiskFull, match=f"no space left on device while writing {re.escape(str(tmp_path / LOCK))}"
    ):
        CellLock(tmp_path).try_acquire(stale_s=60)
    assert list(tmp_path.iterdir()) == []


def test_run_announces_a_wait_on_an_unreadable_lock_then_takes_it_over(tmp_path, cli):
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    cfg = resolve_config(
        "digits",
        {},
        {
            "grid": {"alphas": [0.1], "temperatures": [1.0], "seeds": [0]},
            "baseline": False,
            "teacher": {"epochs": 1},
            "student": {"epochs": 1},
        },
    )
    d = next(c for c in plan_cells(cfg) if c.role == "teacher").dir(tmp_path)
    d.mkdir(parents=True)
    (d / LOCK).write_bytes(b"")  # fresh: taken over once lock.stale_s (1 s) passed without a touch
    rc, out, err = cli(
        "run",
        "--out",
        str(tmp_path),
        *TINY,
        "--no-baseline",
        "--set",
        "lock.stale_s=1",
        "--set",
        "lock.heartbeat_s=0.5",
        "--set",
        "lock.poll_s=0.05",
    )
    assert rc == 0, err
    assert re.search(
        r"waiting: teacher_cnn_wide_a0\.1_s0 is locked \(unreadable lock \(empty\), last touched \d+ s ago; "
        r".*lock\.json\); taken over if its owner dies or it goes 1 s without a heartbeat",
        err,
    )
    assert "2 cells: trained 2, reused 0 finished" in out


# ------------------------------------------------------------------------------------------ case 2: state.pt
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
    assert torch.load(d / store.STATE_PREV, weights_only=False)["epoch"] == 2
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


def test_repair_says_the_cell_resumes_from_the_previous_checkpoint(tmp_path, cli):
    import yaml

    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.repair import repair_cells

    rc, _, err = cli("run", "--out", str(tmp_path), *TINY)
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
    repairs = repair_cells(plan_cells(cfg), tmp_path)
    assert len(repairs) == 1
    assert re.fullmatch(
        r"repaired: student_kd_cnn_tiny_a0\.1_T1_s0: state\.pt is corrupt \(File is not a zip file\): "
        r"moved to state\.pt\.corrupt-\d{8}T\d{6}Z; the cell resumes from the previous checkpoint "
        r"state\.prev\.pt",
        repairs[0],
    )


# ------------------------------------------------------------------------------------------ cases 3, 5, 8: results
@pytest.mark.parametrize(
    "content,problem",
    [(b"{}", "lacks cell, metrics, epochs, timings"), (b'{"cell": {"task"', "is not valid JSON (truncated?)")],
)
def test_bad_result_json_is_reported_and_the_cell_retrained(tmp_path, cli, content, problem):
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY, "--no-baseline")
    assert rc == 0, err
    student = cell_dirs(tmp_path)["student_kd_cnn_tiny_a0.1_T1_s0"]
    good = metrics(student)
    (student / store.RESULT).write_bytes(content)
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(rf"{student.name} +damaged +- +result\.json {re.escape(problem)}", out)
    rc, out, err = cli("leaderboard", "--runs", str(tmp_path))
    assert rc == 0 and "### digits: cnn_wide\n" in out and "T = 1" not in out  # the damaged student is left out...
    assert f"warning: {student / store.RESULT} {problem}" in err  # ...and said so
    rc, out, err = cli("run", "--out", str(tmp_path), *TINY, "--no-baseline")
    assert rc == 0, err
    assert re.search(
        rf"repaired: student_kd_cnn_tiny_a0\.1_T1_s0: result\.json {re.escape(problem)}.*: moved to "
        r"result\.json\.corrupt-\d{8}T\d{6}Z; the cell is trained again",
        out,
    )
    assert "2 cells: trained 1, reused 1 finished" in out and metrics(student) == good


def test_leaderboard_with_only_the_baseline_finished(tmp_path, cli):
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY, "--set", "teacher.lr=1e30", "--set", "teacher.epochs=2")
    assert rc == 1
    rc, out, _ = cli("leaderboard", "--runs", str(tmp_path))
    assert rc == 0 and "_No finished cells._" not in out
    assert re.search(
        r"### digits: cnn_tiny without KD\n\nStudent without KD \(cnn_tiny, cross-entropy\): \d+\.\d\d / ", out
    )


# ------------------------------------------------------------------------------------------ case 4: one listing
def test_check_data_and_training_read_the_same_files(tmp_path, cli):
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task

    root = make_imagefolder(tmp_path / "inet")
    cls = root / "train" / WNIDS[0]
    (cls / "loop").symlink_to(cls, target_is_directory=True)  # a symlink loop in a class folder
    task = get_task("imagenet")
    cfg = resolve_config("imagenet", {}, {"data": {"root": str(root), "image_size": 32}})
    listed = [p for split, p in task.files(cfg) if split == "train"]
    assert len(listed) == 12 and [Path(p) for p, _ in task.load_data(cfg).train.samples] == listed
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 0 and "imagenet: data OK (train 12, val 6)" in out

    dangling = cls / "gone.JPEG"
    dangling.symlink_to(tmp_path / "nowhere.JPEG")
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 2 and f"problem: {dangling}: cannot read: No such file or directory" in out
    rc, _, err = cli("run", "--task", "imagenet", "--data-root", str(root), "--out", str(tmp_path / "runs"), *IMG)
    assert rc == 2 and err.count("\n") == 1 and f"lskd-bench: error: cannot read {dangling}" in err


def _cub(tmp_path: Path, edit) -> Path:
    d = make_cub(tmp_path / "cub")
    edit(d)
    return d.parent


def _renumber_class_3_as_5(d: Path) -> None:
    (d / "classes.txt").write_text((d / "classes.txt").read_text().replace("3 ", "5 ", 1))
    rows = [line.split() for line in (d / "image_class_labels.txt").read_text().splitlines()]
    (d / "image_class_labels.txt").write_text("".join(f"{i} {'5' if c == '3' else c}\n" for i, c in rows))


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            _renumber_class_3_as_5,
            "class ids must be 1..3 without gaps (id 3 is missing; a subset of CUB must be renumbered",
        ),
        (
            lambda d: (d / "train_test_split.txt").write_text(
                (d / "train_test_split.txt").read_text().replace("1 1\n", "1 2\n", 1)
            ),
            "train_test_split.txt: image 1 has '2', expected 1 (train) or 0 (test)",
        ),
        (
            lambda d: (d / "train_test_split.txt").write_text(
                (d / "train_test_split.txt").read_text().replace("1 1\n", "1 1 0\n", 1)
            ),
            "train_test_split.txt: image 1 has '1 0', expected 1 (train) or 0 (test)",
        ),
        (
            lambda d: (d / "image_class_labels.txt").write_text(
                (d / "image_class_labels.txt").read_text().replace("1 1\n", "1 one\n", 1)
            ),
            "image_class_labels.txt: image 1 has 'one', expected one integer class id",
        ),
        (
            lambda d: (d / "classes.txt").write_bytes(
                b"1 \xff\xfeAlbatross\n" + (d / "classes.txt").read_bytes().split(b"\n", 1)[1]
            ),
            "classes.txt:1: not valid UTF-8 (invalid start byte at byte 2)",
        ),
    ],
)
def test_cub_index_faults_are_one_line_before_anything_is_written(tmp_path, cli, edit, message):
    root = _cub(tmp_path, edit)
    for cmd in (["check-data", "--no-progress"], ["run", "--out", str(tmp_path / "runs"), *IMG]):
        rc, _, err = cli(cmd[0], "--task", "cub200", "--data-root", str(root), *cmd[1:])
        assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ case 5: one line, exit 2
def test_bad_inputs_are_one_line_exit_2(tmp_path, cli):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"student:\n  epochs: 2 # r\xe9sum\xe9\n")
    for flag in ("--config", "--runner-profile"):
        rc, _, err = cli("run", "--out", str(tmp_path / "runs"), flag, str(bad), *TINY)
        assert rc == 2 and err == f"lskd-bench: error: config {bad} is not UTF-8 text (byte 24, line 2)\n"
    pickled = tmp_path / "object.pt"
    torch.save({"where": Path("x")}, pickled)  # a pickle, but not of tensors (PyTorch: "use weights_only=False")
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    for junk, error in ((pickled, "UnpicklingError"), (text, "IndexError")):
        for flag in ("--init-checkpoint", "--teacher-checkpoint"):
            rc, _, err = cli("run", "--out", str(tmp_path / "runs"), flag, str(junk), *TINY)
            assert rc == 2 and err.count("\n") == 1, err
            assert err.startswith(f"lskd-bench: error: {junk} is not a PyTorch checkpoint of weights ({error}: ")
            assert "weights_only" not in err  # not PyTorch's advice to load it unsafely
    assert not (tmp_path / "runs").exists()


def test_truncated_features_npz_is_one_line(tmp_path, cli):
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY, "--alphas", "0,0.1")
    assert rc == 0, err
    feats = cell_dirs(tmp_path)["student_kd_cnn_tiny_a0.1_T1_s0"] / store.FEATURES
    feats.write_bytes(feats.read_bytes()[:1000])
    rc, _, err = cli("visualize", "--runs", str(tmp_path), "--classes", "0,1,2", "--out", str(tmp_path / "p.png"))
    assert rc == 2 and err.count("\n") == 1 and f"lskd-bench: error: {feats} is unreadable (BadZipFile: " in err


# ------------------------------------------------------------------------------------------ cases 6, 7: disk
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


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        store.write_json(tmp_path / "r.json", {"a": 1})
        store.save_torch(tmp_path / "m.pt", {"w": torch.zeros(2)})
        store.write_csv_md(tmp_path / "board", "a\n", "# a\n")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == dict.fromkeys(
        ["r.json", "m.pt", "board.csv", "board.md"], mode
    )


def test_run_writes_group_readable_files_under_umask_022(tmp_path, cli):
    old = os.umask(0o022)
    try:
        rc, _, err = cli("run", "--out", str(tmp_path), *TINY, "--no-baseline")
    finally:
        os.umask(old)
    assert rc == 0, err
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert len(modes) >= 8 and set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------------------------ case 9: data first
def test_translation_layout_error_writes_nothing(tmp_path, cli):
    root = make_plain(tmp_path / "d", n_train=10)
    (root / "train.de").write_text("a\nb\n")
    for extra in ([], ["--dry-run"]):
        rc, _, err = cli(
            "run", "--task", "iwslt_ende", "--data-root", str(root), "--out", str(tmp_path / "runs"), *extra
        )
        assert rc == 2 and err.count("\n") == 1 and "the files are not aligned" in err
    assert not (tmp_path / "runs").exists()


def test_dry_run_checks_the_data_layout(tmp_path, cli):
    root = make_imagefolder(tmp_path / "inet")
    for p in (root / "val" / WNIDS[1]).iterdir():
        p.unlink()
    rc, out, err = cli(
        "run", "--task", "imagenet", "--data-root", str(root), "--out", str(tmp_path / "runs"), "--dry-run"
    )
    assert rc == 2 and out == "" and f"class folder {root}/val/{WNIDS[1]} has no image files" in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ case 10: SIGTERM
def test_sigterm_releases_locks_records_interrupted_and_exits_143(tmp_path, cli):
    args = [
        sys.executable,
        "-m",
        "lskd_bench",
        "run",
        "--out",
        str(tmp_path),
        *TINY,
        "--no-baseline",
        "--set",
        "teacher.epochs=50",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_GUARD_S
    while not list(tmp_path.rglob(store.STATE)):  # wait until the teacher checkpointed its first epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM): finished cells are saved" in err and "Traceback" not in err
    (teacher,) = [d for d in (tmp_path / "digits").iterdir() if d.name.startswith("teacher")]
    assert not (teacher / LOCK).exists() and (teacher / store.STATE).is_file()
    rec = json.loads((teacher / store.ERROR).read_text())
    assert rec["error"] == "Interrupted" and re.fullmatch(
        r"stopped by SIGTERM at epoch \d+, step \d+: run again to "
        r"resume from the last checkpoint",
        rec["message"],
    )
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(rf"{teacher.name} +interrupted +- +stopped by SIGTERM", out)


# ------------------------------------------------------------------------------------------ case 11: threads, progress
def test_thread_count_from_usable_cpus(monkeypatch):
    from lskd_bench.runners.executors import SubprocessExecutor
    from lskd_bench.runners.grid import GridJob
    from lskd_bench.runners.train import thread_count
    from lskd_bench.tasks import get_task

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
    job = GridJob(get_task("digits"), cfg, Path("."))  # a resolved config's keys
    assert SubprocessExecutor().plan(job)[1:3] == (3, 2)


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
        rc, _, err = cli("run", "--out", str(tmp_path), *TINY, "--no-baseline", "--threads", "1")
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


# ------------------------------------------------------------------------------------------ case 12: environment
def test_results_and_leaderboard_record_the_environment(tmp_path, cli):
    from lskd_bench import __version__
    from lskd_bench.envinfo import cpu_model

    rc, out, err = cli("run", "--out", str(tmp_path), *TINY, "--no-baseline", "--threads", "1")
    assert rc == 0, err
    env = json.loads(next(tmp_path.rglob(store.RESULT)).read_text())["env"]
    assert env["lskd_bench"] == __version__ and env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["cpu"] == cpu_model() and env["threads"] == 1 and env["commit"]
    md = (tmp_path / "digits" / "leaderboard.md").read_text()
    assert f"- trained with lskd-bench {__version__} (commit {env['commit']})\n" in md
    assert (
        f"- torch {torch.__version__}\n- device cpu ({cpu_model()})\n- CPU {cpu_model()}\n- threads per process 1\n"
        in md
    )
    assert "bit-identical when rerun on one machine" in md and md in out


def test_status_does_not_promise_a_repair_run_will_not_make(tmp_path, cli):
    """A finished teacher without model.pt whose students all finished: run leaves it (nothing needs it), so
    status must not say that run retrains it."""
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY)
    assert rc == 0, err
    teacher = cell_dirs(tmp_path)["teacher_cnn_wide_a0.1_s0"]
    (teacher / store.MODEL).unlink()
    rc, out, err = cli("run", "--out", str(tmp_path), *TINY)
    assert rc == 0 and "trained 0" in out and "repaired:" not in out, out
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    assert re.search(
        rf"{teacher.name} +damaged +- +model\.pt is missing: 'lskd-bench run' repairs it when a student "
        r"still needs this teacher",
        out,
    ), out
