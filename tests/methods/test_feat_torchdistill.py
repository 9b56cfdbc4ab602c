"""torchdistill's methods (lskd_bench/methods/feat_torchdistill.py): each loss and its gradient against the
reference's forward transcribed op for op (float64, the same inputs and weights), the defaults against the sample
configs, and a fused digits run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lskd_bench.methods import LossContext, Probe, build_method
from lskd_bench.outputs import Outputs


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _outs(**named):
    return Outputs(dict(named))


def _setup(name, s, t, num_classes=10, **params):
    m = build_method(name, {name: params})
    m.setup(Probe(None, None, s, t, None, None, num_samples=100, num_classes=num_classes))
    return m.double()


# -- CCKD ---------------------------------------------------------------------------------------------------------


class TorchdistillCCKD:
    """Reference transcription of yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py:757-788
    (CCKDLoss: compute_cc_mat_by_bilinear_pool, compute_cc_mat_by_gaussian_rbf, forward with reduction
    'batchmean'), op for op; the linear outputs are Linear4CCKD's (models/wrapper.py:423-425)."""

    def __init__(self, kernel_type, gamma=0.4, max_p=2):
        self.kernel_type, self.gamma, self.max_p = kernel_type, gamma, max_p

    @staticmethod
    def compute_cc_mat_by_bilinear_pool(linear_outputs):
        return torch.matmul(linear_outputs, torch.t(linear_outputs))

    def compute_cc_mat_by_gaussian_rbf(self, linear_outputs):
        row_list = []
        for _index, linear_output in enumerate(linear_outputs):
            row = 1
            right_term = torch.matmul(linear_output, torch.t(linear_outputs))
            for p in range(1, self.max_p + 1):
                left_term = ((2 * self.gamma) ** p) / (math.factorial(p))
                row += left_term * (right_term**p)
            row *= math.exp(-2 * self.gamma)
            row_list.append(row.squeeze(0))
        return torch.stack(row_list)

    def __call__(self, student_linear_outputs, teacher_linear_outputs):
        batch_size = teacher_linear_outputs.shape[0]
        if self.kernel_type == "bilinear":
            teacher_cc = self.compute_cc_mat_by_bilinear_pool(teacher_linear_outputs)
            student_cc = self.compute_cc_mat_by_bilinear_pool(student_linear_outputs)
        else:
            teacher_cc = self.compute_cc_mat_by_gaussian_rbf(teacher_linear_outputs)
            student_cc = self.compute_cc_mat_by_gaussian_rbf(student_linear_outputs)
        cc_loss = torch.dist(student_cc, teacher_cc, 2)
        return cc_loss / (batch_size**2)


def torchdistill_kd_alpha0(student_logits, teacher_logits, temperature):
    """mid_level.py:181-186 (KDLoss.forward with alpha 0: the batch-mean KL only)."""
    return F.kl_div(
        torch.log_softmax(student_logits / temperature, dim=1),
        torch.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )


def _cckd_case(seed, n=16, ds=24, dt=40, k=10):
    g = torch.Generator().manual_seed(seed)
    s = _outs(
        embedding=torch.randn(n, ds, generator=g, dtype=torch.float64).relu().requires_grad_(True),
        logits=(torch.randn(n, k, generator=g, dtype=torch.float64) * 3).requires_grad_(True),
    )
    t = _outs(
        embedding=torch.randn(n, dt, generator=g, dtype=torch.float64).relu(),
        logits=torch.randn(n, k, generator=g, dtype=torch.float64) * 5,
    )
    y = torch.randint(0, k, (n,), generator=g)
    return s, t, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kernel", ["gaussian", "bilinear"])
def test_cckd_equals_torchdistill_loss_and_gradient(seed, kernel):
    """The feature term and its gradient (student embedding, both linear layers), and the whole default loss
    (0 x CE + 1 x KL at T 1 + 0.003 x CCKD); max relative difference <= 1e-12 (docstring: the measured maxima)."""
    s, t, y = _cckd_case(seed)
    torch.manual_seed(seed)
    m = _setup("cckd", s, t, kernel=kernel)
    assert m.linear_s.weight.shape == (128, 24) and m.linear_t.weight.shape == (128, 40)
    out = m.compute(s, y, t, LossContext())
    assert set(out) == {"ce", "feat", "kl"} and out["ce"].item() == 0.0
    params = [s["embedding"], *m.linear_s.parameters(), *m.linear_t.parameters()]
    ours = out["feat"] / m.p["beta"]
    g_ours = torch.autograd.grad(ours, params, retain_graph=True)
    ref = TorchdistillCCKD(kernel)(m.linear_s(s["embedding"]), m.linear_t(t["embedding"]))
    g_ref = torch.autograd.grad(ref, params)
    assert _rel(ours, ref) <= 1e-12
    assert max(_rel(a, b) for a, b in zip(g_ours, g_ref)) <= 1e-12
    # the whole loss: the config's sub-terms, kd (weight 1) and cckd (weight 0.003)
    total = sum(out.values())
    want = 1.0 * torchdistill_kd_alpha0(s["logits"], t["logits"], 1.0) + 0.003 * ref
    assert total.item() == pytest.approx(want.item(), rel=1e-12)
    (g_total,) = torch.autograd.grad(total, s["logits"])
    (g_want,) = torch.autograd.grad(want, s["logits"])
    assert _rel(g_total, g_want) <= 1e-12


def test_cckd_defaults_are_torchdistills_sample_config():
    m = build_method("cckd", {"cckd": {}})
    assert m.p == {
        "ce": 0.0,
        "beta": 0.003,
        "feat_dim": 128,
        "kernel": "gaussian",
        "gamma": 0.4,
        "max_p": 2,
        "normalize": False,
        "kl_weight": 1.0,
        "kl_T": 1.0,
    }
    assert "resnet18_from_resnet50.yaml:181" in m.params.fields["beta"].help
    assert not m.uses_temperature and m.needs.needs_teacher and m.description
    # the Gaussian kernel of order P is exp(-gamma |z_i - z_j|^2) for unit rows, up to the Taylor remainder
    z = F.normalize(torch.randn(5, 7, dtype=torch.float64), dim=1)
    from lskd_bench.methods.feat_torchdistill import cc_matrix

    exact = torch.exp(-0.4 * torch.cdist(z, z) ** 2)
    assert torch.allclose(cc_matrix(z, "gaussian", 0.4, 12), exact, atol=1e-12)
    # normalize: the reference's kernel of the L2-normalised linear outputs
    s, t, y = _cckd_case(5)
    m = _setup("cckd", s, t, normalize=True)
    ref = TorchdistillCCKD("gaussian")(F.normalize(m.linear_s(s["embedding"])), F.normalize(m.linear_t(t["embedding"])))
    assert m.compute(s, y, t, LossContext())["feat"].item() == pytest.approx(0.003 * ref.item(), rel=1e-12)
    # without the KL term (kl_weight 0) there is no "kl" entry; with ce 1 the CE is back
    s, t, y = _cckd_case(3)
    m = _setup("cckd", s, t, kl_weight=0.0, ce=1.0)
    out = m.compute(s, y, t, LossContext())
    assert set(out) == {"ce", "feat"} and out["ce"].item() == pytest.approx(F.cross_entropy(s["logits"], y).item())


# -- DIST+ --------------------------------------------------------------------------------------------------------


class TorchdistillDISTPlus:
    """Reference transcription of yoshitomo-matsubara/torchdistill@3e4373c torchdistill/losses/mid_level.py
    :1637-1655 (DISTLoss: pearson_correlation, inter/intra_class_relation, forward) and :1838-1859
    (DISTPlusLoss: channel_relation, spatial_relation, forward), op for op, with the io_dict lookups replaced by
    arguments."""

    def __init__(self, beta=1.0, gamma=1.0, iota=1.0, kappa=1.0, tau=1.0, eps=1e-8):
        self.beta, self.gamma, self.iota, self.kappa, self.tau, self.eps = beta, gamma, iota, kappa, tau, eps

    @staticmethod
    def pearson_correlation(y_s, y_t, eps):
        return F.cosine_similarity(y_s - y_s.mean(1).unsqueeze(1), y_t - y_t.mean(1).unsqueeze(1), eps=eps)

    def inter_class_relation(self, y_s, y_t):
        return 1 - self.pearson_correlation(y_s, y_t, self.eps).mean()

    def intra_class_relation(self, y_s, y_t):
        return self.inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))

    def dist_forward(self, student_logits, teacher_logits):
        y_s = (student_logits / self.tau).softmax(dim=1)
        y_t = (teacher_logits / self.tau).softmax(dim=1)
        inter_loss = self.tau**2 * self.inter_class_relation(y_s, y_t)
        intra_loss = self.tau**2 * self.intra_class_relation(y_s, y_t)
        return self.beta * inter_loss + self.gamma * intra_loss

    def channel_relation(self, f_s, f_t):
        c_mean_f_s = torch.mean(f_s, dim=1, keepdim=True)
        c_mean_f_t = torch.mean(f_t, dim=1, keepdim=True)
        c_centered_f_s = f_s - c_mean_f_s
        c_centered_f_t = f_t - c_mean_f_t
        numerator = torch.sum(c_centered_f_s * c_centered_f_t, dim=1)
        denominator = torch.sqrt(torch.sum(c_centered_f_s**2, dim=1) * torch.sum(c_centered_f_t**2, dim=1))
        return (numerator / (denominator + self.eps)).mean()

    def spatial_relation(self, f_s, f_t):
        aggregated_f_s = torch.sum(f_s, dim=1).flatten(1)
        aggregated_f_t = torch.sum(f_t, dim=1).flatten(1)
        return self.inter_class_relation(aggregated_f_s.transpose(0, 1), aggregated_f_t.transpose(0, 1))

    def __call__(self, student_logits, teacher_logits, student_features, teacher_features):
        dist_loss = self.dist_forward(student_logits, teacher_logits)
        channel_relation_loss = self.channel_relation(student_features, teacher_features)
        spatial_relation_loss = self.spatial_relation(student_features, teacher_features)
        return dist_loss + self.iota * channel_relation_loss + self.kappa * spatial_relation_loss


def _distp_case(seed, n=16, k=10, s_shape=(12, 4, 4), t_shape=(12, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    s = _outs(
        logits=(torch.randn(n, k, generator=g, dtype=torch.float64) * 3).requires_grad_(True),
        stage1=torch.randn(n, *s_shape, generator=g, dtype=torch.float64).requires_grad_(True),
    )
    t = _outs(
        logits=torch.randn(n, k, generator=g, dtype=torch.float64) * 5,
        stage1=torch.randn(n, *t_shape, generator=g, dtype=torch.float64),
    )
    return s, t, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_plus_equals_torchdistill_loss_and_gradient(seed, tau):
    """At the config's weights (CE 1 + 2 x DISTPlusLoss(beta 2, gamma 2, iota 1, kappa 1)): the DIST+ term and its
    gradient (student logits and map) max relative difference <= 1e-12 (docstring: the measured maxima)."""
    s, t, y = _distp_case(seed)
    m = _setup("dist_plus", s, t, tau=tau)
    out = m.compute(s, y, t, LossContext())
    ref_term = TorchdistillDISTPlus(beta=2.0, gamma=2.0, iota=1.0, kappa=1.0, tau=tau)(
        s["logits"], t["logits"], s["stage1"], t["stage1"]
    )
    assert _rel(out["feat"], 2.0 * ref_term) <= 1e-12
    g_got = torch.autograd.grad(out["feat"], [s["logits"], s["stage1"]], retain_graph=True)
    g_want = torch.autograd.grad(2.0 * ref_term, [s["logits"], s["stage1"]])
    assert max(_rel(a, b) for a, b in zip(g_got, g_want)) <= 1e-12
    # the CE term: FeatureMethod.cross_entropy takes it in float32 (as for every feature method)
    want = 1.0 * F.cross_entropy(s["logits"], y) + 2.0 * ref_term
    assert sum(out.values()).item() == pytest.approx(want.item(), rel=1e-6)


def test_dist_plus_defaults_channel_form_and_unequal_maps():
    m = build_method("dist_plus", {"dist_plus": {}})
    assert m.p == {
        "ce": 1.0,
        "beta": 2.0,
        "inter_weight": 2.0,
        "intra_weight": 2.0,
        "channel_weight": 1.0,
        "spatial_weight": 1.0,
        "tau": 1.0,
        "channel_form": "torchdistill",
    }
    assert "resnet18_from_resnet34.yaml:169" in m.params.fields["beta"].help
    assert not m.uses_temperature and m.needs.teacher == ("logits", "last_stage")
    s, t, y = _distp_case(4)
    ref = TorchdistillDISTPlus(beta=2.0, gamma=2.0)
    channel = ref.channel_relation(s["stage1"], t["stage1"])
    a = _setup("dist_plus", s, t).compute(s, y, t, LossContext())["feat"]
    b = _setup("dist_plus", s, t, channel_form="one_minus").compute(s, y, t, LossContext())["feat"]
    assert (b - a).item() == pytest.approx(2.0 * (1 - 2 * channel.item()), rel=1e-12)
    # a wider, larger teacher map: its channels pooled in pairs and its 8x8 map pooled to 4x4, then as above
    s, t, y = _distp_case(5, t_shape=(24, 8, 8))
    got = _setup("dist_plus", s, t).compute(s, y, t, LossContext())["feat"]
    ft = t["stage1"].reshape(16, 12, 2, 4, 2, 4, 2).mean(dim=(2, 4, 6))
    want = 2.0 * ref(s["logits"], t["logits"], s["stage1"], ft)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


# -- SRD ----------------------------------------------------------------------------------------------------------


def torchdistill_srd(s_map, t_map, s_logits, t_logits, linear, norm_s, norm_t, exponent=4.0, temperature=1.0):
    """Reference transcription of yoshitomo-matsubara/torchdistill@3e4373c torchdistill/models/wrapper.py:908-913
    (SRDModelWrapper.secondary_forward: the student's with its linear layer, the teacher's without) and
    torchdistill/losses/mid_level.py:1710-1721 (SRDLoss.forward, reduction 'batchmean'), op for op."""
    z = s_map.mean(-1).mean(-1)
    z = linear(z)
    student_features = norm_s(z)
    teacher_features = norm_t(t_map.mean(-1).mean(-1))
    diff_features = torch.abs(student_features - teacher_features)
    feat_distill_loss = torch.log(diff_features.pow(exponent).sum())
    kl_loss = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s_logits / temperature, dim=1), torch.softmax(t_logits / temperature, dim=1)
    )
    return 2 * feat_distill_loss + kl_loss


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("exponent", [4.0, 2.0])
def test_srd_equals_torchdistill_loss_gradient_and_state(seed, exponent):
    """SRD's term and its gradient (student logits and map, projector) max relative difference <= 1e-12
    (docstring: the measured maxima), the BatchNorm running statistics equal after the step."""
    import copy

    s, t, y = _distp_case(seed, t_shape=(20, 2, 2))
    m = _setup("srd", s, t, exponent=exponent)
    assert m.projector.weight.shape == (20, 12) and not m.norm_s.affine and m.norm_t.eps == 1e-4
    linear, norm_s, norm_t = copy.deepcopy(m.projector), copy.deepcopy(m.norm_s), copy.deepcopy(m.norm_t)
    m.train()
    out = m.compute(s, y, t, LossContext())
    ref = torchdistill_srd(
        s["stage1"], t["stage1"], s["logits"], t["logits"], linear, norm_s, norm_t, exponent=exponent
    )
    assert _rel(out["feat"], ref) <= 1e-12
    g_ours = torch.autograd.grad(out["feat"], [s["logits"], s["stage1"], *m.projector.parameters()])
    g_ref = torch.autograd.grad(ref, [s["logits"], s["stage1"], *linear.parameters()])
    assert max(_rel(a, b) for a, b in zip(g_ours, g_ref)) <= 1e-12
    for ours, theirs in ((m.norm_s, norm_s), (m.norm_t, norm_t)):
        assert torch.equal(ours.running_mean, theirs.running_mean) and torch.equal(ours.running_var, theirs.running_var)
        assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 1


def test_srd_defaults_are_torchdistills_sample_config():
    m = build_method("srd", {"srd": {}})
    assert m.p == {"ce": 1.0, "beta": 1.0, "exponent": 4.0, "temperature": 1.0}
    assert "srd/resnet18_from_resnet34.yaml:190" in m.params.fields["beta"].help
    assert not m.uses_temperature and m.needs.student == ("logits", "last_stage")


@pytest.mark.slow
def test_torchdistill_methods_fused_with_kd_equal_alone(tmp_path):
    from ..fixtures import fused_with_kd

    fused_with_kd(tmp_path, ["cckd", "dist_plus", "srd", "pad"])


@pytest.mark.slow
def test_torchdistill_methods_resume_bit_identically_with_their_state(tmp_path):
    """Killed at the end of epoch 2 of 3 and resumed: the same weights and loss history as uninterrupted; the
    checkpoint holds each method's own parts (CCKD's linear layers, SRD's projector and BatchNorm statistics, PAD's
    variance branch and its BatchNorm statistics)."""

    from lskd_bench import store

    from ..fixtures import digits_students, resume_matches, train_then_kill

    cfg, task, data, students, tmodel = digits_students(tmp_path, ["cckd", "dist_plus", "srd", "pad"], epochs=3)
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path / "run", at_epoch=2)
    parts = {c.method: torch.load(cut / c.name / store.STATE, weights_only=True)["parts"] for c in students}
    state = {m: p.get("method") for m, p in parts.items()}  # kd brings no part
    assert {"linear_s.weight", "linear_t.weight"} <= set(state["cckd"])
    assert {"projector.weight", "norm_s.running_mean", "norm_t.running_var"} <= set(state["srd"])
    assert state["srd"]["norm_t.num_batches_tracked"].item() > 0
    assert {"var_estimator.0.weight", "var_estimator.1.running_var"} <= set(state["pad"])
    assert state["pad"]["var_estimator.1.num_batches_tracked"].item() > 0 and "connector.weight" in state["pad"]
    resume_matches(task, students, cfg, data, tmodel, ref, cut)


# -- PAD ----------------------------------------------------------------------------------------------------------


def torchdistill_pad(s_embed, t_embed, var_estimator, eps=1e-6, reduction="mean"):
    """Reference transcription of yoshitomo-matsubara/torchdistill@3e4373c torchdistill/models/wrapper.py:649-651
    (VarianceBranch4PAD.secondary_forward: the variance branch on the student's flattened embedding) and
    torchdistill/losses/mid_level.py:1316-1325 (PADL2Loss.forward), op for op, the io_dict lookups replaced by
    arguments."""
    embed_outputs = s_embed.flatten(1)
    log_variances = var_estimator(embed_outputs)
    student_embed_outputs = s_embed.flatten(1)
    teacher_embed_outputs = t_embed.flatten(1)
    # The author's provided code takes average of losses
    squared_losses = torch.mean(
        (teacher_embed_outputs - student_embed_outputs) ** 2 / (eps + torch.exp(log_variances)) + log_variances,
        dim=1,
    )
    return squared_losses.mean() if reduction == "mean" else squared_losses.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pad_equals_torchdistill_loss_gradient_and_state(seed):
    """PAD's term and its gradient (student embedding, variance branch) max relative difference <= 1e-12
    (docstring: the measured maxima), the BatchNorm running statistics equal after the step; the whole default
    loss is CE 1 + PADL2 1 (the config's sub-terms)."""
    import copy

    s, t, y = _cckd_case(seed, ds=24, dt=24)
    torch.manual_seed(seed)
    m = _setup("pad", s, t)
    assert m.connector is None and m.var_estimator[0].weight.shape == (24, 24)
    ref_branch = copy.deepcopy(m.var_estimator)
    m.train()
    out = m.compute(s, y, t, LossContext())
    ref = torchdistill_pad(s["embedding"], t["embedding"], ref_branch)
    assert _rel(out["feat"], ref) <= 1e-12
    g_ours = torch.autograd.grad(out["feat"], [s["embedding"], *m.var_estimator.parameters()], retain_graph=True)
    g_ref = torch.autograd.grad(ref, [s["embedding"], *ref_branch.parameters()])
    assert max(_rel(a, b) for a, b in zip(g_ours, g_ref)) <= 1e-12
    ours_bn, ref_bn = m.var_estimator[1], ref_branch[1]
    assert torch.equal(ours_bn.running_mean, ref_bn.running_mean)
    assert torch.equal(ours_bn.running_var, ref_bn.running_var)
    assert ours_bn.num_batches_tracked.item() == ref_bn.num_batches_tracked.item() == 1
    want = F.cross_entropy(s["logits"], y) + 1.0 * ref
    assert sum(out.values()).item() == pytest.approx(want.item(), rel=1e-6)


def test_pad_defaults_and_unequal_widths():
    m = build_method("pad", {"pad": {}})
    assert m.p == {"ce": 1.0, "beta": 1.0, "eps": 1e-6}
    assert "pad/resnet18_from_resnet34.yaml:224" in m.params.fields["beta"].help
    assert not m.uses_temperature and m.needs.teacher == ("embedding",)
    # a hand case: z_s = 0, z_t = 2, log-variance 0 everywhere (the branch's BN of a constant batch gives its bias,
    # 0): each term (4 / (eps + 1) + 0), mean 4 / (1 + 1e-6)
    s = _outs(embedding=torch.zeros(4, 3, dtype=torch.float64), logits=torch.zeros(4, 5, dtype=torch.float64))
    t = _outs(embedding=torch.full((4, 3), 2.0, dtype=torch.float64))
    m = _setup("pad", s, t)
    m.train()
    got = m.compute(s, torch.zeros(4, dtype=torch.long), t, LossContext())["feat"]
    assert got.item() == pytest.approx(4 / (1 + 1e-6), rel=1e-12)
    # a narrower student: a linear connector to the teacher's width; the variance branch maps 24 -> 40
    s, t, y = _cckd_case(4)
    m = _setup("pad", s, t)
    assert m.connector.weight.shape == (40, 24) and m.var_estimator[0].weight.shape == (40, 24)
    m.train()
    got = m.compute(s, y, t, LossContext())["feat"]
    z = s["embedding"]
    log_var = m.var_estimator(z)
    want = torch.mean((t["embedding"] - m.connector(z)) ** 2 / (1e-6 + log_var.exp()) + log_var, dim=1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
