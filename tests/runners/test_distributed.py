"""Several processes train what one process trains (lskd_bench/runners/distributed.py).

The matrix: every classification method (and a composite) fused in one group on a small digits split, and the
translation methods on a tiny corpus (no dropout), trained by 1, 2 and 4 gloo processes with the same global
batch, stopped at the end of epoch 1 and resumed to the end of epoch 2 (tests/distributed_worker.py). Every
rank holds bit for bit what rank 0 holds at every checkpoint, and rank 0 holds what one process holds to float
rounding: weights, method state (connectors, embeddings, CRD's memory bank and Z, CTKD's temperature) and
optimizer momenta within ``STATE_TOL`` of each tensor's largest magnitude (attention key biases left out: their
gradient is rounding noise), the epochs' losses within ``LOSS_TOL`` relative, the same top-1 or BLEU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lskd_bench.errors import UsageError
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.distributed import sync_batchnorm
from lskd_bench.runners.grid import resolve_config

from ..distributed_worker import (
    METHODS,
    NOT_IN_MATRIX,
    TRANSLATION_METHODS,
    differences,
    launch,
    run,
    train_teacher,
)
from ..fixtures import require, tiny_overrides

STATE_TOL = 5e-3  # measured (floor 1e-3): at most 4e-3 (SRD's projector bias before a BatchNorm, a gradient that is
# rounding), 7e-4 (FT), most 1e-6; with the floor of 1e-2 every cell under 1e-3
LOSS_TOL = 1e-4  # measured: at most 5e-6
HANG_GUARD_S = 15 * 60  # only prevents a hung test


@pytest.fixture(scope="module", params=["images", "translation"])
def matrix(request, tmp_path_factory):
    kind = request.param
    if kind == "translation":
        require("fairseq", "the translation tasks")
    out = tmp_path_factory.mktemp(kind)
    train_teacher(out, kind)
    for world in (1, 2, 4):
        launch(out, world, kind, HANG_GUARD_S)
    return out, kind


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_every_method_trains_with_n_processes_what_one_process_trains(matrix, world):
    out, kind = matrix
    rows = differences(out, world)
    methods = METHODS if kind == "images" else TRANSLATION_METHODS
    assert {name.split("_transformer")[0].split("_cnn_tiny")[0].removeprefix("student_") for name in rows} == {
        *methods,
        "baseline",
    }
    for name, d in rows.items():
        assert d["ranks_equal"], f"{name}: the ranks' states differ"
        assert d["state"] < STATE_TOL, (name, d)
        assert d["loss"] < LOSS_TOL, (name, d)
        assert d["metric"] == 0.0, (name, d)


@pytest.mark.slow
def test_a_method_that_amplifies_rounding_differs_across_processes_as_across_threads(tmp_path):
    """SemCKD amplifies float rounding (measured 2026-12-07 on this group: one process at 2 threads differs from 1
    thread by 1.8e-2 of a tensor's scale, over STATE_TOL): 2 processes must differ from one process by no more
    than 2 threads do (2 processes: 1.2e-2), with the same losses to LOSS_TOL * 10 and every rank equal. A real
    divergence (a gradient counted twice, BatchNorm per rank) differs by far more."""
    methods = ["semckd"]
    train_teacher(tmp_path, methods=methods)
    run(tmp_path, 1, 0, methods=methods)
    run(tmp_path, 1, 0, methods=methods, threads=2)
    launch(tmp_path, 2, hang_guard_s=HANG_GUARD_S, methods=methods)
    threads = differences(tmp_path, 1, "world1-threads2")
    processes = differences(tmp_path, 2)
    cell = next(n for n in processes if "semckd" in n)
    assert threads[cell]["state"] > STATE_TOL  # why it is apart: rounding alone exceeds the matrix's bound
    assert processes[cell]["ranks_equal"]
    assert processes[cell]["state"] <= 1.5 * threads[cell]["state"], (processes[cell], threads[cell])
    assert processes[cell]["loss"] < 10 * LOSS_TOL, processes[cell]


@pytest.mark.slow
def test_a_method_with_its_own_recipe_trains_with_n_processes_what_one_process_trains(tmp_path):
    """DOT needs SGD without Nesterov (the matrix's shared recipe has it): its own group, the matrix's bounds."""
    methods = ["dot"]
    train_teacher(tmp_path, methods=methods)
    run(tmp_path, 1, 0, methods=methods)
    launch(tmp_path, 2, hang_guard_s=HANG_GUARD_S, methods=methods)
    rows = differences(tmp_path, 2)
    assert any("dot" in name for name in rows)
    for name, d in rows.items():
        assert d["ranks_equal"], f"{name}: the ranks' states differ"
        assert d["state"] < STATE_TOL, (name, d)
        assert d["loss"] < LOSS_TOL, (name, d)
        assert d["metric"] == 0.0, (name, d)


def test_every_method_is_in_the_matrix():
    """A new method joins the matrix (or says here why it cannot)."""
    from lskd_bench.methods import METHODS as REGISTRY

    assert set(REGISTRY.names()) - {"ls"} <= {*METHODS, *TRANSLATION_METHODS, *NOT_IN_MATRIX}  # ls: the baseline
    assert not set(NOT_IN_MATRIX) & {*METHODS, *TRANSLATION_METHODS}


def test_batchnorm_synchronised_in_place_keeps_its_parameters_and_refuses_what_it_cannot():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(4 * 36))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sync_batchnorm(model, "cell") == 2
    assert isinstance(model[1], nn.BatchNorm2d) and type(model[1]).__name__ == "GlobalBatchNorm2d"
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    x = torch.randn(5, 1, 8, 8)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(4 * 36))
    plain.load_state_dict(before)
    assert torch.equal(model(x), plain(x))  # one process: the class's own forward, bit for bit
    assert torch.equal(model[1].running_mean, plain[1].running_mean)

    class OwnForward(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x).relu()

    with pytest.raises(UsageError, match=r"cell: 1 is a OwnForward, .*--set sync_batchnorm=false"):
        sync_batchnorm(nn.Sequential(nn.Identity(), OwnForward(3)), "cell")


def test_per_rank_batchnorm_enters_the_hash_and_the_default_does_not():
    default = [c.hash for c in plan_cells(resolve_config("digits", {}, tiny_overrides()))]
    same = [c.hash for c in plan_cells(resolve_config("digits", {}, tiny_overrides(sync_batchnorm=True)))]
    per_rank = [c.hash for c in plan_cells(resolve_config("digits", {}, tiny_overrides(sync_batchnorm=False)))]
    assert default == same and not set(default) & set(per_rank)


def _global_bn_rank(rank: int, world: int, init: str, x: torch.Tensor, out: str) -> None:
    """Rank ``rank``'s share of ``x`` through a synchronised BatchNorm: its output, its input's gradient, the
    parameters' gradients summed over the ranks and the running statistics, saved to ``out``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    nn.init.uniform_(bn.weight)
    sync_batchnorm(bn, "t")
    mine = x.tensor_split(world)[rank].clone().requires_grad_()
    y = bn(mine)
    w = torch.arange(y.numel(), dtype=torch.float32).reshape(y.shape).cos()
    (y * w).sum().backward()
    for p in (bn.weight, bn.bias):
        dist.all_reduce(p.grad)
    torch.save(
        {
            "y": y,
            "dx": mine.grad,
            "dw": bn.weight.grad,
            "db": bn.bias.grad,
            "rm": bn.running_mean,
            "rv": bn.running_var,
        },
        f"{out}.{rank}",
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_global_batchnorm_of_three_processes_is_batchnorm_of_the_whole_batch(tmp_path):
    """Output, input and parameter gradients and running statistics of 3 ranks (unequal shares: 3, 3, 2 rows)
    equal one BatchNorm2d over all 8 rows, to float rounding."""
    import torch.multiprocessing as mp

    x = torch.randn(8, 3, 4, 4) * 3 + 1
    out = str(tmp_path / "bn")
    mp.spawn(_global_bn_rank, args=(3, f"file://{tmp_path / 'init'}", x, out), nprocs=3)
    got = [torch.load(f"{out}.{r}", weights_only=True) for r in range(3)]
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    nn.init.uniform_(bn.weight)
    xx = x.clone().requires_grad_()
    y = bn(xx)
    w = torch.cat([torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape).cos() for p in y.tensor_split(3)])
    (y * w).sum().backward()
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(torch.cat([g["y"] for g in got]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([g["dx"] for g in got]), xx.grad, **close)
    for g in got:
        torch.testing.assert_close(g["dw"], bn.weight.grad, **close)
        torch.testing.assert_close(g["db"], bn.bias.grad, **close)
        torch.testing.assert_close(g["rm"], bn.running_mean, **close)
        torch.testing.assert_close(g["rv"], bn.running_var, **close)
