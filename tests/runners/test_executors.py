"""A new executor is one small module: an executor that trains each unit in a thread, written against the
handle API (start -> poll / result / cancel), runs the digits grid through the shared scheduling loop
(``scheduler.run_units``) and gives the local executor's results."""

from __future__ import annotations

import json
import threading

from lskd_bench import store
from lskd_bench.registry import EXECUTORS

# ---- the toy executor: everything a new executor needs (see README "executors") --------------------- 8< ---
from lskd_bench.runners.executors import Executor, unit_result_outcomes
from lskd_bench.runners.units import train_unit


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
ARGS = ["--alphas", "0.1", "--temperatures", "1,2", "--epochs", "1", "--seeds", "0", "--no-progress"]


def _results(out):
    got = {}
    for p in out.rglob(store.RESULT):
        r = json.loads(p.read_text())
        got[p.parent.name] = (r["metrics"], r["best"], [(h["loss"], h["eval"]) for h in r["history"]])
    return got


def test_a_toy_thread_executor_trains_the_grid_like_the_local_one(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(EXECUTORS._items, "thread", ThreadExecutor)
    rc, out, err = cli("run", "--out", str(tmp_path / "local"), *ARGS, "--executor", "local")
    assert rc == 0, err
    rc, out, err = cli("run", "--out", str(tmp_path / "thread"), *ARGS, "--executor", "thread")
    assert rc == 0, err
    assert "4 cells: trained 4, reused 0 finished" in out
    local, thread = _results(tmp_path / "local"), _results(tmp_path / "thread")
    assert sorted(local) == sorted(thread) and len(local) == 4  # teacher, baseline, two students: same hashes
    assert local == thread  # the same metrics, selected epoch and losses
    rc, out, _ = cli("run", "--out", str(tmp_path / "thread"), *ARGS, "--executor", "thread")
    assert rc == 0 and "trained 0, reused 4 finished" in out
