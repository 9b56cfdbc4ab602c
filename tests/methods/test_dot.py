"""DOT (lskd_bench/methods/dot.py): the optimizer and the two backward passes against mdistiller's trainer
transcribed op for op, the loss by hand, the refusals, fused training and resume in the runner."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lskd_bench import store
from lskd_bench.errors import UsageError
from lskd_bench.methods import LossContext, Site, build_method, total_loss
from lskd_bench.methods.dot import DistillationOrientedSGD, DOTStep


# ---------------------------------------------------- mdistiller@a08d46f mdistiller/engine/dot.py, op for op
def _check_in(t, lst):
    return any(t is i for i in lst)


def ref_dot(params, d_p_list, momentum_buffer_list, kd_grad_buffer, kd_momentum_buffer, kd_params, *,
            weight_decay, momentum, momentum_kd, lr, dampening):  # fmt: skip
    for i, param in enumerate(params):  # dot.py:27-40
        d_p = d_p_list[i]
        if weight_decay != 0:
            d_p = d_p.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffer_list[i]
            if buf is None:
                buf = torch.clone(d_p).detach()
                momentum_buffer_list[i] = buf
            elif _check_in(param, kd_params):
                buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
            else:
                buf.mul_((momentum_kd + momentum) / 2.0).add_(d_p, alpha=1 - dampening)
            d_p = buf
        param.add_(d_p, alpha=-lr)
    for i, (d_p, buf, p) in enumerate(zip(kd_grad_buffer, kd_momentum_buffer, kd_params)):  # dot.py:42-55
        if buf is None:
            buf = torch.clone(d_p).detach()
            kd_momentum_buffer[i] = buf
        elif _check_in(p, params):
            buf.mul_(momentum_kd).add_(d_p, alpha=1 - dampening)
        else:
            if weight_decay != 0:
                d_p = d_p.add(p, alpha=weight_decay)
            buf.mul_((momentum_kd + momentum) / 2.0).add_(d_p, alpha=1 - dampening)
        p.add_(buf, alpha=-lr)


class RefDOT(torch.optim.Optimizer):
    """DistillationOrientedTrainer (dot.py:59-166), transcribed."""

    def __init__(self, params, lr, momentum=0, momentum_kd=0, dampening=0, weight_decay=0):
        defaults = {"lr": lr, "momentum": momentum, "momentum_kd": momentum_kd, "dampening": dampening,
                    "weight_decay": weight_decay}  # fmt: skip
        self.kd_grad_buffer, self.kd_grad_params, self.kd_momentum_buffer = [], [], []
        super().__init__(params, defaults)

    @torch.no_grad()
    def step_kd(self):
        assert len(self.param_groups) == 1
        for group in self.param_groups:
            params_with_grad, d_p_list, momentum_kd_buffer_list = [], [], []
            for p in group["params"]:
                if p.grad is not None:
                    params_with_grad.append(p)
                    d_p_list.append(p.grad)
                    state = self.state[p]
                    momentum_kd_buffer_list.append(state.get("momentum_kd_buffer"))
        self.kd_momentum_buffer = momentum_kd_buffer_list
        self.kd_grad_buffer = d_p_list
        self.kd_grad_params = params_with_grad

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params_with_grad, d_p_list, momentum_buffer_list = [], [], []
            for p in group["params"]:
                if p.grad is not None:
                    params_with_grad.append(p)
                    d_p_list.append(p.grad)
                    momentum_buffer_list.append(self.state[p].get("momentum_buffer"))
            ref_dot(params_with_grad, d_p_list, momentum_buffer_list, self.kd_grad_buffer, self.kd_momentum_buffer,
                    self.kd_grad_params, weight_decay=group["weight_decay"], momentum=group["momentum"],
                    momentum_kd=group["momentum_kd"], lr=group["lr"], dampening=group["dampening"])  # fmt: skip
            for p, b in zip(params_with_grad, momentum_buffer_list):
                self.state[p]["momentum_buffer"] = b
            for p, b in zip(self.kd_grad_params, self.kd_momentum_buffer):
                self.state[p]["momentum_kd_buffer"] = b
            self.kd_grad_buffer, self.kd_grad_params, self.kd_momentum_buffer = [], [], []


class Net(torch.nn.Module):
    """A small classifier and two biases: ``b_ce`` enters the CE term only, ``b_kd`` the KD term only (a
    parameter with a task gradient only, one with a KD gradient only)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
        self.b_ce = torch.nn.Parameter(0.1 * torch.randn(5))
        self.b_kd = torch.nn.Parameter(0.1 * torch.randn(5))

    def terms(self, x, y, t, T=4.0):
        z = self.body(x)
        ce = 0.1 * F.cross_entropy(z + self.b_ce, y)
        log_ps, pt = F.log_softmax((z + self.b_kd) / T, 1), F.softmax(t / T, 1)  # mdistiller KD.py:8-13
        kd = 0.9 * F.kl_div(log_ps, pt, reduction="none").sum(1).mean() * T**2
        return {"ce": ce, "kd": kd}


def test_dot_equals_mdistillers_trainer():
    """Six steps at changing lr of mdistiller's DOT (trainer.py:272-279 with dot.py) and of ours (DOTStep's
    optimizer and backward, then ``opt.step()`` as Member.train_step): the same parameters and momentum buffers."""
    torch.manual_seed(0)
    a = Net().double()
    b = Net().double()
    b.load_state_dict(a.state_dict())
    m, delta, wd = 0.9, 0.075, 5e-4
    ref = RefDOT(a.parameters(), lr=0.05, momentum=m - delta, momentum_kd=m + delta, weight_decay=wd)
    part = DOTStep(delta)
    ours = part.optimizer(torch.optim.SGD(b.parameters(), lr=0.05, momentum=m, weight_decay=wd))
    assert isinstance(ours, DistillationOrientedSGD)
    worst = 0.0
    for step in range(6):
        x, y = torch.randn(12, 6, dtype=torch.float64), torch.randint(0, 5, (12,))
        t = 3 * torch.randn(12, 5, dtype=torch.float64)
        lr = 0.05 * (0.5**step)
        for g in [*ref.param_groups, *ours.param_groups]:
            g["lr"] = lr
        terms = a.terms(x, y, t)  # mdistiller's train_iter
        ref.zero_grad(set_to_none=True)
        terms["kd"].backward(retain_graph=True)
        ref.step_kd()
        ref.zero_grad(set_to_none=True)
        terms["ce"].backward()
        ref.step()
        terms = b.terms(x, y, t)  # ours
        ours.zero_grad(set_to_none=True)
        assert part.backward(terms, total_loss(terms)) is True
        ours.step()
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            worst = max(worst, float((pa - pb).detach().abs().max() / pa.detach().abs().max()))
            for key in ("momentum_buffer", "momentum_kd_buffer"):
                sa, sb = ref.state[pa].get(key), ours.state[pb].get(key)
                assert (sa is None) == (sb is None), (name, key)
                if sa is not None:
                    worst = max(worst, float((sa - sb).abs().max() / sa.abs().max()))
    print(f"DOT parity: params and buffers max relative difference {worst:.2e}")
    assert worst <= 1e-12, worst
    assert "momentum_kd_buffer" not in ours.state[b.b_ce] and "momentum_buffer" not in ours.state[b.b_kd]
    assert not torch.equal(a.b_kd, Net().double().b_kd)  # moved by the KD gradient alone


def test_dot_momenta_by_hand():
    """One scalar parameter in both terms, two steps: task buffer at m - delta, KD buffer at m + delta, weight
    decay on the task gradient only."""
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    part = DOTStep(0.1)
    opt = part.optimizer(torch.optim.SGD([w], lr=0.5, momentum=0.8, weight_decay=0.1))
    expect, buf, buf_kd = 1.0, None, None
    for _ in range(2):
        terms = {"ce": (2 * w).sum(), "kd": (w * w).sum()}  # task grad 2, KD grad 2w
        g_task, g_kd = 2.0 + 0.1 * expect, 2.0 * expect
        buf = g_task if buf is None else 0.7 * buf + g_task
        expect -= 0.5 * buf
        buf_kd = g_kd if buf_kd is None else 0.9 * buf_kd + g_kd
        expect -= 0.5 * buf_kd
        opt.zero_grad(set_to_none=True)
        part.backward(terms, total_loss(terms))
        opt.step()
        assert w.item() == pytest.approx(expect, rel=1e-14)


def test_dot_loss_is_mdistillers_kd():
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    y = torch.tensor([0, 3, 6, 1, 2])
    m = build_method("dot", {"dot": {"ce_weight": 0.1, "kd_weight": 0.9}})
    got = m.loss(s, y, t, LossContext(T=4.0))
    ps, pt = torch.softmax(s / 4, 1), torch.softmax(t / 4, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    assert float(got["kd"]) == pytest.approx(0.9 * 16 * float(kl), rel=1e-12)
    assert float(got["ce"]) == pytest.approx(0.1 * float(-torch.log_softmax(s, 1)[range(5), y].mean()), rel=1e-12)


def test_dot_defaults_and_cifar_recipe():
    from lskd_bench.config import resolve_layers
    from lskd_bench.tasks import get_task

    m = build_method("dot", {"dot": {}})
    assert (m.p["ce_weight"], m.p["kd_weight"], m.p["delta"]) == (0.5, 0.5, 0.09)  # imagenet/r34_r18/dot.yaml
    t = get_task("cifar100")
    cmd = {"task": "cifar100", "data": {"root": "/data/cifar100"}, "methods": ["dot"]}
    cfg = resolve_layers(t, [(t.recipe_source(), t.default_config()), ("command line", cmd)]).cfg
    assert cfg["dot"] == {"ce_weight": 0.1, "kd_weight": 0.9, "delta": 0.075}  # cfg.py:63-64, cifar100/dot/*.yaml:20


@pytest.mark.parametrize("hp, why", [({"optimizer": "adam", "nesterov": False}, "adam"),
                                      ({"optimizer": "sgd", "nesterov": True}, "nesterov")])  # fmt: skip
def test_dot_refuses_other_optimizers(hp, why):
    m = build_method("dot", {"dot": {}})
    with pytest.raises(UsageError, match=f"SGD without Nesterov .got .*{why}"):
        m.components(Site(torch.nn.Linear(2, 2), hp, torch.device("cpu"), lambda: None))


def test_dot_refuses_a_delta_above_the_momentum():
    with pytest.raises(UsageError, match="exceeds the student's momentum"):
        DOTStep(0.5).optimizer(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.4))


# ------------------------------------------------------------------------------------------ in the runner
@pytest.mark.slow
def test_dot_fused_with_kd_equals_alone(tmp_path):
    from ..fixtures import fused_with_kd

    fused_with_kd(tmp_path, ["dot"], student={"nesterov": False})


@pytest.mark.slow
def test_dot_resumes_bit_identically_with_both_momenta(tmp_path):
    """Killed at the end of epoch 2 of 3 and resumed: the same weights, loss history and metrics; the checkpoint's
    optimizer state holds both momentum buffers."""

    from ..fixtures import digits_students, resume_matches, train_then_kill

    cfg, task, data, students, tmodel = digits_students(tmp_path, ["dot"], epochs=3, student={"nesterov": False})
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path / "run", at_epoch=2)
    dot = next(c for c in students if c.method == "dot")
    opt = torch.load(cut / dot.name / store.STATE, weights_only=True)["optimizer"]
    assert all({"momentum_buffer", "momentum_kd_buffer"} <= set(s) for s in opt["state"].values())
    assert opt["param_groups"][0]["momentum"] == pytest.approx(0.9 - 0.09)
    for a, _b in resume_matches(task, students, cfg, data, tmodel, ref, cut):
        assert all(math.isfinite(h["loss"]) for h in a["history"])


def _ddp_rank(rank: int, world: int, store: str, out: str) -> None:
    """One rank of ``test_dot_under_ddp_equals_one_process``: its half of each batch through DDP and DOTStep."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, steps = _ddp_case()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        _train(ddp, steps, slice(rank * 8, rank * 8 + 8))
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        torch.distributed.destroy_process_group()


def _ddp_case():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).double()
    g = torch.Generator().manual_seed(1)
    steps = [
        (torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (16,), generator=g),
         3 * torch.randn(16, 5, generator=g, dtype=torch.float64))
        for _ in range(4)
    ]  # fmt: skip
    return model, steps


def _train(model, steps, rows) -> None:
    part = DOTStep(0.075)
    opt = part.optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
    for x, y, t in steps:
        z = model(x[rows])
        terms = {"ce": 0.1 * F.cross_entropy(z, y[rows]), "kd": 0.9 * 16 * F.kl_div(
            F.log_softmax(z / 4, 1), F.softmax(t[rows] / 4, 1), reduction="batchmean")}  # fmt: skip
        opt.zero_grad(set_to_none=True)
        part.backward(terms, total_loss(terms))
        opt.step()


@pytest.mark.slow
def test_dot_under_ddp_equals_one_process(tmp_path):
    """Two gloo processes, each with half of every batch, the model in DistributedDataParallel: DDP reduces the CE
    pass, DOTStep averages the KD gradients itself; four steps land where one process on the whole batch does
    (float64, relative 1e-12: the order of the sums differs)."""
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    model, steps = _ddp_case()
    _train(model, steps, slice(0, 16))
    got = torch.load(out, weights_only=True)
    start, _ = _ddp_case()
    for k, v in model.state_dict().items():
        assert not torch.equal(v, start.state_dict()[k]), k  # trained
        assert float((got[k] - v).abs().max() / v.abs().max()) <= 1e-12, k


def test_run_refuses_dot_with_nesterov_before_writing_anything(tmp_path, capsys):
    """The check runs at planning (``--dry-run`` too), not when the cell starts: one line, exit 2, nothing written."""
    from lskd_bench.cli import main

    out = tmp_path / "runs"
    argv = ["run", "--methods", "dot", "--seeds", "0", "--out", str(out), "--set", "student.nesterov=true"]
    assert main([*argv, "--dry-run"]) == 2
    assert "method dot needs the student's optimizer to be SGD without Nesterov" in capsys.readouterr().err
    assert main(argv) == 2
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
