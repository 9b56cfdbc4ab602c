"""``lskd_bench.runners.probe``: the probe forwards run makes before anything is written."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lskd_bench.errors import UsageError
from lskd_bench.runners.probe import check_input_size


@pytest.mark.parametrize(
    "role,arch,needle",
    [
        ("teacher", "torchvision:inception_v3", "Kernel size can't be greater than actual input size"),
        ("student", "torchvision:vit_b_16", "Wrong image height! Expected 224 but got 32!"),
    ],
)
def test_an_arch_that_cannot_take_the_image_size_is_one_line_even_under_dry_run(
    tmp_path, cli, imagenet_root, role, arch, needle
):
    """A library classifier that cannot take the task's image size was a RuntimeError (AssertionError) traceback
    at the first batch, and not seen by --dry-run: now one line naming the role, arch and size, before anything."""
    rc, out, err = cli(
        "run", "--task", "imagenet", "--data-root", str(imagenet_root), "--out", str(tmp_path / "runs"),
        "--set", f"{role}.arch={arch}", "--set", "data.image_size=32", "--dry-run",
    )  # fmt: skip
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"lskd-bench: error: {role} arch {arch} cannot take imagenet's inputs of 32x32 px ("), err
    assert needle in err and not (tmp_path / "runs").exists()


class _Task:
    name = "fake"

    def __init__(self, model):
        self.model = model

    def probe_shape(self, cfg):
        return (3, 80, 80)  # larger than CPU_PROBE_VALUES: probed on the meta device first

    def build_model(self, arch, data, cfg, hp):
        return self.model()


class _ReadsAValue(nn.Module):
    """Fine on real tensors; on meta tensors ``.item()`` fails: not a size problem."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 80 * 80, 2)

    def forward(self, x):
        return self.lin(x.flatten(1)) * (1.0 + 0 * x.sum().item())


class _TooBig(nn.Module):
    def forward(self, x):
        return nn.functional.max_pool2d(x, 160)


def test_what_meta_tensors_cannot_do_is_tried_on_the_cpu_before_it_is_an_error():
    cfg = {"teacher": {"arch": "a"}, "student": {"arch": "b"}, "data": {}}
    check_input_size(_Task(_ReadsAValue), cfg)
    with pytest.raises(UsageError, match=r"^teacher arch a cannot take fake's inputs of 80x80 px \(.*\): choose"):
        check_input_size(_Task(_TooBig), cfg)
    assert torch.empty(1).device.type == "cpu"  # the default device is left as it was


def test_the_checks_before_a_run_build_each_model_once_and_run_it_once(monkeypatch, tmp_path):
    """Resolving a CIFAR-100 run with a feature method (CRD): the input-size check and the feature-method check
    share one teacher and one student (built under seed 0 on the CPU: 32 px inputs), and each model's one probe
    forward gives its layout and the outputs CRD's setup reads (before: four models built, then five forwards)."""
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task

    from ..fixtures import make_cifar100

    root = make_cifar100(tmp_path)
    task = type(get_task("cifar100"))
    built, forwards = [], []
    build = task.build_model

    def counted(self, arch, *a):
        built.append(arch)
        model = build(self, arch, *a)
        model.register_forward_pre_hook(lambda m, inp: forwards.append(arch))
        return model

    monkeypatch.setattr(task, "build_model", counted)
    over = {"methods": ["crd"], "grid": {"alphas": [0.0], "temperatures": [4.0], "seeds": [0]}, "threads": 1}
    resolve_config("cifar100", {}, {**over, "pair": "resnet32x4-resnet8x4", "data": {"root": str(root)}})
    assert built == ["resnet32x4", "resnet8x4"]
    assert forwards == ["resnet32x4", "resnet8x4"]
