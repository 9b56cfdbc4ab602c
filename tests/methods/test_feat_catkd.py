"""CAT-KD (lskd_bench/methods/feat_catkd.py): the loss and its gradient against the authors' CAT_loss on the converted
models' 1x1 convolution, transcribed op for op (float64, the same inputs and weights); the ``pooled_map`` output of
the CIFAR models; the defaults and per-pair settings; a fused digits run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lskd_bench.cifar_models import CIFAR_ARCHS
from lskd_bench.errors import UsageError
from lskd_bench.methods import LossContext, Probe, build_method
from lskd_bench.outputs import Outputs, Tap, describe


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# -- the reference: GzyAftermath/CAT-KD@4467073ca31b9929e7c45f5a6761e5e1b7c9442f ----------------------------------


def _Normalize(feat, IF_NORMALIZE):
    """mdistiller/distillers/CAT_KD.py:72-75."""
    if IF_NORMALIZE:
        feat = F.normalize(feat, dim=(2, 3))
    return feat


def CAT_loss(CAM_Student, CAM_Teacher, CAM_RESOLUTION, IF_NORMALIZE):
    """mdistiller/distillers/CAT_KD.py:77-81."""
    CAM_Student = F.adaptive_avg_pool2d(CAM_Student, (CAM_RESOLUTION, CAM_RESOLUTION))
    CAM_Teacher = F.adaptive_avg_pool2d(CAM_Teacher, (CAM_RESOLUTION, CAM_RESOLUTION))
    loss = F.mse_loss(_Normalize(CAM_Student, IF_NORMALIZE), _Normalize(CAM_Teacher, IF_NORMALIZE))
    return loss


def conv_test(fc):
    """The converted head: ``nn.Conv2d(C, K, kernel_size=1, padding=0, bias=False)`` (models/cifar/resnet.py:245)
    holding the linear weight ``fc.weight.view(out_features, in_features, 1, 1)`` (tools/train.py:139)."""
    conv = nn.Conv2d(fc.in_features, fc.out_features, kernel_size=1, padding=0, bias=False).to(fc.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(fc.weight.view(fc.out_features, fc.in_features, 1, 1))
    return conv


def authors_cat_kd(f_s, f_t, conv_s, conv_t, resolution, normalize, weight=400.0):
    """CAT_KD.forward_train's CAT term (CAT_KD.py:29-30, 54-56): ``feats[-1]`` of the converted models is the
    ``conv_test`` output of the map before pooling (resnet.py:326-329), the teacher's under no_grad."""
    stu = conv_s(f_s)
    with torch.no_grad():
        tea = conv_t(f_t)
    return weight * CAT_loss(stu, tea, resolution, normalize)


class _Net(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.head = nn.Linear(c, k)


def _case(seed, n=8, k=10, s=(12, 8), t=(20, 4)):
    g = torch.Generator().manual_seed(seed)
    so = Outputs(
        logits=torch.randn(n, k, generator=g, dtype=torch.float64).requires_grad_(True),
        pooled_map=torch.randn(n, s[0], s[1], s[1], generator=g, dtype=torch.float64).relu().requires_grad_(True),
    )
    to = Outputs(pooled_map=torch.randn(n, t[0], t[1], t[1], generator=g, dtype=torch.float64).relu())
    torch.manual_seed(seed)
    s_net, t_net = _Net(s[0], k).double(), _Net(t[0], k).double()
    return so, to, torch.randint(0, k, (n,), generator=g), s_net, t_net


def _setup(s, t, s_net, t_net, **params):
    m = build_method("catkd", {"catkd": params})
    m.setup(Probe(s_net, t_net, s, t, None, None, num_samples=100, num_classes=10))
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("resolution", [2, 4])
@pytest.mark.parametrize("normalize", [True, False])
def test_catkd_equals_authors_loss_and_gradient(seed, resolution, normalize):
    """Loss and gradient (student map, student head weight; none reaches the teacher's head) max relative
    difference <= 1e-12 (docstring: the measured maxima)."""
    s, t, y, s_net, t_net = _case(seed)
    m = _setup(s, t, s_net, t_net, resolution=resolution, normalize=normalize)
    out = m.compute(s, y, t, LossContext())
    conv_s, conv_t = conv_test(s_net.head), conv_test(t_net.head)
    ref = authors_cat_kd(s["pooled_map"], t["pooled_map"], conv_s, conv_t, resolution, normalize)
    assert _rel(out["feat"], ref) <= 1e-12
    g_ours = torch.autograd.grad(out["feat"], [s["pooled_map"], s_net.head.weight], retain_graph=True)
    g_ref = torch.autograd.grad(ref, [s["pooled_map"], conv_s.weight])
    assert _rel(g_ours[0], g_ref[0]) <= 1e-12
    assert _rel(g_ours[1], g_ref[1].view(10, 12)) <= 1e-12
    out["feat"].backward()
    assert t_net.head.weight.grad is None and s_net.head.bias.grad is None
    assert list(m.parameters()) == [] and m.state_dict() == {}  # the heads are the models', not the method's
    assert out["ce"].item() == pytest.approx(F.cross_entropy(s["logits"], y).item(), rel=1e-6)


def test_catkd_defaults_and_refusals():
    m = build_method("catkd", {"catkd": {}})
    assert m.p == {"ce": 1.0, "beta": 400.0, "resolution": 2, "normalize": True}
    assert "cfg.py:37" in m.params.fields["beta"].help
    assert not m.uses_temperature and m.needs.teacher == ("pooled_map",)
    s, t, _, s_net, _ = _case(0)
    with pytest.raises(UsageError, match="same classes"):
        _setup(s, t, s_net, _Net(20, 7).double())
    with pytest.raises(UsageError, match="teacher's head"):
        _setup(s, t, s_net, _Net(16, 10).double())
    # a hand case: one class, maps of ones (student) and twos (teacher), weights 1: CAMs C_s and 2 C_t everywhere;
    # unnormalised the loss is (C_s - 2 C_t)^2, normalised (every map constant) 0
    so = Outputs(pooled_map=torch.ones(2, 3, 4, 4, dtype=torch.float64), logits=torch.zeros(2, 1))
    to = Outputs(pooled_map=torch.full((2, 5, 4, 4), 2.0, dtype=torch.float64))
    a, b = _Net(3, 1).double(), _Net(5, 1).double()
    for net in (a, b):
        nn.init.ones_(net.head.weight)
    m = _setup(so, to, a, b, normalize=False, beta=1.0)
    assert m.compute(so, torch.zeros(2, dtype=torch.long), to, LossContext())["feat"].item() == (3 - 10) ** 2
    m = _setup(so, to, a, b, normalize=True, beta=1.0)
    assert m.compute(so, torch.zeros(2, dtype=torch.long), to, LossContext())["feat"].item() == pytest.approx(0.0)


PAIRS = {  # lskd-bench's map: the authors' converted model's (models/cifar/*.py forward, the conv_test input)
    "resnet8x4": "layer3",  # resnet.py:326-328
    "ResNet50": "layer4",  # resnetv2.py:304-305
    "wrn_16_2": "relu",  # wrn.py:238-240: relu(bn1(out))
    "vgg8": "relu4",  # vgg.py:228-230
    "ShuffleV1": "layer3",  # ShuffleNetv1.py:213
    "ShuffleV2": "relu2",  # ShuffleNetv2.py:253, after relu(bn2(conv2(out)))
    "MobileNetV2": "conv2",  # mobilenetv2.py:264-267
}


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_pooled_map_of_the_cifar_models_is_the_authors_cam_input(arch):
    """The ``pooled_map`` is the map the authors' converted model applies its 1x1 convolution to: its CAMs at full
    resolution, averaged, are the model's logits minus the head's bias."""
    torch.manual_seed(0)
    model = CIFAR_ARCHS[arch](10).eval()
    x = torch.randn(2, 3, 32, 32)
    layout = describe(model, x)
    assert layout.pooled_map == PAIRS[arch]
    with torch.no_grad(), Tap(model, layout, ["pooled_map"]) as tap:
        logits = model(x)
    fmap = tap.out["pooled_map"]
    cams = conv_test(model.head)(fmap)
    assert torch.allclose(cams.mean(dim=(2, 3)), logits - model.head.bias, atol=1e-5)


def test_a_model_without_a_pooled_map_module_is_refused():
    """A map made by a function (no module outputs it) is not offered: the method is refused with one line."""

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(F.relu(self.conv(x) - 1).mean(dim=(2, 3)))

    model = Functional()
    layout = describe(model, torch.randn(2, 3, 8, 8))
    assert layout.pooled_map is None and "pooled_map" not in layout.names()
    with pytest.raises(UsageError, match=r"no output 'pooled_map'.*global-average-pools"):
        Tap(model, layout, ["pooled_map"])


@pytest.mark.slow
def test_catkd_fused_with_kd_equals_alone(tmp_path):
    from ..fixtures import fused_with_kd

    fused_with_kd(tmp_path, ["catkd"])


@pytest.mark.slow
def test_catkd_resumes_bit_identically(tmp_path):
    """Killed at the end of epoch 2 of 3 and resumed: the same weights, loss history and metrics as
    uninterrupted (CAT-KD has no state of its own: the heads it reads are the models')."""

    from lskd_bench import store

    from ..fixtures import digits_students, resume_matches, train_then_kill

    cfg, task, data, students, tmodel = digits_students(tmp_path, ["catkd"], epochs=3)
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path / "run", at_epoch=2)
    parts = {c.method: torch.load(cut / c.name / store.STATE, weights_only=True)["parts"] for c in students}
    state = {m: p.get("method") for m, p in parts.items()}  # kd brings no part
    assert not state["catkd"]  # None or empty: nothing of its own
    resume_matches(task, students, cfg, data, tmodel, ref, cut)
