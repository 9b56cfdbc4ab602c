"""RepDistiller's feature methods (lskd_bench/methods/feat_repd.py): each loss against an independent NumPy
computation on a small case, the default weights against RepDistiller's (scripts/run_cifar_distill.sh, the loss
classes' signatures, train_student.py), and what each method trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lskd_bench.methods import LossContext, Probe, build_method, total_loss
from lskd_bench.outputs import Outputs

N = 5
K = 4


def _rng(seed=0):
    return np.random.default_rng(seed)


def _maps(rng, shapes):
    return [np.maximum(rng.standard_normal(s), 0.0) + 0.01 * rng.random(s) for s in shapes]


def _outs(stages=(), emb=None, grad=False):
    o = Outputs({f"stage{i + 1}": torch.tensor(x, requires_grad=grad) for i, x in enumerate(stages)})
    if emb is not None:
        o["embedding"] = torch.tensor(emb, requires_grad=grad)
    n = len(emb) if emb is not None else stages[0].shape[0]
    o["logits"] = torch.zeros(n, K, dtype=torch.float64)
    return o


def _method(name, s, t, **params):
    m = build_method(name, {name: params})
    m.setup(Probe(None, None, s, t, None, None, num_samples=100, num_classes=K))
    return m.double()


def _feat(m, s, t):
    """The feature term over beta (the targets are class 0, the logits zero: ce is log K)."""
    out = m.compute(s, torch.zeros(len(s["logits"]), dtype=torch.long), t, LossContext())
    assert set(out) == {"ce", "feat"} and out["ce"].item() == pytest.approx(math.log(K))
    return out["feat"].item() / m.p["beta"]


def _pool(x, h):
    """Adaptive average pooling of (N, C, H, W) to (h, h) when H is a multiple of h: block means."""
    n, c, hh, ww = x.shape
    return x.reshape(n, c, h, hh // h, h, ww // h).mean(axis=(3, 5))


def _smaller(a, b):
    ha, hb = a.shape[2], b.shape[2]
    return (_pool(a, hb), b) if ha > hb else (a, _pool(b, ha)) if hb > ha else (a, b)


# student: two stages; teacher: three, its first twice the student's size (pooled) and wider
S_SHAPES = [(N, 3, 4, 4), (N, 6, 2, 2)]
T_SHAPES = [(N, 5, 8, 8), (N, 7, 2, 2), (N, 9, 1, 1)]


def test_defaults_are_repdistillers_cifar100_settings():
    want = {  # -b of scripts/run_cifar_distill.sh (line), then the method's own defaults
        "fitnet": (100.0, 7, {"hint_layer": 2}),
        "at": (1000.0, 9, {"p": 2}),
        "sp": (3000.0, 11, {}),
        "cc": (0.02, 13, {"feat_dim": 128}),
        "vid": (1.0, 15, {"init_pred_var": 5.0, "eps": 1e-5}),
        "rkd": (1.0, 17, {"w_d": 25.0, "w_a": 50.0}),
        "pkt": (30000.0, 19, {}),
        "nst": (50.0, 27, {}),
    }
    for name, (beta, line, own) in want.items():
        m = build_method(name, {name: {}})
        assert m.p == {"ce": 1.0, "beta": beta, **own}, name
        assert f"scripts/run_cifar_distill.sh:{line}" in m.params.fields["beta"].help, name
        assert not m.uses_temperature and m.needs.needs_teacher and m.description


def test_at_is_the_mean_squared_difference_of_normalised_attention_maps_summed_over_paired_stages():
    rng = _rng(1)
    s, t = _maps(rng, S_SHAPES), _maps(rng, T_SHAPES)

    def att(f, p):
        a = (f**p).mean(axis=1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    for p in (2, 3):
        want = sum(((att(a, p) - att(b, p)) ** 2).mean() for a, b in (_smaller(x, y) for x, y in zip(s, t)))
        m = _method("at", _outs(s), _outs(t), p=p)
        assert _feat(m, _outs(s), _outs(t)) == pytest.approx(want, rel=1e-10)


def test_nst_is_the_squared_mmd_of_normalised_channels_with_a_squared_dot_kernel():
    rng = _rng(2)
    s, t = _maps(rng, S_SHAPES), _maps(rng, T_SHAPES)

    def mmd(a, b):
        a, b = _smaller(a, b)
        total = 0.0
        for x, y in zip(a.reshape(N, a.shape[1], -1), b.reshape(N, b.shape[1], -1)):
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            y = y / np.linalg.norm(y, axis=1, keepdims=True)
            kss = np.mean([(u @ v) ** 2 for u in x for v in x])
            ktt = np.mean([(u @ v) ** 2 for u in y for v in y])
            kst = np.mean([(u @ v) ** 2 for u in x for v in y])
            total += kss + ktt - 2 * kst
        return total / N

    want = sum(mmd(a, b) for a, b in zip(s, t))
    m = _method("nst", _outs(s), _outs(t))
    assert _feat(m, _outs(s), _outs(t)) == pytest.approx(want, rel=1e-9)
    # the teacher-teacher term is a constant: the gradient is that of kss - 2 kst only
    so = _outs(s, grad=True)
    total_loss(m.compute(so, torch.zeros(N, dtype=torch.long), _outs(t), LossContext())).backward()
    assert all(torch.isfinite(so[k].grad).all() for k in ("stage1", "stage2"))


def test_sp_compares_row_normalised_gram_matrices_of_the_last_stages():
    rng = _rng(3)
    s, t = _maps(rng, S_SHAPES), _maps(rng, T_SHAPES)
    fs, ft = s[-1].reshape(N, -1), t[-1].reshape(N, -1)  # the last stage of each: (6, 2, 2) and (9, 1, 1)
    gs, gt = fs @ fs.T, ft @ ft.T
    gs, gt = gs / np.linalg.norm(gs, axis=1, keepdims=True), gt / np.linalg.norm(gt, axis=1, keepdims=True)
    want = ((gt - gs) ** 2).sum() / N**2
    m = _method("sp", _outs(s), _outs(t))
    assert _feat(m, _outs(s), _outs(t)) == pytest.approx(want, rel=1e-10)


def test_cc_correlates_consecutive_samples_of_the_embedding_difference():
    rng = _rng(4)
    es, et = rng.standard_normal((N, 6)), rng.standard_normal((N, 10))
    m = _method("cc", _outs(emb=es), _outs(emb=et), feat_dim=3)
    assert m.embed_s.weight.shape == (3, 6) and m.embed_t.weight.shape == (3, 10)
    ws, bs = m.embed_s.weight.detach().numpy(), m.embed_s.bias.detach().numpy()
    wt, bt = m.embed_t.weight.detach().numpy(), m.embed_t.bias.detach().numpy()
    d = np.abs((es @ ws.T + bs) - (et @ wt.T + bt))
    want = np.mean([d[i] @ d[i + 1] for i in range(N - 1)])
    assert _feat(m, _outs(emb=es), _outs(emb=et)) == pytest.approx(want, rel=1e-10)
    # one sample has no pair: the term is 0, not NaN
    assert _feat(m, _outs(emb=es[:1]), _outs(emb=et[:1])) == 0.0


def test_vid_is_the_gaussian_nll_of_the_teacher_under_a_1x1_conv_regressor_with_learned_variances():
    rng = _rng(5)
    s, t = _maps(rng, S_SHAPES), _maps(rng, T_SHAPES)
    m = _method("vid", _outs(s), _outs(t))
    assert len(m.regressors) == 2  # one per stage both networks have
    with torch.no_grad():
        for r in m.regressors:  # the variances start at init_pred_var
            var = torch.nn.functional.softplus(r.log_scale) + 1e-5
            assert torch.allclose(var, torch.full_like(var, 5.0), rtol=1e-6)  # log_scale is float32
            r.log_scale.add_(torch.tensor(rng.standard_normal(r.log_scale.shape)))  # unequal variances
    want = 0.0
    for r, (a, b) in zip(m.regressors, (_smaller(x, y) for x, y in zip(s, t))):
        w = [c.weight.detach().numpy()[:, :, 0, 0] for c in r.mean if isinstance(c, torch.nn.Conv2d)]
        assert w[0].shape == (b.shape[1], a.shape[1]) and w[1].shape == w[2].shape == (b.shape[1], b.shape[1])
        h = np.maximum(np.einsum("oc,nchw->nohw", w[0], a), 0)
        h = np.maximum(np.einsum("oc,nchw->nohw", w[1], h), 0)
        mu = np.einsum("oc,nchw->nohw", w[2], h)
        var = np.log1p(np.exp(r.log_scale.detach().numpy())) + 1e-5
        var = var.reshape(1, -1, 1, 1)
        want += (0.5 * ((mu - b) ** 2 / var + np.log(var))).mean()
    assert _feat(m, _outs(s), _outs(t)) == pytest.approx(want, rel=1e-10)


def _smooth_l1(x, y):
    d = np.abs(x - y)
    return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def test_rkd_weights_smooth_l1_of_mean_normalised_distances_and_of_angles():
    rng = _rng(6)
    es, et = rng.standard_normal((N, 6)), rng.standard_normal((N, 4))

    def dist(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(N)] for i in range(N)])
        return d / d[~np.eye(N, dtype=bool)].mean()

    def angles(e):
        out = np.zeros((N, N, N))
        for i in range(N):
            for j in range(N):
                for k in range(N):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[i, j, k] = 0.0 if nu == 0 or nv == 0 else (u @ v) / (nu * nv)
        return out

    ld, la = _smooth_l1(dist(es), dist(et)), _smooth_l1(angles(es), angles(et))
    for w_d, w_a in ((25.0, 50.0), (1.0, 0.0), (0.0, 1.0)):
        m = _method("rkd", _outs(emb=es), _outs(emb=et), w_d=w_d, w_a=w_a)
        assert _feat(m, _outs(emb=es), _outs(emb=et)) == pytest.approx(w_d * ld + w_a * la, rel=1e-9)
    assert _feat(m, _outs(emb=es[:1]), _outs(emb=et[:1])) == 0.0  # one sample: no distances, no angles


def test_pkt_is_the_kl_of_row_normalised_cosine_similarities():
    rng = _rng(7)
    es, et = rng.standard_normal((N, 6)), rng.standard_normal((N, 4))
    eps = 1e-7

    def prob(x):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        sim = (x @ x.T + 1) / 2
        return sim / sim.sum(axis=1, keepdims=True)

    ps, pt = prob(es), prob(et)
    want = (pt * np.log((pt + eps) / (ps + eps))).mean()
    m = _method("pkt", _outs(emb=es), _outs(emb=et))
    assert _feat(m, _outs(emb=es), _outs(emb=et)) == pytest.approx(want, rel=1e-9)
    # a zero row (a dead embedding) has a finite gradient
    es[2] = 0.0
    so = _outs(emb=es, grad=True)
    total_loss(m.compute(so, torch.zeros(N, dtype=torch.long), _outs(emb=et), LossContext())).backward()
    assert torch.isfinite(so["embedding"].grad).all()


def test_fitnet_is_the_mse_of_the_regressed_hint_and_its_regressor_follows_the_sizes():
    rng = _rng(8)
    s, t = _maps(rng, [(N, 3, 8, 8), (N, 4, 4, 4)]), _maps(rng, [(N, 5, 4, 4), (N, 6, 2, 2)])
    m = _method("fitnet", _outs(s), _outs(t))
    conv = m.regressor.conv  # student 4x4 -> teacher 2x2: RepDistiller's stride-2 3x3 conv
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (2, 2)
    with torch.no_grad():
        hint = m.regressor(torch.tensor(s[1])).numpy()
    assert _feat(m, _outs(s), _outs(t)) == pytest.approx(((hint - t[1]) ** 2).mean(), rel=1e-10)
    m1 = _method("fitnet", _outs(s), _outs(t), hint_layer=1)  # 8x8 -> 4x4
    assert m1.needs.student == ("logits", "stage1") and m1.regressor.conv.weight.shape == (5, 3, 3, 3)


@pytest.mark.parametrize("name", ["at", "sp", "cc", "vid", "rkd", "pkt", "nst", "fitnet"])
def test_loss_is_ce_weight_times_ce_plus_beta_times_the_feature_term(name):
    rng = _rng(9)
    s, t = _maps(rng, [(N, 3, 4, 4), (N, 4, 2, 2)]), _maps(rng, [(N, 5, 4, 4), (N, 6, 2, 2)])
    es, et = rng.standard_normal((N, 6)), rng.standard_normal((N, 4))
    so, to = _outs(s, es), _outs(t, et)
    so["logits"] = torch.tensor(rng.standard_normal((N, K)))
    y = torch.tensor([0, 1, 2, 3, 0])
    torch.manual_seed(0)
    base = _method(name, so, to)
    torch.manual_seed(0)
    scaled = _method(name, so, to, ce=0.5, beta=2.0)
    a = base.compute(so, y, to, LossContext())
    b = scaled.compute(so, y, to, LossContext())
    ce = torch.nn.functional.cross_entropy(so["logits"], y).item()
    assert a["ce"].item() == pytest.approx(ce) and b["ce"].item() == pytest.approx(0.5 * ce)
    assert b["feat"].item() == pytest.approx(2.0 * a["feat"].item() / base.p["beta"], rel=1e-10)
    assert a["feat"].item() > 0


# -- KDSVD ------------------------------------------------------------------------------------------------------


def repdistiller_kdsvd(g_s, g_t, k=1):
    """Reference transcription of HobbitLong/RepDistiller@b84f547 distiller_zoo/KDSVD.py:17-75 (KDSVD.forward,
    svd, removenan, align_rsv), op for op, summed as helper/loops.py:161 (``sum(loss_group)``)."""
    import torch.nn.functional as F

    def removenan(x):
        return torch.where(torch.isfinite(x), x, torch.zeros_like(x))

    def svd(feat, n=1):
        size = feat.shape
        x = feat.view(-1, size[1], size[2] * size[2]).transpose(-2, -1)
        u, s, v = torch.svd(x)
        u, s, v = removenan(u), removenan(s), removenan(v)
        if n > 0:
            u = F.normalize(u[:, :, :n], dim=1)
            s = F.normalize(s[:, :n], dim=1)
            v = F.normalize(v[:, :, :n], dim=1)
        return u, s, v

    def align_rsv(a, b):
        cosine = torch.matmul(a.transpose(-2, -1), b)
        max_abs_cosine, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
        mask = torch.where(torch.eq(max_abs_cosine, torch.abs(cosine)), torch.sign(cosine), torch.zeros_like(cosine))
        return torch.matmul(a, mask), b

    v_sb = v_tb = None
    losses = []
    for i, f_s, f_t in zip(range(len(g_s)), g_s, g_t):
        _u_t, s_t, v_t = svd(f_t, k)
        _u_s, _s_s, v_s = svd(f_s, k + 3)
        v_s, v_t = align_rsv(v_s, v_t)
        s_t = s_t.unsqueeze(1)
        v_t = v_t * s_t
        v_s = v_s * s_t
        if i > 0:
            s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
            t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
            l2loss = (s_rbf - t_rbf.detach()).pow(2)
            l2loss = torch.where(torch.isfinite(l2loss), l2loss, torch.zeros_like(l2loss))
            losses.append(l2loss.sum())
        v_tb = v_t
        v_sb = v_s
    bsz = g_s[0].shape[0]
    return sum(loss / bsz for loss in losses)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


KDSVD_SHAPES = [(6, 8, 8, 8), (6, 12, 4, 4), (6, 16, 2, 2)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_equals_repdistiller_loss_and_gradient(seed, k):
    """Equal widths (RepDistiller's pairs): loss and gradient (student maps) equal the reference; max relative
    difference <= 1e-12 (docstring: the measured maxima)."""
    rng = _rng(10 + seed)
    s, t = _maps(rng, KDSVD_SHAPES), _maps(rng, KDSVD_SHAPES)
    so, to = _outs(s, grad=True), _outs(t)
    m = _method("kdsvd", so, to, k=k)
    ours = m.compute(so, torch.zeros(6, dtype=torch.long), to, LossContext())["feat"]
    g_ours = torch.autograd.grad(ours, [so[f"stage{i + 1}"] for i in range(3)])
    ref_in = [torch.tensor(x, requires_grad=True) for x in s]
    ref = repdistiller_kdsvd(ref_in, [torch.tensor(x) for x in t], k)
    g_ref = torch.autograd.grad(ref, ref_in)
    assert ours.item() > 0 and _rel(ours, ref) <= 1e-12
    assert max(_rel(a, b) for a, b in zip(g_ours, g_ref)) <= 1e-12


def test_kdsvd_pools_the_wider_network_and_defaults_to_mdistillers_weights():
    m = build_method("kdsvd", {"kdsvd": {}})
    assert m.p == {"ce": 1.0, "beta": 1.0, "k": 1} and not m.uses_temperature
    assert "mdistiller/engine/cfg.py:97" in m.params.fields["beta"].help
    rng = _rng(20)
    s = _maps(rng, [(6, 4, 8, 8), (6, 6, 4, 4)])
    t = _maps(rng, [(6, 8, 8, 8), (6, 12, 4, 4), (6, 20, 2, 2)])  # twice as wide, one stage more
    so, to = _outs(s, grad=True), _outs(t)
    m = _method("kdsvd", so, to)
    got = m.compute(so, torch.zeros(6, dtype=torch.long), to, LossContext())["feat"]
    # = RepDistiller's loss on the teacher's first two stages with channel pairs averaged (4 and 6 channels)
    pooled = [torch.tensor(x.reshape(6, x.shape[1] // 2, 2, *x.shape[2:]).mean(2)) for x in t[:2]]
    want = repdistiller_kdsvd([torch.tensor(x) for x in s], pooled)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got.backward()
    assert all(torch.isfinite(so[k].grad).all() for k in ("stage1", "stage2"))


@pytest.mark.slow
def test_kdsvd_fused_with_kd_equals_alone(tmp_path):
    from ..fixtures import fused_with_kd

    fused_with_kd(tmp_path, ["kdsvd"])
