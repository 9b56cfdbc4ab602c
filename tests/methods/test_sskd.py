"""SSKD's losses (lskd_bench/methods/sskd.py, not yet a registered method) against xuguodong03/SSKD@661b972
student.py transcribed op for op, and its rotated batch against cifar.py's np.rot90."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lskd_bench.methods import total_loss
from lskd_bench.methods.sskd import SSKD_DEFAULTS, rotated_views, sskd_student_terms, sskd_teacher_loss


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
