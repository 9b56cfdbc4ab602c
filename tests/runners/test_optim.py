"""runners/optim.py: the learning rate of each schedule, with and without warm-up, against hand computations, and
build_optimizer's parameter groups and options."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lskd_bench.runners.optim import build_optimizer, learning_rate, lr_factor

HP = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "decay_norm_and_bias": False,
    "betas": [0.8, 0.99],
    "adam_eps": 1e-7,
    "epochs": 10,
    "schedule": "cosine",
    "step_size": 3,
    "milestones": [4, 7],
    "gamma": 0.1,
    "warmup_epochs": 0,
    "warmup_updates": 0,
    "warmup_init_lr": 0.0,
}


@pytest.mark.parametrize(
    "schedule,epoch,factor",
    [
        ("cosine", 0, 1.0),
        ("cosine", 5, 0.5),  # half way: cos(pi / 2) = 0
        ("cosine", 10, 0.0),
        ("cosine", 2, 0.5 * (1 + math.cos(math.pi * 0.2))),
        ("step", 2, 1.0),
        ("step", 3, 0.1),
        ("step", 8, 0.01),  # 8 // 3 = 2 steps
        ("multistep", 3, 1.0),
        ("multistep", 4, 0.1),
        ("multistep", 7, 0.01),
        ("constant", 9, 1.0),
        ("none", 9, 1.0),
    ],
)
def test_lr_factor_by_hand(schedule, epoch, factor):
    assert lr_factor({**HP, "schedule": schedule}, epoch) == pytest.approx(factor, abs=1e-12)


def test_unknown_schedule_and_optimizer_are_errors():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_factor({**HP, "schedule": "linear"}, 0)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        build_optimizer([nn.Parameter(torch.zeros(2, 2))], {**HP, "optimizer": "lamb"})


def test_epoch_warmup_scales_by_update_over_the_warmup_updates():
    hp = {**HP, "schedule": "step", "warmup_epochs": 2}
    # 2 warm-up epochs of 5 updates: (1 + update) / 10 of the epoch's lr
    assert learning_rate(hp, epoch=0, update=0, steps_per_epoch=5) == pytest.approx(0.1 * 1 / 10)
    assert learning_rate(hp, epoch=1, update=7, steps_per_epoch=5) == pytest.approx(0.1 * 8 / 10)
    assert learning_rate(hp, epoch=2, update=10, steps_per_epoch=5) == pytest.approx(0.1)  # warm-up over
    assert learning_rate(hp, epoch=3, update=15, steps_per_epoch=5) == pytest.approx(0.01)  # the step schedule's
    cosine = {**HP, "warmup_epochs": 2}
    expected = 0.1 * 0.5 * (1 + math.cos(math.pi * 1 / 10)) * 8 / 10
    assert learning_rate(cosine, epoch=1, update=7, steps_per_epoch=5) == pytest.approx(expected)
    assert learning_rate(cosine, epoch=4, update=0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.4)))


def test_inverse_sqrt_warms_up_linearly_then_decays_with_the_update():
    hp = {**HP, "schedule": "inverse_sqrt", "lr": 1e-3, "warmup_updates": 4, "warmup_init_lr": 1e-7}
    assert learning_rate(hp, 0, update=0) == pytest.approx(1e-7 + (1e-3 - 1e-7) * 1 / 4)
    assert learning_rate(hp, 0, update=3) == pytest.approx(1e-3)  # the 4th update: the full lr
    assert learning_rate(hp, 0, update=15) == pytest.approx(1e-3 * math.sqrt(4 / 16))
    assert learning_rate(hp, 7, update=15) == learning_rate(hp, 0, update=15)  # per update, not per epoch
    assert learning_rate({**hp, "warmup_updates": 0}, 0, update=3) == pytest.approx(1e-3 * math.sqrt(1 / 4))


def _params():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    frozen = nn.Parameter(torch.ones(5, 5), requires_grad=False)
    return model, [*model.parameters(), frozen]


def test_sgd_groups_decay_only_matrices_and_skip_frozen_parameters():
    model, params = _params()
    opt = build_optimizer(params, HP)
    assert isinstance(opt, torch.optim.SGD)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(4, 3), (2, 4)]  # the two weight matrices
    assert [p.shape for p in no_decay["params"]] == [(4,), (4,), (4,), (2,)]  # biases and BatchNorm's affine
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)
    assert all(g["lr"] == 0.1 and g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)
    (everything,) = build_optimizer(params, {**HP, "decay_norm_and_bias": True}).param_groups
    assert len(everything["params"]) == 6 and everything["weight_decay"] == 5e-4
    (only_bias,) = build_optimizer([model[0].bias], HP).param_groups  # an empty group is left out
    assert only_bias["weight_decay"] == 0.0


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_and_adamw_options(name, cls):
    _, params = _params()
    opt = build_optimizer(params, {**HP, "optimizer": name, "lr": 3e-4})
    assert type(opt) is cls and len(opt.param_groups) == 2
    for g in opt.param_groups:
        assert (g["lr"], g["betas"], g["eps"], g["fused"]) == (3e-4, (0.8, 0.99), 1e-7, True)
