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


def test_tiny_models_train_with_one_thread_and_larger_ones_with_every_cpu(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
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
