"""SimKD (lskd_bench/methods/feat_simkd.py): the loss, the reused-classifier logits and their gradients against the
authors' ``SimKD`` module and ``train_distill`` branch, transcribed op for op (float64, the same weights); the
frozen teacher classifier; the deployed model a cell is evaluated as (not the student's own head); fused with kd
and resumed bit for bit on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lskd_bench import store
from lskd_bench.errors import UsageError
from lskd_bench.methods import LossContext, MethodState, Probe, build_method
from lskd_bench.outputs import Layout, Outputs


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# -- the reference: DefangChen/SimKD@2b389c31ed7779aea31e7aaf0bb0f2d8b6ac2f01 --------------------------------------


class AuthorsSimKD(nn.Module):
    """models/util.py:188-236, as written (the commented-out depthwise variant left out)."""

    def __init__(self, *, s_n, t_n, factor=2):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))

        def conv1x1(in_channels, out_channels, stride=1):
            return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, stride=stride, bias=False)

        def conv3x3(in_channels, out_channels, stride=1, groups=1):
            return nn.Conv2d(
                in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=False, groups=groups
            )

        self.transfer = nn.Sequential(
            conv1x1(s_n, t_n // factor),
            nn.BatchNorm2d(t_n // factor),
            nn.ReLU(inplace=True),
            conv3x3(t_n // factor, t_n // factor),
            nn.BatchNorm2d(t_n // factor),
            nn.ReLU(inplace=True),
            conv1x1(t_n // factor, t_n),
            nn.BatchNorm2d(t_n),
            nn.ReLU(inplace=True),
        )

    def forward(self, feat_s, feat_t, cls_t):
        s_H, t_H = feat_s.shape[2], feat_t.shape[2]
        if s_H > t_H:
            source = F.adaptive_avg_pool2d(feat_s, (t_H, t_H))
            target = feat_t
        else:
            source = feat_s
            target = F.adaptive_avg_pool2d(feat_t, (s_H, s_H))
        trans_feat_t = target
        trans_feat_s = self.transfer(source)
        temp_feat = self.avg_pool(trans_feat_s)
        temp_feat = temp_feat.view(temp_feat.size(0), -1)
        pred_feat_s = cls_t(temp_feat)
        return trans_feat_s, trans_feat_t, pred_feat_s


def authors_step(ref, feat_s, feat_t, cls_t):
    """helper/loops.py:150-153 with README.md:43's ``-c 0 -d 0 -b 1``: ``loss = opt.beta * MSELoss(trans_feat_s,
    trans_feat_t)``; ``logit_s = pred_feat_s`` (what ``accuracy`` and ``validate_distill`` read)."""
    trans_feat_s, trans_feat_t, pred_feat_s = ref(feat_s, feat_t, cls_t)
    return nn.MSELoss()(trans_feat_s, trans_feat_t), pred_feat_s


class _Net(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.head = nn.Linear(c, k)


def _case(seed, n=8, k=10, s=(12, 8), t=(16, 4)):
    g = torch.Generator().manual_seed(seed)
    so = Outputs(
        logits=torch.randn(n, k, generator=g, dtype=torch.float64).requires_grad_(True),
        stage3=torch.randn(n, s[0], s[1], s[1], generator=g, dtype=torch.float64).relu().requires_grad_(True),
    )
    to = Outputs(stage3=torch.randn(n, t[0], t[1], t[1], generator=g, dtype=torch.float64).relu())
    torch.manual_seed(seed)
    s_net, t_net = _Net(s[0], k).double(), _Net(t[0], k).double()
    return so, to, torch.randint(0, k, (n,), generator=g), s_net, t_net


def _setup(s, t, s_net, t_net, **params):
    m = build_method("simkd", {"simkd": params})
    m.setup(Probe(s_net, t_net, s, t, Layout(stages={"stage3": "x"}), None, num_samples=100, num_classes=10))
    return m.double()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("s_size", [8, 4])
def test_simkd_equals_authors_loss_and_gradient(seed, factor, s_size):
    """Loss, reused-classifier logits, gradients (student map, every projector parameter) and the projector's
    BatchNorm running statistics equal the reference's, max relative difference 0 (docstring); the student map at
    8x8 is pooled to the teacher's 4x4, at 4x4 it is not."""
    s, t, y, s_net, t_net = _case(seed, s=(12, s_size))
    m = _setup(s, t, s_net, t_net, factor=factor)
    ref = AuthorsSimKD(s_n=12, t_n=16, factor=factor).double()
    ref.transfer.load_state_dict(m.projector.state_dict())
    out = m.compute(s, y, t, LossContext())
    ref_loss, pred = authors_step(ref, s["stage3"], t["stage3"], t_net.head)
    assert _rel(out["feat"], ref_loss) == 0.0
    assert out["ce"].item() == 0.0  # -c 0
    params = list(m.projector.parameters())
    g_ours = torch.autograd.grad(out["feat"], [s["stage3"], *params], retain_graph=True)
    g_ref = torch.autograd.grad(ref_loss, [s["stage3"], *ref.transfer.parameters()])
    assert max(_rel(a, b) for a, b in zip(g_ours, g_ref)) == 0.0
    for a, b in zip(m.projector.buffers(), ref.transfer.buffers()):
        assert torch.equal(a, b)
    # the training top-1 counts the reused classifier's logits (the reference's accuracy of logit_s = pred_feat_s)
    assert m.report() == {"train_top1": 100.0 * (pred.argmax(1) == y).sum().item() / len(y)}


def test_teacher_classifier_is_a_frozen_copy_outside_the_optimizer():
    s, t, y, s_net, t_net = _case(0)
    m = _setup(s, t, s_net, t_net)
    assert m.head is not t_net.head and torch.equal(m.head.weight, t_net.head.weight)
    assert not any(p.requires_grad for p in m.head.parameters())
    state = MethodState(m, m.deployed)
    trained = {id(p) for p in state.params()}
    assert trained == {id(p) for p in m.projector.parameters()}  # the copied classifier is not trained
    assert {"head.weight", "head.bias", "hits", "rows", "epoch_of"} <= set(m.state_dict())  # but checkpointed
    m.compute(s, y, t, LossContext())["feat"].backward()
    assert m.head.weight.grad is None and t_net.head.weight.grad is None


def test_training_top1_counts_each_epoch_afresh_and_resumes_from_the_state():
    """``train_top1`` is the reused classifier's hits over the epoch's rows: a new epoch starts from zero, and the
    counts travel in the method's state (a checkpoint mid-epoch resumes them)."""
    s, t, y, s_net, t_net = _case(0)
    m = _setup(s, t, s_net, t_net)
    with torch.no_grad():
        pred = m.head(m.mapped(s["stage3"], t["stage3"])[0].mean((2, 3)))
    hits = int((pred.argmax(1) == y).sum())
    m.compute(s, y, t, LossContext(epoch=0))
    m.compute(s, y, t, LossContext(epoch=0))
    assert (int(m.hits), int(m.rows)) == (2 * hits, 16)
    resumed = _setup(s, t, s_net, t_net)
    resumed.load_state_dict(m.state_dict())
    assert resumed.report() == m.report() == {"train_top1": 100.0 * hits / 8}
    m.compute(s, y, t, LossContext(epoch=1))
    assert (int(m.rows), int(m.epoch_of)) == (8, 1)


def test_simkd_plus_kd_is_evaluated_as_the_same_deployed_model():
    """``simkd+kd`` (the authors' ``-d``: KD on the student's own logits) deploys SimKD's model and reports its
    training top-1."""
    from lskd_bench.methods.feat_simkd import SimKDDeployed

    s, t, y, s_net, t_net = _case(0)
    t["logits"] = torch.randn(8, 10, dtype=torch.float64)
    m = build_method("simkd+kd", {"simkd": {}, "compose": {"kd_weight": 1.0}})
    m.setup(Probe(s_net, t_net, s, t, Layout(stages={"stage3": "x"}), None, num_samples=100, num_classes=10))
    m.double()
    out = m.compute(s, y, t, LossContext(T=4.0))
    assert set(out) == {"ce", "feat", "kd"} and set(m.report()) == {"train_top1"}
    deployed = m.deployed(s_net)
    assert isinstance(deployed, SimKDDeployed) and deployed.head is m.inner.head


def test_simkd_defaults_and_refusals():
    m = build_method("simkd", {"simkd": {}})
    assert m.p == {"ce": 0.0, "beta": 1.0, "factor": 2}
    assert "README.md:43" in m.params.fields["beta"].help and "train_student.py:67" in m.params.fields["factor"].help
    assert not m.uses_temperature and m.needs.teacher == ("last_stage",)
    s, t, _, s_net, _ = _case(0)
    with pytest.raises(UsageError, match="teacher's head"):
        _setup(s, t, s_net, _Net(20, 10).double())
    with pytest.raises(UsageError, match="factor"):
        _setup(s, t, s_net, _Net(16, 10).double(), factor=32)
    # a hand case: a constant student map stays constant through the 1x1 conv, and BatchNorm in train mode (the
    # batch's statistics, zero variance) maps it to 0 whatever the weights: the projection is 0 and the loss is
    # the teacher map's mean square, 3^2
    so = Outputs(stage3=torch.ones(2, 1, 2, 2, dtype=torch.float64), logits=torch.zeros(2, 3, dtype=torch.float64))
    to = Outputs(stage3=torch.full((2, 2, 2, 2), 3.0, dtype=torch.float64))
    m = _setup(so, to, _Net(1, 3).double(), _Net(2, 3).double())
    feat = m.compute(so, torch.zeros(2, dtype=torch.long), to, LossContext())["feat"]
    assert feat.item() == pytest.approx(9.0, rel=1e-12)


def test_deployed_model_reads_the_teacher_classifier_not_the_students_head():
    """The deployed forward is ``head_t(pool(projector_eval(align(last stage))))`` of the real CIFAR models, the
    reference's validate_distill (helper/loops.py:278-283), and leaves the projector in training mode after."""
    from lskd_bench.cifar_models import CIFAR_ARCHS
    from lskd_bench.outputs import Tap, describe

    torch.manual_seed(0)
    student, teacher = CIFAR_ARCHS["resnet8x4"](10).eval(), CIFAR_ARCHS["resnet32x4"](10).eval()
    x = torch.randn(4, 3, 32, 32)
    layouts = describe(student, x), describe(teacher, x)
    outs = []
    for model, layout in zip((student, teacher), layouts):
        with torch.no_grad(), Tap(model, layout, ["last_stage"]) as tap:
            logits = model(x)
        outs.append(Outputs(logits=logits, **tap.out))
    m = build_method("simkd", {"simkd": {}})
    m.setup(Probe(student, teacher, outs[0], outs[1], layouts[0], layouts[1], num_samples=4, num_classes=10))
    ref = AuthorsSimKD(s_n=256, t_n=256).eval()
    ref.transfer.load_state_dict(m.projector.state_dict())
    deployed = m.deployed(student).eval()
    with torch.no_grad():
        got = deployed(x)
        _, _, want = ref(outs[0]["stage3"], outs[1]["stage3"], teacher.head)
    assert torch.allclose(got, want, rtol=0, atol=1e-6)
    assert not torch.allclose(got, student(x), atol=1e-3)  # the student's own head is not what is evaluated
    assert m.projector.training and deployed.head is m.head
    assert set(deployed.state_dict()) == {
        *(f"student.{k}" for k in student.state_dict()),
        *(f"projector.{k}" for k in m.projector.state_dict()),
        "head.weight",
        "head.bias",
    }


def _cell(out_dir, students, method):
    c = next(c for c in students if c.method == method)
    return c, out_dir / c.name


@pytest.mark.slow
def test_a_simkd_cell_is_evaluated_as_its_deployed_model(tmp_path):
    """The metrics, the selected epoch's score and deployed.pt of a trained digits cell are those of the student +
    projector + teacher classifier; the student's own weights (model.pt) score otherwise (its head is untrained)."""
    from lskd_bench.runners.train import load_model, train_group

    from ..fixtures import digits_students

    cfg, task, data, students, tmodel = digits_students(tmp_path, ["simkd"], epochs=1)
    c, d = _cell(tmp_path / "run", students, "simkd")
    (o,) = train_group(task, [c], cfg, data, [d], teacher=tmodel, progress=False)
    assert o.error is None
    result = json.loads((d / store.RESULT).read_text())
    assert result["weights"]["deployed"] == {"last": store.DEPLOYED, "selected": store.DEPLOYED}
    assert result["history"][-1]["train_top1"] != pytest.approx(0.0)
    cpu = torch.device("cpu")
    student = load_model(task, c.arch, data, cfg, d / store.MODEL, cpu)
    own = task.assess(student, data, cfg, cpu, cfg["student"]).metrics
    state = torch.load(d / store.DEPLOYED, weights_only=True)
    m = build_method("simkd", cfg)
    s_out, t_out = _probe(student, tmodel, data)
    m.setup(Probe(student, tmodel, s_out[0], t_out[0], s_out[1], t_out[1], num_samples=1, num_classes=10))
    deployed = m.deployed(student)
    deployed.load_state_dict(state)
    m.projector.train()
    again = task.assess(deployed, data, cfg, cpu, cfg["student"]).metrics
    assert again == result["metrics"] == result["best"]["metrics"]
    assert own["top1"] != result["metrics"]["top1"]
    # the analysis reads the deployed model too (written at the end, analysis.export off): the head's input (the
    # pooled projected map, the teacher's width) and the reused teacher classifier
    feats = np.load(d / store.FEATURES)
    assert np.array_equal(feats["head_weight"], m.head.weight.detach().numpy())
    assert feats["val_features"].shape[1] == m.head.weight.shape[1] != student.head.weight.shape[1]
    assert np.array_equal(feats["val_labels"], data.labels("val").numpy())


def _probe(student, teacher, data):
    from lskd_bench.outputs import Tap, describe

    x = torch.stack([data.train[i][0] for i in range(2)])
    found = []
    for model in (student, teacher):
        layout = describe(model, x)
        with torch.no_grad(), Tap(model.eval(), layout, ["last_stage"]) as tap:
            logits = model(x)
        found.append((Outputs(logits=logits, **tap.out), layout))
    return found


@pytest.mark.slow
def test_simkd_fused_with_kd_equals_alone(tmp_path):
    from ..fixtures import fused_with_kd

    fused_with_kd(tmp_path, ["simkd"])


@pytest.mark.slow
def test_simkd_resumes_bit_identically(tmp_path):
    """Killed at the end of epoch 2 of 3 and resumed: the same weights (student and deployed), loss and training
    top-1 history and metrics as uninterrupted; the checkpoint holds the projector and the frozen classifier."""

    from ..fixtures import digits_students, resume_matches, train_then_kill

    cfg, task, data, students, tmodel = digits_students(tmp_path, ["simkd"], epochs=3)
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path / "run", at_epoch=2)
    simkd = next(c for c in students if c.method == "simkd")
    parts = torch.load(cut / simkd.name / store.STATE, weights_only=True)["parts"]
    assert {"projector.0.weight", "head.weight"} <= set(parts["method"])
    resume_matches(task, students, cfg, data, tmodel, ref, cut, keys=("loss", "train_top1"))
    da, db = (torch.load(d / simkd.name / store.DEPLOYED, weights_only=True) for d in (cut, ref))
    assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)
