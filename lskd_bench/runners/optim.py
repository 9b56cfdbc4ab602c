"""Optimiser and learning-rate schedule of one role's recipe (``cfg["teacher"]`` / ``cfg["student"]``, resolved:
every key is present, see ``schema.TRAIN``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def build_optimizer(params: Sequence[nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
    name = hp["optimizer"]
    lr, wd = hp["lr"], hp["weight_decay"]
    params = [p for p in params if p.requires_grad]
    # no weight decay on biases and norm parameters (nor on 1-d method parameters such as a temperature),
    # unless decay_norm_and_bias (the official code decays every parameter)
    every = hp["decay_norm_and_bias"]
    decay = [p for p in params if p.ndim > 1 or every]
    no_decay = [p for p in params if p.ndim <= 1 and not every]
    groups = [
        g for g in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=hp["momentum"], nesterov=hp["nesterov"])
    betas = tuple(hp["betas"])
    eps = hp["adam_eps"]
    # the fused kernel (one per parameter on the CPU, one per step on CUDA): the same update to rounding
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    raise ValueError(f"unknown optimizer {name!r} (known: sgd, adam, adamw)")


def lr_factor(hp: dict[str, Any], epoch: int) -> float:
    """Multiplier of the base learning rate for (0-based) ``epoch`` (epoch schedules, before warm-up)."""
    epochs = hp["epochs"]
    sched = hp["schedule"]
    if sched == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if sched == "step":
        return hp["gamma"] ** (epoch // hp["step_size"])
    if sched == "multistep":
        return hp["gamma"] ** sum(epoch >= m for m in hp["milestones"])
    if sched in ("constant", "none"):
        return 1.0
    raise ValueError(f"unknown schedule {sched!r} (known: cosine, step, multistep, constant, inverse_sqrt)")


def learning_rate(hp: dict[str, Any], epoch: int, update: int, steps_per_epoch: int = 1) -> float:
    """The lr of the next step. ``inverse_sqrt`` (fairseq's): linear warm-up from ``warmup_init_lr`` over
    ``warmup_updates`` updates, then ``lr * sqrt(warmup_updates / update)``. Other schedules set the lr per
    epoch; during the first ``warmup_epochs`` epochs it is scaled by ``(1 + update) / (warmup_epochs *
    steps_per_epoch)``, the official ImageNet student's warm-up (train_student_dali.py, lines 651-653)."""
    lr = hp["lr"]
    if hp["schedule"] == "inverse_sqrt":
        warm = hp["warmup_updates"]
        step = update + 1
        if step <= warm:
            init = hp["warmup_init_lr"]
            return init + (lr - init) * step / warm
        return lr * math.sqrt(max(warm, 1) / step)
    lr = lr * lr_factor(hp, epoch)
    warm = hp["warmup_epochs"]
    if epoch < warm:
        lr *= (1 + update) / (warm * max(steps_per_epoch, 1))
    return lr
