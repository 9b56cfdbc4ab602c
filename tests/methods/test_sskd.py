"""SSKD (lskd_bench/methods/sskd.py, registered as ``sskd``) against xuguodong03/SSKD@661b972: its losses and the
registered method's (projection heads, the grid's T) against student.py transcribed op for op, its rotated batch
against cifar.py's np.rot90, its teacher-head stage's lr against MultiStepLR; trained on digits: fused = alone and
killed-and-resumed (inside the teacher-head stage and after it) bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lskd_bench import store
from lskd_bench.errors import UsageError
from lskd_bench.methods import LossContext, Probe, build_method, method_class, total_loss
from lskd_bench.methods.sskd import SSKD_DEFAULTS, rotated_views, sskd_student_terms, sskd_teacher_loss
from lskd_bench.outputs import Outputs

from ..fixtures import same_weights, tiny_overrides


def ref_student(output, s_feat, knowledge, t_feat, target, args):
    """xuguodong03/SSKD@661b972 student.py:235-295 after the forward passes (``.cuda()`` dropped), op for op."""
    batch = int(output.size(0) / 4)
    nor_index = torch.arange(4 * batch) % 4 == 0
    aug_index = torch.arange(4 * batch) % 4 != 0
    log_nor_output = F.log_softmax(output[nor_index] / args["kd_T"], dim=1)
    log_aug_output = F.log_softmax(output[aug_index] / args["tf_T"], dim=1)
    with torch.no_grad():
        nor_knowledge = F.softmax(knowledge[nor_index] / args["kd_T"], dim=1)
        aug_knowledge = F.softmax(knowledge[aug_index] / args["tf_T"], dim=1)
    aug_target = target.unsqueeze(1).expand(-1, 3).contiguous().view(-1).long()
    rank = torch.argsort(aug_knowledge, dim=1, descending=True)
    rank = torch.argmax(torch.eq(rank, aug_target.unsqueeze(1)).long(), dim=1)
    index = torch.argsort(rank)
    tmp = torch.nonzero(rank, as_tuple=True)[0]
    wrong_num = tmp.numel()
    correct_num = 3 * batch - wrong_num
    wrong_keep = int(wrong_num * args["ratio_tf"])
    index = index[: correct_num + wrong_keep]
    distill_index_tf = torch.sort(index)[0]
    s_nor_feat = s_feat[nor_index]
    s_aug_feat = s_feat[aug_index]
    s_nor_feat = s_nor_feat.unsqueeze(2).expand(-1, -1, 3 * batch).transpose(0, 2)
    s_aug_feat = s_aug_feat.unsqueeze(2).expand(-1, -1, 1 * batch)
    s_simi = F.cosine_similarity(s_aug_feat, s_nor_feat, dim=1)
    t_nor_feat = t_feat[nor_index]
    t_aug_feat = t_feat[aug_index]
    t_nor_feat = t_nor_feat.unsqueeze(2).expand(-1, -1, 3 * batch).transpose(0, 2)
    t_aug_feat = t_aug_feat.unsqueeze(2).expand(-1, -1, 1 * batch)
    t_simi = F.cosine_similarity(t_aug_feat, t_nor_feat, dim=1)
    t_simi = t_simi.detach()
    aug_target = torch.arange(batch).unsqueeze(1).expand(-1, 3).contiguous().view(-1).long()
    rank = torch.argsort(t_simi, dim=1, descending=True)
    rank = torch.argmax(torch.eq(rank, aug_target.unsqueeze(1)).long(), dim=1)
    index = torch.argsort(rank)
    tmp = torch.nonzero(rank, as_tuple=True)[0]
    wrong_num = tmp.numel()
    correct_num = 3 * batch - wrong_num
    wrong_keep = int(wrong_num * args["ratio_ss"])
    index = index[: correct_num + wrong_keep]
    distill_index_ss = torch.sort(index)[0]
    log_simi = F.log_softmax(s_simi / args["ss_T"], dim=1)
    simi_knowledge = F.softmax(t_simi / args["ss_T"], dim=1)
    loss1 = F.cross_entropy(output[nor_index], target)
    loss2 = F.kl_div(log_nor_output, nor_knowledge, reduction="batchmean") * args["kd_T"] * args["kd_T"]
    loss3 = (
        F.kl_div(log_aug_output[distill_index_tf], aug_knowledge[distill_index_tf], reduction="batchmean")
        * args["tf_T"]
        * args["tf_T"]
    )
    loss4 = (
        F.kl_div(log_simi[distill_index_ss], simi_knowledge[distill_index_ss], reduction="batchmean")
        * args["ss_T"]
        * args["ss_T"]
    )
    a = args
    return {
        "ce": a["ce_weight"] * loss1,
        "kd": a["kd_weight"] * loss2,
        "tf": a["tf_weight"] * loss3,
        "ss": a["ss_weight"] * loss4,
    }, (distill_index_tf, distill_index_ss)


def ref_teacher(rep):
    """student.py:137-150, op for op."""
    batch = int(rep.size(0) / 4)
    nor_index = torch.arange(4 * batch) % 4 == 0
    aug_index = torch.arange(4 * batch) % 4 != 0
    nor_rep = rep[nor_index]
    aug_rep = rep[aug_index]
    nor_rep = nor_rep.unsqueeze(2).expand(-1, -1, 3 * batch).transpose(0, 2)
    aug_rep = aug_rep.unsqueeze(2).expand(-1, -1, 1 * batch)
    simi = F.cosine_similarity(aug_rep, nor_rep, dim=1)
    target = torch.arange(batch).unsqueeze(1).expand(-1, 3).contiguous().view(-1).long()
    return F.cross_entropy(simi, target)


def _rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio_ss", [0.75, 0.5])
def test_sskd_equals_the_authors_loss_and_gradient(seed, ratio_ss):
    """B 16 (64 rows), K 20, features of width 12, float64: each term, and the gradient of the sum with respect
    to the student's logits and features, max relative difference <= 1e-12 (measured: printed); the rows kept
    (some wrongly ranked rows dropped) the same."""
    g = torch.Generator().manual_seed(seed)
    b, k, d = 16, 20, 12
    s_logits = (torch.randn(4 * b, k, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    s_rep = torch.randn(4 * b, d, generator=g, dtype=torch.float64).requires_grad_(True)
    t_logits = torch.randn(4 * b, k, generator=g, dtype=torch.float64) * 3
    t_rep = torch.randn(4 * b, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=g)
    args = {**SSKD_DEFAULTS, "ratio_ss": ratio_ss}
    ours = sskd_student_terms(s_logits, s_rep, t_logits, t_rep, y, args)
    ref, (_, ss_index) = ref_student(s_logits, s_rep, t_logits, t_rep, y, args)
    assert len(ss_index) < 3 * b  # some rows dropped: the selection is exercised
    worst_loss = max(_rel(ours[key], ref[key]) for key in ref)
    grads = [torch.autograd.grad(total_loss(x), (s_logits, s_rep)) for x in (ours, ref)]
    worst_grad = max(_rel(a, b) for a, b in zip(*grads))
    t_rep.requires_grad_(True)
    worst_loss = max(worst_loss, _rel(sskd_teacher_loss(t_rep), ref_teacher(t_rep)))
    (ga,), (gb,) = (torch.autograd.grad(f(t_rep), t_rep) for f in (sskd_teacher_loss, ref_teacher))
    worst_grad = max(worst_grad, _rel(ga, gb))
    print(f"SSKD parity: loss {worst_loss:.1e}, gradient {worst_grad:.1e}")
    assert worst_loss <= 1e-12 and worst_grad <= 1e-12


def test_sskd_selection_by_hand():
    """Two images, three classes: the teacher ranks the label of one rotated row second (a wrong row), of the
    others first; ratio_tf 0 distils the five right rows only, ratio 1 all six."""
    t = torch.zeros(8, 3, dtype=torch.float64)
    t[[1, 2, 3, 5, 6], 0] = 5.0  # rotated rows (1-3 of image 0, 5-7 of image 1), label 0: ranked first
    t[7, 1] = 5.0  # image 1's last rotation: class 1 first, its label 0 second
    s = torch.randn(8, 3, dtype=torch.float64)
    rep = torch.eye(8, 4, dtype=torch.float64) + 1.0
    y = torch.tensor([0, 0])
    kl = lambda a, b: (F.softmax(b / 4, 1) * (F.log_softmax(b / 4, 1) - F.log_softmax(a / 4, 1))).sum(1)  # noqa: E731
    aug = [1, 2, 3, 5, 6, 7]
    for ratio, rows in ((0.0, [1, 2, 3, 5, 6]), (1.0, aug)):
        out = sskd_student_terms(s, rep, t, rep, y, {**SSKD_DEFAULTS, "ratio_tf": ratio, "tf_weight": 1.0})
        assert float(out["tf"]) == pytest.approx(16 * float(kl(s[rows], t[rows]).mean()), rel=1e-12)


def test_rotated_views_are_the_authors_rot90():
    """Each image, then its rotations by 90, 180, 270 degrees as cifar.py:147-161's ``np.rot90`` of the HWC image."""
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    out = rotated_views(x)
    assert out.shape == (8, 3, 4, 4)
    for i in range(2):
        hwc = x[i].permute(1, 2, 0).numpy()
        for r in range(4):
            want = torch.from_numpy(np.rot90(hwc, r).copy()).permute(2, 0, 1)
            assert torch.equal(out[4 * i + r], want)


def _method(d_s: int, d_t: int, **params):
    """The registered ``sskd`` with its heads built for embeddings of widths ``d_s`` / ``d_t`` (float64)."""
    m = build_method("sskd", {"sskd": method_class("sskd").params.check(params, "sskd")})
    probe = Probe(None, None, Outputs(embedding=torch.zeros(2, d_s)), Outputs(embedding=torch.zeros(2, d_t)),
                  None, None, 10, 10)  # fmt: skip
    m.setup(probe)
    return m.double()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("T", [4.0, 2.0])
def test_the_registered_sskd_equals_the_authors_student_and_teacher_head(seed, T):
    """The registered method (heads included) on random logits and embeddings of B 16 images x 4 rows, K 20,
    widths 12 (student) and 24 (teacher), float64: its terms against student.py:235-295 with the heads of
    wrapper.py:13-17,26 applied to the same embeddings, the grid's T as --kd-T; the gradients with respect to the
    student's logits, embedding and projection head; the teacher-head stage's loss (student.py:137-150) and its
    gradient with respect to the teacher's head. Max relative difference <= 1e-12 (measured: printed)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    b, k = 16, 20
    m = _method(12, 24)
    s_logits = (torch.randn(4 * b, k, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    s_emb = torch.randn(4 * b, 12, generator=g, dtype=torch.float64).requires_grad_(True)
    t_logits = torch.randn(4 * b, k, generator=g, dtype=torch.float64) * 3
    t_emb = torch.randn(4 * b, 24, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=g)
    ctx = LossContext(T=T)
    ours = m.loss(Outputs(logits=s_logits, embedding=s_emb), y.repeat_interleave(4),
                  Outputs(logits=t_logits, embedding=t_emb), ctx)  # fmt: skip
    with torch.no_grad():
        t_rep = m.t_head(t_emb)
    ref, _ = ref_student(s_logits, m.s_head(s_emb), t_logits, t_rep, y, {**SSKD_DEFAULTS, "kd_T": T})
    assert list(ours) == ["ce", "kd", "tf", "ss"]
    worst_loss = max(_rel(ours[key], ref[key]) for key in ref)
    wrt = (s_logits, s_emb, *m.s_head.parameters())
    grads = [torch.autograd.grad(total_loss(x), wrt) for x in (ours, ref)]
    worst_grad = max(_rel(a, b) for a, b in zip(*grads))
    for p in m.t_head.parameters():
        p.requires_grad_(True)  # as the stage unfreezes it (init_modules)
    stage = m.init_loss(Outputs(), None, Outputs(embedding=t_emb), ctx)["teacher_ss"]
    ref_t = ref_teacher(m.t_head(t_emb.detach()))
    worst_loss = max(worst_loss, _rel(stage, ref_t))
    ga, gb = (torch.autograd.grad(x, list(m.t_head.parameters())) for x in (stage, ref_t))
    worst_grad = max(worst_grad, *(_rel(a, b) for a, b in zip(ga, gb)))
    print(f"registered SSKD parity (T {T}, seed {seed}): loss {worst_loss:.1e}, gradient {worst_grad:.1e}")
    assert worst_loss <= 1e-12 and worst_grad <= 1e-12


def test_sskd_heads_view_and_schedule():
    """The heads are wrapper.py's Linear(d, d)-ReLU-Linear(d, d); the teacher's is frozen for the main schedule
    (trained by the stage only); the view is rotated_views with each label repeated per row; the stage's lr is
    student.py's MultiStepLR(0.05, [30, 45], 0.1) stepped per epoch over 60 epochs; non-square images refused."""
    m = _method(6, 8)
    assert [type(x).__name__ for x in m.t_head] == ["Linear", "ReLU", "Linear"]
    assert m.t_head[0].weight.shape == (8, 8) and m.s_head[2].weight.shape == (6, 6)
    assert not any(p.requires_grad for p in m.t_head.parameters())
    assert all(p.requires_grad for p in m.s_head.parameters())
    assert m.batch_view == "rotations" and method_class("kd").batch_view is None
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([2, 0, 1])
    vx, vy = m.train_view((x, y))
    assert torch.equal(vx, rotated_views(x)) and vy.tolist() == [2, 2, 2, 2, 0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(UsageError, match="square"):
        m.train_view((torch.randn(2, 1, 4, 5), y[:2]))
    lin = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 45], gamma=0.1)
    lr_at = m.init_schedule({})
    for epoch in range(60):
        assert lr_at(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-15), epoch
        opt.step()
        sched.step()
    assert m.init_stage() == 60 and m.init_lr({}) == 0.05


def _digits(tmp_path, epochs: int, **sskd):
    """Digits, a teacher (alpha 0.1) trained under tmp_path/t, and the kd and sskd students at T 1 and 4."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import load_model, train_group
    from lskd_bench.tasks import get_task

    overrides = tiny_overrides(epochs=epochs, methods=["kd", "sskd"], grid={"alphas": [0.1]}, baseline=True)
    cfg = resolve_config("digits", {}, {**overrides, "sskd": {"t_epochs": 1, **sskd}})
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(tmp_path / "t")], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(tmp_path / "t") / store.MODEL, torch.device("cpu"))
    return cfg, task, data, [c for c in cells if c.role != "teacher"], tmodel


@pytest.mark.slow
def test_sskd_fused_with_kd_equals_alone(tmp_path):
    """A run of kd and sskd (T 1 and 4) and the baseline: ``fuse_units`` puts the sskd students in a group of their
    own (their teacher pass is on the rotated view), kd's keep the group key they had; each fused group trains
    every member bit for bit as alone (weights, metrics, loss history)."""
    from lskd_bench.runners.grid import fuse_units
    from lskd_bench.runners.passes import TeacherPass
    from lskd_bench.runners.train import train_group

    cfg, task, data, cells, tmodel = _digits(tmp_path, epochs=1)
    units = fuse_units(cells, cfg, fuse=True, max_fused=8)
    assert sorted(sorted(c.method for c in u) for u in units) == [["kd", "kd", "ls"], ["sskd", "sskd"]]
    sskd = next(u for u in units if u[0].method == "sskd")
    mixed = [sskd[0], next(c for c in cells if c.method == "kd")]
    with pytest.raises(ValueError, match="one view"):  # one teacher forward per batch: one view
        TeacherPass(task, tmodel, mixed, [build_method(c.method, cfg) for c in mixed], cfg, data, "cpu")
    for unit in units:
        fused = train_group(task, unit, cfg, data, [tmp_path / "fused" / c.name for c in unit], teacher=tmodel,
                            progress=False)  # fmt: skip
        for c, f in zip(unit, fused):
            (alone,) = train_group(task, [c], cfg, data, [tmp_path / "alone" / c.name], teacher=tmodel, progress=False)
            assert f.error is None and alone.error is None, (f.error, alone.error)
            assert same_weights(tmp_path / "fused" / c.name, tmp_path / "alone" / c.name), c.name
            assert f.result["metrics"] == alone.result["metrics"]
            assert [h["loss"] for h in f.result["history"]] == [h["loss"] for h in alone.result["history"]]
            if c.method == "sskd":
                stage, main = f.result["history"]
                assert stage["stage"] == "init" and set(stage) >= {"loss_teacher_ss"}
                assert {"loss_ce", "loss_kd", "loss_tf", "loss_ss"} <= set(main) and "stage" not in main


@pytest.mark.slow
@pytest.mark.parametrize("at_epoch", [1, 3])
def test_sskd_resumes_bit_identically(tmp_path, at_epoch):
    """Two teacher-head epochs (lr 0.05 then 0.005: t_milestones [1]) then two student epochs, killed at the end
    of epoch 1 (inside the teacher-head stage) or 3 (inside the main schedule) and resumed: the same weights, loss
    history (the stage's lr per epoch included) and metrics as uninterrupted; the checkpoint holds both heads and
    the stage's optimizer."""

    from ..fixtures import resume_matches, train_then_kill

    cfg, task, data, cells, tmodel = _digits(tmp_path, epochs=2, t_epochs=2, t_milestones=[1])
    students = [c for c in cells if c.method == "sskd"]
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path / "run", at_epoch=at_epoch)
    for c in students:
        parts = torch.load(cut / c.name / store.STATE, weights_only=True)["parts"]
        assert {"s_head.0.weight", "t_head.2.bias"} <= set(parts["method"])
        assert parts["init"]["optimizer"]["state"]  # the stage's momentum
    for a, _b in resume_matches(task, students, cfg, data, tmodel, ref, cut):
        assert [h["lr"] for h in a["history"][:2]] == [0.05, pytest.approx(0.005, rel=1e-12)]
