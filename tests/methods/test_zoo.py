"""The KD method zoo: each loss against a NumPy computation on fixed logits, CTKD's gradient reversal and
curriculum, method parameters through resume, every method on every classification task."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lskd_bench import store
from lskd_bench.methods import METHODS, FeatureMethod, LossContext, build_method, total_loss
from lskd_bench.methods.losses import cosine_curriculum

S = np.array([[2.0, 0.5, -1.0, 0.0, 1.2], [0.1, 0.2, 3.0, -2.0, 0.4], [1.0, -0.3, 0.2, 0.8, -1.5]])
TT = np.array([[3.0, 1.0, -0.5, 0.2, 0.9], [-1.0, 0.0, 2.5, 0.5, 0.1], [0.3, 0.6, -0.2, 1.9, -0.4]])
Y = np.array([0, 2, 3])


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ce(z, y):
    return -np.log(softmax(z)[np.arange(len(y)), y]).mean()


def kl(p, q):  # KL(p || q) per row
    return (p * (np.log(p) - np.log(q))).sum(-1)


def run(name, cfg=None, T=None, epoch=0):
    m = build_method(name, {name: cfg or {}})
    return total_loss(m.loss(torch.tensor(S), torch.tensor(Y), torch.tensor(TT), LossContext(T=T, epoch=epoch))).item()


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("epoch,warmup", [(0, 1), (1, 4)])
def test_dkd_matches_target_nontarget_split(T, epoch, warmup):
    ps, pt = softmax(S / T), softmax(TT / T)
    rows = np.arange(3)
    bs = np.stack([ps[rows, Y], 1 - ps[rows, Y]], 1)
    bt = np.stack([pt[rows, Y], 1 - pt[rows, Y]], 1)
    tckd = kl(bt, bs).mean() * T * T
    mask = np.ones_like(S, bool)
    mask[rows, Y] = False
    ns = softmax(S[mask].reshape(3, 4) / T)  # the non-target classes only
    nt = softmax(TT[mask].reshape(3, 4) / T)
    nckd = kl(nt, ns).mean() * T * T
    alpha, beta = 1.0, 0.5
    ramp = min((epoch + 1) / warmup, 1.0)
    expected = ce(S, Y) + ramp * (alpha * tckd + beta * nckd)
    got = run("dkd", {"warmup": warmup}, T, epoch)
    assert got == pytest.approx(expected, rel=1e-6)


def zscore(z):
    return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_kd_std_zscores_before_softening(T):
    expected = ce(S, Y) + 9.0 * T * T * kl(softmax(zscore(TT) / T), softmax(zscore(S) / T)).mean()
    assert run("kd_std", None, T) == pytest.approx(expected, rel=1e-6)
    # the same pre-process on DKD equals DKD on z-scored logits (CE on the raw logits)
    m = build_method("dkd", {"dkd": {"standardize": True, "std_weight": 1.0, "ce_weight": 0.0}})
    ref = build_method("dkd", {"dkd": {"ce_weight": 0.0}})
    a = total_loss(m.loss(torch.tensor(S), torch.tensor(Y), torch.tensor(TT), LossContext(T=T))).item()
    b = total_loss(
        ref.loss(torch.tensor(zscore(S)), torch.tensor(Y), torch.tensor(zscore(TT)), LossContext(T=T))
    ).item()
    assert a == pytest.approx(b, rel=1e-6)


def authors_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """logit-standardization-KD mdistiller/distillers/DKD.py dkd_loss(..., logit_stand=True), op for op."""
    import torch.nn.functional as F

    def normalize(z):
        return (z - z.mean(dim=-1, keepdims=True)) / (1e-7 + z.std(dim=-1, keepdims=True))

    s, t = normalize(logits_student), normalize(logits_teacher)
    gt = torch.zeros_like(s).scatter_(1, target.unsqueeze(1), 1).bool()
    other = torch.ones_like(s).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdims=True), (p * other).sum(1, keepdims=True)], 1)

    ps, pt = cat_mask(F.softmax(s / temperature, 1)), cat_mask(F.softmax(t / temperature, 1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * temperature**2 / target.shape[0]
    pt2 = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    ls2 = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(ls2, pt2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("beta", [8.0, 2.0])
def test_dkd_standardize_is_the_authors_recipe(beta):
    """At the authors' settings (tools/train.py:116-118: alpha and beta x 9, base temperature 2), on CIFAR-like
    random logits, after the warm-up, CE weight 1."""
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(64, 100, generator=g, dtype=torch.float64) * 3,
        torch.randn(64, 100, generator=g, dtype=torch.float64) * 5,
    )
    y = torch.randint(0, 100, (64,), generator=g)
    want = torch.nn.functional.cross_entropy(s, y) + 1.0 * authors_dkd(s, t, y, 1.0 * 9, beta * 9, 2.0)
    m = build_method("dkd", {"dkd": {"standardize": True, "beta": beta, "warmup": 20}})
    got = total_loss(m.loss(s, y, t, LossContext(T=2.0, epoch=25)))
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    # without the x 9 (std_weight 1) it is a different loss: what dkd.standardize computed before
    old = build_method("dkd", {"dkd": {"standardize": True, "beta": beta, "warmup": 20, "std_weight": 1.0}})
    assert abs(total_loss(old.loss(s, y, t, LossContext(T=2.0, epoch=25))).item() - want.item()) > 0.1


def test_std_weight_enters_the_hash_only_with_standardize():
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve

    def hashes(dkd):
        cfg = resolve("digits", {}, {"methods": ["dkd"], "dkd": dkd}).cfg
        return [c.hash for c in plan_cells(cfg) if c.method == "dkd"]

    assert hashes({}) == hashes({"std_weight": 3.0})
    assert hashes({"standardize": True}) != hashes({"standardize": True, "std_weight": 3.0})


def pearson_rows(a, b, eps=1e-8):  # DIST's Pearson: cosine of centred rows, eps in the denominator
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def test_dist_inter_and_intra_class_correlations():
    ys, yt = softmax(S), softmax(TT)
    assert pearson_rows(ys, yt) == pytest.approx([np.corrcoef(x, y)[0, 1] for x, y in zip(ys, yt)], rel=1e-6)
    inter = 1 - pearson_rows(ys, yt).mean()
    intra = 1 - pearson_rows(ys.T, yt.T).mean()
    expected = ce(S, Y) + 2.0 * (inter + intra)
    assert run("dist") == pytest.approx(expected, rel=1e-6)
    tau = 2.0
    ys, yt = softmax(S / tau), softmax(TT / tau)
    expected = ce(S, Y) + 2.0 * tau**2 * ((1 - pearson_rows(ys, yt).mean()) + (1 - pearson_rows(ys.T, yt.T).mean()))
    assert run("dist", {"tau": tau}) == pytest.approx(expected, rel=1e-6)


def test_ttm_power_transforms_the_teacher_only():
    gamma = 0.1
    pt = softmax(TT) ** gamma
    pt /= pt.sum(-1, keepdims=True)
    expected = ce(S, Y) + 45.0 * kl(pt, softmax(S)).mean()
    assert run("ttm") == pytest.approx(expected, rel=1e-6)


def authors_wttm(y_s, y_t, lam):
    """Reference transcription of zkxufo/TTM@fe457b3 distiller_zoo/wttm.py:14-19 (WTTM.forward), op for op."""
    import torch.nn.functional as F

    p_s = F.log_softmax(y_s, dim=1)
    p_t = torch.pow(torch.softmax(y_t, dim=1), lam)  # self.l
    norm = torch.sum(p_t, dim=1)
    p_t = p_t / norm.unsqueeze(1)
    KL = torch.sum(F.kl_div(p_s, p_t, reduction="none"), dim=1)
    return torch.mean(norm * KL)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("gamma", [0.1, 0.2, 0.5, 1.0])
def test_wttm_equals_the_authors_loss_and_gradient(gamma):
    """loss and gradient (student logits) max relative difference <= 1e-15 in float64 (docstring: 1.4e-16 /
    4.9e-16 over these gammas and seeds 0-2)."""
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(64, 100, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.randn(64, 100, generator=g, dtype=torch.float64) * 5
    y = torch.randint(0, 100, (64,), generator=g)
    m = build_method("wttm", {"wttm": {"gamma": gamma, "ce_weight": 0.0, "kd_weight": 1.0}})
    ours = total_loss(m.loss(s, y, t, LossContext()))
    (g_ours,) = torch.autograd.grad(ours, s)
    ref = authors_wttm(s, t, gamma)
    (g_ref,) = torch.autograd.grad(ref, s)
    assert _rel(ours, ref) <= 1e-15 and _rel(g_ours, g_ref) <= 1e-15
    # the full loss: CE weight 1 (-r 1) + 4 x WTTM (-a 4) at gamma 0.2, the defaults
    m = build_method("wttm", {"wttm": {}})
    assert (m.p["ce_weight"], m.p["kd_weight"], m.p["gamma"]) == (1.0, 4.0, 0.2)
    want = torch.nn.functional.cross_entropy(s, y) + 4.0 * authors_wttm(s, t, 0.2)
    assert total_loss(m.loss(s, y, t, LossContext())).item() == pytest.approx(want.item(), rel=1e-14)


def test_wttm_is_ttm_weighted_by_the_teachers_power_sum():
    gamma = 0.2
    pt = softmax(TT) ** gamma
    z = pt.sum(-1)
    expected = ce(S, Y) + 4.0 * (z * kl(pt / z[:, None], softmax(S))).mean()
    assert run("wttm") == pytest.approx(expected, rel=1e-12)
    # gamma 1: Z = 1, plain KL(p_t || p_s)
    assert run("wttm", {"gamma": 1.0, "ce_weight": 0.0, "kd_weight": 1.0}) == pytest.approx(
        kl(softmax(TT), softmax(S)).mean(), rel=1e-12
    )


def torchdistill_skd(student_logits, teacher_logits, temperature, tikhonov):
    """Reference transcription of yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:1895-1900
    (SKDInstanceLoss.forward) and :1937-1949 (SKDDirectionLoss.forward), op for op; summed with the config's
    weights 1 and 1 (configs/sample/ilsvrc2012/skd/resnet18_from_resnet34.yaml:140,150)."""
    from torch.nn.functional import normalize

    log_p_student = torch.log_softmax(student_logits / temperature, dim=1)
    p_teacher = torch.softmax(teacher_logits / temperature, dim=1)
    instance = torch.nn.functional.kl_div(log_p_student, p_teacher, reduction="batchmean")
    student_gram = normalize(student_logits, p=2, dim=1)
    teacher_gram = normalize(teacher_logits, p=2, dim=1)
    student_gram = torch.mm(student_gram, student_gram.t())
    teacher_gram = torch.mm(teacher_gram, teacher_gram.t())
    diff = student_gram - teacher_gram
    cov_matrix = torch.cov(diff.t()) + tikhonov * torch.eye(diff.size(1), device=diff.device)
    cholesky_factor = torch.linalg.cholesky(cov_matrix)
    inv_cov_matrix = torch.cholesky_inverse(cholesky_factor)
    mahalanobis_dist = torch.einsum("bi,ij,bj->b", diff, inv_cov_matrix, diff)
    return instance, torch.sqrt(mahalanobis_dist).mean()


def _skd_case(seed, n=64, k=100):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, k, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.randn(n, k, generator=g, dtype=torch.float64) * 5
    return s, t, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_skd_equals_torchdistill_loss_and_gradient(seed, T):
    """loss and gradient (student logits) max relative difference <= 1e-12 (docstring: the measured maxima),
    each term and the sum, at a Tikhonov factor that float32 holds exactly (0.25: the reference's identity matrix is
    float32, torch's default dtype, so its 0.1 * I is float32(0.1) = 0.1 + 1.5e-9 even in float64); at the
    default 0.1 the difference is that rounding's (<= 1e-7)."""
    s, t, y = _skd_case(seed)
    m = build_method("skd", {"skd": {"tikhonov": 0.25}})
    out = m.loss(s, y, t, LossContext(T=T))
    assert out["ce"].item() == 0.0
    instance, direction = torchdistill_skd(s, t, T, 0.25)
    assert _rel(out["kd"], instance) <= 1e-12 and _rel(out["direction"], direction) <= 1e-12
    for ours, ref in ((out["direction"], direction), (total_loss(out), instance + direction)):
        (g_ours,) = torch.autograd.grad(ours, s, retain_graph=True)
        (g_ref,) = torch.autograd.grad(ref, s, retain_graph=True)
        assert _rel(g_ours, g_ref) <= 1e-12
    # the defaults: no CE, weights 1 and 1, Tikhonov 0.1 (the float32 rounding of the reference's aside)
    m = build_method("skd", {"skd": {}})
    assert m.p == {"ce_weight": 0.0, "instance_weight": 1.0, "direction_weight": 1.0, "tikhonov": 0.1}
    assert m.uses_temperature and m.task_kinds == ("classification",)
    instance, direction = torchdistill_skd(s, t, T, 0.1)
    assert _rel(total_loss(m.loss(s, y, t, LossContext(T=T))), instance + direction) <= 1e-7
    # the weights and the CE
    m = build_method("skd", {"skd": {"ce_weight": 1.0, "instance_weight": 0.5, "direction_weight": 2.0}})
    want = torch.nn.functional.cross_entropy(s, y) + 0.5 * instance + 2.0 * direction
    assert total_loss(m.loss(s, y, t, LossContext(T=T))).item() == pytest.approx(want.item(), rel=1e-7)
    # a last batch of one sample: no covariance, the direction term is 0 (the reference's is NaN)
    one = m.loss(s[:1], y[:1], t[:1], LossContext(T=T))
    assert one["direction"].item() == 0.0 and torch.isfinite(total_loss(one))


def authors_mlkd(s_w, s_s, t_w, t_s, target, temperature=4.0, ce_w=0.1, kd_w=0.9):
    """Jin-Ying/Multi-Level-Logit-Distillation@5ee473f mdistiller/distillers/KD_ours.py:13-47 (kd_loss, cc_loss,
    bc_loss) and :96-255 (KD_ours.forward_train after the forward passes), op for op."""
    import torch.nn.functional as F

    def kd_loss(ls, lt, temperature):
        log_pred_student = F.log_softmax(ls / temperature, dim=1)
        pred_teacher = F.softmax(lt / temperature, dim=1)
        return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2

    def cc_loss(ls, lt, temperature):
        _, class_num = lt.shape
        ps, pt = F.softmax(ls / temperature, dim=1), F.softmax(lt / temperature, dim=1)
        return ((torch.mm(pt.transpose(1, 0), pt) - torch.mm(ps.transpose(1, 0), ps)) ** 2).sum() / class_num

    def bc_loss(ls, lt, temperature):
        batch_size, _ = lt.shape
        ps, pt = F.softmax(ls / temperature, dim=1), F.softmax(lt / temperature, dim=1)
        return ((torch.mm(pt, pt.transpose(1, 0)) - torch.mm(ps, ps.transpose(1, 0))) ** 2).sum() / batch_size

    pred_teacher_weak = F.softmax(t_w.detach(), dim=1)
    confidence, _ = pred_teacher_weak.max(dim=1)
    confidence = confidence.detach()
    mask = confidence.le(np.percentile(confidence.cpu().numpy().flatten(), 50)).bool()
    class_confidence = torch.sum(pred_teacher_weak, dim=0).detach()
    class_conf_mask = class_confidence.le(np.percentile(class_confidence.cpu().numpy().flatten(), 50)).bool()
    temps = (temperature, 3.0, 5.0, 2.0, 6.0)
    loss_ce = ce_w * (F.cross_entropy(s_w, target) + F.cross_entropy(s_s, target))
    loss_kd_weak = sum(kd_w * ((kd_loss(s_w, t_w, T) * mask).mean()) for T in temps)
    loss_kd_strong = (
        kd_w * kd_loss(s_s, t_s, temps[0])
        + kd_w * kd_loss(s_s, t_s, 3.0)
        + kd_w * kd_loss(s_s, t_s, 5.0)
        + kd_w * kd_loss(s_w, t_w, 2.0)
        + kd_w * kd_loss(s_w, t_w, 6.0)
    )
    loss_cc_weak = sum(kd_w * ((cc_loss(s_w, t_w, T) * class_conf_mask).mean()) for T in temps)
    loss_bc_weak = sum(kd_w * ((bc_loss(s_w, t_w, T) * mask).mean()) for T in temps)
    return {"ce": loss_ce, "kd": loss_kd_weak + loss_kd_strong, "cc": loss_cc_weak, "bc": loss_bc_weak}  # fmt: skip


MLKD_WORST = {"loss": 0.0, "grad": 0.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("T", [4.0, 2.0])
@pytest.mark.parametrize("n", [64, 63])
def test_mlkd_equals_the_authors_loss_and_gradient(seed, T, n):
    """Each term, the sum and the gradient of both views' student logits against the transcription, on distinct
    weak and strong views (``losses.mlkd_terms``) and through the method (weak = strong = the batch), N 64 and
    63 (an odd batch: the median is a sample's): max relative difference <= 1e-12 (measured: 4.2e-16 loss,
    4.1e-16 gradient)."""
    from lskd_bench.methods.losses import mlkd_terms

    g = torch.Generator().manual_seed(seed)
    k = 100
    s_w, s_s = ((torch.randn(n, k, generator=g, dtype=torch.float64) * 3).requires_grad_(True) for _ in range(2))
    t_w, t_s = (torch.randn(n, k, generator=g, dtype=torch.float64) * 5 for _ in range(2))
    y = torch.randint(0, k, (n,), generator=g)
    ours, ref = mlkd_terms(s_w, t_w, s_s, t_s, y, T, 0.1, 0.9), authors_mlkd(s_w, s_s, t_w, t_s, y, T)
    assert list(ours) == list(ref)
    for key in ref:
        MLKD_WORST["loss"] = max(MLKD_WORST["loss"], _rel(ours[key], ref[key]))
    (ga, gb), (ra, rb) = (torch.autograd.grad(total_loss(x), (s_w, s_s)) for x in (ours, ref))
    MLKD_WORST["grad"] = max(MLKD_WORST["grad"], _rel(ga, ra), _rel(gb, rb))
    m = build_method("mlkd", {"mlkd": {"ce_weight": 0.1, "kd_weight": 0.9}})
    same = m.loss(s_w, y, t_w, LossContext(T=T))
    ref = authors_mlkd(s_w, s_w, t_w, t_w, y, T)
    for key in ref:
        MLKD_WORST["loss"] = max(MLKD_WORST["loss"], _rel(same[key], ref[key]))
    (ga,), (ra,) = (torch.autograd.grad(total_loss(x), s_w) for x in (same, ref))
    MLKD_WORST["grad"] = max(MLKD_WORST["grad"], _rel(ga, ra))
    print(f"MLKD parity so far: {MLKD_WORST}")
    assert MLKD_WORST["loss"] <= 1e-12 and MLKD_WORST["grad"] <= 1e-12, MLKD_WORST


def test_mlkd_masks_scale_by_the_fraction_kept():
    """By hand on 4 samples, 3 classes: two samples at or below the median confidence (the instance and batch
    levels x 1/2), two classes of three at or below the median summed probability, the middle one included (the
    class level x 2/3)."""
    import torch.nn.functional as F

    from lskd_bench.methods.losses import mlkd_relations

    t = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.2, 0.0], [0.3, 0.0, 0.1], [0.0, 0.4, 1.0], [0.2, 0.1, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    out = build_method("mlkd", {"mlkd": {"ce_weight": 1.0, "kd_weight": 1.0}}).loss(s, y, t, LossContext(T=4.0))
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    kl = [T * T * (F.softmax(t / T, 1) * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1).mean()
          for T in temps]  # fmt: skip
    assert F.softmax(t, 1).sum(0).argsort().tolist() == [1, 2, 0]  # summed probabilities (median: class 2's)
    assert float(out["kd"]) == pytest.approx(1.5 * float(sum(kl)), rel=1e-12)
    assert float(out["cc"]) == pytest.approx(
        float(sum(mlkd_relations(s, t, T, True) for T in temps)) * 2 / 3, rel=1e-12
    )
    assert float(out["bc"]) == pytest.approx(float(sum(mlkd_relations(s, t, T, False) for T in temps)) / 2, rel=1e-12)
    assert float(out["ce"]) == pytest.approx(2 * float(F.cross_entropy(s, y)), rel=1e-12)
    pt, ps = F.softmax(t, 1), F.softmax(s, 1)  # the class-level Gram by hand at T 1
    assert float(mlkd_relations(s, t, 1.0, True)) == pytest.approx(float(((pt.T @ pt - ps.T @ ps) ** 2).sum() / 3))


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_nkd_normalised_target_and_nontarget_terms(T):
    rows = np.arange(3)
    loss_t = -(softmax(TT)[rows, Y] * np.log(softmax(S)[rows, Y])).mean()
    mask = np.ones_like(S, bool)
    mask[rows, Y] = False
    sn, tn = S[mask].reshape(3, 4), TT[mask].reshape(3, 4)
    loss_non = (softmax(tn / T) * np.log(softmax(sn / T))).sum(-1).mean()
    expected = ce(S, Y) + loss_t - 1.5 * T * T * loss_non
    assert run("nkd", None, T) == pytest.approx(expected, rel=1e-6)


def test_ctkd_curriculum_and_gradient_reversal():
    # CTKD's CosineDecay(max 0, min -1, 5 loops) at 1-based epochs 0..6: -(1 - cos(e pi / 5)) / 2, then -1
    got = [cosine_curriculum(e, 5, 0.0, -1.0) for e in range(7)]
    assert got == pytest.approx([-(1 - math.cos(min(e, 5) * math.pi / 5)) / 2 for e in range(7)])
    assert got[0] == 0.0 and got[5] == got[6] == pytest.approx(-1.0)
    m = build_method("ctkd", {"ctkd": {"ce_weight": 0.0}})
    assert m.temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # theta starts at 1
    s, t, y = torch.tensor(S), torch.tensor(TT), torch.tensor(Y)

    def kd_of(theta: float) -> float:  # the KD term as a plain function of theta (no reversal)
        T = 1 + 20 / (1 + math.exp(-theta))
        return T * T * kl(softmax(TT / T), softmax(S / T)).mean()

    h = 1e-6
    dkd_dtheta = (kd_of(1 + h) - kd_of(1 - h)) / (2 * h)
    # epochs are 0-based here and 1-based in the official loop: our epoch e takes its decay value at e + 1
    for epoch, scale in ((0, cosine_curriculum(1, 5, 0.0, -1.0)), (2, cosine_curriculum(3, 5, 0.0, -1.0)), (9, -1.0)):
        m.theta.grad = None
        loss = total_loss(m.loss(s, y, t, LossContext(epoch=epoch)))
        assert loss.item() == pytest.approx(kd_of(1.0), rel=1e-6)  # the forward pass is unchanged
        loss.backward()
        assert m.theta.grad.item() == pytest.approx(scale * dkd_dtheta, rel=1e-4, abs=1e-9)  # reversed, scaled


def test_every_method_is_registered_with_its_axes():
    assert set(METHODS.names()) >= {"kd", "dkd", "dist", "kd_std", "ttm", "wttm", "ctkd", "nkd", "seqkd"}
    no_t = {
        n
        for n, c in METHODS.items()
        if not c.uses_temperature and c.needs.needs_teacher and not issubclass(c, FeatureMethod)
    }
    assert no_t == {"dist", "ttm", "wttm", "ctkd", "seqkd"}


def test_unknown_method_lists_the_known_ones(tmp_path, cli):
    rc, _, err = cli("run", "--methods", "kd,magic", "--out", str(tmp_path / "r"))
    assert rc == 2 and "unknown KD method 'magic' (known: " in err
    known = err.split("(known: ", 1)[1]
    assert all(n in known for n in ("ctkd", "dist", "dkd", "kd", "kd_std", "nkd", "seqkd", "ttm", "fitnet"))
    assert "ls," not in known and "FEATURE+kd" in known  # the teachers' objective is not a KD method


# ------------------------------------------------------------------------------------------ in the runner
@pytest.mark.slow
def test_ctkd_temperature_survives_resume(tmp_path):
    """The method's own parameter is optimised with the student and restored from the checkpoint."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task

    from ..fixtures import tiny_overrides

    cfg = resolve_config(
        "digits", {}, tiny_overrides(epochs=3, methods=["ctkd"], grid={"alphas": [0.1], "temperatures": [1.0]})
    )
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    student = next(c for c in cells if c.role == "student")
    assert student.T is None and student.name == "student_ctkd_cnn_tiny_a0.1_Tnone_s0"
    train_cell(task, teacher, cfg, data, teacher.dir(tmp_path), progress=False)
    from lskd_bench.runners.train import load_model

    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(tmp_path) / store.MODEL, torch.device("cpu"))
    ref = train_cell(task, student, cfg, data, tmp_path / "ref", teacher=tmodel, progress=False)
    temps = [h["temperature"] for h in ref["history"]]
    assert temps[0] != pytest.approx(1 + 20 / (1 + math.exp(-1)))  # the temperature moved

    def stop(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cell(task, student, cfg, data, tmp_path / "cut", teacher=tmodel, progress=False, on_epoch_end=stop)
    st = torch.load(tmp_path / "cut" / store.STATE, weights_only=False)
    assert st["parts"]["method"]["theta"].item() != 1.0
    res = train_cell(task, student, cfg, data, tmp_path / "cut", teacher=tmodel, progress=False)
    assert [h["temperature"] for h in res["history"]] == temps
    assert res["metrics"] == ref["metrics"]


ALL = "kd,dkd,dist,kd_std,ttm,ctkd,nkd"


@pytest.mark.slow
def test_all_methods_on_digits_share_teachers_and_show_their_axes(tmp_path, cli):
    rc, out, err = cli(
        "run",
        "--out",
        str(tmp_path),
        "--methods",
        ALL,
        "--alphas",
        "0,0.1",
        "--temperatures",
        "1,4",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--no-progress",
    )
    assert rc == 0, err
    # 2 teachers + baseline + 4 T-methods x 2 alphas x 2 T + 3 no-T methods x 2 alphas
    assert "25 cells: trained 25, reused 0" in out
    assert "### digits: cnn_wide → cnn_tiny (dist)" in out and "| no T |" in out
    results = [json.loads(p.read_text()) for p in tmp_path.rglob(store.RESULT)]
    teachers = {r["cell"]["teacher"] for r in results if r["cell"]["role"] == "student"}
    assert len(teachers) == 2  # every method distilled from the same two teachers


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,fixture,roles",
    [("imagenet", "imagenet_root", {}), ("cub200_compact", "cub_root", {"student": "mobilenetv2_100"})],
)
def test_all_methods_on_image_tasks(task, fixture, roles, request, tmp_path):
    from lskd_bench.runners.grid import resolve_config, run_grid

    from ..fixtures import tiny

    root = request.getfixturevalue(fixture)
    cfg = resolve_config(task, {}, {**tiny(root, **roles), "methods": ALL.split(","), "baseline": False})
    summary = run_grid(cfg, tmp_path, progress=False)
    assert summary.ok and len(summary.trained) == 1 + 7
    for cell in summary.cells:
        res = json.loads((cell.dir(tmp_path) / store.RESULT).read_text())
        assert 0 <= res["metrics"]["top1"] <= 100


@pytest.mark.slow
def test_new_logit_methods_fused_with_kd_equal_alone(tmp_path):
    from ..fixtures import fused_with_kd

    fused_with_kd(tmp_path, ["wttm", "skd", "mlkd"])
