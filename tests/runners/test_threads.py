"""``lskd_bench.runners.threads``: the intra-op thread policy when ``threads`` is not set."""

from __future__ import annotations

import torch
from torch import nn

from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.threads import SMALL_WORK, multiply_adds, thread_policy, work_per_sample

from ..fixtures import tiny_overrides

CPU = torch.device("cpu")


def test_multiply_adds_of_convolutions_and_linear_layers_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8 outputs x 8 channels x (3 x 3 x 3): 13824
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # 8x8 x 8 x (2 x 3 x 3): 9216
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),  # 10 x 512: 5120
    )
    assert multiply_adds(model, (3, 8, 8)) == 13824 + 9216 + 5120


def _cpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(n)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_tiny_models_train_with_one_thread_and_larger_ones_with_every_cpu(monkeypatch):
    _cpus(monkeypatch, 4)
    digits = resolve_config("digits", {}, tiny_overrides())
    assert work_per_sample(digits) == 609536 < SMALL_WORK  # cnn_wide: 18432 + 294912 + 294912 + 1280
    n, why = thread_policy(digits, CPU)
    assert n == 1 and why.startswith("auto: 1 thread, the models take 0.61 M multiply-adds a sample")
    assert thread_policy(digits, CPU, cpus=1) == (1, "auto: the 1 CPU this process may use")
    assert thread_policy({**digits, "threads": 3}, CPU) == (3, "the threads setting")
    assert thread_policy(digits, torch.device("cuda"))[0] == 4  # on a GPU the CPU threads feed it: every CPU
    wide = resolve_config("digits", {}, tiny_overrides(teacher={"arch": "cnn_wide"}))
    monkeypatch.setattr("lskd_bench.runners.threads.SMALL_WORK", 100_000)
    assert thread_policy(wide, CPU) == (4, "auto: the 4 CPUs this process may use")
    assert thread_policy({**wide, "task": None}, CPU)[0] == 4  # no estimate (no task): every CPU


def test_small_inputs_are_probed_on_the_cpu_with_the_meta_devices_count(monkeypatch):
    """The multiply-adds of digits' and CIFAR's models counted on the CPU (``probe_device``: no torch._dynamo import,
    ~1.2 s of start-up) equal the meta device's count; larger inputs stay on the meta device."""
    from lskd_bench.runners import threads
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.probe import probe_device

    assert probe_device((3, 32, 32)) == "cpu" and probe_device((3, 224, 224)) == "meta"
    cfg = resolve_config("digits", {}, {})
    threads._WORK.clear()
    on_cpu = threads.work_per_sample(cfg)
    monkeypatch.setattr(threads, "probe_device", lambda shape: "meta")
    threads._WORK.clear()
    assert threads.work_per_sample(cfg) == on_cpu == 609536
    threads._WORK.clear()


def test_resolving_a_small_task_does_not_start_the_meta_device():
    """A fresh process resolves and checks the digits run (input size, thread estimate) without importing
    torch._dynamo, which the meta device's first operation imports."""
    import subprocess
    import sys

    code = (
        "import sys; from lskd_bench.runners.grid import resolve_config; from lskd_bench.runners.threads import "
        "work_per_sample; work_per_sample(resolve_config('digits', {}, {})); print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------------------------------ units side by side
def test_grid_work_by_hand():
    from lskd_bench.runners.threads import grid_work

    cfg = resolve_config("digits", {}, tiny_overrides(epochs=1))  # 2 teachers + baseline + 4 students, 1 epoch
    assert grid_work(cfg) == 3 * 609536 * 1347 * 1 * 7  # 1347 training images of the default 75 % split
    cfg = resolve_config("digits", {}, tiny_overrides(teacher={"epochs": 30}, student={"epochs": 10}))
    assert grid_work(cfg) == 3 * 609536 * 1347 * (30 * 2 + 10 * 5)


def test_small_models_with_enough_training_train_one_unit_per_cpu(monkeypatch):
    """``cpu_jobs``: one unit per CPU (processes of one thread) only for one-thread models in a grid worth the
    processes' start; the jobs setting wins; threads, one CPU or OMP_NUM_THREADS=1 keep one unit at a time."""
    from lskd_bench.runners.threads import PARALLEL_WORK, cpu_jobs, grid_work

    _cpus(monkeypatch, 4)
    default = resolve_config("digits", {}, {})
    assert grid_work(default) > PARALLEL_WORK > grid_work(resolve_config("digits", {}, tiny_overrides(epochs=2)))
    n, why = cpu_jobs(default)
    assert n == 4 and why.startswith("auto: the models take 0.61 M multiply-adds a sample, one thread each")
    assert cpu_jobs(resolve_config("digits", {}, tiny_overrides(epochs=2)))[0] == 1  # too little training
    assert cpu_jobs({**default, "jobs": 3}) == (3, "the jobs setting")
    assert cpu_jobs({**default, "threads": 2})[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_jobs(default)[0] == 1
    _cpus(monkeypatch, 1)
    assert cpu_jobs(default)[0] == 1
    _cpus(monkeypatch, 4)
    monkeypatch.setattr("lskd_bench.runners.threads.SMALL_WORK", 100_000)  # models that use every CPU's thread
    assert cpu_jobs(default)[0] == 1


def test_auto_executor_runs_units_side_by_side_on_the_cpu_and_splits_the_teachers(monkeypatch, tmp_path):
    from lskd_bench.registry import EXECUTORS
    from lskd_bench.runners.grid import plan_grid

    _cpus(monkeypatch, 2)
    auto = EXECUTORS.get("auto")
    default = resolve_config("digits", {}, {"device": "cpu", "grid": {"seeds": [0]}})
    assert auto.choose(default) == "subprocess" and auto.units_at_once(default) == 2
    assert auto.choose({**default, "threads": 1}) == "local" and auto.units_at_once({**default, "threads": 1}) == 1
    tiny = resolve_config("digits", {}, {**tiny_overrides(), "device": "cpu"})
    assert auto.choose(tiny) == "local"
    assert auto.choose({**tiny, "jobs": 2}) == "subprocess"  # --jobs is no longer ignored without GPUs
    roles = [sorted(c.role for c in u) for u in plan_grid(default, tmp_path / "a", progress=False).units]
    assert roles[:2] == [["teacher"], ["teacher"]] and len(roles) == 4  # the first wave fills both CPUs
    roles = [sorted(c.role for c in u) for u in plan_grid({**default, "threads": 1}, tmp_path / "b").units]
    assert roles[0] == ["teacher", "teacher"] and len(roles) == 3  # one at a time: the teachers share a pass
    three = resolve_config("digits", {}, {"device": "cpu"})  # 3 seeds of students, one seed of teachers
    assert [len(u) for u in plan_grid(three, tmp_path / "c", progress=False).units][:3] == [1, 1, 5]


def test_fuse_units_spreads_only_the_teachers_over_the_units_at_once():
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import fuse_units

    cfg = resolve_config("digits", {}, tiny_overrides(grid={"alphas": [0.0, 0.1, 0.2]}))
    cells = plan_cells(cfg)

    def sizes(spread: int) -> list[tuple[str, int]]:
        units = fuse_units(cells, cfg, fuse=True, max_fused=8, spread=spread)
        assert sorted(c.hash for u in units for c in u) == sorted(c.hash for c in cells)  # every cell, once
        return [(u[0].role, len(u)) for u in units]

    students = [("student", 3), ("student", 2), ("student", 2)]  # a0 with the baseline, a0.1, a0.2
    assert sizes(1) == [("teacher", 3), *students]
    assert sizes(2) == [("teacher", 2), ("teacher", 1), *students]
    assert sizes(3) == sizes(8) == [("teacher", 1)] * 3 + students
