"""CRD, AB, FT, FSP (lskd_bench/methods/feat_crd.py): each loss against a NumPy computation, RepDistiller's
defaults, the init-stage hooks, and CRD's memory bank and negatives surviving a checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lskd_bench.methods import LossContext, Probe, build_method
from lskd_bench.methods import feat_crd as M
from lskd_bench.outputs import Outputs


def _crd(n=12, k=5, ds=6, dt=7, classes=3, seed=0, labels=True, momentum=0.5):
    m = build_method("crd", {"crd": {"nce_k": k, "feat_dim": 4, "nce_m": momentum}})
    probe = Probe(
        None, None, Outputs(embedding=torch.zeros(2, ds)), Outputs(embedding=torch.zeros(2, dt)), None, None, n, classes
    )
    torch.manual_seed(seed)
    m.setup(probe)
    if labels:
        m.labels.copy_(torch.arange(n) % classes)
    return m


def test_defaults_are_repdistillers():
    crd = build_method("crd", {"crd": {}}).p
    assert (crd["beta"], crd["ce"], crd["feat_dim"], crd["nce_k"], crd["nce_t"], crd["nce_m"]) == (
        0.8,
        1.0,
        128,
        16384,
        0.07,
        0.5,
    )
    for name, beta in (("ab", 1.0), ("ft", 200.0), ("fsp", 50.0)):
        m = build_method(name, {name: {}})
        assert m.p["beta"] == beta and m.p["init_epochs"] == 30 and m.init_stage() == 30
    assert build_method("crd", {"crd": {}}).needs.indices


def test_beta_cites_the_line_of_repdistillers_script_that_sets_it():
    """RepDistiller@b84f547 scripts/run_cifar_distill.sh has 32 lines, one command per method: AB -b 1 on line 21,
    FT -b 200 on 23, FSP -b 50 on 25, CRD -b 0.8 on 29 (CRD+KD, -a 1, on 32)."""
    import re
    from pathlib import Path

    for name, line in (("ab", 21), ("ft", 23), ("fsp", 25), ("crd", 29)):
        assert f"scripts/run_cifar_distill.sh:{line}" in build_method(name, {name: {}}).params.fields["beta"].help
    src = Path(M.__file__).read_text()
    cited = [int(n) for n in re.findall(r"run_cifar_distill\.sh:(\d+)", src)]
    cited += [int(n) for n in re.findall(r"line (\d+)\)\. After", src)]  # CRD+KD's line in the docstring
    assert sorted(cited) == [21, 21, 23, 23, 25, 25, 29, 29, 32]


def _np_embed(x, w, b):
    z = x @ w.T + b
    return z / np.sqrt((z**2).sum(1, keepdims=True))


def _np_nce(x, n):
    m = x.shape[1] - 1
    pn = 1.0 / n
    pos = np.log(x[:, 0] / (x[:, 0] + m * pn + 1e-7)).sum()
    neg = np.log(m * pn / (x[:, 1:] + m * pn + 1e-7)).sum()
    return -(pos + neg) / len(x)


@pytest.mark.parametrize("k", [5, 12])  # 12: more draws than memory rows (the scores of every row, then gathered)
def test_crd_loss_memory_update_and_z_match_numpy(k):
    n = 12
    m = _crd(n, k, momentum=0.3)  # not 0.5: m and 1 - m must not be interchangeable
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 4, 8])
    idx = torch.cat([y[:, None], torch.randint(0, n, (3, k), generator=g)], 1)
    xs, xt = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    m.double()
    mem_s, mem_t = m.memory_s.numpy().copy(), m.memory_t.numpy().copy()
    f_s, f_t = m.embed_s(xs), m.embed_t(xt)
    out_s, out_t = m.contrast(f_s, f_t, idx)
    loss = M.contrast_loss(out_s, n) + M.contrast_loss(out_t, n)
    m.update_memory(f_s, f_t, y)

    es = _np_embed(xs.numpy(), m.embed_s.linear.weight.detach().numpy(), m.embed_s.linear.bias.detach().numpy())
    et = _np_embed(xt.numpy(), m.embed_t.linear.weight.detach().numpy(), m.embed_t.linear.bias.detach().numpy())
    i = idx.numpy()
    ps = np.exp(np.einsum("bkd,bd->bk", mem_t[i], es) / 0.07)  # student anchor, teacher memory
    pt = np.exp(np.einsum("bkd,bd->bk", mem_s[i], et) / 0.07)
    zs, zt = ps.mean() * n, pt.mean() * n  # Z fixed at the first batch
    ref = _np_nce(ps / zs, n) + _np_nce(pt / zt, n)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    assert m.z.numpy() == pytest.approx([zs, zt], rel=1e-12)
    for mem, new, e in ((mem_s, m.memory_s, es), (mem_t, m.memory_t, et)):
        upd = 0.3 * mem[[0, 4, 8]] + 0.7 * e
        want = mem.copy()
        want[[0, 4, 8]] = upd / np.linalg.norm(upd, axis=1, keepdims=True)
        np.testing.assert_allclose(new.numpy(), want, rtol=1e-12, atol=0)
    # a second batch keeps the first batch's Z
    out_s2, _ = m.contrast(f_s.detach(), f_t.detach(), idx)
    assert m.z.numpy() == pytest.approx([zs, zt], rel=1e-12)
    ps2 = np.exp(np.einsum("bkd,bd->bk", m.memory_t.numpy()[i], es) / 0.07)
    np.testing.assert_allclose(out_s2.squeeze(-1).detach().numpy(), ps2 / zs, rtol=1e-10)


def test_crd_negatives_are_other_classes_drawn_without_replacement_unless_too_few():
    labels = torch.arange(40) % 4  # 30 samples of other classes each
    targets = torch.tensor([0, 1, 3])
    neg = M.draw_negatives(labels, targets, 20, torch.Generator().manual_seed(0))
    assert neg.shape == (3, 20)
    assert (labels[neg] != targets[:, None]).all()
    assert all(len(set(r.tolist())) == 20 for r in neg)  # without replacement
    many = M.draw_negatives(labels, targets, 1000, torch.Generator().manual_seed(0))  # 1000 > 30: with replacement
    assert (labels[many] != targets[:, None]).all() and many.shape == (3, 1000)
    assert set(many[0].tolist()) == set(torch.nonzero(labels != 0).flatten().tolist())
    # the draw is a function of the generator alone
    again = M.draw_negatives(labels, targets, 20, torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)


def _batch(seed, n=12, b=4):
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g)[:b]
    return (
        y,
        Outputs(embedding=torch.randn(b, 6, generator=g), logits=torch.randn(b, 3, generator=g)),
        Outputs(embedding=torch.randn(b, 7, generator=g)),
    )


def test_crd_loss_uses_own_index_as_positive_and_updates_only_the_batch_rows():
    m = _crd()
    y, s, t = _batch(0)
    before_s, before_t = m.memory_s.clone(), m.memory_t.clone()
    out = m.compute(s, m.labels[y], t, LossContext(indices=y))
    assert set(out) == {"ce", "feat"} and out["feat"].item() > 0
    rest = torch.ones(12, dtype=torch.bool)
    rest[y] = False
    assert torch.equal(m.memory_s[rest], before_s[rest]) and torch.equal(m.memory_t[rest], before_t[rest])
    assert not torch.equal(m.memory_s[y], before_s[y])
    assert torch.allclose(m.memory_s[y].norm(dim=1), torch.ones(len(y)))
    out["feat"].backward()
    assert m.embed_s.linear.weight.grad is not None and s["embedding"].grad is None  # inputs were plain tensors
    with pytest.raises(ValueError, match="indices"):
        m.compute(s, m.labels[y], t, LossContext())


def test_crd_learns_labels_from_batches():
    m = _crd(labels=False)
    y, s, t = _batch(1)
    m.compute(s, torch.tensor([2, 1, 0, 2]), t, LossContext(indices=y))
    assert m.labels[y].tolist() == [2, 1, 0, 2] and (m.labels >= 0).sum() == 4


def test_crd_round_trips_through_state_dict_and_draws_the_same_next_negatives(tmp_path):
    a = _crd(seed=0)
    for i in range(2):
        y, s, t = _batch(i)
        a.compute(s, a.labels[y], t, LossContext(indices=y))
    path = tmp_path / "state.pt"
    torch.save(a.state_dict(), path)
    b = _crd(seed=123)  # other weights, memory and generator seed until loaded
    b.load_state_dict(torch.load(path, weights_only=False))
    for name in ("memory_s", "memory_t", "z", "labels"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    y, s, t = _batch(5)
    la = a.compute(s, a.labels[y], t, LossContext(indices=y))["feat"]
    lb = b.compute(s, b.labels[y], t, LossContext(indices=y))["feat"]
    assert torch.equal(la, lb) and torch.equal(a.memory_s, b.memory_s)
    na = M.draw_negatives(a.labels, a.labels[y], 5, a.generator(a.memory_s.device))
    nb = M.draw_negatives(b.labels, b.labels[y], 5, b.generator(b.memory_s.device))
    assert torch.equal(na, nb)
    c = _crd(seed=123)  # without the checkpoint: other negatives
    c.load_state_dict(dict(a.state_dict().items()), strict=True)
    c.set_extra_state({"seed": 999, "generator": None})
    nc = M.draw_negatives(c.labels, c.labels[y], 5, c.generator(c.memory_s.device))
    assert not torch.equal(na, nc)


def test_ab_loss_matches_numpy():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    t = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    got = M.ab_losses(s, t, n=2)
    for i, (a, b) in enumerate(zip(s, t)):
        a, b = a.numpy(), b.numpy()
        ref = ((a + 1) ** 2 * ((a > -1) & (b <= 0)) + (a - 1) ** 2 * ((a <= 1) & (b > 0))).sum()
        assert got[i].item() == pytest.approx(2.0 ** (i - 1) * ref / 2 / 1000 * 3, rel=1e-12)


def test_ft_losses_match_numpy():
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    ft = torch.randn(2, 5, 8, 8, generator=g, dtype=torch.float64)
    got = M.factor_transfer(fs, ft).item()
    t = ft.numpy().reshape(2, 5, 4, 2, 4, 2).mean((3, 5))  # average-pooled to the student's 4x4

    def factor(f):
        v = (f**2).mean(1).reshape(2, -1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    assert got == pytest.approx(np.abs(factor(fs.numpy()) - factor(t)).mean(), rel=1e-12)
    m = build_method("ft", {"ft": {}})
    m.setup(
        Probe(
            None,
            None,
            Outputs(stage1=torch.zeros(2, 3, 4, 4)),
            Outputs(stage1=torch.zeros(2, 6, 8, 8)),
            None,
            None,
            10,
            3,
        )
    )
    f = torch.randn(2, 6, 8, 8, generator=g)
    _, rec = m.paraphraser(f)
    assert m.init_loss(None, None, Outputs(stage1=f), None)["init"].item() == pytest.approx(
        ((rec - f) ** 2).mean().item(), rel=1e-6
    )


def test_fsp_loss_matches_numpy_including_channel_pooling():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, c, h, h, generator=g, dtype=torch.float64) for c, h in ((2, 8), (4, 4))]
    t = [torch.randn(2, c, h, h, generator=g, dtype=torch.float64) for c, h in ((2, 8), (4, 4), (8, 2))]

    def fsp(bot, top):
        if bot.shape[2] > top.shape[2]:
            r = bot.shape[2] // top.shape[2]
            bot = bot.reshape(*bot.shape[:2], top.shape[2], r, top.shape[2], r).mean((3, 5))
        return np.einsum("nbs,nts->ntb", bot.reshape(*bot.shape[:2], -1), top.reshape(*top.shape[:2], -1)) / (
            bot.shape[2] * bot.shape[3]
        )

    got = M.fsp_losses(s, t)
    assert len(got) == 1
    ref = ((fsp(s[0].numpy(), s[1].numpy()) - fsp(t[0].numpy(), t[1].numpy())) ** 2).mean()
    assert got[0].item() == pytest.approx(ref, rel=1e-12)
    # channel counts that differ: the larger FSP matrix averaged in groups to the smaller
    t2 = [torch.randn(2, c, h, h, generator=g, dtype=torch.float64) for c, h in ((4, 8), (8, 4))]
    big = fsp(t2[0].numpy(), t2[1].numpy()).reshape(2, 4, 2, 2, 2).mean((2, 4))
    ref2 = ((fsp(s[0].numpy(), s[1].numpy()) - big) ** 2).mean()
    assert M.fsp_losses(s, t2)[0].item() == pytest.approx(ref2, rel=1e-12)


def _digits_pair():
    from lskd_bench.tasks.digits import ARCHS, cnn

    torch.manual_seed(0)
    return cnn(ARCHS["cnn_wide"], 10), cnn(ARCHS["cnn_tiny"], 10)


def test_init_stage_hooks():
    teacher, student = _digits_pair()
    s_pre = Outputs(preact_stage1=torch.zeros(2, 8, 8, 8), preact_stage2=torch.zeros(2, 16, 4, 4))
    t_pre = Outputs(
        preact_stage1=torch.zeros(2, 32, 8, 8),
        preact_stage2=torch.zeros(2, 64, 4, 4),
        preact_stage3=torch.zeros(2, 128, 2, 2),
    )
    ab = build_method("ab", {"ab": {}})
    ab.setup(Probe(student, teacher, s_pre, t_pre, None, None, 10, 10))
    assert not any(p.requires_grad for p in ab.connector.parameters())  # the main stage does not train it
    mods = ab.init_modules(student)
    assert mods[0] is ab.connector and all(p.requires_grad for p in ab.connector.parameters())
    assert student.backbone in mods and student.head not in mods
    assert ab.init_lr({"lr": 0.05, "arch": "resnet8x4"}) == 0.05
    fsp = build_method("fsp", {"fsp": {}})
    assert fsp.init_modules(student) == [student.backbone]
    ft = build_method("ft", {"ft": {}})
    assert ft.init_lr({"lr": 0.05, "arch": "resnet8x4"}) == 0.01  # helper/pretrain.py:22-25
    assert ft.init_lr({"lr": 0.05, "arch": "cnn_tiny"}) == 0.05
    assert ft.init_lr({"lr": 0.01, "arch": "MobileNetV2"}) == 0.01
    ft.setup(
        Probe(
            student,
            teacher,
            Outputs(stage2=torch.zeros(2, 16, 4, 4)),
            Outputs(stage3=torch.zeros(2, 128, 2, 2)),
            None,
            None,
            10,
            10,
        )
    )
    assert ft.init_modules(student) == [ft.paraphraser]
    # the init losses reach what the init stage trains
    g = torch.Generator().manual_seed(0)
    s = Outputs({k: torch.randn(*v.shape, generator=g, requires_grad=True) for k, v in s_pre.items()})
    t = Outputs({k: torch.randn(*v.shape, generator=g) for k, v in t_pre.items()})
    ab.init_loss(s, None, t, LossContext())["init"].backward()
    assert all(p.grad is not None for p in ab.connector.parameters()) and s["preact_stage1"].grad is not None


def test_ab_and_fsp_main_stage_is_cross_entropy_only():
    y = torch.tensor([0, 2])
    logits = torch.randn(2, 3)
    for name in ("ab", "fsp"):
        m = build_method(name, {name: {}})
        out = m.loss(Outputs(logits=logits), y, Outputs(), LossContext())
        assert set(out) == {"ce"} and out["ce"].item() == pytest.approx(nn.functional.cross_entropy(logits, y).item())


@pytest.mark.slow
def test_killed_crd_and_ab_cells_resume_bit_identically(tmp_path):
    """In the runner: a CRD cell (memory bank, Z, the negatives' generator) and an AB cell (its init stage) killed
    after their second epoch and resumed end with the weights of uninterrupted runs."""
    from lskd_bench import store
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import load_model, train_group
    from lskd_bench.tasks import get_task

    from ..fixtures import same_weights, tiny_overrides

    cfg = resolve_config(
        "digits",
        {},
        tiny_overrides(
            epochs=3,
            methods=["crd", "ab"],
            grid={"alphas": [0.1]},
            baseline=False,
            crd={"nce_k": 64},
            ab={"init_epochs": 1},
        ),
    )
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(tmp_path / "t")], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(tmp_path / "t") / store.MODEL, torch.device("cpu"))
    students = [c for c in cells if c.role == "student"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train_group(task, students, cfg, data, [ref / c.name for c in students], teacher=tmodel, progress=False)

    def stop(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(
            task,
            students,
            cfg,
            data,
            [cut / c.name for c in students],
            teacher=tmodel,
            progress=False,
            on_epoch_end=stop,
        )
    crd = next(c for c in students if c.method == "crd")
    state = torch.load(cut / crd.name / store.STATE, weights_only=False)
    assert {"memory_s", "memory_t", "z", "labels", "_extra_state"} <= set(state["parts"]["method"])
    assert state["parts"]["method"]["_extra_state"]["generator"] is not None
    out = train_group(task, students, cfg, data, [cut / c.name for c in students], teacher=tmodel, progress=False)
    assert all(o.error is None for o in out)
    assert all(same_weights(cut / c.name, ref / c.name) for c in students)
    student_keys = set(task.build_model(crd.arch, data, cfg, cfg["student"]).state_dict())
    assert set(torch.load(cut / crd.name / store.MODEL, weights_only=True)) == student_keys  # no memory exported
