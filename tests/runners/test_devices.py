"""Local GPU scheduling (runners/devices.py and the subprocess/torchrun executors) with fake GPU ids: no CUDA
needed. Workers carry the ids they were given in CUDA_VISIBLE_DEVICES, which every result.json records,
and the parent appends each start and end to RUNS/<task>/devices.log, which the tests replay."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lskd_bench.runners import devices, store
from lskd_bench.runners.devices import DevicePool, discover
from lskd_bench.runners.executors import AutoExecutor, SubprocessExecutor, TorchrunExecutor

TINY = ["--alphas", "0,0.1", "--temperatures", "1,4", "--epochs", "1", "--seeds", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def gpu_machine(monkeypatch):
    """The parent process stands in for a GPU machine (explicit ``gpus`` are refused where torch sees no GPU);
    its workers train on the CPU, carrying the fake ids."""
    monkeypatch.setattr(devices, "cuda_available", lambda: True)


# ------------------------------------------------------------------------------------------ pool and discovery
def test_pool_gives_distinct_gpus_and_takes_them_back():
    pool = DevicePool(["0", "1", "2"])
    got = [pool.acquire() for _ in range(3)]
    assert got == [["0"], ["1"], ["2"]]
    assert pool.acquire() is None  # every GPU holds one unit
    pool.release(["1"])
    assert pool.acquire() == ["1"]
    with pytest.raises(ValueError):
        pool.release(["7"])


def test_pool_k_gpus_per_unit_and_packing():
    pool = DevicePool(["0", "1", "2", "3"])
    a, b = pool.acquire(2), pool.acquire(2)
    assert len(set(a)) == 2 and len(set(b)) == 2 and not set(a) & set(b)
    assert pool.acquire(2) is None and pool.acquire(1) is None
    packed = DevicePool(["0", "1"], per_gpu=2)
    # least loaded first: the second GPU is used before the first one takes a second unit
    assert [packed.acquire() for _ in range(4)] == [["0"], ["1"], ["0"], ["1"]]
    assert packed.acquire() is None
    packed.release(["0"])
    assert packed.acquire(2) is None  # one free slot, on one GPU: a 2-GPU unit cannot start
    assert packed.acquire(1) == ["0"]


def test_discover_sources(monkeypatch):
    import torch

    auto = {"gpus": None, "device": "auto", "nproc_per_node": 1, "per_gpu": 1}  # resolved-config keys
    assert discover({**auto, "gpus": "3, 1"}) == ["3", "1"]  # explicit ids win, even without CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert discover(auto, {}) == ["0", "1", "2", "3"]
    assert discover(auto, {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert discover(auto, {"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at the first invalid id
    assert discover(auto, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert discover({**auto, "device": "cpu"}, {}) == []
    assert AutoExecutor.choose(auto) == "subprocess"  # 4 GPUs: one unit per GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert AutoExecutor.choose(auto) == "local"
    assert AutoExecutor.choose({**auto, "per_gpu": 4}) == "subprocess"
    assert AutoExecutor.choose({**auto, "nproc_per_node": 2}) == "torchrun"


def test_threads_and_loader_workers_are_divided(monkeypatch, tiny_cfg, tmp_path):
    monkeypatch.setattr(devices, "cpu_count", lambda: 16)

    def plan(executor, **cfg):
        pool, at_once, threads, workers = executor.layout({**tiny_cfg, **cfg})
        return pool.gpus, at_once, threads, workers

    assert plan(SubprocessExecutor(), gpus="0,1,2,3", num_workers=8) == (["0", "1", "2", "3"], 4, 4, 4)
    assert plan(SubprocessExecutor(), gpus="0,1,2,3", per_gpu=2, num_workers=1) == (["0", "1", "2", "3"], 8, 2, 1)
    assert plan(SubprocessExecutor(), gpus="0,1,2,3", jobs=2) == (["0", "1", "2", "3"], 2, 8, 0)
    assert plan(TorchrunExecutor(), gpus="0,1,2,3", nproc_per_node=2) == (["0", "1", "2", "3"], 2, 4, 0)
    assert plan(SubprocessExecutor(), device="cpu", jobs=3)[1:3] == (3, 1)  # digits' tiny CNNs: one thread each
    monkeypatch.setattr("lskd_bench.runners.threads.SMALL_WORK", 0)  # models that use threads: the CPUs divided
    assert plan(SubprocessExecutor(), device="cpu", jobs=3)[1:3] == (3, 5)
    env = devices.worker_env({"PATH": "/bin"}, ["2", "3"], 4)
    assert (env["CUDA_VISIBLE_DEVICES"], env["LSKD_GPUS"], env["OMP_NUM_THREADS"]) == ("2,3", "2,3", "4")
    assert devices.worker_env({"OMP_NUM_THREADS": "1"}, None, 4)["OMP_NUM_THREADS"] == "1"  # the user's value wins


def test_loader_workers_divide_the_cores(monkeypatch):
    monkeypatch.setattr(devices, "cpu_count", lambda: 2)
    assert devices.loader_workers(8, 1) == 2  # imagenet's recipe (8) on a 2-core machine
    assert devices.loader_workers(8, 2) == 1 and devices.loader_workers(8, 5) == 1  # at least 1 per process
    assert devices.loader_workers(0, 1) == 0 and devices.loader_workers(1, 1) == 1  # never raised
    monkeypatch.setattr(devices, "cpu_count", lambda: 16)
    assert devices.loader_workers(8, 1) == 8 and devices.loader_workers(8, 4) == 4


def test_local_executor_caps_loader_workers_at_the_cores(monkeypatch, tiny_cfg, tmp_path):
    from lskd_bench.runners import executors
    from lskd_bench.runners.executors import LocalExecutor
    from lskd_bench.runners.units import GridPlan, UnitResult
    from lskd_bench.tasks import get_task

    seen = []

    def fake_train_unit(ctx, unit, **kw):
        seen.append(ctx.cfg["num_workers"])
        return UnitResult()

    monkeypatch.setattr(executors, "train_unit", fake_train_unit)
    for cores, asked, applied in ((2, 8, 2), (16, 8, 8), (2, 0, 0)):
        monkeypatch.setattr(devices, "cpu_count", lambda cores=cores: cores)
        plan = GridPlan(
            get_task("digits"), {**tiny_cfg, "device": "cpu", "num_workers": asked}, tmp_path, progress=False
        )
        executor = LocalExecutor()
        executor.open(plan)
        executor.start(plan, [], None)
        executor.close()
        assert seen.pop() == applied
        assert plan.cfg["num_workers"] == asked  # the plan's own config is left as resolved


# ------------------------------------------------------------------------------------------ whole runs
def replay(out: Path, per_gpu: int = 1) -> dict:
    """Replay devices.log: check no GPU ever holds more than ``per_gpu`` units and every unit's GPUs are
    distinct; return {cell name: GPU ids}, the most units ever running at once and the (event, cells) order."""
    lines = (out / "digits" / "devices.log").read_text().splitlines()
    assert "lskd-bench: " in lines[0] and "GPU" in lines[0]
    load: dict[str, int] = {}
    running: dict[str, list[str]] = {}
    given: dict[str, list[str]] = {}
    peak, order = 0, []
    for line in lines[1:]:
        _, event, _, ids, rest = line.split(None, 4)
        gpus = ids.split(",")
        names = [item.split()[0] for item in rest.split(", ")]
        assert len(set(gpus)) == len(gpus), line
        if event == "start":
            for g in gpus:
                load[g] = load.get(g, 0) + 1
                assert load[g] <= per_gpu, f"GPU {g} over-subscribed at: {line}"
            for n in names:
                running[n] = given[n] = gpus
        else:
            for g in gpus:
                load[g] -= 1
            for n in names:
                assert running.pop(n) == gpus
        peak = max(peak, sum(load.values()))
        order.append((event, names))
    assert not running and not any(load.values())
    return {"given": given, "peak": peak, "order": order}


def results(out: Path) -> dict[str, dict]:
    return {r["cell"]["name"]: r for r in store.iter_results(out)}


@pytest.mark.slow
def test_three_gpus_one_unit_each(tmp_path, cli):
    rc, out, err = cli("run", "--out", str(tmp_path), *TINY, "--no-fuse", "--gpus", "0,1,2")
    assert rc == 0, err
    assert out.startswith("lskd-bench: 3 GPUs (0,1,2): one unit per GPU, 3 units at a time")
    log = replay(tmp_path)
    res = results(tmp_path)
    assert len(res) == 7 and set(log["given"]) == set(res)
    for name, r in res.items():  # each worker saw exactly the GPU the parent gave it
        assert r["env"]["cuda_visible_devices"] == ",".join(log["given"][name])
    assert log["peak"] == 3  # two teachers and the baseline start together
    for event, names in log["order"]:  # a student starts only after its teacher finished
        if event == "start" and names[0].startswith("student"):
            teacher = res[names[0]]["cell"]["teacher"].rsplit("-", 1)[0]
            assert res[teacher]["finished_at"] <= _start_time(tmp_path, names[0])


def _start_time(out: Path, name: str) -> str:
    from datetime import datetime, timezone

    for line in (out / "digits" / "devices.log").read_text().splitlines():
        if " start " in line and line.endswith(name):
            local = datetime.fromisoformat(line.split()[0]).astimezone(timezone.utc)
            return local.isoformat(timespec="seconds")
    raise AssertionError(name)


@pytest.mark.slow
def test_per_gpu_packs_units_on_one_gpu(tmp_path, cli):
    rc, out, err = cli(
        "run",
        "--out",
        str(tmp_path),
        *TINY,
        "--temperatures",
        "1",
        "--no-fuse",
        "--no-baseline",
        "--gpus",
        "5",
        "--per-gpu",
        "2",
    )
    assert rc == 0, err
    assert "1 GPU (5): 2 units per GPU, 2 units at a time" in out.splitlines()[0]
    log = replay(tmp_path, per_gpu=2)
    assert log["peak"] == 2  # the two teachers share GPU 5
    assert {r["env"]["cuda_visible_devices"] for r in results(tmp_path).values()} == {"5"}


@pytest.mark.slow
def test_failed_unit_frees_its_gpu(tmp_path, cli, monkeypatch):
    """A worker that dies (a lost GPU) fails its cells alone; the GPU goes to the next unit."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config

    cfg = resolve_config(
        "digits",
        {},
        {
            "grid": {"alphas": [0.0, 0.1], "temperatures": [1.0], "seeds": [0]},
            "teacher": {"epochs": 1},
            "student": {"epochs": 1},
        },
    )
    doomed = next(c for c in plan_cells(cfg) if c.role == "teacher" and c.alpha == 0.0)
    wrapper = tmp_path / "dying_worker.py"
    wrapper.write_text(
        "import os, sys\n"
        "from lskd_bench.runners.worker import main\n"
        "cells = sys.argv[sys.argv.index('--cells') + 1].split(',')\n"
        "sys.exit(3 if os.environ['LSKD_TEST_DOOMED'] in cells else main(sys.argv[1:]))\n"
    )
    monkeypatch.setenv("LSKD_TEST_DOOMED", doomed.hash)
    monkeypatch.setattr(SubprocessExecutor, "launcher", lambda self, job: [sys.executable, str(wrapper)])
    runs = tmp_path / "runs"
    rc, _out, err = cli(
        "run", "--out", str(runs), *TINY, "--temperatures", "1", "--no-baseline", "--no-fuse", "--gpus", "0"
    )
    assert rc == 1
    assert f"failed: {doomed.name}: worker process exited with code 3" in err
    assert "not run: student_kd_cnn_tiny_a0_T1_s0" in err
    log = replay(runs)
    assert [e for e, _ in log["order"]] == ["start", "end", "start", "end", "start", "end"]
    assert log["order"][1] == ("end", [doomed.name])
    assert set(results(runs)) == {"teacher_cnn_wide_a0.1_s0", "student_kd_cnn_tiny_a0.1_T1_s0"}


@pytest.mark.slow
def test_torchrun_unit_gets_k_distinct_gpus(tmp_path, cli):
    args = ["--alphas", "0.1", "--temperatures", "2", "--epochs", "1", "--seeds", "0", "--no-progress", "--no-fuse"]
    rc, out, err = cli("run", "--out", str(tmp_path), *args, "--nproc-per-node", "2", "--gpus", "0,1,2,3")
    assert rc == 0, err
    assert out.startswith("lskd-bench: 4 GPUs (0,1,2,3): 2 GPUs per unit, 2 units at a time")
    log = replay(tmp_path)
    assert log["peak"] == 4  # teacher and baseline side by side, two GPUs each
    for name, r in results(tmp_path).items():
        ids = r["env"]["cuda_visible_devices"].split(",")
        assert len(set(ids)) == 2 and ids == log["given"][name] and r["env"]["processes"] == 2


def test_status_shows_the_gpu_a_running_cell_holds(tmp_path, cli, monkeypatch):
    from lskd_bench.runners.lock import CellLock

    cell = tmp_path / "digits" / "teacher_cnn_wide_a0_s0-0123abcd"
    monkeypatch.setenv("LSKD_GPUS", "2,3")
    lock = CellLock(cell)
    assert lock.try_acquire(300.0)
    rc, out, _ = cli("status", "--runs", str(tmp_path))
    lock.release()
    assert rc == 0
    assert "running" in out and "GPUs 2,3" in out


def test_bad_gpu_lists_are_one_line_errors(tmp_path, cli):
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY, "--gpus", "0,,1")
    assert rc == 2 and err.startswith("lskd-bench: error: gpus must be comma-separated")
    rc, _, err = cli("run", "--out", str(tmp_path), *TINY, "--gpus", "0,1", "--nproc-per-node", "4")
    assert rc == 2 and "nproc_per_node 4 needs 4 GPUs per unit; only 2 available" in err


@pytest.mark.slow
def test_interrupted_run_logs_the_end_of_every_unit_it_stopped(tmp_path, cli, monkeypatch):
    """Ctrl-C / SIGTERM in the parent stops the running workers: devices.log gets their 'end' lines too."""
    from lskd_bench.runners.scheduler import Scheduler

    wrapper = tmp_path / "slow_worker.py"
    wrapper.write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setattr(SubprocessExecutor, "launcher", lambda self, job: [sys.executable, str(wrapper)])

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Scheduler, "poll_waiting", interrupt)  # right after the first units started
    runs = tmp_path / "runs"
    rc, _, _ = cli("run", "--out", str(runs), *TINY, "--temperatures", "1", "--no-baseline", "--gpus", "0,1")
    assert rc == 130
    log = replay(runs)  # asserts every started unit ended and no GPU stays loaded
    assert [e for e, _ in log["order"]] == ["start", "start", "end", "end"]  # the two teachers: a unit per GPU
    started = [u for e, u in log["order"] if e == "start"]
    assert sorted(u for e, u in log["order"] if e == "end") == sorted(started) and started[0] != started[1]
    assert (runs / "digits" / "devices.log").read_text().splitlines()[-1].endswith(" stopped")


@pytest.mark.slow
def test_gpu_flags_that_cannot_apply_are_said(tmp_path, cli, monkeypatch):
    """--gpus/--per-gpu with the in-process executor, and --per-gpu where there is no GPU, are noted, not silently
    ignored."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible
    rc, _, err = cli(
        "run",
        "--out",
        str(tmp_path / "a"),
        *TINY,
        "--alphas",
        "0",
        "--temperatures",
        "1",
        "--no-baseline",
        "--gpus",
        "0",
        "--executor",
        "local",
    )
    assert rc == 0, err
    assert "note: --gpus, --per-gpu and --jobs are used by the subprocess and torchrun executors" in err
    rc, _, err = cli(
        "run",
        "--out",
        str(tmp_path / "b"),
        *TINY,
        "--alphas",
        "0",
        "--temperatures",
        "1",
        "--no-baseline",
        "--per-gpu",
        "2",
        "--executor",
        "subprocess",
    )
    assert rc == 0, err
    assert "note: --per-gpu 2 has no effect: no GPU here; 1 unit at a time on the CPU (--jobs N)" in err
