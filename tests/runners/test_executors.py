"""The subprocess and torchrun (DDP, gloo on the CPU) executors train the same cells as the local one.

A new executor is one small module: an executor that trains each unit in a thread, written against the
handle API (start -> poll / result / cancel), runs the digits grid through the shared scheduling loop
(``scheduler.run_units``) and gives the local executor's results."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from lskd_bench import store
from lskd_bench.registry import EXECUTORS
from lskd_bench.runners.executors import Executor, unit_result_outcomes
from lskd_bench.runners.units import train_unit

ARGS = ["--alphas", "0.1", "--temperatures", "2", "--epochs", "2", "--seeds", "0", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--executor", "subprocess", "--jobs", "2"], ["--nproc-per-node", "2"]])
def test_process_executors_finish_every_cell(tmp_path, cli, extra):
    rc, out, err = cli("run", "--out", str(tmp_path), *ARGS, *extra)
    assert rc == 0, err
    assert "3 cells: trained 3, reused 0" in out
    results = [json.loads(p.read_text()) for p in tmp_path.rglob(store.RESULT)]
    assert sorted(r["cell"]["role"] for r in results) == ["baseline", "student", "teacher"]
    expected_procs = 2 if "--nproc-per-node" in extra else 1
    assert {r["env"]["processes"] for r in results} == {expected_procs}
    assert all(len(r["history"]) == 2 for r in results)
    rc, out, _ = cli("run", "--out", str(tmp_path), *ARGS, *extra)
    assert rc == 0 and "trained 0, reused 3" in out


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (from /proc) that are workers or their torchrun launcher."""
    from pathlib import Path

    parents, cmds = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmds[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        tree += kids
        todo += kids
    return [c for c in tree if b"lskd_bench.runners.worker" in cmds[c] or b"torch.distributed.run" in cmds[c]]


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (its new parent may never reap it)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("extra", [["--executor", "subprocess", "--jobs", "1"], ["--nproc-per-node", "2"]])
def test_worker_dies_with_a_killed_parent(tmp_path, extra):
    """kill -9 of ``lskd-bench run`` must not leave its worker training (and holding its GPU) as an orphan."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [
        sys.executable,
        "-m",
        "lskd_bench",
        "run",
        "--out",
        str(tmp_path),
        "--alphas",
        "0",
        "--temperatures",
        "1",
        "--epochs",
        "100000",
        "--seeds",
        "0",
        "--no-progress",
        *extra,
    ]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300  # hang guard only
        want = 3 if "--nproc-per-node" in extra else 1  # torchrun: the launcher and its two ranks
        while len(workers) < want and time.monotonic() < deadline and parent.poll() is None:
            workers = _children(parent.pid)
            time.sleep(0.1)
        assert workers, "the run started no worker"
        # the worker is training the teacher (it wrote a checkpoint) before the parent is killed
        while not list(tmp_path.rglob("state.pt")) and time.monotonic() < deadline and all(map(_alive, workers)):
            time.sleep(0.1)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 120  # hang guard only: SIGTERM unwinds the worker in well under that
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "the worker outlived its killed parent"
        # it went through its SIGTERM path: lock released, the cell recorded as interrupted (resumable)
        (cell,) = [p.parent for p in tmp_path.rglob("error.json")]
        assert not (cell / "lock.json").exists()
        assert json.loads((cell / "error.json").read_text())["error"] == "Interrupted"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_process_started_with_die_with_parent_ends_when_its_parent_is_killed():
    """The hook the subprocess and torchrun executors start workers with, on a ``sleep`` instead of a worker."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import subprocess, time\n"
        "from lskd_bench.runners.executors import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '600'], preexec_fn=die_with_parent())\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60  # hang guard only
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


# ---- the toy executor: everything a new executor needs (see README "executors"; its two imports: Executor,
# unit_result_outcomes and train_unit, at the top) --------------------------------------------------- 8< ---
class ThreadHandle:
    def __init__(self, ctx, unit):
        self.done = None
        self.thread = threading.Thread(target=self._train, args=(ctx, unit))
        self.thread.start()

    def _train(self, ctx, unit):
        self.done = train_unit(ctx, unit)  # an exception leaves done None: the loop reads the cells' folders

    def poll(self):
        return None if self.thread.is_alive() else True

    def result(self):
        return unit_result_outcomes(self.done) if self.done is not None else []

    def cancel(self):
        self.thread.join()


class ThreadExecutor(Executor):
    """Each unit in a thread of this process, one at a time (the loop decides which and when)."""

    poll_seconds = 0.05

    def open(self, plan):
        self.ctx = plan.context()  # the data loaded once for every unit

    def start(self, plan, unit, gpus):
        return ThreadHandle(self.ctx, unit)


# ------------------------------------------------------------------------------------------------- >8 ---
TOY_ARGS = ["--alphas", "0.1", "--temperatures", "1,2", "--epochs", "1", "--seeds", "0", "--no-progress"]


def _results(out):
    got = {}
    for p in out.rglob(store.RESULT):
        r = json.loads(p.read_text())
        got[p.parent.name] = (r["metrics"], r["best"], [(h["loss"], h["eval"]) for h in r["history"]])
    return got


@pytest.mark.slow
def test_a_toy_thread_executor_trains_the_grid_like_the_local_one(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(EXECUTORS._items, "thread", ThreadExecutor)
    rc, out, err = cli("run", "--out", str(tmp_path / "local"), *TOY_ARGS, "--executor", "local")
    assert rc == 0, err
    rc, out, err = cli("run", "--out", str(tmp_path / "thread"), *TOY_ARGS, "--executor", "thread")
    assert rc == 0, err
    assert "4 cells: trained 4, reused 0 finished" in out
    local, thread = _results(tmp_path / "local"), _results(tmp_path / "thread")
    assert sorted(local) == sorted(thread) and len(local) == 4  # teacher, baseline, two students: same hashes
    assert local == thread  # the same metrics, selected epoch and losses
    rc, out, _ = cli("run", "--out", str(tmp_path / "thread"), *TOY_ARGS, "--executor", "thread")
    assert rc == 0 and "trained 0, reused 4 finished" in out


@pytest.mark.slow
def test_units_side_by_side_on_the_cpu_train_what_one_unit_at_a_time_trains(tmp_path, cli):
    """``--jobs 2`` without GPUs: the auto executor picks subprocess, the two teachers train in units of their own
    and two worker processes of one thread run at once (as ``threads.cpu_jobs`` does by default for a large grid
    of small models); every cell's weights equal the local executor's bit for bit."""
    args = ["--alphas", "0,0.1", "--temperatures", "2", "--epochs", "2", "--seeds", "0", "--no-progress"]
    rc, out, err = cli("run", "--out", str(tmp_path / "local"), *args, "--executor", "local", "--threads", "1")
    assert rc == 0, err
    rc, out, err = cli("run", "--out", str(tmp_path / "jobs"), *args, "--jobs", "2")
    assert rc == 0, err
    assert "CPU: 2 units at a time as worker processes, 1 thread each (the jobs setting" in err + out
    local, jobs = _results(tmp_path / "local"), _results(tmp_path / "jobs")
    assert sorted(local) == sorted(jobs) and len(local) == 5 and local == jobs
    for d in (tmp_path / "local").rglob(store.MODEL):
        a = torch.load(d, weights_only=True)
        b = torch.load(tmp_path / "jobs" / d.relative_to(tmp_path / "local"), weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), d.parent.name
    envs = [json.loads(p.read_text())["env"] for p in (tmp_path / "jobs").rglob(store.RESULT)]
    assert {e["threads"] for e in envs} == {1} and {e["processes"] for e in envs} == {1}

    def shared(run: str) -> set[int]:  # how many teachers shared each epoch's data pass
        found = [json.loads(p.read_text()) for p in (tmp_path / run).rglob(store.RESULT)]
        return {e["shared_by"] for r in found if r["cell"]["role"] == "teacher" for e in r["timings"]["epochs"]}

    assert shared("local") == {2} and shared("jobs") == {1}  # one pass for both, a unit each
