"""DOT, the Distillation-Oriented Trainer (Zhao et al., ICCV 2023): Hinton KD trained by an optimizer that keeps
separate momenta for the task loss (CE, momentum ``m - delta``) and the distillation loss (KD, ``m + delta``).

Not a loss but a way to step: the method brings one component (``DOTStep``) whose ``optimizer(opt)`` replaces the
student's SGD by ``DistillationOrientedSGD`` over the same parameter groups, and whose ``backward(terms, loss)``
runs the two backward passes of mdistiller's trainer: the KD terms first (their gradients kept by ``step_kd``),
then the CE term; the member's ``opt.step()`` then applies both. Reference: megvii-research/mdistiller@a08d46f
``mdistiller/engine/dot.py`` (the optimizer, ``dot`` :15-56, ``step_kd`` :95-122, ``step`` :124-166) and
``mdistiller/engine/trainer.py:229-279`` (``DOT.init_optimizer``: momenta ``MOMENTUM -/+ DOT.DELTA`` :232-233;
``train_iter``: the two backward passes :272-279).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..components import Component
from ..errors import UsageError
from ..schema import Field, Section
from . import METHODS, Method, Site
from .losses import _upcast, kd_kl

DOT_SRC = "megvii-research/mdistiller@a08d46f"


class DistillationOrientedSGD(torch.optim.Optimizer):
    """SGD with two momentum buffers per parameter: ``momentum`` for the task gradient, ``momentum_kd`` for the
    distillation gradient (``step_kd`` records it; ``step`` applies both). A parameter that got only one of the
    two gradients has that buffer decay at the mean of the two momenta. Weight decay enters the task gradient, or
    the KD gradient of a parameter without a task gradient (not on the first step of its KD buffer), as
    mdistiller's ``dot`` (engine/dot.py:15-56@a08d46f). Its per-parameter state (``momentum_buffer``,
    ``momentum_kd_buffer``) is the optimizer's state: it is checkpointed and resumed with it. mdistiller allows
    one parameter group; here each group (weight decay per group) is stepped alone, the same for one group."""

    def __init__(self, params: Any, lr: float, momentum: float, momentum_kd: float, weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or momentum_kd < 0 or weight_decay < 0:
            raise ValueError(f"DOT: invalid lr {lr}, momenta {momentum}/{momentum_kd} or weight decay {weight_decay}")
        defaults = {"lr": lr, "momentum": momentum, "momentum_kd": momentum_kd, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self._kd: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per group: (param, its KD gradient)

    @torch.no_grad()
    def step_kd(self, grads: dict[int, torch.Tensor] | None = None) -> None:
        """Record the distillation loss's gradients for the next ``step``: those the parameters now hold
        (mdistiller's ``step_kd``), or ``grads`` (parameter id -> gradient; a parameter absent has none)."""
        if grads is None:
            grads = {id(p): p.grad for g in self.param_groups for p in g["params"] if p.grad is not None}
        self._kd = [[(p, grads[id(p)]) for p in g["params"] if id(p) in grads] for g in self.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kd_groups = self._kd or [[] for _ in self.param_groups]
        for group, kd in zip(self.param_groups, kd_groups):
            lr, wd = group["lr"], group["weight_decay"]
            m, m_kd = group["momentum"], group["momentum_kd"]
            mean = (m + m_kd) / 2.0
            task = [p for p in group["params"] if p.grad is not None]
            kd_ids, task_ids = {id(p) for p, _ in kd}, {id(p) for p in task}
            for p in task:  # the task gradient (dot.py:27-40)
                d_p = p.grad
                if wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                if m != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(m if id(p) in kd_ids else mean).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-lr)
            for p, d_p in kd:  # the distillation gradient (dot.py:42-55)
                state = self.state[p]
                buf = state.get("momentum_kd_buffer")
                if buf is None:
                    buf = state["momentum_kd_buffer"] = torch.clone(d_p).detach()
                elif id(p) in task_ids:
                    buf.mul_(m_kd).add_(d_p)
                else:
                    if wd != 0:
                        d_p = d_p.add(p, alpha=wd)
                    buf.mul_(mean).add_(d_p)
                p.add_(buf, alpha=-lr)
        self._kd = []
        return loss


class DOTStep(Component):
    """DOT's part of a cell: the student's SGD replaced by ``DistillationOrientedSGD`` (momenta ``m -/+ delta``,
    the same parameter groups, weight decay and lr; the main schedule sets the lr on it as on any optimizer), and
    the step's two backward passes: the distillation terms (every term but ``ce``), then ``ce``. The first pass is
    ``torch.autograd.grad`` (the same gradients as mdistiller's ``loss_kd.backward()`` into empty ``.grad``s) so
    that DistributedDataParallel, which reduces one ``backward`` per forward, reduces the CE pass; under several
    processes the KD gradients are averaged over the ranks here, as DDP averages the CE ones (tests/methods/
    test_dot.py::test_dot_under_ddp_equals_one_process: two gloo processes equal one to 1e-12). Gradient clipping
    (``clip_norm``) clips the task gradient only (mdistiller clips neither)."""

    key = "dot"

    def __init__(self, delta: float):
        self.delta = delta
        self.opt: DistillationOrientedSGD | None = None

    def optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        m = opt.defaults["momentum"]
        if self.delta > m:
            raise UsageError(f"dot.delta {self.delta} exceeds the student's momentum {m} (task momentum m - delta)")
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        self.opt = DistillationOrientedSGD(groups, opt.defaults["lr"], m - self.delta, m + self.delta)
        return self.opt

    def backward(self, terms: Any, loss: torch.Tensor) -> bool:
        assert self.opt is not None and isinstance(terms, dict)
        kd = [t for k, t in terms.items() if k != "ce" and t.requires_grad]
        params = [p for g in self.opt.param_groups for p in g["params"] if p.requires_grad]
        grads: dict[int, torch.Tensor] = {}
        if kd:
            found = torch.autograd.grad(sum(kd[1:], kd[0]), params, retain_graph=True, allow_unused=True)
            grads = {id(p): g for p, g in zip(params, found) if g is not None}
            _average_over_ranks(list(grads.values()))
        self.opt.step_kd(grads)
        if terms["ce"].requires_grad:
            terms["ce"].backward()
        return True


def _average_over_ranks(grads: list[torch.Tensor]) -> None:
    """Average ``grads`` over the processes of a distributed run (one flat all-reduce); nothing in one process."""
    if not grads or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    at = 0
    for g in grads:
        g.copy_(flat[at : at + g.numel()].view_as(g))
        at += g.numel()


@METHODS.register("dot")
class DOT(Method):
    """DOT (Zhao et al., ICCV 2023, "DOT: A Distillation-Oriented Trainer"): Hinton KD as mdistiller's ``KD``
    distiller (distillers/KD.py:8-37@a08d46f: ``ce_weight * CE + kd_weight * T^2 * KL(softmax(t/T) ||
    softmax(s/T))``) trained with DOT's optimizer (``DOTStep``; engine/dot.py, engine/trainer.py:229-279): task
    momentum ``m - delta``, distillation momentum ``m + delta``, m the student's SGD momentum. Defaults: mdistiller's
    ImageNet ResNet-34 -> ResNet-18 config (configs/imagenet/r34_r18/dot.yaml:24-30: DELTA 0.09, KD T 1 (the grid's
    T = 1 cell), CE 0.5, KD 0.5); on ``cifar100`` the recipe sets its CIFAR configs' delta 0.075
    (configs/cifar100/dot/*.yaml:20; they set no KD section: CE 0.1, KD 0.9, T 4 of engine/cfg.py:61-64).
    Needs the student's optimizer to be SGD without Nesterov (mdistiller's DOT implements SGD only:
    trainer.py:231-244) and a CE term (``ce_weight`` > 0) under several processes (DDP reduces the CE pass).

    parity: megvii-research/mdistiller@a08d46f mdistiller/engine/dot.py:15-166 and engine/trainer.py:272-279,
    transcribed in tests/methods/test_dot.py::test_dot_equals_mdistillers_trainer (float64, a small network, 6
    steps with a changing lr, one parameter with a KD gradient only and one with a task gradient only): parameters
    and both momentum buffers max relative difference 0 (the same operations in the same order)."""

    description = "DOT (Zhao et al. 2023): Hinton KD with separate task (m - delta) / KD (m + delta) momenta"
    task_kinds = ("classification",)
    params = Section({
        "ce_weight": Field(float, 0.5, f"weight of the cross-entropy ({DOT_SRC} configs/imagenet/r34_r18/dot.yaml:29; "
                           "cifar100: 0.1, engine/cfg.py:63)", min=0.0),
        "kd_weight": Field(float, 0.5, "weight of the T^2 * KL term (configs/imagenet/r34_r18/dot.yaml:30; cifar100: "
                           "0.9, engine/cfg.py:64)", min=0.0),
        "delta": Field(float, 0.09, "momentum offset: task m - delta, KD m + delta (configs/imagenet/r34_r18/dot.yaml:"
                       "25; cifar100: 0.075, configs/cifar100/dot/*.yaml:20)", min=0.0),
    }, "Distillation-Oriented Trainer")  # fmt: skip

    def check_run(self, cfg: dict[str, Any]) -> None:
        hp = cfg["student"]
        if hp["optimizer"] != "sgd" or hp["nesterov"]:
            raise UsageError(
                f"method dot needs the student's optimizer to be SGD without Nesterov (got {hp['optimizer']}"
                f"{', nesterov' if hp['nesterov'] else ''}): DOT is an SGD with two momenta "
                "(--set student.nesterov=false)"
            )

    def components(self, site: Site) -> list[Component]:
        self.check_run({"student": site.hp})
        if self.p["ce_weight"] == 0 and torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                raise UsageError("method dot with dot.ce_weight 0 trains in one process only (DDP reduces the CE pass)")
        return [DOTStep(self.p["delta"])]

    def loss(self, student_logits, targets, teacher_logits, ctx):
        T = float(ctx.T)
        ce = F.cross_entropy(_upcast(student_logits), targets)
        return {
            "ce": self.p["ce_weight"] * ce,
            "kd": self.p["kd_weight"] * T * T * kd_kl(student_logits, teacher_logits, T),
        }
