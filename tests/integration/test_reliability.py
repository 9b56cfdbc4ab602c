"""Reliability: config schema errors, bad data, cross-process locks, failing cells, failing disks."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lskd_bench import store
from lskd_bench.methods import METHODS, HintonKD, total_loss
from lskd_bench.runners.lock import LOCK, CellLock, read_lock

from ..fixtures import WNIDS, make_imagefolder

HANG_GUARD_S = 15 * 60  # only prevents a hung test; no assertion depends on speed


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text()) for p in out.rglob(store.RESULT)}


# ------------------------------------------------------------------------------------------ config
def test_config_command_prints_values_and_their_sources(tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("student:\n  epochs: 7\n")
    rc, out, err = cli("config", "--task", "digits", "--config", str(cfg), "--set", "teacher.lr=0.2", "--seeds", "0,1")
    assert rc == 0, err
    lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
    assert re.fullmatch(r"teacher\.lr: 0\.2 +# command line", lines["teacher.lr"])
    assert re.fullmatch(rf"student\.epochs: 7 +# config {re.escape(str(cfg))}", lines["student.epochs"])
    assert re.fullmatch(r"teacher\.epochs: 30 +# recipe lskd_bench/configs/digits\.yaml", lines["teacher.epochs"])
    assert re.fullmatch(r"grid\.seeds: \[0, 1\] +# command line", lines["grid.seeds"])
    assert re.fullmatch(r"grid\.alphas: \[0\.0, 0\.1\] +# default", lines["grid.alphas"])
    assert re.fullmatch(r"kd\.lambda: 1\.0 +# recipe lskd_bench/configs/digits\.yaml", lines["kd.lambda"])
    assert re.fullmatch(r"kd\.t_squared: true +# default", lines["kd.t_squared"])


def test_unknown_key_in_config_file_names_the_file(tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  epoch: 5\n")
    rc, _, err = cli("run", "--out", str(tmp_path / "runs"), "--config", str(cfg))
    assert rc == 2 and err.count("\n") == 1
    assert f"unknown config key teacher.epoch (did you mean teacher.epochs?) (config {cfg})" in err
    assert not (tmp_path / "runs").exists()


def test_typo_does_not_change_cell_hashes(tiny_cfg):
    """A key nothing reads cannot reach a cell's identity: it is refused before planning."""
    from lskd_bench.errors import UsageError
    from lskd_bench.runners.grid import resolve_config

    from ..fixtures import tiny_overrides

    with pytest.raises(UsageError, match="did you mean teacher.epochs"):
        resolve_config("digits", {}, {**tiny_overrides(), "teacher": {"epochs": 1, "epoch": 5}})


def test_non_identity_keys_keep_the_hash(tiny_cfg):
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    from ..fixtures import tiny_overrides

    other = resolve_config(
        "digits",
        {},
        {
            **tiny_overrides(),
            "eval_batch_size": 7,
            "num_workers": 1,
            "student": {"epochs": 1, "eval_every": 5, "checkpoint_every": 3},
        },
    )
    assert [c.hash for c in plan_cells(other)] == [c.hash for c in plan_cells(tiny_cfg)]
    changed = resolve_config("digits", {}, {**tiny_overrides(), "student": {"epochs": 1, "lr": 0.01}})
    assert {c.hash for c in plan_cells(changed) if c.role == "teacher"} == {
        c.hash for c in plan_cells(tiny_cfg) if c.role == "teacher"
    }
    assert {c.hash for c in plan_cells(changed) if c.role == "student"}.isdisjoint(
        {c.hash for c in plan_cells(tiny_cfg)}
    )


# ------------------------------------------------------------------------------------------ data
FAST = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--lr",
    "0.001",
    "--num-workers",
    "2",
    "--alphas",
    "0.1",
    "--temperatures",
    "1",
    "--set",
    "data.image_size=32",
    "--no-progress",
]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_check_data_and_run(tmp_path, cli):
    root = make_imagefolder(tmp_path / "inet")
    bad = sorted((root / "train" / WNIDS[1]).iterdir())[1]
    truncate(bad)
    rc, out, err = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 2
    assert f"problem: {bad}: OSError: Truncated File Read" in out
    assert "imagenet: 1 problem(s) in the data (train 12, val 6)" in err

    runs = tmp_path / "runs"
    rc, _, err = cli("run", "--task", "imagenet", "--data-root", str(root), "--out", str(runs), *FAST)
    assert rc == 2 and err.count("\n") == 1
    assert f"lskd-bench: error: cannot read {bad}: OSError: Truncated File Read" in err
    errors = [json.loads(p.read_text()) for p in runs.rglob(store.ERROR)]
    assert errors and all(e["error"] == "DataError" for e in errors)
    assert not list(runs.rglob(store.RESULT))

    rc, out, err = cli(
        "run",
        "--task",
        "imagenet",
        "--data-root",
        str(root),
        "--out",
        str(runs),
        *FAST,
        "--set",
        "data.on_bad_sample=skip",
    )
    assert rc == 0, err
    res = results(runs)
    assert res["teacher_resnet50_a0.1_s0"]["skipped_samples"] == [str(bad)]
    assert not list(runs.rglob(store.ERROR))  # the retried cells' errors are gone


def test_check_data_clean_root_and_duplicates(tmp_path, cli):
    root = make_imagefolder(tmp_path / "inet")
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 0 and "imagenet: data OK (train 12, val 6)" in out
    src = sorted((root / "train" / WNIDS[0]).iterdir())[0]
    (root / "val" / WNIDS[0] / "copy.JPEG").write_bytes(src.read_bytes())
    rc, out, _ = cli("check-data", "--task", "imagenet", "--data-root", str(root), "--no-progress")
    assert rc == 2 and "problem: duplicate files (same content): " in out and "copy.JPEG" in out


@pytest.mark.parametrize(
    "breakage,message",
    [
        (
            lambda r: [p.unlink() for p in (r / "train" / WNIDS[0]).iterdir()],
            f"class folder {{root}}/train/{WNIDS[0]} has no image files",
        ),
        (
            lambda r: __import__("shutil").rmtree(r / "val" / WNIDS[2]),
            f"1 class(es) missing from val/ (e.g. {WNIDS[2]})",
        ),
    ],
)
def test_bad_class_folders_exit_2_before_writing(tmp_path, cli, breakage, message):
    root = make_imagefolder(tmp_path / "inet")
    breakage(root)
    rc, _, err = cli("run", "--task", "imagenet", "--data-root", str(root), "--out", str(tmp_path / "runs"), *FAST)
    assert rc == 2 and err.count("\n") == 1 and message.format(root=root) in err
    assert not (tmp_path / "runs").exists()


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
    done = results(tmp_path)
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
    assert list(results(tmp_path)) == ["baseline_cnn_tiny_s0"]


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
    assert torch.load(d / store.STATE, weights_only=False)["epoch"] == expect_epoch  # intact checkpoint
    seen = []
    (outcome,) = train_group(task, [teacher], cfg, data, [d], progress=False, on_epoch_end=seen.append)
    assert outcome.error is None and (d / store.RESULT).is_file() and not (d / store.ERROR).exists()
    assert seen == ([] if expect_epoch == 2 else [2])  # resumed from the checkpoint, nothing retrained


# ------------------------------------------------------------------------------------------ locks
def test_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path):
    a, b = CellLock(tmp_path), CellLock(tmp_path)
    assert a.try_acquire(stale_s=60) and not b.try_acquire(stale_s=60)
    assert read_lock(tmp_path).pid == os.getpid()
    a.release()
    assert b.try_acquire(stale_s=60)
    b.release()
    # a dead owner on this host: stale at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "token": "x", "since": 0}))
    assert CellLock(tmp_path).try_acquire(stale_s=60)
    # a live owner on another machine whose heartbeat stopped: stale once older than stale_s
    (tmp_path / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y", "since": 0}))
    assert not CellLock(tmp_path).try_acquire(stale_s=60)
    old = time.time() - 120
    os.utime(tmp_path / LOCK, (old, old))
    assert CellLock(tmp_path).try_acquire(stale_s=60)


def test_two_concurrent_runs_train_every_cell_exactly_once(tmp_path):
    args = [
        sys.executable,
        "-m",
        "lskd_bench",
        "run",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--alphas",
        "0,0.1",
        "--temperatures",
        "1,2",
        "--epochs",
        "3",
        "--seeds",
        "0",
        "--no-fuse",
        "--set",
        "lock.poll_s=0.05",
    ]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    counts = []
    for out, _ in outs:
        m = re.search(r"7 cells: trained (\d+), reused (\d+) finished(?:, (\d+) finished by another process)?", out)
        assert m, out
        trained, reused, other = (int(g or 0) for g in m.groups())
        assert trained + reused + other == 7
        counts.append(trained)
    assert sum(counts) == 7  # no cell was trained twice
    assert len(results(tmp_path)) == 7 and not list(tmp_path.rglob(LOCK))


def test_run_waits_for_a_cell_held_by_a_live_process(tmp_path, cli):
    """A cell locked by another live process is not trained here; once the holder lets go without a
    result, this run trains it."""
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
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        d = teacher.dir(tmp_path)
        d.mkdir(parents=True)
        (d / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "token": "z", "since": 0}))
        import threading

        def release_later():
            while not (tmp_path / "digits" / "configs").exists():  # the run has started
                time.sleep(0.05)
            time.sleep(0.5)
            holder.kill()  # dies without a result: its lock is stale (left unreaped: a zombie counts as dead)

        threading.Thread(target=release_later, daemon=True).start()
        rc, out, err = cli(
            "run",
            "--out",
            str(tmp_path),
            "--alphas",
            "0.1",
            "--temperatures",
            "1",
            "--epochs",
            "1",
            "--seeds",
            "0",
            "--no-baseline",
            "--no-progress",
            "--set",
            "lock.poll_s=0.05",
        )
    finally:
        holder.kill()
        holder.wait()
    assert rc == 0, err
    assert "2 cells: trained 2, reused 0 finished" in out


# ------------------------------------------------------------------------------------------ hand-edited results
_EDITS = {
    "metrics a list": lambda r: r.update(metrics=[1, 2]),
    "metrics empty": lambda r: r.update(metrics={}),
    "metric a string": lambda r: r["metrics"].update(top1="high"),
    "alpha a string": lambda r: r["cell"].update(alpha="0.1"),
    "role missing": lambda r: r["cell"].pop("role"),
    "seed a string": lambda r: r["cell"].update(seed="0"),
    "T a list": lambda r: r["cell"].update(T=[1]),
    "history a dict": lambda r: r.update(history={"epoch": 1}),
    "history row a list": lambda r: r["history"].append([3, 1.0]),
    "history loss a string": lambda r: r["history"][0].update(loss="x"),
    "history eval a list": lambda r: r["history"][0].update(eval=[40.0]),
    "best metrics a list": lambda r: r.update(best={"epoch": 1, "metrics": [1]}),
    "epochs a string": lambda r: r.update(epochs="2"),
    "timings without wall_s": lambda r: r.update(timings={}),
    "metric_specs a string": lambda r: r.update(metric_specs="top1"),
    "selection a list": lambda r: r.update(selection=["valid"]),
    "run_config a list": lambda r: r.update(run_config=[1]),
}


@pytest.mark.parametrize("edit", list(_EDITS))
def test_hand_edited_result_of_wrong_types_is_skipped_and_named(tmp_path, cli, edit):
    """leaderboard, compare and plot skip a result.json of the wrong types with a warning naming the file, as they do
    for one that is not JSON, and report the other cells."""
    from ..fixtures import fake_results

    runs = tmp_path / "runs"
    fake_results(runs)
    bad = next(p for p in sorted(runs.rglob(store.RESULT)) if "student_dkd" in str(p))
    res = json.loads(bad.read_text())
    _EDITS[edit](res)
    bad.write_text(json.dumps(res))
    for argv in (["leaderboard"], ["compare"], ["plot"]):
        rc, _, err = cli(*argv, "--runs", str(runs))
        assert rc == 0, (argv, err)
        assert f"warning: {bad} " in err and "skipped" in err, (argv, err)
        assert "Traceback" not in err


def test_live_local_owner_is_never_stale_whatever_its_heartbeat_age(tmp_path, cli):
    """heartbeat_s >= stale_s used to let a second run take over a live owner's lock (two runs trained the same
    cells): a live owner on this host is judged by its process, not its heartbeat; a reused pid is not its owner;
    and a heartbeat interval that could outlast stale_s is refused."""
    a = CellLock(tmp_path)
    assert a.try_acquire(stale_s=60)
    old = time.time() - 3600
    os.utime(tmp_path / LOCK, (old, old))  # no heartbeat for an hour, owner (this process) alive
    assert read_lock(tmp_path).age > 60
    assert not CellLock(tmp_path).try_acquire(stale_s=60)
    a.release()
    rec = {"host": os.uname().nodename, "pid": os.getpid(), "token": "x", "since": 0, "start": 1}  # a reused pid
    (tmp_path / LOCK).write_text(json.dumps(rec))
    assert CellLock(tmp_path).try_acquire(stale_s=60)
    rc, _, err = cli(
        "run",
        "--dry-run",
        "--out",
        str(tmp_path / "runs"),
        "--set",
        "lock.heartbeat_s=300",
        "--set",
        "lock.stale_s=300",
    )
    assert rc == 2 and err == (
        "lskd-bench: error: lock.heartbeat_s (300) must be at most half of lock.stale_s (300): "
        "a lock is taken over when its heartbeat is older than stale_s\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["tasks"],
        ["methods"],
        ["config"],
        ["--help"],
        ["run", "--help"],
        ["run", "--dry-run", "--out", "{tmp}/runs"],
        ["leaderboard", "--runs", "{tmp}/runs"],
        ["status", "--runs", "{tmp}/runs"],
    ],
)
def test_closed_output_pipe_ends_every_command_quietly(tmp_path, argv):
    """`lskd-bench tasks | head -c1`: the reader is gone before the command writes (a pipe whose read end is
    closed, so the write fails every time): no traceback, no 'Exception ignored', exit 141 as SIGPIPE'd tools."""
    from ..fixtures import fake_results

    fake_results(tmp_path / "runs")
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lskd_bench", *[a.format(tmp=tmp_path) for a in argv]],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=HANG_GUARD_S,
        )
    finally:
        os.close(w)
    expected = 0 if "--help" in argv else 141  # argparse's help swallows the failed write itself
    assert proc.returncode == expected and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, (
        proc.stderr
    )
    assert "BrokenPipe" not in proc.stderr, proc.stderr


def test_head_reads_the_first_line_of_tasks(tmp_path):
    out = subprocess.run(
        f"{sys.executable} -m lskd_bench tasks | head -c1; echo; {sys.executable} -m lskd_bench methods | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert out.stderr == "" and out.stdout.count("\n") == 2 and out.stdout.startswith("c\n") and len(out.stdout) > 10


FAST_DIGITS = ["--epochs", "1", "--alphas", "0.1", "--temperatures", "1", "--seeds", "0", "--no-progress"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--device", "cuda"], "device cuda: torch sees no CUDA GPU on this machine; use --device cpu or auto"),
        (["run", "--device", "cuda", "--executor", "subprocess"], "device cuda: torch sees no CUDA GPU"),
        (
            ["run", "--gpus", "3"],
            "gpus 3: torch sees no CUDA GPU on this machine; leave out --gpus (and --per-gpu) to train on the CPU",
        ),
        (["run", "--gpus", "0,1", "--nproc-per-node", "2"], "gpus 0,1: torch sees no CUDA GPU"),
        (["translate", "--run", "{tmp}/none", "--device", "cuda"], "device cuda: torch sees no CUDA GPU"),
    ],
)
def test_gpu_options_without_a_gpu_are_one_line(tmp_path, cli, argv, needle):
    """--device cuda and --gpus on a machine without a GPU: one line, exit 2, nothing written (they used to
    train on the CPU saying '1 GPU (3)', or end in a traceback)."""
    runs = tmp_path / "runs"
    rc, out, err = cli(
        *[a.format(tmp=tmp_path) for a in argv], *(["--out", str(runs), *FAST_DIGITS] if argv[0] == "run" else [])
    )
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not runs.exists()


# ------------------------------------------------------------------------------------------ CIFAR: run checks as check-data
def _edit_cifar_train(d: Path, edit) -> None:
    import pickle

    with open(d / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    edit(raw)
    with open(d / "train", "wb") as f:
        pickle.dump(raw, f, protocol=2)


def test_cifar_without_train_images_stops_run_as_check_data_does(tmp_path, cli):
    """A train pickle with 0 images: check-data exits 2; run --dry-run and run used to exit 0 and train."""
    import numpy as np

    from ..fixtures import make_cifar100

    d = make_cifar100(tmp_path / "data", per_class=(1, 1))
    _edit_cifar_train(d, lambda raw: raw.update({b"data": np.zeros((0, 3072), np.uint8), b"fine_labels": []}))
    base = ["--task", "cifar100", "--data-root", str(tmp_path / "data")]
    rc, out, err = cli("check-data", "--no-progress", *base)
    assert rc == 2 and "problem: train: 100 class(es) without images (e.g. apple) (it holds no images)" in out
    runs = tmp_path / "runs"
    for extra in (["--dry-run"], ["--epochs", "1", "--no-progress"]):
        rc, _, err = cli("run", "--out", str(runs), *base, *extra)
        assert rc == 2 and err == (
            f"lskd-bench: error: cifar100: {d}: train: 100 class(es) without images (e.g. apple) (it holds no images)\n"
        ), err
        assert not runs.exists()


@pytest.mark.parametrize(
    "labels, needle",
    [
        (lambda n: [3.5] + [0] * (n - 1), "fine_labels must be integers, got 3.5"),
        (lambda n: [True] * n, "fine_labels must be integers, got True"),
        (
            lambda n: [5] * (n - 1) + [-1],
            "1 fine_labels outside 0..99 (e.g. image {last}: -1)",
        ),  # not the largest valid
    ],
)
def test_cifar_labels_are_integers_in_range_and_the_example_is_a_bad_one(tmp_path, cli, labels, needle):
    from ..fixtures import make_cifar100

    d = make_cifar100(tmp_path / "data", per_class=(1, 1))
    _edit_cifar_train(d, lambda raw: raw.update({b"fine_labels": labels(len(raw[b"fine_labels"]))}))
    rc, _, err = cli(
        "run", "--dry-run", "--out", str(tmp_path / "runs"), "--task", "cifar100", "--data-root", str(tmp_path / "data")
    )
    assert rc == 2 and err.count("\n") == 1 and needle.format(last=99) in err, err


def test_ascii_locale_reads_recipes_and_writes_tables(tmp_path):
    """Under LANG=C without Python's UTF-8 mode the locale encoding is ASCII: the shipped recipes (UTF-8, 'mean ±
    std') are read as UTF-8 and tables with 'α' are written as UTF-8 and printed escaped, not a traceback."""
    from ..fixtures import fake_results

    fake_results(tmp_path / "runs")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = {}
    for argv in (["config"], ["tasks"], ["leaderboard", "--runs", str(tmp_path / "runs")]):
        proc = subprocess.run(
            [sys.executable, "-m", "lskd_bench", *argv], env=env, capture_output=True, timeout=HANG_GUARD_S
        )
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
        out[argv[0]] = proc.stdout
    assert "α = 0.0" in (tmp_path / "runs" / "leaderboard.md").read_text(encoding="utf-8")
    assert b"\\u03b1 = 0.0" in out["leaderboard"]


def test_yaml_key_given_twice_is_one_line(tmp_path, cli):
    """A second 'teacher:' block used to drop the first silently."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  epochs: 7\nstudent:\n  epochs: 2\nteacher:\n  lr: 0.2\n")
    rc, _, err = cli("config", "--config", str(cfg))
    assert rc == 2 and err == (
        f"lskd-bench: error: config {cfg}: key 'teacher' appears twice in one mapping (lines 1 and 5); merge the two\n"
    )
    cfg.write_text("teacher:\n  epochs: 7\n  epochs: 8\n")
    rc, _, err = cli("run", "--dry-run", "--config", str(cfg), "--out", str(tmp_path / "runs"))
    assert rc == 2 and "key 'epochs' appears twice in one mapping (lines 2 and 3)" in err


def test_method_given_twice_is_one_line(tmp_path, cli):
    rc, _, err = cli("run", "--dry-run", "--methods", "kd,dkd,kd", "--out", str(tmp_path / "runs"))
    assert rc == 2 and err == "lskd-bench: error: methods lists kd twice: kd, dkd, kd\n"


def test_byte_order_marks_are_not_text(tmp_path, cli, cub_root):
    """A UTF-8 BOM (Windows editors) used to become part of the first reference BLEU scores, of the first line
    translate/score read, and a 'field-count' error in a CUB index file."""
    import shutil

    from lskd_bench.runners.inference import read_text_lines
    from lskd_bench.tasks.nmt.corpus import read_corpus

    from ..fixtures import make_plain

    root = make_plain(tmp_path / "corpus", n_train=10, n_valid=3, n_test=4)
    clean = read_corpus(root, "en", "de")
    for name in ("test.de", "train.en"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    bom = read_corpus(root, "en", "de")
    assert bom.test == clean.test and bom.train == clean.train
    (tmp_path / "in.txt").write_bytes(b"\xef\xbb\xbfHallo\nWelt\n")
    assert read_text_lines(str(tmp_path / "in.txt")) == ["Hallo", "Welt"]
    cub = tmp_path / "cub"
    shutil.copytree(cub_root, cub)
    index = next(cub.rglob("images.txt"))
    index.write_bytes(b"\xef\xbb\xbf" + index.read_bytes())
    rc, out, err = cli("check-data", "--task", "cub200", "--data-root", str(cub), "--no-progress")
    assert rc == 0, err


def test_score_on_empty_files_is_one_line(tmp_path, cli):
    for name in ("ref.de", "hyp.de"):
        (tmp_path / name).write_text("")
    rc, _, err = cli("score", "--ref", str(tmp_path / "ref.de"), "--hyp", str(tmp_path / "hyp.de"))
    assert rc == 2 and err == f"lskd-bench: error: {tmp_path / 'ref.de'} is empty: nothing to score\n"


def test_fifos_named_like_data_never_block(tmp_path, cli, imagenet_root, cub_root):
    """A FIFO named like an image in a class folder is skipped unopened by check-data and run alike; one named like
    CUB's images.txt or a corpus file is refused unopened (opening a FIFO waits forever for a writer)."""
    import shutil

    from ..fixtures import make_plain

    inet = tmp_path / "inet"
    shutil.copytree(imagenet_root, inet)
    cls = sorted((inet / "train").iterdir())[0]
    os.mkfifo(cls / "fifo.JPEG")
    rc, out, err = cli("check-data", "--task", "imagenet", "--data-root", str(inet), "--no-progress")
    assert rc == 0, err
    assert "imagenet: data OK (train 12, val 6)" in out  # the FIFO is not listed
    cub = tmp_path / "cub"
    shutil.copytree(cub_root, cub)
    index = next(cub.rglob("images.txt"))
    index.unlink()
    os.mkfifo(index)
    for argv in (["check-data", "--no-progress"], ["run", "--dry-run", "--out", str(tmp_path / "runs")]):
        rc, _, err = cli(*argv, "--task", "cub200", "--data-root", str(cub))
        assert rc == 2 and err == f"lskd-bench: error: {index} is a FIFO, not a data file: refused unopened\n", err
    corpus = make_plain(tmp_path / "corpus", n_train=10, n_valid=3, n_test=4)
    (corpus / "test.de").unlink()
    os.mkfifo(corpus / "test.de")
    from lskd_bench.errors import UsageError
    from lskd_bench.tasks.nmt.corpus import read_corpus

    with pytest.raises(UsageError, match=r"corpus/test.de is (a FIFO|missing)"):
        read_corpus(corpus, "en", "de")


def _numeric_fields(section, prefix=""):
    from lskd_bench.schema import Section

    for key, f in section.fields.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(f, Section):
            yield from _numeric_fields(f, dotted)
        elif f.type in (int, float, [int], [float]):
            yield dotted, f


def test_every_numeric_key_of_every_task_has_an_upper_bound_and_refuses_nan():
    """Every int key refuses 10**20 (seeds, threads, sizes reach C ints: a traceback before), every float key NaN
    and infinity; the time keys that reach timers refuse 1e300. Checked over every task's full schema."""
    from lskd_bench.config import full_schema
    from lskd_bench.errors import UsageError
    from lskd_bench.tasks import get_task, task_names

    seen = 0
    for task in task_names():
        for key, f in _numeric_fields(full_schema(get_task(task))):
            scalar = f.type[0] if isinstance(f.type, list) else f.type
            bad = [10**20] if scalar is int else [float("nan"), float("inf"), -float("inf")]
            for v in bad:
                with pytest.raises(UsageError, match=re.escape(key)):
                    f.normalise([v] if isinstance(f.type, list) else v, key)
            seen += 1
    assert seen > 50
    for key in ("lock.heartbeat_s", "lock.stale_s", "lock.poll_s", "slurm.poll_s"):
        section, name = key.split(".")
        f = full_schema(get_task("digits")).fields[section].fields[name]
        with pytest.raises(UsageError, match=re.escape(key)):
            f.normalise(1e300, key)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--dry-run", "--seeds", "100000000000000000000"], "grid.seeds must be <= 2147483647, got 10000"),
        (
            ["run", "--dry-run", "--set", "lock.heartbeat_s=1e300"],
            "lock.heartbeat_s must be in [0.1, 3600], got 1e+300",
        ),
        (["run", "--dry-run", "--threads", "99999999999"], "threads must be in [1, 4096], got 99999999999"),
        (["run", "--dry-run", "--set", "teacher.seed=1e20"], "teacher.seed must be an integer"),
        (["analyze", "--target", "x", "--t1", "nan"], "--t1 must be > 0 and <= 1000000, got nan"),
        (["analyze", "--target", "x", "--limit", "100000000000000000000"], "--limit must be >= 1 and <= 2147483647"),
        (["visualize", "--per-class", "0"], "--per-class must be >= 1 and <= 2147483647, got 0"),
        (["translate", "--run", "x", "--lenpen", "nan"], "--lenpen must be >= -1000 and <= 1000, got nan"),
        (["translate", "--run", "x", "--max-len-a", "inf"], "--max-len-a must be >= 0 and <= 1000, got inf"),
        (["translate", "--run", "x", "--beam", "100000000000"], "--beam must be >= 1 and <= 1024"),
    ],
)
def test_huge_and_nan_options_are_one_line(tmp_path, cli, argv, needle):
    rc, _, err = cli(*argv, *(["--out", str(tmp_path / "runs")] if argv[0] == "run" else []))
    assert rc == 2 and err.count("\n") == 1 and needle in err, err


def test_cell_or_task_folder_replaced_by_a_file_is_one_line(tmp_path, cli):
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    from ..fixtures import tiny_overrides

    args = ["--alphas", "0.1", "--temperatures", "1", "--seeds", "0", "--epochs", "1", "--no-progress"]
    cell = next(
        c
        for c in plan_cells(resolve_config("digits", {}, tiny_overrides(grid={"alphas": [0.1], "temperatures": [1.0]})))
        if c.role == "student"
    )
    runs = tmp_path / "runs"
    (runs / "digits").mkdir(parents=True)
    cell.dir(runs).write_text("x")
    rc, _, err = cli("run", "--out", str(runs), *args)
    assert rc == 2 and err == (
        f"lskd-bench: error: {cell.dir(runs)} is a file where lskd-bench keeps a folder: move it away and run again\n"
    ), err
    cell.dir(runs).unlink()
    (runs / "digits").rmdir()
    (runs / "digits").write_text("x")
    rc, _, err = cli("run", "--out", str(runs), *args)
    assert rc == 2 and f"{runs / 'digits'} is a file where lskd-bench keeps a folder" in err
    for argv in (["status"], ["leaderboard"], ["plot"], ["compare"]):
        rc, _, err = cli(*argv, "--runs", str(runs))
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_the_same_data_at_another_path_reuses_the_finished_cells(tmp_path, cli):
    """data.root is part of a cell's hash (pinned: tests/test_hashes.py); the same data at another path used to
    retrain the grid. Cells now record their data's fingerprint (data.json) and a run on the same content at
    another path links to them; other content trains anew."""
    import shutil

    from ..fixtures import make_cifar100

    make_cifar100(tmp_path / "a", per_class=(1, 1))
    args = [
        "--task",
        "cifar100",
        "--alphas",
        "0.1",
        "--temperatures",
        "1",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--no-baseline",
        "--no-progress",
        "--out",
        str(tmp_path / "runs"),
    ]
    rc, out, err = cli("run", "--data-root", str(tmp_path / "a"), *args)
    assert rc == 0 and "2 cells: trained 2" in out, err
    first = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").rglob(store.RESULT)}
    assert all((tmp_path / "runs" / "cifar100" / name / "data.json").is_file() for name in first)
    for name in first:  # as results made before data.json: found while their data is still at their path
        (tmp_path / "runs" / "cifar100" / name / "data.json").unlink()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same data, elsewhere
    rc, out, err = cli("run", "--data-root", str(tmp_path / "b"), *args)
    assert rc == 0 and "2 cells: trained 0, reused 2 finished" in out, out + err
    found = [line for line in out.splitlines() if line.startswith("found: ")]
    assert len(found) == 2 and all(f"finished at {tmp_path / 'a'}: " in line for line in found), out
    rc, out, _ = cli("leaderboard", "--runs", str(tmp_path / "runs"))
    assert rc == 0 and "(2 cells)" in _
    # other content at another path trains anew
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    _edit_cifar_train(
        tmp_path / "c" / "cifar-100-python",
        lambda raw: raw.update({b"fine_labels": list(reversed(raw[b"fine_labels"]))}),
    )
    rc, out, err = cli("run", "--data-root", str(tmp_path / "c"), *args)
    assert rc == 0 and "2 cells: trained 2" in out and "found: " not in out, out + err
