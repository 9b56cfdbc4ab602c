"""``lskd_bench.runners.lock``: one owner per cell across processes, stale locks taken over, unreadable locks
judged by their age."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time

import pytest

from lskd_bench import store
from lskd_bench.runners.lock import LOCK, CellLock, is_stale, read_lock

from ..fixtures import HANG_GUARD_S, TINY_ARGS, aged, results_by_cell


# ------------------------------------------------------------------------------------------ locks
@pytest.mark.slow
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


@pytest.mark.slow
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
    assert len(results_by_cell(tmp_path)) == 7 and not list(tmp_path.rglob(LOCK))


@pytest.mark.slow
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


@pytest.mark.slow
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
        *TINY_ARGS,
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


# ------------------------------------------------------------------------------------------ ownership
def test_release_never_removes_a_lock_another_process_took_over(tmp_path):
    mine = CellLock(tmp_path)
    assert mine.try_acquire(stale_s=60) and mine.owned()
    other = {"host": "elsewhere", "pid": 1, "token": "theirs", "since": 0}
    (tmp_path / LOCK).write_text(json.dumps(other))  # taken over while this process was thought dead
    assert not mine.owned()
    mine.release()
    assert read_lock(tmp_path).token == "theirs"


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    mine = CellLock(tmp_path)
    assert mine.try_acquire(stale_s=60)
    aged(tmp_path / LOCK, 3600)
    assert read_lock(tmp_path).age > 3000
    mine.heartbeat()
    assert read_lock(tmp_path).age < 60
    mine.release()
    assert not (tmp_path / LOCK).exists()


def test_a_pid_reused_by_another_process_is_not_the_owner(tmp_path):
    """The record holds the owner's process start time: this live pid with another start time is a new process
    that reused the owner's pid, so the lock is stale; with its own start time it is held."""
    mine = CellLock(tmp_path)
    assert mine.try_acquire(stale_s=60)
    record = json.loads((tmp_path / LOCK).read_text())
    assert record["pid"] == os.getpid() and "start" in record
    assert not is_stale(read_lock(tmp_path), stale_s=60)
    (tmp_path / LOCK).write_text(json.dumps({**record, "start": record["start"] - 1, "token": "old"}))
    assert is_stale(read_lock(tmp_path), stale_s=60)
    assert CellLock(tmp_path).try_acquire(stale_s=60)
