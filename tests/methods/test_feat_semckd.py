"""SemCKD (lskd_bench/methods/feat_semckd.py): the loss and its gradient against the authors' SelfA and SemCKDLoss
transcribed op for op (float64, the same inputs and weights), the defaults, the batch-size rule, and a fused digits
run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lskd_bench.methods import LossContext, Probe, build_method
from lskd_bench.outputs import Outputs


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# -- the reference: DefangChen/SemCKD@ebe5db190d87f3e493a5fdf04a808ef3179486dc ------------------------------------


class Normalize(nn.Module):
    """models/util.py:187-196."""

    def __init__(self, power=2):
        super().__init__()
        self.power = power

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        out = x.div(norm)
        return out


class MLPEmbed(nn.Module):
    """models/util.py:171-184."""

    def __init__(self, dim_in=1024, dim_out=128):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        x = self.relu(self.linear1(x))
        x = self.l2norm(self.linear2(x))
        return x


class AAEmbed(nn.Module):
    """models/util.py:121-144."""

    def __init__(self, num_input_channels=1024, num_target_channels=128):
        super().__init__()
        self.num_mid_channel = 2 * num_target_channels

        def conv1x1(in_channels, out_channels, stride=1):
            return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, stride=stride, bias=False)

        def conv3x3(in_channels, out_channels, stride=1):
            return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=False)

        self.regressor = nn.Sequential(
            conv1x1(num_input_channels, self.num_mid_channel),
            nn.BatchNorm2d(self.num_mid_channel),
            nn.ReLU(inplace=True),
            conv3x3(self.num_mid_channel, self.num_mid_channel),
            nn.BatchNorm2d(self.num_mid_channel),
            nn.ReLU(inplace=True),
            conv1x1(self.num_mid_channel, num_target_channels),
        )

    def forward(self, x):
        x = self.regressor(x)
        return x


class SelfA(nn.Module):
    """models/util.py:55-119 (Cross layer Self Attention), op for op."""

    def __init__(self, s_len, t_len, input_channel, s_n, s_t, factor=4):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for i in range(t_len):
            setattr(self, "key_weight" + str(i), MLPEmbed(input_channel, input_channel // factor))
        for i in range(s_len):
            setattr(self, "query_weight" + str(i), MLPEmbed(input_channel, input_channel // factor))
        for i in range(s_len):
            for j in range(t_len):
                setattr(self, "regressor" + str(i) + str(j), AAEmbed(s_n[i], s_t[j]))

    def forward(self, feat_s, feat_t):
        sim_t = list(range(len(feat_t)))
        sim_s = list(range(len(feat_s)))
        bsz = feat_s[0].shape[0]
        # similarity matrix
        for i in range(len(feat_t)):
            sim_temp = feat_t[i].reshape(bsz, -1)
            sim_t[i] = torch.matmul(sim_temp, sim_temp.t())
        for i in range(len(feat_s)):
            sim_temp = feat_s[i].reshape(bsz, -1)
            sim_s[i] = torch.matmul(sim_temp, sim_temp.t())
        # key of target layers
        proj_key = self.key_weight0(sim_t[0])
        proj_key = proj_key[:, :, None]
        for i in range(1, len(sim_t)):
            temp_proj_key = getattr(self, "key_weight" + str(i))(sim_t[i])
            proj_key = torch.cat([proj_key, temp_proj_key[:, :, None]], 2)
        # query of source layers
        proj_query = self.query_weight0(sim_s[0])
        proj_query = proj_query[:, None, :]
        for i in range(1, len(sim_s)):
            temp_proj_query = getattr(self, "query_weight" + str(i))(sim_s[i])
            proj_query = torch.cat([proj_query, temp_proj_query[:, None, :]], 1)
        # attention weight
        energy = torch.bmm(proj_query, proj_key)  # batch_size X No.stu feature X No.tea feature
        attention = F.softmax(energy, dim=-1)
        # feature space alignment
        proj_value_stu = []
        value_tea = []
        for i in range(len(sim_s)):
            proj_value_stu.append([])
            value_tea.append([])
            for j in range(len(sim_t)):
                s_H, t_H = feat_s[i].shape[2], feat_t[j].shape[2]
                if s_H > t_H:
                    input = F.adaptive_avg_pool2d(feat_s[i], (t_H, t_H))
                    proj_value_stu[i].append(getattr(self, "regressor" + str(i) + str(j))(input))
                    value_tea[i].append(feat_t[j])
                elif s_H < t_H or s_H == t_H:
                    target = F.adaptive_avg_pool2d(feat_t[j], (s_H, s_H))
                    proj_value_stu[i].append(getattr(self, "regressor" + str(i) + str(j))(feat_s[i]))
                    value_tea[i].append(target)
        return proj_value_stu, value_tea, attention


class SemCKDLoss(nn.Module):
    """distiller_zoo/SemCKD.py:8-23, op for op but for ``ind_loss``: the reference allocates it with
    ``torch.zeros(...).cuda()`` (float32 on the GPU); here on the CPU in the weights' dtype (float32 zeros would
    round the float64 values written into them)."""

    def __init__(self):
        super().__init__()
        self.crit = nn.MSELoss(reduction="none")

    def forward(self, s_value, f_target, weight):
        bsz, num_stu, num_tea = weight.shape
        ind_loss = torch.zeros(bsz, num_stu, num_tea, dtype=weight.dtype)
        for i in range(num_stu):
            for j in range(num_tea):
                ind_loss[:, i, j] = self.crit(s_value[i][j], f_target[i][j]).reshape(bsz, -1).mean(-1)
        loss = (weight * ind_loss).sum() / (1.0 * bsz * num_stu)
        return loss


def _reference_from(m, s_shapes, t_shapes, batch):
    """The reference ``SelfA`` with the weights of our method ``m`` (key/query MLPs, regressors)."""
    ref = SelfA(len(s_shapes), len(t_shapes), batch, [c for c, _ in s_shapes], [c for c, _ in t_shapes]).double()
    for i, k in enumerate(m.key):
        getattr(ref, f"key_weight{i}").load_state_dict(k.state_dict())
    for i, q in enumerate(m.query):
        getattr(ref, f"query_weight{i}").load_state_dict(q.state_dict())
    for i, row in enumerate(m.regressor):
        for j, r in enumerate(row):
            getattr(ref, f"regressor{i}{j}").regressor.load_state_dict(r.state_dict())
    return ref


S_SHAPES = [(8, 8), (12, 4), (16, 2)]  # (channels, size) of the student's stages
T_SHAPES = [(10, 4), (20, 2)]


def _case(seed, n, k=10):
    g = torch.Generator().manual_seed(seed)
    s = Outputs(
        logits=(torch.randn(n, k, generator=g, dtype=torch.float64) * 3).requires_grad_(True),
        **{
            f"stage{i + 1}": torch.randn(n, c, h, h, generator=g, dtype=torch.float64).relu().requires_grad_(True)
            for i, (c, h) in enumerate(S_SHAPES)
        },
    )
    t = Outputs(
        logits=torch.randn(n, k, generator=g, dtype=torch.float64),
        **{f"stage{i + 1}": torch.randn(n, c, h, h, generator=g, dtype=torch.float64).relu() for i, (c, h) in
           enumerate(T_SHAPES)},
    )  # fmt: skip
    return s, t, torch.randint(0, k, (n,), generator=g)


def _setup(s, t, seed, **params):
    torch.manual_seed(seed)
    m = build_method("semckd", {"semckd": params})
    m.setup(Probe(None, None, s, t, None, None, num_samples=100, num_classes=10))
    return m.double().train()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [8, 6])
def test_semckd_equals_authors_loss_gradient_and_state(seed, n):
    """At N = batch_size (8) our loss is the reference's; at N 6 < batch_size it is the reference's with each
    similarity row zero-padded to 8 columns (the key/query MLPs' first layer restricted to the first 6 inputs).
    Loss and gradient (student maps, every MLP and regressor) max relative difference <= 1e-12 (docstring: the
    measured maxima); the regressors' BatchNorm running statistics equal."""
    s, t, y = _case(seed, n)
    m = _setup(s, t, seed, batch_size=8, factor=4)
    assert m.key[0].linear1.weight.shape == (4, 8) and m.key[0].linear2.weight.shape == (2, 4)
    assert len(m.query) == 3 and len(m.regressor) == 3 and len(m.regressor[0]) == 2
    ref = _reference_from(m, S_SHAPES, T_SHAPES, 8)
    if n < 8:  # the reference at 6 inputs: the first 6 columns of each MLP's first weight
        for name in [*(f"key_weight{i}" for i in range(2)), *(f"query_weight{i}" for i in range(3))]:
            mlp = getattr(ref, name)
            lin = nn.Linear(n, mlp.linear1.out_features).double()
            lin.load_state_dict({"weight": mlp.linear1.weight[:, :n].detach(), "bias": mlp.linear1.bias.detach()})
            mlp.linear1 = lin
    out = m.compute(s, y, t, LossContext())
    f_s, f_t = s.stages(), t.stages()
    s_value, f_target, weight = ref(f_s, f_t)
    want = SemCKDLoss()(s_value, f_target, weight)
    assert _rel(out["feat"], 400.0 * want) <= 1e-12
    ours = [*f_s, *m.parameters()]
    g_ours = torch.autograd.grad(out["feat"], ours, retain_graph=True, allow_unused=True)
    theirs = [*f_s]
    for i in range(2):
        theirs += list(getattr(ref, f"key_weight{i}").parameters())
    for i in range(3):
        theirs += list(getattr(ref, f"query_weight{i}").parameters())
    for i in range(3):
        for j in range(2):
            theirs += list(getattr(ref, f"regressor{i}{j}").parameters())
    g_ref = torch.autograd.grad(400.0 * want, theirs, allow_unused=True)
    assert len(g_ours) == len(g_ref)
    for a, b in zip(g_ours, g_ref):
        if n < 8 and a is not None and b is not None and a.shape != b.shape:  # a padded MLP's first weight
            assert torch.equal(a[:, n:], torch.zeros_like(a[:, n:]))
            a = a[:, :n]
        assert _rel(a, b) <= 1e-12
    ours_bn = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    ref_bn = [mod for i in range(3) for j in range(2) for mod in getattr(ref, f"regressor{i}{j}").modules()
              if isinstance(mod, nn.BatchNorm2d)]  # fmt: skip
    assert len(ours_bn) == len(ref_bn) == 12
    for a, b in zip(ours_bn, ref_bn):
        assert torch.allclose(a.running_mean, b.running_mean, rtol=1e-12, atol=0)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-12, atol=0)


def test_semckd_defaults_and_batch_rule():
    m = build_method("semckd", {"semckd": {}})
    assert m.p == {"ce": 1.0, "beta": 400.0, "batch_size": 64, "factor": 4}
    assert "README.md:37" in m.params.fields["beta"].help
    assert not m.uses_temperature and m.needs.student == ("logits", "stages")
    s, t, y = _case(0, 6)
    m = _setup(s, t, 0, batch_size=4)
    with pytest.raises(ValueError, match=r"larger than semckd\.batch_size"):
        m.compute(s, y, t, LossContext())
    # the attention is a per-sample distribution over the teacher stages; the loss is CE + beta * feat
    m = _setup(s, t, 0, batch_size=8)
    w = m.attention(s.stages(), t.stages())
    assert w.shape == (6, 3, 2) and torch.allclose(w.sum(-1), torch.ones(6, 3, dtype=torch.float64))
    out = m.compute(s, y, t, LossContext())
    assert out["ce"].item() == pytest.approx(F.cross_entropy(s["logits"], y).item(), rel=1e-6)
    # equal maps through identity regressors give 0: one stage each, same width, regressor = identity 1x1 conv
    f = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    s1, t1 = Outputs(stage1=f, logits=torch.zeros(4, 2)), Outputs(stage1=f.clone())
    m = _setup(s1, t1, 0, batch_size=4)
    m.regressor[0][0] = nn.Conv2d(3, 3, 1, bias=False).double()
    with torch.no_grad():
        m.regressor[0][0].weight.copy_(torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1))
    assert m.compute(s1, torch.zeros(4, dtype=torch.long), t1, LossContext())["feat"].item() == 0.0


@pytest.mark.slow
def test_semckd_fused_with_kd_equals_alone(tmp_path):
    from ..fixtures import fused_with_kd

    fused_with_kd(tmp_path, ["semckd"])


def test_run_refuses_a_student_batch_above_semckd_batch_size():
    """Resolving a run's config (run and --dry-run: ``check_feature_methods``) refuses, in one line, a student
    batch size the key/query MLPs cannot read; at the batch size it passes (digits' recipe: batch 64)."""
    from lskd_bench.errors import UsageError
    from lskd_bench.runners.grid import resolve_config

    with pytest.raises(UsageError, match=r"method semckd\+kd: .*semckd\.batch_size=64$") as exc:
        resolve_config("digits", {}, {"methods": ["semckd+kd"], "semckd": {"batch_size": 32}})
    assert "\n" not in str(exc.value) and "(32) is smaller than the student's batch size (64)" in str(exc.value)
    cfg = resolve_config("digits", {}, {"methods": ["semckd", "semckd+kd"]})
    assert cfg["student"]["batch_size"] == cfg["semckd"]["batch_size"] == 64


@pytest.mark.slow
def test_semckd_resumes_bit_identically(tmp_path):
    """Killed at the end of epoch 2 of 3 and resumed: the same weights, loss history and metrics as
    uninterrupted (the checkpoint holds the key/query MLPs, the regressors and their BatchNorm statistics)."""

    from lskd_bench import store

    from ..fixtures import digits_students, resume_matches, train_then_kill

    cfg, task, data, students, tmodel = digits_students(tmp_path, ["semckd"], epochs=3)
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path / "run", at_epoch=2)
    parts = {c.method: torch.load(cut / c.name / store.STATE, weights_only=True)["parts"] for c in students}
    state = {m: p.get("method") for m, p in parts.items()}  # kd brings no part
    assert {"key.0.linear1.weight", "query.0.linear2.bias", "regressor.0.0.1.running_mean"} <= set(state["semckd"])
    resume_matches(task, students, cfg, data, tmodel, ref, cut)
